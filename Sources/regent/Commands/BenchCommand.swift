import Synchronization
import ArgumentParser
import CLibPQ
import Foundation
import PostgresClient
import RegentCore

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks that print their figures next to a raw baseline measured in the same run.",
        subcommands: [Failover.self]
    )

    struct Failover: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Failover time of a local cluster against the physical limit.",
            discussion: """
                The limit: how long PostgreSQL takes to hand a released advisory lock to a raw \
                libpq connection blocked in pg_advisory_lock, measured on the same server in the \
                same run. Then a drill (SIGKILL and SIGTERM rounds) measures Regent's failover: \
                from the signal until a new leader holds the lock and has recorded its term.
                """
        )
        @Option(help: "Nodes in the cluster.") var nodes = 3
        @Option(help: "Drill rounds.") var kills = 30
        @Option(help: "Raw lock hand-over samples.") var samples = 200
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database.", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (2...16).contains(nodes), (3...1000).contains(kills), (10...100_000).contains(samples) else {
                throw ValidationError("--nodes 2-16, --kills 3-1000, --samples 10-100000")
            }
        }

        func run() async throws {
            let env = try await DrillEnvironment.start(databaseURL: databaseURL, nodes: nodes) { print($0) }
            let raw: [Duration]
            let result: FailoverDrill.Result
            do {
                print("▶ raw baseline: \(samples) advisory-lock hand-overs between two libpq connections")
                raw = try RawLockHandover.measure(conninfo: env.databaseURL, samples: samples)
                print("▶ Regent: \(kills) failovers")
                result = try await FailoverDrill(
                    cluster: env.cluster, probe: env.probe, databaseURL: env.databaseURL, kills: kills, gracefulEvery: 3,
                    say: { _ in }
                ).run()
            } catch {
                await env.close()
                throw error
            }
            await env.close()
            let base = Figures(raw)
            var rows = [["raw lock hand-over (limit)", "\(raw.count)", ms(base.median), ms(base.p99), "1.0×"]]
            for (label, samples) in [("Regent after SIGKILL", result.sigkill), ("Regent after SIGTERM", result.sigterm)] where !samples.isEmpty {
                let f = Figures(samples)
                rows.append([label, "\(samples.count)", ms(f.median), ms(f.p99), String(format: "%.1f×", f.median.milliseconds / max(base.median.milliseconds, 0.001))])
            }
            print("")
            print(table(["what", "n", "median", "p99", "median / limit"], rows))
            if !result.violations.isEmpty {
                print("\n✘ invariants broken during the bench:")
                for v in result.violations { print("  - \(v)") }
                throw ExitCode(1)
            }
        }
    }
}

/// The physical limit of advisory-lock failover, with libpq and nothing else.
enum RawLockHandover {
    static func measure(conninfo: String, samples: Int) throws -> [Duration] {
        var out: [Duration] = []
        for _ in 0..<samples {
            guard let holder = PQconnectdb(conninfo), PQstatus(holder) == CONNECTION_OK,
                let waiter = PQconnectdb(conninfo), PQstatus(waiter) == CONNECTION_OK
            else { throw RegentError(.bootFailed, "raw baseline: cannot connect") }
            PQclear(PQexec(holder, "SELECT pg_advisory_lock(42, 4242)"))
            // The waiter blocks in pg_advisory_lock on its own thread; the main thread closes the holder.
            let done = DispatchSemaphore(value: 0)
            let gotAt = Mutex<ContinuousClock.Instant?>(nil)
            nonisolated(unsafe) let waiterConn = waiter
            let thread = Thread {
                PQclear(PQexec(waiterConn, "SELECT pg_advisory_lock(42, 4242)"))
                gotAt.withLock { $0 = .now }
                done.signal()
            }
            thread.start()
            // Wait until the waiter is really queued on the lock.
            let check = PQconnectdb(conninfo)
            while true {
                let r = PQexec(check, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 42 AND objid = 4242 AND NOT granted")
                let queued = r.map { String(cString: PQgetvalue($0, 0, 0)) } ?? "0"
                PQclear(r)
                if queued == "1" { break }
                usleep(200)
            }
            PQfinish(check)
            let released = ContinuousClock.now
            PQfinish(holder)
            done.wait()
            if let at = gotAt.withLock({ $0 }) { out.append(released.duration(to: at)) }
            PQfinish(waiter)
        }
        return out
    }
}
