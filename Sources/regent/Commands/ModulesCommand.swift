import ArgumentParser
import Foundation
import PostgresClient
import RegentCore

struct ModulesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "modules",
        abstract: "List, enable or disable modules (rows of engine.modules).",
        subcommands: [List.self, Enable.self, Disable.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List modules and whether they are enabled.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try log.bootstrap()
            try await PostgresConnection.withConnection(try database.configuration()) { conn in
                let modules = try await ModuleRegistry().list(on: conn)
                if json { return try printJSON(modules) }
                print(table(["module", "version", "enabled", "updated"], modules.map {
                    [$0.name, $0.version, $0.enabled ? "yes" : "no", ISO8601DateFormatter().string(from: $0.updatedAt)]
                }))
            }
        }
    }

    struct Enable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Enable a module and apply its schema's migrations.")
        @OptionGroup var target: ModuleSwitch

        func run() async throws {
            try await target.set(enabled: true) { state, conn in
                let ran = try await MigrationRunner(appliedBy: cliActor).migrate(on: conn, schemas: [state.name])
                return "module \(state.name) enabled; \(ran.count) migration file(s) applied"
            }
        }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Disable a module. Its schema and data stay; nothing of it runs.")
        @OptionGroup var target: ModuleSwitch

        func run() async throws {
            try await target.set(enabled: false) { state, _ in "module \(state.name) disabled (its schema and data are kept)" }
        }
    }
}

/// What `modules enable` and `modules disable` take: a module name (checked before anything
/// connects) and the database.
struct ModuleSwitch: ParsableArguments {
    @Argument(help: "Module name.") var name: String
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var log: LogOptions

    func validate() throws { try validateModuleName(name) }

    /// Switches the module (audited), then runs `then` on the same connection and prints what it says.
    func set(enabled: Bool, then: (ModuleState, PostgresConnection) async throws -> String) async throws {
        try log.bootstrap()
        try await PostgresConnection.withConnection(try database.configuration()) { conn in
            let state = try await ModuleRegistry().setEnabled(name, enabled, actor: cliActor, on: conn)
            print(try await then(state, conn))
        }
    }
}

/// Refuses a malformed module name before anything connects.
func validateModuleName(_ name: String) throws {
    guard SQLIdentifier.isValid(name) else {
        throw ValidationError(
            "invalid module name \(SQLIdentifier.printable(name)): use lowercase letters, digits and underscores (at most 63)")
    }
}
