import ArgumentParser
import PostgresClient
import RegentCore

struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Apply the migrations compiled into this binary.",
        discussion: """
            Applies pending files of the engine schema and of every enabled module, each schema in \
            one transaction, under an advisory lock so concurrent runners never race. Refuses a \
            database newer than this binary and an applied file whose checksum changed.
            """
    )

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var log: LogOptions
    @Flag(help: "Print what would be applied and change nothing.") var plan = false
    @Option(help: ArgumentHelp("Migrate one schema only up to VERSION (e.g. workflow:1).", valueName: "schema:version"))
    var target: String?

    func run() async throws {
        try log.bootstrap()
        let target = try target.map { try MigrationTarget(parsing: $0) }
        let config = try database.configuration()
        try await PostgresConnection.withConnection(config) { conn in
            let runner = MigrationRunner(appliedBy: cliActor)
            var schemas = ["engine"]
            let registry = ModuleRegistry()
            let engineApplied = try await runner.applied(on: conn).contains { $0.schema == "engine" }
            if engineApplied {
                schemas += try await registry.enabledSchemas(on: conn)
            } else {
                schemas += BuiltinModule.all.filter(\.defaultEnabled).map(\.name)
            }
            if plan {
                let pending = try await runner.plan(on: conn, schemas: schemas, target: target)
                print(pending.isEmpty ? "nothing to apply: every schema is current" : "would apply \(pending.count) file(s):")
                for file in pending { print("  \(file)") }
                return
            }
            let ran = try await runner.migrate(on: conn, schemas: ["engine"], target: target?.schema == "engine" ? target : nil)
            if !engineApplied { try await registry.seed(on: conn) }
            var more: [Migration] = []
            if target?.schema != "engine" {
                more = try await runner.migrate(on: conn, schemas: try await registry.enabledSchemas(on: conn), target: target)
            }
            let all = ran + more
            print(all.isEmpty ? "nothing to apply: every schema is current" : "applied \(all.count) file(s):")
            for file in all { print("  \(file)") }
            let status = try await runner.status(on: conn, schemas: try await registry.enabledSchemas(on: conn))
            print(table(["schema", "applied", "known"], status.map { [$0.schema, "\($0.appliedVersion)", "\($0.knownVersion)"] }))
        }
    }
}
