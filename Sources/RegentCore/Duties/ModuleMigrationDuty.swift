import Foundation
import Logging
import PostgresClient

/// Applies pending migrations of every enabled module's schema, and then changed function
/// files, fenced, on election and whenever an operator enables a module (it looks every `interval`).
public struct ModuleMigrationDuty: LeaderDuty {
    public let name = "module-migrations"
    let pool: ConnectionPool
    public let interval: Duration
    let logger: Logger

    public init(pool: ConnectionPool, interval: Duration = .seconds(2), logger: Logger = Logger(label: "regent.duty.migrations")) {
        self.pool = pool
        self.interval = interval
        self.logger = logger
    }

    /// Applies what is pending for `schemas`, fenced.
    func migrate(_ schemas: [String], fence: LeaderFence, on conn: PostgresConnection) async throws -> [Migration] {
        let runner = MigrationRunner.node(appliedBy: AuditActor.instance(fence.instanceID).description)
        guard try await runner.hasWork(on: conn, schemas: schemas) else { return [] }
        return try await runner.migrate(on: conn, schemas: schemas, fence: { try await fence.check($0) })
    }

    public func runOnce(fence: LeaderFence) async throws -> Bool {
        try await pool.withConnection { conn in
            let schemas = try await ModuleRegistry().enabledSchemas(on: conn)
            let ran = try await migrate(schemas, fence: fence, on: conn)
            if !ran.isEmpty {
                logger.notice("leader applied module migrations", metadata: ["files": "\(ran.map(\.description))", "term": "\(fence.term)"])
            }
            // Then the indexes built online (not fenced: a concurrent build cannot run in the fence's
            // transaction; two leaders building the same one is harmless, IF NOT EXISTS).
            try await OnlineIndexes.ensure(schemas: schemas, on: conn, logger: logger)
        }
        return false
    }
}
