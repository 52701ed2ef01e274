import Synchronization
import ArgumentParser
import RegentBench
import EmbeddedPostgres
import Foundation
import RegentDrill
import PostgresClient
import RegentCore

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks that print their figures next to a raw baseline measured in the same run.",
        subcommands: [Failover.self, Events.self, Queue.self, Runs.self, Workers.self, Console.self, Schedules.self, Statements.self, JSON.self]
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
        @Flag(help: "Also measure pg_try_advisory_lock polling every 10 ms and 100 ms (why Regent blocks instead).")
        var comparePolling = false

        func validate() throws {
            guard (2...16).contains(nodes), (3...1000).contains(kills), (10...100_000).contains(samples) else {
                throw ValidationError("--nodes 2-16, --kills 3-1000, --samples 10-100000")
            }
        }

        func run() async throws {
            let env = try await DrillEnvironment.start(databaseURL: databaseURL, nodes: nodes) { print($0) }
            let raw: [Duration]
            let result: FailoverDrill.Result
            var polled: [(String, [Duration])] = []
            var crash: [Duration] = []
            do {
                print("▶ raw crash baseline: \(samples / 4) SIGKILLs of a psql holding the lock")
                crash = try RawLockHandover.measureCrash(conninfo: env.databaseURL, samples: max(10, samples / 4))
                print("▶ raw baseline: \(samples) advisory-lock hand-overs between two libpq connections")
                raw = try RawLockHandover.measure(conninfo: env.databaseURL, samples: samples)
                if comparePolling {
                    for period in [Duration.milliseconds(10), .milliseconds(100)] {
                        print("▶ raw try-lock polling every \(period): 30 hand-overs")
                        polled.append((
                            "raw try-lock polling every \(Int(period.milliseconds)) ms",
                            try RawLockHandover.measure(conninfo: env.databaseURL, samples: 30, waiter: .polling(period: period))
                        ))
                    }
                }
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
            let crashBase = Figures(crash)
            func row(_ label: String, _ samples: [Duration], against limit: Figures) -> [String] {
                let f = Figures(samples)
                return [label, "\(samples.count)", ms(f.median), ms(f.p99),
                        String(format: "%.1f×", f.median.milliseconds / max(limit.median.milliseconds, 0.001))]
            }
            var rows = [row("raw: holder closes, blocked waiter gets the lock (limit)", raw, against: base)]
            for (label, samples) in polled { rows.append(row(label, samples, against: base)) }
            if !result.sigterm.isEmpty { rows.append(row("Regent after SIGTERM (vs. clean close)", result.sigterm, against: base)) }
            rows.append(row("raw: psql holder SIGKILLed, blocked waiter gets the lock (limit)", crash, against: crashBase))
            if !result.sigkill.isEmpty { rows.append(row("Regent after SIGKILL (vs. psql SIGKILL)", result.sigkill, against: crashBase)) }
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

