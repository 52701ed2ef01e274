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
        package var start_to_claim_p50_ms = 0.0
        package var start_to_claim_p99_ms = 0.0
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
        var r = Report()
        r.runs = options.runs
        r.workers = options.workers
        try await pool.withConnection { conn in
            let dir = NSTemporaryDirectory() + "regent-bench-runs-\(getpid())"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let manifest = #"{"workflow_type": "bench.linear", "steps": [{"name": "one", "lane": "bench"}, {"name": "two", "lane": "bench"}, {"name": "three", "lane": "bench"}]}"#
            try Data(manifest.utf8).write(to: URL(fileURLWithPath: dir + "/workflow.json"))
            _ = try await PackageStore().deploy(try PackageContents(path: dir, limits: .default), actor: .named("bench"), on: conn)
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

        say("▶ start → first step in a waiting worker's hands, \(options.latencySamples) samples")
        let latency = try await startToClaim(config, samples: options.latencySamples)
        r.start_to_claim_p50_ms = latency.median.milliseconds
        r.start_to_claim_p99_ms = latency.p99.milliseconds
        say(String(format: "  p50 %.2f ms, p99 %.2f ms", r.start_to_claim_p50_ms, r.start_to_claim_p99_ms))
        return r
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
