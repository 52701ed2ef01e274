import PostgresClient

/// Whether the workflow module's tables exist (the module may be disabled, or its
/// migrations not applied yet): duties that use them wait instead of failing. "Present"
/// means migrated at least to the version the duties' queries read (`workflow.leases`, 0004),
/// so a leader upgraded ahead of its migration duty waits for it rather than failing.
enum WorkflowSchema {
    static let present: PostgresQuery = """
        SELECT to_regclass('workflow.workers') IS NOT NULL
               AND to_regclass('workflow.leases') IS NOT NULL
               AS present
        """

    static func isPresent(_ pool: ConnectionPool) async throws -> Bool {
        try await pool.query(present, purpose: "is the workflow schema present?").single().decode("present", as: Bool.self)
    }

    /// Whether one table of the workflow schema exists (a later migration's, say).
    static func has(_ table: String, _ pool: ConnectionPool) async throws -> Bool {
        try await pool.query("SELECT to_regclass(\(table)) IS NOT NULL AS present", purpose: "is \(table) present?")
            .single().decode("present", as: Bool.self)
    }
}
