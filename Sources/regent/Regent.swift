import ArgumentParser
import Foundation
import Logging
import PostgresClient
import RegentCore

@main
struct Regent: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "regent",
        abstract: "A Postgres-first clustered coordinator for a durable workflow engine.",
        discussion: """
            Several regent nodes share one PostgreSQL database: they elect one leader with an \
            advisory lock, heartbeat into engine.instances, and the leader runs the cluster's \
            housekeeping. Every command that touches the database takes --database-url, or reads \
            REGENT_DATABASE_URL.
            """,
        version: Release.description,
        subcommands: [
            DemoCommand.self, ServeCommand.self, StatusCommand.self, MigrateCommand.self, ModulesCommand.self,
            EventsCommand.self, TokensCommand.self, WorkersCommand.self, LeasesCommand.self, ExecutionsCommand.self, PackagesCommand.self, RunsCommand.self, SchedulesCommand.self, LanesCommand.self, VaultCommand.self, WorkerCommand.self, DrillCommand.self, BenchCommand.self,
        ]
    )
}

/// Options shared by every command that talks to PostgreSQL.
struct DatabaseOptions: ParsableArguments {
    @Option(
        name: .customLong("database-url"),
        help: ArgumentHelp(
            "PostgreSQL URL (postgres://user@host:port/db?...) or key=value string; defaults to $REGENT_DATABASE_URL.",
            valueName: "url"))
    var databaseURL: String?

    func configuration() throws -> ConnectionConfiguration {
        let raw = databaseURL ?? ProcessInfo.processInfo.environment["REGENT_DATABASE_URL"]
        guard let raw, !raw.isEmpty else {
            throw ValidationError("no database given: pass --database-url postgres://user@host:port/db or set REGENT_DATABASE_URL")
        }
        return try ConnectionConfiguration(raw)
    }
}

/// Options for log output.
struct LogOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?
    @Option(help: "Log format: text (for people) or json (one object a line, for collectors).")
    var logFormat = "text"

    func bootstrap(defaultLevel: String = "warning") throws {
        let logLevel = self.logLevel ?? defaultLevel
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("invalid --log-level \(logLevel.debugDescription): use trace, debug, info, notice, warning, error or critical")
        }
        switch logFormat {
        case "text":
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
        case "json":
            LoggingSystem.bootstrap { label in JSONLogHandler(label: label, logLevel: level) }
        default:
            throw ValidationError("invalid --log-format \(logFormat.debugDescription): use text or json")
        }
    }
}
