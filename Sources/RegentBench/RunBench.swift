import Foundation
import PostgresClient
import RegentCore
import RegentDrill

/// `regent bench runs`: end-to-end workflow runs of a 3-step linear workflow carried by
/// WORKERS workers (claim one step, complete it: the run advances in that transaction), next
/// to the raw lease cycle measured in the same run on the same server (the same workers
/// claiming and completing plain executions one at a time: what a step costs without a run);
/// and the latency from a start to its first step in a waiting worker's hands.
package struct RunBench: Sendable {
    package struct Options: Sendable {
        package var runs = 2000
        package var workers = 16
        package var latencySamples = 200
        /// Runs sleeping 1 s each, for the fire lateness (0: skip).
        package var timers = 10_000
        /// Runs sleeping an hour while the idle leader's statements are counted (0: skip).
        package var sleepers = 100_000
        /// How long each idle window counts statements.
        package var idleWindow = Duration.seconds(30)
        /// Build the runs listing's online indexes first, as a leader does in production (off: the
        /// run engine without them, to measure what they cost).
        package var listingIndexes = true
        /// Distinct run concurrency keys (limit 1) for the keyed round: the same runs, a type with
        /// a run key, `runs / runKeys` runs per key waiting their turn (0: skip).
        package var runKeys = 1000
        package init() {}
    }

    package struct Report: Encodable, Sendable {
        package var runs = 0
        package var workers = 0
        package var starts_per_s = 0.0
        package var runs_per_s = 0.0
        package var steps_per_s = 0.0
        package var raw_lease_cycles_per_s = 0.0
        package var steps_vs_raw = 0.0
        package var run_keys = 0
        package var keyed_starts_per_s = 0.0
        package var keyed_steps_per_s = 0.0
        package var keyed_steps_vs_unkeyed = 0.0
        package var start_to_claim_p50_ms = 0.0
        package var start_to_claim_p99_ms = 0.0
        package var signal_to_claim_p50_ms = 0.0
        package var signal_to_claim_p99_ms = 0.0
        package var timers = 0
        package var timer_lateness_p50_ms = 0.0
        package var timer_lateness_p99_ms = 0.0
        package var timer_lateness_max_ms = 0.0
        package var sleepers = 0
        package var idle_statements_per_s_baseline = 0.0
        package var idle_statements_per_s_with_sleepers = 0.0
        package var idle_statements_vs_baseline = 0.0
    }

    let url: String
    let options: Options
    let say: @Sendable (String) -> Void
    let lane: Lane
    let type: WorkflowType

    package init(url: String, options: Options, say: @escaping @Sendable (String) -> Void) throws {
        self.url = url
        self.options = options
        self.say = say
        self.lane = try Lane("bench")
        self.type = try WorkflowType("bench.linear")
    }

    func worker(_ w: Int) throws -> WorkerInstanceID { try WorkerInstanceID("bench-run-w\(w)") }

    package func run() async throws -> Report {
        let config = try ConnectionConfiguration(url)
        let boot = try await Boot(options: .init(database: config, actor: "bench")).run()
        let pool = boot.pool
        defer { Task { await pool.shutdown() } }
        if options.listingIndexes {
            try await pool.withConnection { try await OnlineIndexes.ensure(schemas: ["workflow"], on: $0) }
        }
        var r = Report()
        r.runs = options.runs
        r.workers = options.workers
        try await pool.withConnection { conn in
            let dir = NSTemporaryDirectory() + "regent-bench-runs-\(getpid())"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            for manifest in [
                #"{"workflow_type": "bench.linear", "steps": [{"name": "one", "lane": "bench"}, {"name": "two", "lane": "bench"}, {"name": "three", "lane": "bench"}]}"#,
                #"{"workflow_type": "bench.signal", "steps": [{"name": "wait", "wait_for": "go"}, {"name": "next", "lane": "bench"}]}"#,
                #"{"workflow_type": "bench.nap", "steps": [{"name": "nap", "sleep": "1s"}]}"#,
                #"{"workflow_type": "bench.sleeper", "steps": [{"name": "nap", "sleep": "1h"}]}"#,
                #"{"workflow_type": "bench.keyed", "concurrency": {"key": "$.input.k", "limit": 1}, "steps": [{"name": "one", "lane": "bench"}, {"name": "two", "lane": "bench"}, {"name": "three", "lane": "bench"}]}"#,
            ] {
                try Data(manifest.utf8).write(to: URL(fileURLWithPath: dir + "/workflow.json"))
                _ = try await PackageStore().deploy(try PackageContents(path: dir, limits: .default), actor: .named("bench"), on: conn)
            }
            for w in 0...options.workers {
                _ = try await WorkerRegistry().register(
                    namespace: RunStore.namespace, workerInstanceID: try worker(w), workerID: try WorkerID("bench"), lanes: [lane], capabilities: [],
                    livenessTTL: .seconds(3600), on: conn)
            }
        }
        let steps = options.runs * 3

        say("▶ raw lease cycle: \(steps) plain executions, \(options.workers) workers claiming and completing one at a time")
        try await pool.withConnection { conn in
            var left = steps
            while left > 0 {
                let n = min(left, 1000)
                _ = try await LeaseStore().enqueue(namespace: RunStore.namespace, Array(repeating: EnqueueRequest(lane: lane), count: n), on: conn)
                left -= n
            }
            try await conn.query("ANALYZE workflow.ready")
            try await conn.query("ANALYZE workflow.executions")
        }
        r.raw_lease_cycles_per_s = try await drain(config, until: steps)
        say(String(format: "  %.0f cycles/s", r.raw_lease_cycles_per_s))

        say("▶ \(options.runs) runs started (one statement each), then carried by \(options.workers) workers")
        let startedAt = ContinuousClock.now
        try await pool.withConnection { conn in
            for i in 0..<options.runs {
                _ = try await RunStore().start(.init(workflowType: type, input: #"{"i": \#(i)}"#), actor: .named("bench"), on: conn)
            }
        }
        r.starts_per_s = Double(options.runs) / startedAt.duration(to: .now).inSeconds
        try await pool.withConnection { conn in
            try await conn.query("ANALYZE workflow.ready")
            try await conn.query("ANALYZE workflow.executions")
        }
        let runStarted = ContinuousClock.now
        let stepsRate = try await drain(config, until: steps)
        let elapsed = runStarted.duration(to: .now).inSeconds
        let finished = try await pool.query("SELECT count(*) AS n FROM workflow.runs WHERE state = 'succeeded'").single().decode("n", as: Int.self)
        guard finished == options.runs else { throw RegentError(.timeout, "only \(finished) of \(options.runs) runs succeeded") }
        r.steps_per_s = stepsRate
        r.runs_per_s = Double(options.runs) / elapsed
        r.steps_vs_raw = r.steps_per_s / r.raw_lease_cycles_per_s
        say(String(format: "  starts %.0f/s; runs %.0f/s, steps %.0f/s = %.0f%% of the raw lease cycle", r.starts_per_s, r.runs_per_s, r.steps_per_s, 100 * r.steps_vs_raw))

        if options.runKeys > 0 {
            // The same runs of a type with a run concurrency key (limit 1): each key's runs wait
            // `queued` and are admitted one at a time, in the commit that finishes the one before.
            let keys = min(options.runKeys, options.runs)
            say("▶ \(options.runs) runs of a type with a run concurrency key over \(keys) keys (limit 1), the same \(options.workers) workers")
            let keyedStart = ContinuousClock.now
            try await pool.withConnection { conn in
                for i in 0..<options.runs {
                    _ = try await RunStore().start(
                        .init(workflowType: try WorkflowType("bench.keyed"), input: #"{"i": \#(i), "k": "key-\#(i % keys)"}"#), actor: .named("bench"), on: conn)
                }
            }
            r.run_keys = keys
            r.keyed_starts_per_s = Double(options.runs) / keyedStart.duration(to: .now).inSeconds
            r.keyed_steps_per_s = try await drain(config, until: steps)
            let keyed = try await pool.query("SELECT count(*) AS n FROM workflow.runs WHERE workflow_type = 'bench.keyed' AND state = 'succeeded'")
                .single().decode("n", as: Int.self)
            guard keyed == options.runs else { throw RegentError(.timeout, "only \(keyed) of \(options.runs) keyed runs succeeded") }
            r.keyed_steps_vs_unkeyed = r.keyed_steps_per_s / r.steps_per_s
            say(String(format: "  starts %.0f/s; steps %.0f/s = %.0f%% of the unkeyed runs'", r.keyed_starts_per_s, r.keyed_steps_per_s, 100 * r.keyed_steps_vs_unkeyed))
        }

        say("▶ start → first step in a waiting worker's hands, \(options.latencySamples) samples")
        let latency = try await startToClaim(config, samples: options.latencySamples)
        r.start_to_claim_p50_ms = latency.median.milliseconds
        r.start_to_claim_p99_ms = latency.p99.milliseconds
        say(String(format: "  p50 %.2f ms, p99 %.2f ms", r.start_to_claim_p50_ms, r.start_to_claim_p99_ms))

        say("▶ signal → the next step in a waiting worker's hands, \(options.latencySamples) samples")
        let signalled = try await signalToClaim(config, pool: pool, samples: options.latencySamples)
        r.signal_to_claim_p50_ms = signalled.median.milliseconds
        r.signal_to_claim_p99_ms = signalled.p99.milliseconds
        say(String(format: "  p50 %.2f ms, p99 %.2f ms", r.signal_to_claim_p50_ms, r.signal_to_claim_p99_ms))

        guard options.timers > 0 || options.sleepers > 0 else { return r }
        if options.sleepers > 0 {
            // On a database of its own, with a node of its own: nothing else commits there.
            let idle = try await idleLeader(config, pool: pool)
            r.sleepers = options.sleepers
            r.idle_statements_per_s_baseline = idle.baseline
            r.idle_statements_per_s_with_sleepers = idle.sleeping
            r.idle_statements_vs_baseline = idle.sleeping / max(idle.baseline, 0.001)
            say(String(format: "  %.2f transactions/s with none sleeping, %.2f with %d sleeping (×%.2f)", idle.baseline, idle.sleeping,
                       options.sleepers, r.idle_statements_vs_baseline))
        }
        if options.timers > 0 {
            say("▶ \(options.timers) runs sleeping 1 s, fired by the leader's timer duty")
            let lateness = try await withLeader(config) {
                let started = ContinuousClock.now
                try await startInBatches(pool, type: "bench.nap", count: options.timers)
                say(String(format: "  started in %.1f s", started.duration(to: .now).inSeconds))
                var done = 0
                let deadline = ContinuousClock.now + .seconds(120)
                while done < options.timers, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(200))
                    done = try await pool.query("SELECT count(*) AS n FROM workflow.runs WHERE workflow_type = 'bench.nap' AND state = 'succeeded'")
                        .single().decode("n", as: Int.self)
                }
                guard done == options.timers else { throw RegentError(.timeout, "only \(done) of \(options.timers) timers fired within 2 minutes") }
                // Lateness on the database's clock: when the step fired (its output) against its due time.
                return try await pool.query(
                    """
                    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50, percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99,
                           max(ms) AS worst, count(*) FILTER (WHERE ms < 0) AS early
                    FROM (SELECT extract(epoch FROM ((s.output ->> 'fired_at')::timestamptz - s.due_at)) * 1000 AS ms
                          FROM workflow.run_steps s JOIN workflow.runs r ON r.run_id = s.run_id WHERE r.workflow_type = 'bench.nap') AS t
                    """).single()
            }
            guard try lateness.decode("early", as: Int.self) == 0 else { throw RegentError(.conflict, "a timer fired before its due time") }
            r.timers = options.timers
            r.timer_lateness_p50_ms = try lateness.decode("p50")
            r.timer_lateness_p99_ms = try lateness.decode("p99")
            r.timer_lateness_max_ms = try lateness.decode("worst")
            say(String(format: "  lateness p50 %.1f ms, p99 %.1f ms, max %.1f ms (none early)", r.timer_lateness_p50_ms, r.timer_lateness_p99_ms,
                       r.timer_lateness_max_ms))
        }
        return r
    }

    /// Runs `body` while a node in this process leads (`regent serve`'s node, with its timer
    /// duty), and stops the node whatever `body` does.
    private func withLeader<T: Sendable>(_ config: ConnectionConfiguration, _ body: () async throws -> T) async throws -> T {
        var nodeConfig = NodeConfiguration(database: config)
        nodeConfig.nodeName = "bench-leader"
        let node = RegentNode(configuration: nodeConfig)
        let nodeTask = Task { try await node.run() }
        defer { nodeTask.cancel() }
        do {
            while await !node.isLeader { try await Task.sleep(for: .milliseconds(20)) }
            let value = try await body()
            await node.shutdown()
            _ = try? await nodeTask.value
            return value
        } catch {
            await node.shutdown()
            _ = try? await nodeTask.value
            throw error
        }
    }

    /// The idle leader's transactions per second on a database of its own: with no run, then
    /// with SLEEPERS runs sleeping an hour.
    private func idleLeader(_ config: ConnectionConfiguration, pool: ConnectionPool) async throws -> (baseline: Double, sleeping: Double) {
        let name = "regent_bench_idle_\(getpid())"
        try await pool.query("CREATE DATABASE \(identifier: try SQLIdentifier(name))")
        let idleConfig = try config.withDatabase(name)
        let boot = try await Boot(options: .init(database: idleConfig, actor: "bench")).run()
        let idlePool = boot.pool
        do {
            try await idlePool.withConnection { conn in
                let dir = NSTemporaryDirectory() + "regent-bench-idle-\(getpid())"
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                defer { try? FileManager.default.removeItem(atPath: dir) }
                try Data(#"{"workflow_type": "bench.sleeper", "steps": [{"name": "nap", "sleep": "1h"}]}"#.utf8).write(to: URL(fileURLWithPath: dir + "/workflow.json"))
                _ = try await PackageStore().deploy(try PackageContents(path: dir, limits: .default), actor: .named("bench"), on: conn)
            }
            let figures = try await withLeader(idleConfig) {
                say("▶ the idle leader's transactions per second, \(Int(options.idleWindow.inSeconds)) s with no run sleeping")
                let baseline = try await statementsPerSecond(idlePool, over: options.idleWindow)
                say("▶ \(options.sleepers) runs sleeping an hour (started in batches), then \(Int(options.idleWindow.inSeconds)) s again")
                try await startInBatches(idlePool, type: "bench.sleeper", count: options.sleepers)
                return (baseline, try await statementsPerSecond(idlePool, over: options.idleWindow))
            }
            await idlePool.shutdown()
            return figures
        } catch {
            await idlePool.shutdown()
            throw error
        }
    }

    /// Transactions committed in this database per second over `window` (`pg_stat_database`):
    /// on an otherwise idle server, what the leader's duties and the node's heartbeats cost.
    private func statementsPerSecond(_ pool: ConnectionPool, over window: Duration) async throws -> Double {
        let read: PostgresQuery = "SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = current_database()"
        // Statistics reach the view at most every second (up to 10 s for an idle backend): let them settle first.
        try await Task.sleep(for: .seconds(11))
        let before = try await pool.query(read).single().decode("n", as: Int64.self)
        try await Task.sleep(for: window)
        let after = try await pool.query(read).single().decode("n", as: Int64.self)
        return Double(after - before - 1) / window.inSeconds  // less this read's own transaction
    }

    /// `count` runs of `type` started 500 per statement (each call reads its row's `g`: a call
    /// that read nothing of the outer row would be made once and its result reused).
    private func startInBatches(_ pool: ConnectionPool, type: String, count: Int) async throws {
        var left = count
        while left > 0 {
            let n = min(500, left)
            let made = try await pool.query(
                """
                SELECT count(*) FILTER (WHERE s.created) AS n FROM generate_series(1, \(n)) AS g,
                     LATERAL workflow.start_run(\(type), jsonb_build_object('i', g), NULL, NULL, NULL, NULL, 'bench', NULL, NULL, NULL, NULL) AS s
                """).single().decode("n", as: Int.self)
            guard made == n else { throw RegentError(.conflict, "a batch of \(n) starts made \(made) runs") }
            left -= n
        }
    }

    /// Times a signal → the next step returned by a claim that was already waiting: the run waits
    /// for the signal first; the signal's own transaction advances it and enqueues the step.
    private func signalToClaim(_ config: ConnectionConfiguration, pool: ConnectionPool, samples: Int) async throws -> Figures {
        var waiting: [String] = []
        try await pool.withConnection { conn in
            for i in 0..<samples {
                waiting.append(try await RunStore().start(.init(workflowType: try WorkflowType("bench.signal"), input: #"{"sample": \#(i)}"#), actor: .named("bench"), on: conn).runID)
            }
        }
        let runs = waiting
        return try await timeToClaim(
            config, namespace: RunStore.namespace, lane: lane, worker: try worker(options.workers), samples: samples,
            act: { conn, i in
                _ = try await RunStore().signal(runs[i], name: "go", payloadJSON: "true", signalID: nil, actor: .named("bench"), on: conn)
                return runs[i]
            },
            settle: { conn, runID, leases in
                guard leases.first?.step?.runID == runID else { throw RegentError(.conflict, "the claim returned another run's step") }
                _ = try await RunStore().cancel(runID, reason: "bench sample", actor: .named("bench"), on: conn)
            })
    }

    /// WORKERS connections claim one and complete it until `until` completions were accepted.
    private func drain(_ config: ConnectionConfiguration, until total: Int) async throws -> Double {
        try await drainQueue(
            config, namespace: RunStore.namespace, lane: lane, workers: try (0..<options.workers).map(worker), batch: 1, until: total,
            waitForMore: true)
    }

    /// Times a start → the first step returned by a claim that was already waiting (LISTEN-woken).
    private func startToClaim(_ config: ConnectionConfiguration, samples: Int) async throws -> Figures {
        try await timeToClaim(
            config, namespace: RunStore.namespace, lane: lane, worker: try worker(options.workers), samples: samples,
            act: { starter, i in
                try await RunStore().start(.init(workflowType: type, input: #"{"sample": \#(i)}"#), actor: .named("bench"), on: starter).runID
            },
            settle: { starter, runID, leases in
                guard leases.first?.step?.runID == runID else { throw RegentError(.conflict, "the claim returned another run's step") }
                _ = try await RunStore().cancel(runID, reason: "bench sample", actor: .named("bench"), on: starter)
            })
    }
}
