import Logging
import PostgresClient

/// Applies the compiled-in migrations, schema by schema.
///
/// Guarantees:
/// - a session advisory lock serialises runners, so nodes booting together apply
///   each file exactly once;
/// - each schema's pending files run in one transaction with their
///   `engine.migrations` rows: all of them land, or none;
/// - an applied file whose text changed is refused before anything runs, and so is a
///   database whose compatibility floor (its newest applied contract or breaking migration) is above
///   what this binary knows; a database ahead of the binary by expand migrations only is
///   accepted (a rolling upgrade or a rollback in progress: docs/operations.md);
/// - contract migrations are applied only when asked (`contract: true`), except on a
///   schema being created from nothing;
/// - with `lockTimeout`, no statement waits longer than that for a table lock: a migration
///   never queues behind a long transaction with every claim queued behind it;
/// - `automatic` runners (booting nodes, the leader) never apply a file that rewrites or scans
///   a hot table under a lock that blocks its traffic, unless the schema is being created from
///   nothing: an operator applies it with `regent migrate` (docs/operations.md).
public struct MigrationRunner: Sendable {
    public let catalog: MigrationCatalog
    /// Recorded in `engine.migrations.applied_by` (an instance id or a CLI marker).
    public let appliedBy: String
    /// The longest any statement of a migration may wait for a lock (nil: no limit). Nodes
    /// migrate with 1 s; the CLI with none unless asked.
    public let lockTimeout: Duration?
    /// A node's runner: files that need an operator (`Migration.needsOperator`) wait for one.
    public let automatic: Bool
    /// The tables `needsOperator` protects.
    let hotTables: Set<String>
    let logger: Logger

    /// How long a booting node's or the leader's migration may wait for a lock.
    public static let nodeLockTimeout = Duration.seconds(1)
    /// How many times a schema's files are tried when a lock wait runs out (each try waits at
    /// most `lockTimeout` per statement, and nothing of a failed try stays).
    static let lockAttempts = 3

    public init(
        catalog: MigrationCatalog = .builtIn, appliedBy: String, lockTimeout: Duration? = nil, automatic: Bool = false,
        hotTables: Set<String> = TableEffect.hotTables, logger: Logger = Logger(label: "regent.migrations")
    ) {
        self.catalog = catalog
        self.appliedBy = appliedBy
        self.lockTimeout = lockTimeout
        self.automatic = automatic
        self.hotTables = hotTables
        self.logger = logger
    }

    /// The runner of a booting node or of the leader: lock waits bounded, operator files held.
    public static func node(appliedBy: String) -> MigrationRunner {
        MigrationRunner(appliedBy: appliedBy, lockTimeout: nodeLockTimeout, automatic: true)
    }

    /// Whether `file` rewrites or scans one of `hotTables` under a lock that blocks its traffic.
    func needsOperator(_ file: Migration) -> Bool {
        file.effects.contains { hotTables.contains($0.table) && $0.blocksTraffic && ($0.rewrites || $0.scans) }
    }

    /// The first file of each schema an automatic runner leaves to an operator (`regent migrate`).
    public func heldForOperator(applied: [AppliedMigration], schemas: [String]) throws(RegentError) -> [Migration] {
        orderedSchemas(schemas).compactMap { schema in
            let current = Self.version(of: schema, in: applied)
            guard current > 0 else { return nil }
            let files = catalog.migrations(for: schema).filter { $0.version > current }
            let firstContract = files.firstIndex { $0.kind == .contract } ?? files.endIndex
            return files[..<firstContract].first { needsOperator($0) }
        }
    }

    static let tableExists: PostgresQuery = "SELECT to_regclass('engine.migrations') IS NOT NULL AS present"
    /// `kind` read through to_jsonb: the column exists from engine 0006 on, and this must read
    /// older databases too.
    static let listApplied: PostgresQuery =
        """
        SELECT schema_name, version, name, checksum, applied_by, to_jsonb(m) ->> 'kind' AS kind,
               (to_jsonb(m) ->> 'duration_ms')::float8 AS duration_ms
        FROM engine.migrations m ORDER BY schema_name, version
        """
    /// Which of the columns later engine files added exist yet (kind: 0006, duration_ms: 0007).
    static let recordedColumns: PostgresQuery = """
        SELECT coalesce(bool_or(attname = 'kind'), false) AS kind, coalesce(bool_or(attname = 'duration_ms'), false) AS duration
        FROM pg_attribute WHERE attrelid = 'engine.migrations'::regclass AND attname IN ('kind', 'duration_ms') AND NOT attisdropped
        """
    static func recordKind(_ m: Migration) -> PostgresQuery {
        "UPDATE engine.migrations SET kind = \(m.kind.rawValue) WHERE schema_name = \(m.schema) AND version = \(m.version)"
    }
    static func recordDuration(_ m: Migration, ms: Double) -> PostgresQuery {
        "UPDATE engine.migrations SET duration_ms = \(ms) WHERE schema_name = \(m.schema) AND version = \(m.version)"
    }
    /// Bounds the transaction's lock waits to `bound` from here on; nil leaves the session's own.
    static func boundLockWaits(_ bound: Duration?, on tx: PostgresConnection) async throws {
        guard let bound else { return }
        try await tx.query("SELECT set_config('lock_timeout', \(String(max(1, Int(bound.milliseconds)))), true)", purpose: "migrations: bound lock waits")
    }

    /// Lifts a bound `boundLockWaits(bound, …)` set, for the rest of the transaction.
    static func liftLockBound(_ bound: Duration?, on tx: PostgresConnection) async throws {
        guard bound != nil else { return }
        try await tx.query("SELECT set_config('lock_timeout', '0', true)", purpose: "migrations: lift the lock bound")
    }
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
                checksum: try row.decode("checksum"), appliedBy: try row.decode("applied_by"),
                kind: MigrationKind(rawValue: try row.decodeOptional("kind", as: String.self) ?? "") ?? .breaking,
                durationMs: try row.decodeOptional("duration_ms", as: Double.self))
        }
    }

    /// The newest applied version of `schema` (0: the schema does not exist yet).
    static func version(of schema: String, in applied: [AppliedMigration]) -> Int {
        applied.filter { $0.schema == schema }.map(\.version).max() ?? 0
    }

    /// The oldest version of `schema` a binary must know to run against `applied`: the newest
    /// applied contract or breaking migration's version (0 when none).
    public static func floor(of schema: String, in applied: [AppliedMigration]) -> Int {
        applied.filter { $0.schema == schema && $0.kind.raisesFloor }.map(\.version).max() ?? 0
    }

    /// Checks what is applied against the binary: refuses a database whose compatibility
    /// floor is above what this binary knows, and changed files. A database ahead by expand
    /// migrations only is accepted.
    public func verify(_ applied: [AppliedMigration], schemas: [String]) throws(RegentError) {
        for schema in schemas {
            let known = catalog.migrations(for: schema)
            let latest = catalog.latestVersion(of: schema)
            let floor = Self.floor(of: schema, in: applied)
            if floor > latest {
                let newest = Self.version(of: schema, in: applied)
                throw RegentError(
                    .databaseNewerThanBinary,
                    "database schema \(schema) is at version \(newest) and needs a binary that knows version \(floor) or later "
                        + "(its migration \(zeroPadded4(floor)) changed what older binaries use), but this binary knows only up to \(latest)",
                    hint: "run a regent release that knows \(schema) \(zeroPadded4(floor)) or later (see CHANGELOG.md); "
                        + "a database cannot go back below its floor except by restoring a backup")
            }
            for row in applied where row.schema == schema {
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
    /// `contract`: include contract migrations (otherwise each schema's plan stops before its
    /// first pending contract migration, unless the schema is being created from nothing).
    public func plan(
        on connection: PostgresConnection, schemas: [String], target: MigrationTarget? = nil, contract: Bool = false
    ) async throws -> [Migration] {
        let applied = try await applied(on: connection)
        return try pending(applied: applied, schemas: schemas, target: target, contract: contract)
    }

    /// Whether `migrate` has anything to do for `schemas`: a migration (held contracts aside)
    /// or function files to apply. Two short statements when there is nothing (the leader asks
    /// every couple of seconds).
    public func hasWork(on connection: PostgresConnection, schemas: [String]) async throws -> Bool {
        let applied = try await applied(on: connection)
        if try !pending(applied: applied, schemas: schemas, target: nil).isEmpty { return true }
        return try await !functionsPending(on: connection, schemas: schemas, applied: applied).isEmpty
    }

    func pending(
        applied: [AppliedMigration], schemas requested: [String], target: MigrationTarget?, contract: Bool = false
    ) throws(RegentError) -> [Migration] {
        var schemas = requested
        if let target {
            schemas = target.schema == "engine" ? ["engine"] : ["engine", target.schema]
        }
        schemas = orderedSchemas(schemas)
        try verify(applied, schemas: schemas)
        var plan: [Migration] = []
        for schema in schemas {
            let current = Self.version(of: schema, in: applied)
            var limit = catalog.latestVersion(of: schema)
            if let target, target.schema == schema {
                guard target.version >= current else {
                    throw RegentError(
                        .invalidInput,
                        "invalid migration target \(target): \(schema) is already at version \(current); migrations only go forward")
                }
                limit = target.version
            }
            var files = catalog.migrations(for: schema).filter { $0.version > current && $0.version <= limit }
            // A schema that exists is contracted only when asked: binaries that know less may still run against it.
            if !contract, current > 0, let held = files.firstIndex(where: { $0.kind == .contract }) {
                files = Array(files[..<held])
            }
            // A node does not rewrite a hot table of a live database: that waits for an operator.
            if automatic, current > 0, let manual = files.firstIndex(where: { needsOperator($0) }) {
                files = Array(files[..<manual])
            }
            plan += files
        }
        return plan
    }

    /// The first contract migration of each schema that waits for `regent migrate --contract`.
    public func heldContracts(applied: [AppliedMigration], schemas: [String]) throws(RegentError) -> [Migration] {
        try verify(applied, schemas: schemas)
        return orderedSchemas(schemas).compactMap { schema in
            let current = Self.version(of: schema, in: applied)
            guard current > 0 else { return nil }
            return catalog.migrations(for: schema).first { $0.version > current && $0.kind == .contract }
        }
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
        on connection: PostgresConnection, schemas: [String], target: MigrationTarget? = nil, contract: Bool = false,
        fence: (@Sendable (PostgresConnection) async throws -> Void)? = nil
    ) async throws -> [Migration] {
        try await connection.query(Self.lockRunner, purpose: "migrations: take the runner lock")
        return try await releasingRunnerLock(on: connection) {
            try await migrateLocked(on: connection, schemas: schemas, target: target, contract: contract, fence: fence)
        }
    }

    /// Runs `body` (the runner lock held on `connection`), then releases the lock, also when it throws.
    private func releasingRunnerLock<T>(on connection: PostgresConnection, _ body: () async throws -> T) async throws -> T {
        do {
            let value = try await body()
            try await connection.query(Self.unlockRunner, purpose: "migrations: release the runner lock")
            return value
        } catch {
            if connection.isUsable { _ = try? await connection.query(Self.unlockRunner) }
            throw error
        }
    }

    static let tryLockRunner: PostgresQuery =
        "SELECT pg_try_advisory_lock(\(AdvisoryLockKey.classID), \(AdvisoryLockKey.migrations)) AS taken"

    /// What a node that is not the leader may apply itself, of `schemas`: a schema that does
    /// not exist yet (created from nothing, no traffic to protect: a module newer than the
    /// leader's binary), and one that exists whose pending files (held contracts aside) are all
    /// expands.
    public func expandable(applied: [AppliedMigration], schemas: [String]) throws(RegentError) -> [String] {
        var out: [String] = []
        for schema in orderedSchemas(schemas) {
            let plan = try pending(applied: applied, schemas: [schema], target: nil)
            guard !plan.isEmpty else { continue }
            if Self.version(of: schema, in: applied) == 0 || plan.allSatisfy({ $0.kind == .expand }) { out.append(schema) }
        }
        return out
    }

    /// `migrate`, unless another runner holds the migration lock: then nil at once. A node
    /// that only helps (a follower applying expands the old leader does not know) must not
    /// queue behind the leader's own run; it looks again later.
    public func migrateIfIdle(on connection: PostgresConnection, schemas: [String]) async throws -> [Migration]? {
        let taken = try await connection.query(Self.tryLockRunner, purpose: "migrations: try the runner lock").single()
            .decode("taken", as: Bool.self)
        guard taken else { return nil }
        return try await releasingRunnerLock(on: connection) {
            try await migrateLocked(on: connection, schemas: schemas, target: nil, contract: false, fence: nil)
        }
    }

    private func migrateLocked(
        on connection: PostgresConnection, schemas: [String], target: MigrationTarget?, contract: Bool,
        fence: (@Sendable (PostgresConnection) async throws -> Void)?
    ) async throws -> [Migration] {
        // Read under the lock: another runner may have finished while we waited.
        let applied = try await self.applied(on: connection)
        let plan = try pending(applied: applied, schemas: schemas, target: target, contract: contract)
        var ran: [Migration] = []
        for schema in orderedSchemas(plan.map(\.schema)) {
            let files = plan.filter { $0.schema == schema }
            // A schema created from nothing has no traffic to protect: its files wait for their
            // locks as long as that takes (an autovacuum worker, say, yields after deadlock_timeout).
            let bound = Self.version(of: schema, in: applied) > 0 ? lockTimeout : nil
            var attempt = 1
            while true {
                do {
                    try await connection.withTransaction { tx in
                        if let fence { try await fence(tx) }
                        try await Self.boundLockWaits(bound, on: tx)
                        var columns = (kind: false, duration: false)
                        for file in files {
                            let began = ContinuousClock.now
                            for name in file.functions {
                                guard let function = catalog.functionFiles(for: schema).first(where: { $0.name == name }) else {
                                    throw RegentError(
                                        .migrationFailed, "migration \(file) names function file \(name), which this binary does not carry",
                                        hint: "add sql/\(schema)/functions/\(name).sql or remove the name from the file's regent:functions line")
                                }
                                try await tx.executeScript(function.sql, purpose: "migration \(file): \(function)")
                            }
                            try await tx.executeScript(file.sql, purpose: "migration \(file)")
                            let took = began.duration(to: .now)
                            try await tx.query(Self.recordApplied(file, by: appliedBy), purpose: "migrations: record \(file)")
                            if !columns.duration {
                                let row = try await tx.query(Self.recordedColumns, purpose: "migrations: look for kinds and durations").single()
                                columns = (try row.decode("kind", as: Bool.self), try row.decode("duration", as: Bool.self))
                            }
                            if columns.kind, file.kind != .breaking {
                                try await tx.query(Self.recordKind(file), purpose: "migrations: record \(file)'s kind")
                            }
                            if columns.duration {
                                try await tx.query(Self.recordDuration(file, ms: took.milliseconds), purpose: "migrations: record \(file)'s duration")
                            }
                        }
                        // The bound is for the files' table locks only: the announcements and the
                        // commit wait as usual (a commit that sends notifications queues for the
                        // server-wide notification lock behind every other database's, which a busy
                        // server can hold past a second).
                        try await Self.liftLockBound(bound, on: tx)
                        // Announce on the event bus once the bus exists (engine 0002 creates it).
                        let bus = try await tx.query(Self.busExists, purpose: "migrations: look for the event bus").single()
                        if try bus.decode("present", as: Bool.self) {
                            for file in files {
                                try await tx.query(Self.announceApplied(file, by: appliedBy), purpose: "migrations: announce \(file)")
                            }
                        }
                    }
                    break
                } catch let error as RegentError where error.code == .notLeader {
                    throw error
                } catch let error as PostgresError where error.sqlState == "55P03" && attempt < Self.lockAttempts {
                    // A lock held a moment too long (a long transaction, an autovacuum): nothing was
                    // applied; try again shortly rather than fail the boot or the duty round.
                    logger.notice(
                        "migration waited too long for a table lock; trying again",
                        metadata: ["schema": "\(schema)", "attempt": "\(attempt)", "error": "\(error.message)"])
                    try await Task.sleep(for: .milliseconds(250 * attempt))
                    attempt += 1
                } catch let error as PostgresError where error.sqlState == "55P03" {
                    throw RegentError(
                        .migrationFailed,
                        "migrating schema \(schema) waited more than \(bound.map { "\($0)" } ?? "the lock timeout") for a table lock "
                            + "held by live traffic, \(attempt) times, and gave up; nothing of it was applied: \(error.message)",
                        hint: "nodes retry on their own; to apply it now, run `regent migrate` in a quieter moment "
                            + "(it waits without a limit unless given --lock-timeout)")
                } catch {
                    throw RegentError(
                        .migrationFailed,
                        "migrating schema \(schema) failed, nothing of it was applied: \(error)",
                        hint: "fix the cause and run `regent migrate` again")
                }
            }
            for file in files {
                logger.info(
                    "migration applied",
                    metadata: ["schema": "\(file.schema)", "version": "\(file.version)", "name": "\(file.name)"])
            }
            ran += files
        }
        if target == nil { try await applyFunctionFiles(on: connection, schemas: schemas, fence: fence) }
        return ran
    }

    /// The schemas among `schemas` whose function files this binary should apply now: its files
    /// differ from the recorded ones; it is at least as new as the binary that applied those
    /// (`binary_level`), so an older binary never puts back older definitions; and its own
    /// migrations of the schema are applied (held contracts aside), as its functions may use them.
    /// `applied`: the rows of `engine.migrations` when the caller read them already.
    public func functionsPending(
        on connection: PostgresConnection, schemas: [String], applied known: [AppliedMigration]? = nil
    ) async throws -> [String] {
        var recorded: [String: (checksum: String, level: Int)] = [:]
        do {
            for row in try await connection.query(
                "SELECT schema_name, checksum, binary_level FROM engine.function_files", purpose: "migrations: function files applied")
            {
                recorded[try row.decode("schema_name")] = (try row.decode("checksum"), try row.decode("binary_level"))
            }
        } catch let error as PostgresError where error.sqlState == "42P01" {
            return []  // engine 0008 not applied yet: the migrations come first
        }
        let applied: [AppliedMigration]
        if let known { applied = known } else { applied = try await self.applied(on: connection) }
        let held = try heldContracts(applied: applied, schemas: schemas)
        return orderedSchemas(schemas).filter { schema in
            guard let checksum = catalog.functionsChecksum(of: schema) else { return false }
            let latest = catalog.latestVersion(of: schema)
            let version = Self.version(of: schema, in: applied)
            let needed = held.first { $0.schema == schema }.map { $0.version - 1 } ?? latest
            guard version >= needed, let current = recorded[schema] else { return version >= needed }
            return current.checksum != checksum && latest >= current.level
        }
    }

    /// Applies each pending schema's function files (`CREATE OR REPLACE`), in one transaction
    /// per schema with its record, fenced and lock-bounded like the migrations.
    private func applyFunctionFiles(
        on connection: PostgresConnection, schemas: [String], fence: (@Sendable (PostgresConnection) async throws -> Void)?
    ) async throws {
        for schema in try await functionsPending(on: connection, schemas: schemas) {
            let files = catalog.functionFiles(for: schema)
            guard let checksum = catalog.functionsChecksum(of: schema) else { continue }
            do {
                try await connection.withTransaction { tx in
                    if let fence { try await fence(tx) }
                    try await Self.boundLockWaits(lockTimeout, on: tx)
                    // A file may call a function another file (later in name order) defines.
                    try await tx.query("SELECT set_config('check_function_bodies', 'off', true)", purpose: "function files: defer body checks")
                    for file in files { try await tx.executeScript(file.sql, purpose: "function file \(file)") }
                    try await Self.liftLockBound(lockTimeout, on: tx)
                    try await tx.query(
                        """
                        INSERT INTO engine.function_files (schema_name, checksum, binary_level, applied_by)
                        VALUES (\(schema), \(checksum), \(catalog.latestVersion(of: schema)), \(appliedBy))
                        ON CONFLICT (schema_name) DO UPDATE
                        SET checksum = EXCLUDED.checksum, binary_level = EXCLUDED.binary_level, applied_by = EXCLUDED.applied_by,
                            applied_at = clock_timestamp()
                        """, purpose: "function files: record \(schema)")
                }
            } catch let error as RegentError where error.code == .notLeader {
                throw error
            } catch {
                throw RegentError(
                    .migrationFailed, "applying the function files of schema \(schema) failed, none was applied: \(error)",
                    hint: "fix the file named and run `regent migrate` again; nodes retry on their own")
            }
            logger.info("function files applied", metadata: ["schema": "\(schema)", "files": "\(files.count)"])
        }
    }

    /// Per schema: the applied version, the version this binary knows, the floor, and the
    /// contract migration waiting to be asked for.
    public func status(on connection: PostgresConnection, schemas: [String]) async throws -> [SchemaStatus] {
        let applied = try await applied(on: connection)
        let held = (try? heldContracts(applied: applied, schemas: schemas)) ?? []
        return orderedSchemas(schemas).map { schema in
            SchemaStatus(
                schema: schema,
                appliedVersion: Self.version(of: schema, in: applied),
                knownVersion: catalog.latestVersion(of: schema),
                floor: Self.floor(of: schema, in: applied),
                heldContract: held.first { $0.schema == schema }?.version)
        }
    }
}

/// Where one schema stands.
public struct SchemaStatus: Sendable, Hashable, Codable {
    public let schema: String
    public let appliedVersion: Int
    public let knownVersion: Int
    /// The oldest version a binary must know to run against the schema.
    public var floor: Int = 0
    /// This binary's first contract migration of the schema not applied yet (applied only by
    /// `regent migrate --contract`).
    public var heldContract: Int?

    /// Nothing this binary would apply on its own is pending, and the binary may run against
    /// the schema: it is at the binary's version, ahead of it by expand migrations (an older
    /// binary in a rolling upgrade), or behind it only by held contract migrations.
    public var isCurrent: Bool {
        guard floor <= knownVersion else { return false }
        return appliedVersion >= (heldContract.map { $0 - 1 } ?? knownVersion)
    }
}
