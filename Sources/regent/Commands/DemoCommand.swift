import ArgumentParser
import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run Regent on its embedded default: a private PostgreSQL it starts and stops itself.",
        discussion: "Starts a throwaway PostgreSQL cluster, boots a node against it, prints the module and migration state, and cleans up."
    )
    @OptionGroup var log: LogOptions

    func run() async throws {
        try log.bootstrap()
        print("▶ starting a private PostgreSQL …")
        let pg = try EmbeddedPostgres.start()
        defer {
            pg.destroy()
            print("■ private PostgreSQL stopped and removed")
        }
        print("  listening on 127.0.0.1:\(pg.port) (data in \(pg.directory))")
        let config = try ConnectionConfiguration(pg.url())
        print("▶ boot: engine migrations → modules → module migrations")
        let started = ContinuousClock.now
        let boot = try await Boot(options: .init(database: config, actor: "demo")).run()
        print("  booted in \(started.duration(to: .now).formatted(.units(allowed: [.milliseconds])))")
        print("\nmodules")
        print(table(["module", "version", "enabled"], boot.modules.map { [$0.name, $0.version, $0.enabled ? "yes" : "no"] }))
        let status = try await boot.pool.withConnection {
            try await MigrationRunner(appliedBy: "demo").status(on: $0, schemas: boot.enabledSchemas)
        }
        print("\nmigrations")
        print(table(["schema", "applied", "known", "current"], status.map {
            [$0.schema, "\($0.appliedVersion)", "\($0.knownVersion)", $0.isCurrent ? "yes" : "no"]
        }))
        await boot.pool.shutdown()
    }
}
