import ArgumentParser
import EmbeddedPostgres
import Foundation
import RegentBench
import RegentCore

extension BenchCommand {
    struct Queue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The execution queue: batched enqueue, drain at batch 1/10/100, drain at a large backlog, wake-up latency.",
            discussion: """
                Each figure is measured next to a raw baseline in the same run on the same server: \
                the very same statements sent through plain libpq on threads. Drain: WORKERS \
                connections claim a batch and complete it in one statement each, until a backlog \
                of JOBS is gone. Wake-up: one worker waits in claim (LISTEN-woken); the time from \
                the enqueue call to the claim's return. For the peer comparison run \
                ../shared/peers/pgqueuer-drain against the same server. --json prints one JSON \
                object (enqueue_per_s, drain_per_s {"1","10","100"}, drain_combined_per_s {"1","10"} \
                (complete-and-claim in one call), drain_100k_per_s, wake_p50_ms, wake_p99_ms, and the raw figures).
                """)
        @Option(help: "Backlog drained at each batch size (1000-1000000).") var jobs = 20_000
        @Option(help: "Worker connections draining (1-64).") var workers = 16
        @Option(help: "The large backlog (10000-10000000).") var backlog = 100_000
        @Option(help: "Drains under flow control first: unkeyed, 1,000 keys of limit 1, 1,000 fair keys, one hot key, alternating (on|off); then a small tenant's wait behind --backlog of a big one, without and with fair keys.")
        var flow: Toggle = .on
        @Option(help: "Alternating rounds of the flow-control drains (1-9; medians).") var flowRounds = 3
        @Flag(help: "Only the flow-control drains.") var onlyFlow = false
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database (it must be disposable).", valueName: "url"))
        var databaseURL: String?
        @Flag(help: "Print one JSON object instead of tables.") var json = false

        func validate() throws {
            guard (1000...1_000_000).contains(jobs) else { throw ValidationError("--jobs must be 1000 to 1000000, got \(jobs)") }
            guard (1...64).contains(workers) else { throw ValidationError("--workers must be 1 to 64, got \(workers)") }
            guard (10_000...10_000_000).contains(backlog) else { throw ValidationError("--backlog must be 10000 to 10000000, got \(backlog)") }
            guard (1...9).contains(flowRounds) else { throw ValidationError("--flow-rounds must be 1 to 9, got \(flowRounds)") }
        }

        func run() async throws {
            let quiet = json
            let say: @Sendable (String) -> Void = { line in if !quiet { print(line) } }
            let (url, embedded) = try benchDatabase(databaseURL, say: say)
            defer { embedded?.destroy() }
            var options = QueueBench.Options()
            options.jobs = jobs
            options.workers = workers
            options.bigBacklog = backlog
            options.flow = flow == .on || onlyFlow
            options.onlyFlow = onlyFlow
            options.flowRounds = flowRounds
            let r = try await QueueBench(url: url, options: options, say: say).run()
            if json { return try printJSON(r) }
            func rate(_ v: Double?) -> String { v.map { String(format: "%.0f /s", $0) } ?? "-" }
            func ratio(_ a: Double?, _ b: Double?) -> String {
                guard let a, let b, b > 0 else { return "-" }
                return String(format: "%.0f%%", 100 * a / b)
            }
            if options.flow {
                let base = r.flow_drain_per_s["unkeyed"] ?? 0
                print("\n" + table(["flow control (batch 10, \(workers) workers, medians of \(flowRounds))", "enqueue", "drain", "drain / unkeyed"],
                    ["unkeyed", "1000 keys, limit 1", "1000 fair keys, window 10", "one hot key, limit 1"].map { name in
                        [name + (name.hasPrefix("one hot") ? " (\(r.flow_hot_key_jobs) jobs, 2 workers)" : " (\(jobs) jobs)"), rate(r.flow_enqueue_per_s[name]),
                         rate(r.flow_drain_per_s[name]), ratio(r.flow_drain_per_s[name], base)]
                    }))
                print(table(["a small tenant's one execution behind \(r.fair_backlog) of a big tenant's", "claims of 10 until claimed", "time"],
                    [("no keys", "unkeyed"), ("fair keys, window 10", "fair")].map { label, key in
                        [label, r.fair_small_claims[key].map(String.init) ?? "-", r.fair_small_ms[key].map { String(format: "%.1f ms", $0) } ?? "-"]
                    }))
                if onlyFlow { return }
            }
            print("")
            print(table(["", "raw libpq", "Regent", "Regent / raw"], [
                ["enqueue (1000 per statement)", rate(r.raw_enqueue_per_s), rate(r.enqueue_per_s), ratio(r.enqueue_per_s, r.raw_enqueue_per_s)],
            ] + ["1", "10", "100"].map { b in
                ["drain \(jobs), \(workers) workers, batch \(b)", rate(r.raw_drain_per_s[b]), rate(r.drain_per_s[b]), ratio(r.drain_per_s[b], r.raw_drain_per_s[b])]
            } + ["1", "10"].map { b in
                ["  … completing and claiming in one call, batch \(b)", rate(r.raw_drain_combined_per_s[b]), rate(r.drain_combined_per_s[b]),
                 ratio(r.drain_combined_per_s[b], r.raw_drain_combined_per_s[b])]
            }))
            print("")
            print(String(format: "drain at 1,000 queued %.0f/s; at %d queued %.0f/s (%.0f%%; goal ≥ 80%%)", r.drain_1k_per_s, backlog,
                         r.drain_100k_per_s, 100 * r.drain_100k_per_s / max(r.drain_1k_per_s, 1)))
            print(String(format: "wake-up: enqueue → claimed by a waiting worker p50 %.2f ms, p99 %.2f ms (goal < 5 ms / < 50 ms)",
                         r.wake_p50_ms, r.wake_p99_ms))
        }
    }
}

extension BenchCommand {
    struct Runs: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Workflow runs end to end: runs/s and steps/s of a 3-step linear workflow, against the raw lease cycle; start → first step latency.",
            discussion: """
                The raw lease cycle is measured in the same run on the same server: WORKERS workers \
                claiming and completing plain executions one at a time (what a step costs without a \
                run). Then RUNS runs are started and the same workers carry them: each completion \
                advances its run in its own transaction. Goal: steps/s at least 60% of the raw cycle; \
                start → first step claimable under 5 ms median. Then the waits: a signal → the next \
                step in a waiting worker's hands (goal under 5 ms median); TIMERS runs sleeping 1 s, \
                fired by the leader's timer duty of a node in this process (lateness on the database's \
                clock, goal p99 under 100 ms); and the idle leader's transactions per second with \
                SLEEPERS runs sleeping an hour against the same node with none (goal: the same). \
                --json prints one JSON object.
                """)
        @Option(help: "Runs (100-1000000).") var runs = 2000
        @Option(help: "Workers (1-64).") var workers = 16
        @Option(help: "Start → claim and signal → claim samples (10-10000).") var samples = 200
        @Option(help: "Runs sleeping 1 s for the timer lateness (0: skip; up to 1000000).") var timers = 10_000
        @Option(help: "Runs sleeping an hour while the idle leader's statements are counted (0: skip; up to 1000000).") var sleepers = 100_000
        @Option(help: "Seconds each idle window counts statements (5-600).") var idleWindow = 30
        @Option(help: "Distinct run concurrency keys (limit 1) for the keyed round (0: skip; up to 1000000).") var runKeys = 1000
        @Option(help: "Build the runs listing's online indexes first, as a leader does (on), or measure without them (off).")
        var listingIndexes: Toggle = .on
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database (it must be disposable).", valueName: "url"))
        var databaseURL: String?
        @Flag(help: "Print one JSON object instead of tables.") var json = false

        func validate() throws {
            guard (100...1_000_000).contains(runs) else { throw ValidationError("--runs must be 100 to 1000000, got \(runs)") }
            guard (1...64).contains(workers) else { throw ValidationError("--workers must be 1 to 64, got \(workers)") }
            guard (10...10_000).contains(samples) else { throw ValidationError("--samples must be 10 to 10000, got \(samples)") }
            guard (0...1_000_000).contains(timers) else { throw ValidationError("--timers must be 0 to 1000000, got \(timers)") }
            guard (0...1_000_000).contains(sleepers) else { throw ValidationError("--sleepers must be 0 to 1000000, got \(sleepers)") }
            guard (0...1_000_000).contains(runKeys) else { throw ValidationError("--run-keys must be 0 to 1000000, got \(runKeys)") }
            guard (5...600).contains(idleWindow) else { throw ValidationError("--idle-window must be 5 to 600 seconds, got \(idleWindow)") }
        }

        func run() async throws {
            let quiet = json
            let say: @Sendable (String) -> Void = { line in if !quiet { print(line) } }
            let (url, embedded) = try benchDatabase(databaseURL, say: say)
            defer { embedded?.destroy() }
            var options = RunBench.Options()
            options.runs = runs
            options.workers = workers
            options.latencySamples = samples
            options.timers = timers
            options.sleepers = sleepers
            options.idleWindow = .seconds(idleWindow)
            options.listingIndexes = listingIndexes == .on
            options.runKeys = runKeys
            let r = try await RunBench(url: url, options: options, say: say).run()
            if json { return try printJSON(r) }
            print("\n" + table(["figure", "Regent", "raw lease cycle", "ratio", "goal"], [
                ["steps/s (3-step runs, \(workers) workers)", String(format: "%.0f", r.steps_per_s), String(format: "%.0f", r.raw_lease_cycles_per_s),
                 String(format: "%.0f%%", 100 * r.steps_vs_raw), "≥ 60%"],
                ["runs/s", String(format: "%.0f", r.runs_per_s), "", "", ""],
                ["starts/s (one connection)", String(format: "%.0f", r.starts_per_s), "", "", ""],
                ["steps/s, runs keyed over \(r.run_keys) keys (limit 1)", String(format: "%.0f", r.keyed_steps_per_s), String(format: "%.0f (unkeyed runs)", r.steps_per_s),
                 String(format: "%.0f%%", 100 * r.keyed_steps_vs_unkeyed), ""],
                ["starts/s, keyed", String(format: "%.0f", r.keyed_starts_per_s), String(format: "%.0f (unkeyed)", r.starts_per_s), "", ""],
                ["start → first step claimed, p50", String(format: "%.2f ms", r.start_to_claim_p50_ms), "", "", "< 5 ms"],
                ["start → first step claimed, p99", String(format: "%.2f ms", r.start_to_claim_p99_ms), "", "", ""],
                ["signal → next step claimed, p50", String(format: "%.2f ms", r.signal_to_claim_p50_ms), "", "", "< 5 ms"],
                ["signal → next step claimed, p99", String(format: "%.2f ms", r.signal_to_claim_p99_ms), "", "", ""],
                ["timer lateness p50 (\(r.timers) runs sleeping 1 s)", String(format: "%.1f ms", r.timer_lateness_p50_ms), "", "", ""],
                ["timer lateness p99", String(format: "%.1f ms", r.timer_lateness_p99_ms), "", "", "< 100 ms"],
                ["idle leader statements/s (\(r.sleepers) runs sleeping 1 h)", String(format: "%.2f", r.idle_statements_per_s_with_sleepers),
                 String(format: "%.2f (none sleeping)", r.idle_statements_per_s_baseline), String(format: "×%.2f", r.idle_statements_vs_baseline), "×1"],
            ]))
        }
    }
}

/// An on/off option of a benchmark.
enum Toggle: String, ExpressibleByArgument, CaseIterable, Sendable { case on, off }
