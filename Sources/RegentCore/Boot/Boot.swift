import Logging
import PostgresClient

/// What the boot sequence prepared: the pool, the modules and what it migrated.
public struct BootResult: Sendable {
    public let pool: ConnectionPool
    public let modules: [ModuleState]
    public let enabledSchemas: [String]
    public let migrationsApplied: [Migration]
}

/// The node's boot sequence, one readable function:
/// open storage → engine migrations → read or seed modules → each enabled module's
/// schema and migrations. (Membership, leadership and HTTP start after it.)
///
/// Each step logs, and a failure names the step.
public struct Boot: Sendable {
    public struct Options: Sendable {
        public var database: ConnectionConfiguration
        /// Recorded as `applied_by` on migrations this boot applies.
        public var actor: String
        /// When false, module schemas are only checked, not migrated (a follower waits for the leader).
        public var migrateModules: Bool = true
        public var pool: ConnectionPool.Options = .init()
        /// Boot on this pool (kept open if boot fails) instead of a new one.
        public var existingPool: ConnectionPool?
        public init(database: ConnectionConfiguration, actor: String, migrateModules: Bool = true) {
            self.database = database
            self.actor = actor
            self.migrateModules = migrateModules
        }
    }

    public let options: Options
    public let logger: Logger

    public init(options: Options, logger: Logger = Logger(label: "regent.boot")) {
        self.options = options
        self.logger = logger
    }

    public func run() async throws -> BootResult {
        let pool = options.existingPool ?? ConnectionPool(configuration: options.database, options: options.pool)
        do {
            return try await pool.withConnection { connection in
                let runner = MigrationRunner.node(appliedBy: options.actor)
                let registry = ModuleRegistry()
                let engineApplied: [Migration] = try await step("engine migrations") {
                    // A current engine schema needs no lock: a booting node does not wait
                    // behind the leader's migration of a module schema.
                    guard try await runner.hasWork(on: connection, schemas: ["engine"]) else { return [] }
                    return try await runner.migrate(on: connection, schemas: ["engine"])
                }
                let modules = try await step("read or seed modules") {
                    let added = try await registry.seed(on: connection)
                    if added > 0 { logger.info("seeded engine.modules", metadata: ["added": "\(added)"]) }
                    return try await registry.list(on: connection)
                }
                let schemas = try await registry.enabledSchemas(on: connection).filter { $0 != "engine" }
                let moduleApplied: [Migration] = try await step("module schemas and migrations") {
                    if options.migrateModules {
                        return try await runner.migrate(on: connection, schemas: schemas)
                    }
                    // A follower only checks: the leader migrates, and pending expands an old
                    // leader does not know are applied once the node runs (``RegentNode``'s
                    // schema wait), never here: a boot must not queue behind a leader's long run.
                    try runner.verify(try await runner.applied(on: connection), schemas: schemas)
                    return []
                }
                logger.info(
                    "boot complete",
                    metadata: [
                        "modules": "\(modules.filter(\.enabled).map(\.name).joined(separator: ","))",
                        "migrations_applied": "\(engineApplied.count + moduleApplied.count)",
                    ])
                return BootResult(
                    pool: pool, modules: modules, enabledSchemas: ["engine"] + schemas,
                    migrationsApplied: engineApplied + moduleApplied)
            }
        } catch {
            if options.existingPool == nil { await pool.shutdown() }
            throw error
        }
    }

    private func step<T>(_ name: String, _ body: () async throws -> T) async throws -> T {
        logger.debug("boot step", metadata: ["step": "\(name)"])
        do {
            return try await body()
        } catch let error as RegentError {
            throw RegentError(error.code, "boot step '\(name)' failed: \(error.message)", hint: error.hint)
        } catch {
            throw RegentError(.bootFailed, "boot step '\(name)' failed: \(error)")
        }
    }
}
