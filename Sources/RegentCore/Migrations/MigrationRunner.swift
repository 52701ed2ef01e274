import Logging
import PostgresClient

/// Applies the compiled-in migrations, schema by schema.
///
/// Guarantees:
/// - a session advisory lock serialises runners, so nodes booting together apply
///   each file exactly once;
/// - each schema's pending files run in one transaction with their
///   `engine.migrations` rows: all of them land, or none;
/// - a database that holds a version this binary does not know, or an applied file
///   whose text changed, is refused before anything runs.
public struct MigrationRunner: Sendable {
    public let catalog: MigrationCatalog
    /// Recorded in `engine.migrations.applied_by` (an instance id or a CLI marker).
    public let appliedBy: String
    let logger: Logger

    public init(catalog: MigrationCatalog = .builtIn, appliedBy: String, logger: Logger = Logger(label: "regent.migrations")) {
        self.catalog = catalog
        self.appliedBy = appliedBy
        self.logger = logger
    }

    static let tableExists: PostgresQuery = "SELECT to_regclass('engine.migrations') IS NOT NULL AS present"
    static let listApplied: PostgresQuery =
        "SELECT schema_name, version, name, checksum, applied_by FROM engine.migrations ORDER BY schema_name, version"
    static let lockRunner: PostgresQuery =
        "SELECT pg_advisory_lock(\(AdvisoryLockKey.classID), \(AdvisoryLockKey.migrations))"
    static let unlockRunner: PostgresQuery =
        "SELECT pg_advisory_unlock(\(AdvisoryLockKey.classID), \(AdvisoryLockKey.migrations))"

    static let busExists: PostgresQuery =
        "SELECT to_regprocedure('engine.publish_event(text,jsonb,uuid)') IS NOT NULL AS present"
    static func announceApplied(_ m: Migration, by: String) -> PostgresQuery {
        """
        SELECT engine.publish_event('migration.applied',
            jsonb_build_object('schema', \(m.schema)::text, 'version', \(m.version)::int, 'name', \(m.name)::text, 'applied_by', \(by)::text), NULL)
        """
    }

    static func recordApplied(_ m: Migration, by: String) -> PostgresQuery {
        """
        INSERT INTO engine.migrations (schema_name, version, name, checksum, applied_by)
        VALUES (\(m.schema), \(m.version), \(m.name), \(m.checksum), \(by))
        """
    }

    /// Rows of `engine.migrations` (none when the engine schema was never applied).
    public func applied(on connection: PostgresConnection) async throws -> [AppliedMigration] {
        let present = try await connection.query(Self.tableExists, purpose: "migrations: look for engine.migrations")
            .single().decode("present", as: Bool.self)
        guard present else { return [] }
        return try await connection.query(Self.listApplied, purpose: "migrations: read applied files").map { row in
            AppliedMigration(
                schema: try row.decode("schema_name"), version: try row.decode("version"), name: try row.decode("name"),
                checksum: try row.decode("checksum"), appliedBy: try row.decode("applied_by"))
        }
    }

    /// Checks what is applied against the binary: refuses newer databases and changed files.
    public func verify(_ applied: [AppliedMigration], schemas: [String]) throws(RegentError) {
        for schema in schemas {
            let known = catalog.migrations(for: schema)
            let latest = catalog.latestVersion(of: schema)
            for row in applied where row.schema == schema {
                guard row.version <= latest else {
                    let newest = applied.filter { $0.schema == schema }.map(\.version).max() ?? row.version
                    throw RegentError(
                        .databaseNewerThanBinary,
                        "database schema \(schema) is at version \(newest) but this binary knows only up to \(latest)",
                        hint: "upgrade the regent binary, or restore the database to a version this binary knows")
                }
                if let file = known.first(where: { $0.version == row.version }), file.checksum != row.checksum {
                    throw RegentError(
                        .migrationChecksumMismatch,
                        "migration \(file) was applied with checksum \(row.checksum.prefix(12))… but this binary's file has \(file.checksum.prefix(12))…",
                        hint: "applied migration files must never be edited; add a new NNNN file instead, or build from the release that applied it")
                }
            }
        }
    }

    /// The files that `migrate` would apply, in order, without changing anything.
    public func plan(on connection: PostgresConnection, schemas: [String], target: MigrationTarget? = nil) async throws -> [Migration] {
        let applied = try await applied(on: connection)
        return try pending(applied: applied, schemas: schemas, target: target)
    }

    func pending(applied: [AppliedMigration], schemas requested: [String], target: MigrationTarget?) throws(RegentError) -> [Migration] {
        var schemas = requested
        if let target {
            schemas = target.schema == "engine" ? ["engine"] : ["engine", target.schema]
        }
        schemas = orderedSchemas(schemas)
        try verify(applied, schemas: schemas)
        var plan: [Migration] = []
        for schema in schemas {
            let current = applied.filter { $0.schema == schema }.map(\.version).max() ?? 0
            var limit = catalog.latestVersion(of: schema)
            if let target, target.schema == schema {
                guard target.version >= current else {
                    throw RegentError(
                        .invalidInput,
                        "invalid migration target \(target): \(schema) is already at version \(current); migrations only go forward")
                }
                limit = target.version
            }
            plan += catalog.migrations(for: schema).filter { $0.version > current && $0.version <= limit }
        }
        return plan
    }

    /// The engine schema first (every other schema records into it), then the rest by name.
    func orderedSchemas(_ schemas: [String]) -> [String] {
        let unique = Array(Set(schemas)).sorted()
        return unique.contains("engine") ? ["engine"] + unique.filter { $0 != "engine" } : unique
    }

    /// Applies pending files of `schemas` (or up to `target`) and returns what ran.
    /// Holds the migration lock on `connection` for the whole run.
    @discardableResult
    ///
    /// `fence`, when given, runs first inside each schema's transaction (the leader's term
    /// check): if it throws, that schema's files are not applied.
    public func migrate(
        on connection: PostgresConnection, schemas: [String], target: MigrationTarget? = nil,
        fence: (@Sendable (PostgresConnection) async throws -> Void)? = nil
    ) async throws -> [Migration] {
        try await connection.query(Self.lockRunner, purpose: "migrations: take the runner lock")
        do {
            let ran = try await migrateLocked(on: connection, schemas: schemas, target: target, fence: fence)
            try await connection.query(Self.unlockRunner, purpose: "migrations: release the runner lock")
            return ran
        } catch {
            if connection.isUsable { _ = try? await connection.query(Self.unlockRunner) }
            throw error
        }
    }

    private func migrateLocked(
        on connection: PostgresConnection, schemas: [String], target: MigrationTarget?,
        fence: (@Sendable (PostgresConnection) async throws -> Void)?
    ) async throws -> [Migration] {
        // Read under the lock: another runner may have finished while we waited.
        let plan = try await self.plan(on: connection, schemas: schemas, target: target)
        var ran: [Migration] = []
        for schema in orderedSchemas(plan.map(\.schema)) {
            let files = plan.filter { $0.schema == schema }
            do {
                try await connection.withTransaction { tx in
                    if let fence { try await fence(tx) }
                    for file in files {
                        try await tx.executeScript(file.sql, purpose: "migration \(file)")
                        try await tx.query(Self.recordApplied(file, by: appliedBy), purpose: "migrations: record \(file)")
                    }
                    // Announce on the event bus once the bus exists (engine 0002 creates it).
                    let bus = try await tx.query(Self.busExists, purpose: "migrations: look for the event bus").single()
                    if try bus.decode("present", as: Bool.self) {
                        for file in files {
                            try await tx.query(Self.announceApplied(file, by: appliedBy), purpose: "migrations: announce \(file)")
                        }
                    }
                }
            } catch let error as RegentError where error.code == .notLeader {
                throw error
            } catch {
                throw RegentError(
                    .migrationFailed,
                    "migrating schema \(schema) failed, nothing of it was applied: \(error)",
                    hint: "fix the cause and run `regent migrate` again")
            }
            for file in files {
                logger.info(
                    "migration applied",
                    metadata: ["schema": "\(file.schema)", "version": "\(file.version)", "name": "\(file.name)"])
            }
            ran += files
        }
        return ran
    }

    /// Per schema: the applied version and the version this binary knows.
    public func status(on connection: PostgresConnection, schemas: [String]) async throws -> [SchemaStatus] {
        let applied = try await applied(on: connection)
        return orderedSchemas(schemas).map { schema in
            SchemaStatus(
                schema: schema,
                appliedVersion: applied.filter { $0.schema == schema }.map(\.version).max() ?? 0,
                knownVersion: catalog.latestVersion(of: schema))
        }
    }
}

/// Where one schema stands.
public struct SchemaStatus: Sendable, Hashable, Codable {
    public let schema: String
    public let appliedVersion: Int
    public let knownVersion: Int
    public var isCurrent: Bool { appliedVersion == knownVersion }
}
