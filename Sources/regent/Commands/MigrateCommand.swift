import ArgumentParser
import PostgresClient
import RegentCore

struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Apply the migrations compiled into this binary.",
        discussion: """
            Applies pending expand migrations of the engine schema and of every enabled module, \
            each schema in one transaction, under an advisory lock so concurrent runners never \
            race. Contract migrations (which remove what older binaries use, and raise the \
            schema's compatibility floor) are applied only with --contract: run it once every \
            node runs this release (docs/operations.md, "Rolling upgrades"). Refuses a database \
            whose floor is above what this binary knows, and an applied file whose checksum changed.
            """
    )

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var log: LogOptions
    @Flag(help: "Print what would be applied (kind, table locks, floor after) and change nothing.") var plan = false
    @Flag(help: "Apply contract migrations too (after a rollout has replaced every older node).") var contract = false
    @Option(help: ArgumentHelp("Migrate one schema only up to VERSION (e.g. workflow:1).", valueName: "schema:version"))
    var target: String?
    @Option(
        name: .customLong("lock-timeout"),
        help: ArgumentHelp("Give up when a statement waits longer than this for a table lock (e.g. 1s); default: wait.", valueName: "duration"))
    var lockTimeout: String?

    func run() async throws {
        try log.bootstrap()
        let target = try target.map { try MigrationTarget(parsing: $0) }
        let lockTimeout = try lockTimeout.map { try parseDuration($0, flag: "--lock-timeout", maximum: .seconds(3600)) }
        let config = try database.configuration()
        try await PostgresConnection.withConnection(config) { conn in
            let runner = MigrationRunner(appliedBy: cliActor, lockTimeout: lockTimeout)
            var schemas = ["engine"]
            let registry = ModuleRegistry()
            let applied = try await runner.applied(on: conn)
            let engineApplied = applied.contains { $0.schema == "engine" }
            if engineApplied {
                schemas += try await registry.enabledSchemas(on: conn)
            } else {
                schemas += BuiltinModule.all.filter(\.defaultEnabled).map(\.name)
            }
            if plan {
                let pending = try await runner.plan(on: conn, schemas: schemas, target: target, contract: contract)
                print(pending.isEmpty ? "nothing to apply: every schema is current" : "would apply \(pending.count) file(s):")
                print(table(["file", "kind", "locks and rewrites", "floor after"], Self.planRows(pending, applied: applied)))
                let held = try runner.heldContracts(applied: applied, schemas: schemas).filter { !pending.contains($0) }
                for file in held {
                    print("held: \(file) is a contract migration; it and the files after it wait for `regent migrate --contract`")
                }
                return
            }
            let ran = try await runner.migrate(
                on: conn, schemas: ["engine"], target: target?.schema == "engine" ? target : nil, contract: contract)
            if !engineApplied { try await registry.seed(on: conn) }
            var more: [Migration] = []
            if target?.schema != "engine" {
                more = try await runner.migrate(
                    on: conn, schemas: try await registry.enabledSchemas(on: conn), target: target, contract: contract)
            }
            let all = ran + more
            print(all.isEmpty ? "nothing to apply: every schema is current" : "applied \(all.count) file(s):")
            for file in all { print("  \(file) (\(file.kind.rawValue))") }
            let status = try await runner.status(on: conn, schemas: try await registry.enabledSchemas(on: conn))
            print(table(
                ["schema", "applied", "known", "floor", "held contract"],
                status.map { [$0.schema, "\($0.appliedVersion)", "\($0.knownVersion)", "\($0.floor)", $0.heldContract.map { "\($0) (migrate --contract)" } ?? "-"] }))
        }
    }

    /// One row per pending file: its kind, what it locks on tables that exist, and the schema's
    /// compatibility floor once it is applied.
    static func planRows(_ pending: [Migration], applied: [AppliedMigration]) -> [[String]] {
        var floors: [String: Int] = [:]
        return pending.map { file in
            let floor = floors[file.schema] ?? MigrationRunner.floor(of: file.schema, in: applied)
            let after = file.kind.raisesFloor ? file.version : floor
            floors[file.schema] = after
            let effects = file.effects.filter(\.blocksTraffic)
            let locks = effects.isEmpty ? "none that block reads or writes" : effects.map { effect in
                "\(effect.table) \(effect.lock)" + (effect.rewrites ? " rewrite" : effect.scans ? " scan" : "") + (effect.onHotTable ? " HOT" : "")
            }.joined(separator: "; ")
            return [file.description, file.kind.rawValue, locks, "\(file.schema) \(after)"]
        }
    }
}
