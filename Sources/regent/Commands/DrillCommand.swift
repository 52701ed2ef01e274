import ArgumentParser
import EmbeddedPostgres
import PostgresClient
import Foundation
import RegentDrill
import RegentCore

struct DrillCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drill",
        abstract: "Failover and fault drills against a local cluster.",
        subcommands: [Failover.self, Freeze.self, Outage.self, TerminateAll.self, Pooler.self, Workflows.self, Semantics.self, Schedules.self, Upgrade.self]
    )

    /// Prints the violations and exits non-zero when there are any.
    static func finish(_ violations: [String], held: String) throws {
        if !violations.isEmpty {
            print("\n✘ invariants broken:")
            for v in violations { print("  - \(v)") }
            throw ExitCode(1)
        }
        print("\n✔ \(held)")
    }

    static let invariantsHeld = "invariants held: at most one lock holder, terms strictly increasing, no duty write under a term after a later term began"

    struct Freeze: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Freeze the leader (SIGSTOP); a follower must end its session and take over within --stale-after + 2 s.",
            discussion: """
                Starts NODES `regent serve` processes (stale-after 2 s, heartbeat 500 ms, lease window \
                2 s) and a churn of short-lived workers and leases so the leader's duties keep \
                writing. Each round freezes the leader with SIGSTOP, times the takeover, thaws it with \
                SIGCONT and checks that it rejoins as a follower. Afterwards: one leader.terminated \
                audit row per takeover, no duty write (engine.audit, workflow.lease_decisions, \
                workflow.worker_events) under a term after a later term began, terms strictly \
                increasing, never two lock holders. Exits non-zero if anything broke.
                """)
        @Option(help: "Nodes in the cluster (2-16).") var nodes = 3
        @Option(help: "Rounds (1-20).") var freezes = 2
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database instead of a private PostgreSQL.", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (2...16).contains(nodes) else { throw ValidationError("--nodes must be 2 to 16, got \(nodes)") }
            guard (1...20).contains(freezes) else { throw ValidationError("--freezes must be 1 to 20, got \(freezes)") }
        }

        func run() async throws {
            let env = try await DrillEnvironment.start(databaseURL: databaseURL, nodes: nodes) { print($0) }
            let result: FreezeDrill.Result
            do {
                print("▶ \(freezes) freezes")
                result = try await FreezeDrill(env: env, freezes: freezes, staleAfter: .seconds(2), say: { print($0) }).run()
            } catch {
                await env.close()
                throw error
            }
            await env.close()
            let f = Figures(result.takeovers)
            if !result.takeovers.isEmpty {
                print("\n" + table(["takeover of a frozen leader", "rounds", "min", "median", "max", "bound"],
                                   [["", "\(result.takeovers.count)", ms(f.min), ms(f.median), ms(f.max), ms(.seconds(4))]]))
            }
            try DrillCommand.finish(result.violations, held: DrillCommand.invariantsHeld + ", every takeover audited and within its bound")
        }
    }

    struct Outage: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop PostgreSQL longer than the workers' TTL and lease; nothing live may be swept or reclaimed.",
            discussion: """
                Needs the private PostgreSQL (it stops and restarts it), so it takes no database URL. \
                Registers live workers that heartbeat and renew their leases every quarter TTL \
                (reconnecting through the outage) and one silent worker, stops the server for \
                --down-for, starts it again and watches for three TTLs. Checks: no live worker swept, \
                no live lease reclaimed, no heartbeat or renewal refused, the silent worker swept no \
                sooner than one TTL after recovery, and the term invariants.
                """)
        @Option(help: "Nodes in the cluster (1-16).") var nodes = 2
        @Option(help: "Live workers (1-100).") var workers = 5
        @Option(name: .customLong("ttl"), help: "Worker TTL and lease duration, e.g. 2s.") var ttlText = "2s"
        @Option(name: .customLong("down-for"), help: "How long the server stays down (at least the TTL), e.g. 5s.") var downForText = "5s"
        var ttl: Duration { (try? parseDuration(ttlText, flag: "--ttl")) ?? .seconds(2) }
        var downFor: Duration { (try? parseDuration(downForText, flag: "--down-for")) ?? .seconds(5) }

        func validate() throws {
            _ = try parseDuration(ttlText, flag: "--ttl")
            _ = try parseDuration(downForText, flag: "--down-for")
            guard (1...16).contains(nodes) else { throw ValidationError("--nodes must be 1 to 16, got \(nodes)") }
            guard (1...100).contains(workers) else { throw ValidationError("--workers must be 1 to 100, got \(workers)") }
            guard ttl >= .milliseconds(500), ttl <= .seconds(60) else { throw ValidationError("--ttl must be 500ms to 60s, got \(ttl)") }
            guard downFor >= ttl, downFor <= .seconds(300) else {
                throw ValidationError("--down-for (\(downFor)) must be at least --ttl (\(ttl)) and at most 300s")
            }
        }

        func run() async throws {
            let env = try await DrillEnvironment.start(databaseURL: nil, nodes: nodes) { print($0) }
            let violations: [String]
            do {
                guard let server = env.embedded else { throw ValidationError("the outage drill needs the private PostgreSQL") }
                print("▶ outage of \(downFor)")
                violations = try await OutageDrill(env: env, server: server, downFor: downFor, ttl: ttl, workers: workers, say: { print($0) }).run()
            } catch {
                await env.close()
                throw error
            }
            await env.close()
            try DrillCommand.finish(violations, held: DrillCommand.invariantsHeld + ", nothing live swept or reclaimed across the outage")
        }
    }

    struct Workflows: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "workflows",
            abstract: "Runs with a fan-out and a join, carried by worker processes, while the leader and workers are SIGKILLed; then the exactly-once invariants.",
            discussion: """
                Starts a local cluster (and a private PostgreSQL unless --database-url is given), deploys a \
                six-step package (prepare → left, middle, right → join → finish), starts --runs runs, \
                runs --workers `regent worker` processes, and --kills times SIGKILLs the leader node and a \
                worker (both replaced), and cancels --cancels runs in all, spread over those rounds, while \
                workers hold their steps. Mid-drill a second version is deployed and the pinned first one \
                must refuse to unload. At the end: every run finished; every succeeded step has exactly one \
                accepted completion, at its current epoch; no step started before its after steps \
                succeeded; no run advanced after it failed or was cancelled; ledger totals equal the \
                accepted costs; no unfinished run is pinned to a version that is gone; no step execution of \
                a finished run is left claimable or running (and no stray record is left) 15 s after the \
                last run finished; the server broke no deadlock in the drill's database \
                (pg_stat_database.deadlocks did not grow). Workers complete --batch steps at once. Non-zero \
                exit on any violation.
                """)
        @Option(help: "Runs to start (1-100000).") var runs = 500
        @Option(help: "Rounds of SIGKILL to the leader and a worker (0-100).") var kills = 5
        @Option(help: "Worker processes (1-64).") var workers = 4
        @Option(help: "Runs cancelled in all, while workers hold their steps (0-100000, at most --runs).") var cancels = 25
        @Option(help: "Steps each worker claims and completes in one batch (1-100).") var batch = 4
        @Option(help: "Nodes in the cluster (1-16).") var nodes = 3
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database instead of a private PostgreSQL.", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (1...100_000).contains(runs) else { throw ValidationError("--runs must be 1 to 100000, got \(runs)") }
            guard (0...runs).contains(cancels) else { throw ValidationError("--cancels must be 0 to --runs (\(runs)), got \(cancels)") }
            guard (0...100).contains(kills) else { throw ValidationError("--kills must be 0 to 100, got \(kills)") }
            guard (1...64).contains(workers) else { throw ValidationError("--workers must be 1 to 64, got \(workers)") }
            guard (1...100).contains(batch) else { throw ValidationError("--batch must be 1 to 100, got \(batch)") }
            guard (1...16).contains(nodes) else { throw ValidationError("--nodes must be 1 to 16, got \(nodes)") }
        }

        func run() async throws {
            let env = try await DrillEnvironment.start(databaseURL: databaseURL, nodes: nodes) { print($0) }
            let result: WorkflowDrill.Result
            do {
                result = try await WorkflowDrill(
                    env: env, runs: runs, kills: kills, workers: workers, cancels: cancels, batch: batch, say: { print($0) }).run()
            } catch {
                await env.close()
                throw error
            }
            await env.close()
            let seconds = result.took.milliseconds / 1000
            print("\n" + table(["runs", "succeeded", "failed", "cancelled", "steps fenced", "leader kills", "worker kills", "leases reclaimed", "deadlocks", "all finished after", "runs/s"], [[
                "\(runs)", "\(result.states["succeeded"] ?? 0)", "\(result.states["failed"] ?? 0)", "\(result.states["cancelled"] ?? 0)",
                "\(result.fencedSteps)", "\(result.leaderKills)", "\(result.workerKills)",
                "\(result.reclaimedLeases)", "\(result.deadlocks)", String(format: "%.1f s", seconds), String(format: "%.0f", Double(runs) / max(seconds, 0.001)),
            ]]))
            try DrillCommand.finish(
                result.violations,
                held: "invariants held: every run finished, one accepted completion per succeeded step at its current epoch, DAG order kept, no advance after a run finished, ledger = accepted costs, no unfinished run on a gone version, nothing of a finished run left claimable or running")
        }
    }

    struct Semantics: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Runs that wait (a timer, an approval signal, a child workflow) and runs resumed after a failure, under leader and worker SIGKILLs.",
            discussion: """
                A local cluster and `regent worker` processes carry RUNS runs of a package with every step kind: a \
                worker fan-out, a 300 ms timer, an approval signal (sent by the drill before the run reaches the \
                wait for half the runs, at a random later moment for the others), a worker step that fails on its \
                first run for every third run (the drill resumes each with `runs retry`), and a child workflow \
                whose type the drill re-routes to a new version mid-drill. Every KILLS round SIGKILLs the leader \
                and a worker. Then, in SQL: every run succeeded; each timer fired once and never before its due \
                time (database time); each run's approval was consumed once and is its step's output; each child \
                step started one child run, on the version recorded for it, whose output is the step's; resumed \
                runs re-ran only their failed step (every other worker step has one execution); and the \
                invariants of `drill workflows` (one accepted completion per step, DAG order, no advance after a \
                finish, ledger = accepted costs, nothing of a finished run left running); the server broke no \
                deadlock. Non-zero exit on any violation.
                """)
        @Option(help: "Runs to start (1-10000).") var runs = 200
        @Option(help: "Rounds of SIGKILL to the leader and a worker (0-100).") var kills = 5
        @Option(help: "Worker processes (1-64).") var workers = 3
        @Option(help: "Nodes in the cluster (1-16).") var nodes = 3
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database instead of a private PostgreSQL.", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (1...10_000).contains(runs) else { throw ValidationError("--runs must be 1 to 10000, got \(runs)") }
            guard (0...100).contains(kills) else { throw ValidationError("--kills must be 0 to 100, got \(kills)") }
            guard (1...64).contains(workers) else { throw ValidationError("--workers must be 1 to 64, got \(workers)") }
            guard (1...16).contains(nodes) else { throw ValidationError("--nodes must be 1 to 16, got \(nodes)") }
        }

        func run() async throws {
            let env = try await DrillEnvironment.start(databaseURL: databaseURL, nodes: nodes) { print($0) }
            let result: SemanticsDrill.Result
            do {
                result = try await SemanticsDrill(env: env, runs: runs, kills: kills, workers: workers, say: { print($0) }).run()
            } catch {
                await env.close()
                throw error
            }
            await env.close()
            print("\n" + table(
                ["runs", "succeeded", "resumed", "approvals early", "approvals late", "refused (run failed)", "child runs", "leader kills", "worker kills",
                 "worst timer lateness", "deadlocks", "took"],
                [["\(runs)", "\(result.succeeded)", "\(result.retried)", "\(result.signalsEarly)", "\(result.signalsLate)", "\(result.signalsRefused)",
                  "\(result.children)", "\(result.leaderKills)", "\(result.workerKills)", String(format: "%.0f ms", result.timerLatenessMaxMs),
                  "\(result.deadlocks)", String(format: "%.1f s", result.took.milliseconds / 1000)]]))
            try DrillCommand.finish(
                result.violations,
                held: "invariants held: every run succeeded, timers fired once and never early, each approval consumed once, each child started once on its recorded version, resumed runs re-ran only their failed step, one accepted completion per worker step, ledger = accepted costs, no deadlock")
        }
    }

    struct Schedules: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Schedules every second while the leader is SIGKILLed again and again; then each slot fired exactly once or skipped by its policy, none early.",
            discussion: """
                Starts a local cluster (and a private PostgreSQL unless --database-url is given), deploys a one-step \
                package, creates --schedules schedules firing every second (catch-up all, skip, and all with 800 ms of \
                jitter, in turn), and for --seconds SIGKILLs the leader node every 2-5 s (replaced each time). Then, \
                from the records alone: no slot recorded twice (fired twice, or fired and skipped); every second \
                between a schedule's first and last slot fired or skipped; nothing skipped by a catch-up=all schedule; \
                no run started before its slot plus its jitter; each fired slot's run carries its key; every schedule \
                fired. Prints the lateness of fired slots (median, p99, worst): a slot due during a failover waits for \
                the next leader. Non-zero exit on any violation.
                """)
        @Option(help: "Schedules, each every second (1-1000).") var schedules = 6
        @Option(help: "How long the kills go on (5-3600).") var seconds = 60
        @Option(help: "Nodes in the cluster (2-16).") var nodes = 3
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database instead of a private PostgreSQL.", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (1...1000).contains(schedules) else { throw ValidationError("--schedules must be 1 to 1000, got \(schedules)") }
            guard (5...3600).contains(seconds) else { throw ValidationError("--seconds must be 5 to 3600, got \(seconds)") }
            guard (2...16).contains(nodes) else { throw ValidationError("--nodes must be 2 to 16, got \(nodes)") }
        }

        func run() async throws {
            let env = try await DrillEnvironment.start(databaseURL: databaseURL, nodes: nodes) { print($0) }
            let result: ScheduleDrill.Result
            do {
                result = try await ScheduleDrill(env: env, schedules: schedules, duration: .seconds(seconds), say: { print($0) }).run()
            } catch {
                await env.close()
                throw error
            }
            await env.close()
            print("\n" + table(
                ["schedules", "leader kills", "slots fired", "skipped", "lateness p50", "p99", "worst", "took"],
                [["\(schedules)", "\(result.leaderKills)", "\(result.fired)", "\(result.skipped)",
                  String(format: "%.0f ms", result.latenessPercentile(0.5)), String(format: "%.0f ms", result.latenessPercentile(0.99)),
                  String(format: "%.0f ms", result.lateness.last ?? 0), String(format: "%.1f s", result.took.milliseconds / 1000)]]))
            try DrillCommand.finish(
                result.violations,
                held: "invariants held: every slot fired exactly once or skipped by its policy, none twice, none early, each run under its slot's key")
        }
    }

    struct Upgrade: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Roll a live cluster from an older regent binary to this one and back (kubectl rollout / rollout undo).",
            discussion: """
                On a private PostgreSQL: three nodes and two workers start on --from, with runs in \
                flight started by the old binary's CLI. The nodes are replaced one at a time by --to \
                (SIGTERM, start the new one; it applies expand migrations only); mid-rollout an old \
                node is SIGKILLed and restarted on the old binary; one node is rolled back to the old \
                binary and forward again; the workers are rolled; then `migrate --contract` runs. \
                Checks: every run finishes exactly once, at most one leader per term, no HTTP 5xx \
                but 503 with Retry-After, every old start succeeds while the floor allows it. Prints \
                the timeline.
                """)
        @Option(help: ArgumentHelp("The older regent binary (e.g. the previous release's).", valueName: "path")) var from: String
        @Option(help: ArgumentHelp("The newer regent binary (default: this one).", valueName: "path")) var to: String?
        @Option(help: "Runs started during the drill (3-3000).") var runs = 30

        func validate() throws {
            guard (3...3000).contains(runs) else { throw ValidationError("--runs must be 3 to 3000, got \(runs)") }
            for (flag, path) in [("--from", from), ("--to", to)] {
                guard let path else { continue }
                guard FileManager.default.isExecutableFile(atPath: path) else {
                    throw ValidationError("\(flag) \(path) is not an executable file (build the older release first: bash scripts/build-previous.sh)")
                }
            }
        }

        func run() async throws {
            let result = try await UpgradeDrill(oldBinary: from, newBinary: to ?? LocalCluster.executable, runs: runs, say: { print($0) }).run()
            print("\ntimeline:")
            for entry in result.timeline { print(String(format: "  %8.1f s  ", entry.at.milliseconds / 1000) + entry.what) }
            print("\nmigrations applied during the rollout: " + (result.migrationsApplied.isEmpty ? "none" : result.migrationsApplied.joined(separator: "; ")))
            print("\n" + table(
                ["runs", "states", "queue enqueued / completed", "old-binary starts", "HTTP requests", "503 (with Retry-After)", "migration lock give-ups", "took"],
                [["\(runs)", result.states.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "),
                  "\(result.queueEnqueued) / \(result.queueCompleted)", "\(result.oldStarts)", "\(result.httpRequests)", "\(result.http503)", "\(result.lockGiveUps)",
                  String(format: "%.1f s", result.took.milliseconds / 1000)]]))
            try DrillCommand.finish(
                result.violations,
                held: "invariants held through the rollout and the undo: every run finished exactly once, every queued execution completed once, one leader per term, no 5xx but 503 with Retry-After, every old-binary start succeeded")
        }
    }

    struct TerminateAll: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "terminate-all",
            abstract: "End every node's database session at once; a leader must come back, under a new term.",
            discussion: """
                Each round runs pg_terminate_backend on every backend whose application_name is \
                'regent' (lock sessions, listeners, pools) while a churn keeps the duties writing, \
                and times the return of a settled leader. Then checks the term invariants.
                """)
        @Option(help: "Nodes in the cluster (1-16).") var nodes = 3
        @Option(help: "Rounds (1-50).") var rounds = 3
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database instead of a private PostgreSQL.", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (1...16).contains(nodes) else { throw ValidationError("--nodes must be 1 to 16, got \(nodes)") }
            guard (1...50).contains(rounds) else { throw ValidationError("--rounds must be 1 to 50, got \(rounds)") }
        }

        func run() async throws {
            let env = try await DrillEnvironment.start(databaseURL: databaseURL, nodes: nodes) { print($0) }
            let result: (recoveries: [Duration], violations: [String])
            do {
                print("▶ \(rounds) rounds")
                result = try await TerminateAllDrill(env: env, rounds: rounds, say: { print($0) }).run()
            } catch {
                await env.close()
                throw error
            }
            await env.close()
            let f = Figures(result.recoveries)
            if !result.recoveries.isEmpty {
                print("\n" + table(["leader back after", "rounds", "min", "median", "max"],
                                   [["every session ended", "\(result.recoveries.count)", ms(f.min), ms(f.median), ms(f.max)]]))
            }
            try DrillCommand.finish(result.violations, held: DrillCommand.invariantsHeld)
        }
    }

    struct Pooler: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run nodes through PgBouncer: transaction mode must be refused, session mode must work.",
            discussion: """
                Needs the Debian pgbouncer package and the private PostgreSQL. A node pointed at a \
                transaction-mode PgBouncer must exit at start naming the pooler mode and leave no lock; \
                three nodes behind a session-mode PgBouncer must elect, fail over on SIGKILL and write \
                their duties. Then checks the term invariants.
                """)
        @Option(help: "Failovers through the session-mode pooler (1-20).") var kills = 2

        func validate() throws {
            guard (1...20).contains(kills) else { throw ValidationError("--kills must be 1 to 20, got \(kills)") }
            guard EmbeddedPgBouncer.binary != nil else {
                throw ValidationError("pgbouncer is not installed (apt-get install -y pgbouncer); the pooler drill cannot run")
            }
        }

        func run() async throws {
            print("▶ starting a private PostgreSQL …")
            let pg = try await runOffThePool { try EmbeddedPostgres.start() }
            let violations: [String]
            do {
                let setup = try await PostgresConnection.connect(try drillConfiguration(pg.url()))
                try await MigrationRunner(appliedBy: "drill").migrate(on: setup, schemas: ["engine"])
                await setup.close()
                violations = try await PoolerDrill(server: pg, databaseURL: pg.url(), kills: kills, say: { print($0) }).run()
            } catch {
                pg.destroy()
                throw error
            }
            pg.destroy()
            try DrillCommand.finish(violations, held: DrillCommand.invariantsHeld + "; transaction pooling refused, session pooling works")
        }
    }

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
        @Option(help: "max_connections of the private PostgreSQL (100 is PostgreSQL's default).") var serverMaxConnections = 400
        @Option(
            name: .customLong("database-url"),
            help: ArgumentHelp("Use this database instead of a private PostgreSQL.", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (2...16).contains(nodes) else { throw ValidationError("--nodes must be 2 to 16, got \(nodes)") }
            guard (1...1000).contains(kills) else { throw ValidationError("--kills must be 1 to 1000, got \(kills)") }
            guard gracefulEvery >= 0 else { throw ValidationError("--graceful-every must be 0 or more") }
            guard (20...10_000).contains(serverMaxConnections) else { throw ValidationError("--server-max-connections must be 20 to 10000") }
        }

        func run() async throws {
            let env = try await DrillEnvironment.start(databaseURL: databaseURL, nodes: nodes, serverMaxConnections: serverMaxConnections) { print($0) }
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
