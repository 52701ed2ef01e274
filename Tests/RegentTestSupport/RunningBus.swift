import PostgresClient
import RegentCore

/// An event bus running in this process on its own small pool, stopped by `stop()`.
public struct RunningBus {
    public let bus: EventBus
    public let pool: ConnectionPool
    public let task: Task<Void, Never>

    public init(_ config: ConnectionConfiguration, options: EventBus.Options = .init(), metrics: RegentMetrics = .discarded) async {
        pool = ConnectionPool(configuration: config, options: .init(maxConnections: 4))
        let bus = EventBus(configuration: config, pool: pool, options: options, metrics: metrics)
        self.bus = bus
        task = Task { await bus.run() }
        await bus.waitUntilListening()
    }

    public func stop() async {
        bus.stop()
        await task.value
        await pool.shutdown()
    }
}

/// A fresh database with the engine schema migrated.
public func migratedDatabase(_ label: String = #function) async throws -> ConnectionConfiguration {
    let config = try await TestDatabase.shared.freshDatabase(label)
    let conn = try await PostgresConnection.connect(config)
    try await MigrationRunner(appliedBy: "test").migrate(on: conn, schemas: ["engine"])
    await conn.close()
    return config
}
