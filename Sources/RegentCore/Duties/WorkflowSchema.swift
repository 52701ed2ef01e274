import PostgresClient

/// Whether the workflow module's tables exist (the module may be disabled, or its
/// migrations not applied yet): duties that use them wait instead of failing.
enum WorkflowSchema {
    static let present: PostgresQuery =
        "SELECT to_regclass('workflow.workers') IS NOT NULL AND to_regclass('workflow.attempts') IS NOT NULL AS present"

    static func isPresent(_ pool: ConnectionPool) async throws -> Bool {
        try await pool.query(present, purpose: "is the workflow schema present?").single().decode("present", as: Bool.self)
    }
}
