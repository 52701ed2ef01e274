import ArgumentParser
import RegentBench
import EmbeddedPostgres
import Foundation
import RegentDrill
import PostgresClient
import RegentCore
import Synchronization

extension BenchCommand {
    struct Leases: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Lease throughput against raw libpq, and the expiry scanner with and without a million live leases.",
            discussion: """
                Throughput: 1, 4 and 16 concurrent workers each loop enqueue → claim → complete, \
                through Regent's LeaseStore and, as the ceiling, the very same statements through \
                plain libpq. Scanner: reclaims N expired leases page by page (rows per second), \
                first alone, then beside a million live, unexpired leases.
                """
        )
        @Option(help: "enqueue→claim→complete cycles per concurrency level.") var cycles = 2000
        @Option(help: "Expired leases for the scanner run.") var expired = 100_000
        @Option(help: "Live (unexpired) leases beside them in the second scanner run.") var live = 1_000_000
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database (it must be disposable).", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (100...1_000_000).contains(cycles), (1000...10_000_000).contains(expired), (0...10_000_000).contains(live) else {
                throw ValidationError("--cycles 100-1000000, --expired 1000-10000000, --live 0-10000000")
            }
        }

        func run() async throws {
            let (url, embedded) = try benchDatabase(databaseURL, say: { print($0) })
            defer { embedded?.destroy() }
            let config = try ConnectionConfiguration(url)
            let boot = try await Boot(options: .init(database: config, actor: "bench")).run()
            // (On an error the process exits, which closes the pool's sessions.)

            var rows: [[String]] = []
            for workers in [1, 4, 16] {
                try await LeaseBench.reset(boot.pool)
                let raw = try RawLeaseLoop.run(conninfo: url, workers: workers, cycles: cycles)
                try await LeaseBench.reset(boot.pool)
                let regent = try await LeaseBench.regentLoop(config: config, workers: workers, cycles: cycles)
                rows.append(["\(workers)", String(format: "%.0f /s", raw), String(format: "%.0f /s", regent), String(format: "%.0f%%", 100 * regent / raw)])
                print("  \(workers) worker(s): raw \(Int(raw))/s, Regent \(Int(regent))/s")
            }
            print("")
            print(table(["workers", "raw libpq (ceiling)", "Regent", "Regent / raw (goal ≥ 70%)"], rows))

            print("\n▶ lease-expiry scanner")
            let fenceBox = Mutex<LeaderFence?>(nil)
            let elector = LeaderElector(
                instanceID: InstanceID(), configuration: config, options: .init(leaseWindow: .seconds(5)),
                hooks: .init(elected: { fence in fenceBox.withLock { $0 = fence } }))
            let electorTask = Task { await elector.run() }
            defer { electorTask.cancel() }
            while fenceBox.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(10)) }
            let fence = fenceBox.withLock { $0 }!
            let scanner = LeaseExpiryScanner(pool: boot.pool, pageSize: 5000)

            try await LeaseBench.reset(boot.pool)
            try await LeaseBench.insertLeases(boot.pool, count: expired, expiresIn: "-1 hour")
            let alone = try await LeaseBench.scan(scanner, fence: fence, expected: expired, say: { print($0) })
            try await LeaseBench.reset(boot.pool)
            print("  inserting \(live) live leases …")
            try await LeaseBench.insertLeases(boot.pool, count: live, expiresIn: "1 day")
            try await LeaseBench.insertLeases(boot.pool, count: expired, expiresIn: "-1 hour")
            let beside = try await LeaseBench.scan(scanner, fence: fence, expected: expired, say: { print($0) })
            let untouched = try await boot.pool.query(
                "SELECT count(*) AS n FROM workflow.attempts WHERE state = 'leased' AND lease_expires_at > now()").single().decode("n", as: Int.self)
            await elector.stop()
            await electorTask.value
            print("")
            print(table(["scanner run", "expired reclaimed", "rows / s", "live leases untouched"], [
                ["alone", "\(expired)", String(format: "%.0f", alone), "-"],
                ["beside \(live) live leases", "\(expired)", String(format: "%.0f", beside), "\(untouched)"],
            ]))
            print(String(format: "\nratio with / without live leases: %.2f (1.0 = not slowed)", beside / alone))
            await boot.pool.shutdown()
            if untouched != live { throw RegentError(.invalidInput, "the scanner touched live leases: \(live - untouched) of them") }
        }
    }
}

