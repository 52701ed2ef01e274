import ArgumentParser
import Foundation
import RegentCore

struct DrillCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drill",
        abstract: "Failover drills against a local cluster.",
        subcommands: [Failover.self]
    )

    struct Failover: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Kill the leader again and again; time each failover and check the invariants.",
            discussion: """
                Starts NODES `regent serve` processes (on a private PostgreSQL unless --database-url \
                is given; the database must have no other regent nodes). Each round kills the \
                current leader — SIGKILL, and SIGTERM every third round — measures the time until \
                a new leader holds the lock and has recorded its term, and starts a replacement. \
                Afterwards it checks: terms strictly increase, no leader-duty audit row carries a \
                stale term, never two lock holders. Exits non-zero if an invariant broke.
                """
        )
        @Option(help: "Nodes in the cluster (2-16).") var nodes = 3
        @Option(help: "Rounds (1-1000).") var kills = 20
        @Option(help: "Every Nth round sends SIGTERM instead of SIGKILL (0: never).") var gracefulEvery = 3
        @Option(
            name: .customLong("database-url"),
            help: ArgumentHelp("Use this database instead of a private PostgreSQL.", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (2...16).contains(nodes) else { throw ValidationError("--nodes must be 2 to 16, got \(nodes)") }
            guard (1...1000).contains(kills) else { throw ValidationError("--kills must be 1 to 1000, got \(kills)") }
            guard gracefulEvery >= 0 else { throw ValidationError("--graceful-every must be 0 or more") }
        }

        func run() async throws {
            let env = try await DrillEnvironment.start(databaseURL: databaseURL, nodes: nodes) { print($0) }
            let result: FailoverDrill.Result
            do {
                print("▶ \(kills) rounds")
                result = try await FailoverDrill(
                    cluster: env.cluster, probe: env.probe, databaseURL: env.databaseURL, kills: kills,
                    gracefulEvery: gracefulEvery, say: { print($0) }
                ).run()
            } catch {
                await env.close()
                throw error
            }
            await env.close()
            printSummary(result)
            if !result.violations.isEmpty {
                print("\n✘ invariants broken:")
                for v in result.violations { print("  - \(v)") }
                throw ExitCode(1)
            }
            print("\n✔ invariants held: one lock holder, terms strictly increasing, no stale-term duty writes")
        }
    }
}

func printSummary(_ result: FailoverDrill.Result) {
    print("")
    var rows: [[String]] = []
    for (label, samples) in [("SIGKILL", result.sigkill), ("SIGTERM", result.sigterm)] where !samples.isEmpty {
        let f = Figures(samples)
        rows.append([label, "\(samples.count)", ms(f.min), ms(f.median), ms(f.p99), ms(f.max)])
    }
    print(table(["failover after", "rounds", "min", "median", "p99", "max"], rows))
}
