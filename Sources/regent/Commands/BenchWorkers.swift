import ArgumentParser
import AsyncHTTPClient
import EmbeddedPostgres
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import PostgresClient
import RegentBench
import RegentCore
import RegentDrill
import RegentWorker

extension BenchCommand {
    struct Workers: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Workers over the HTTP API (the RegentWorker library) against workers on the database: steps/s and start → first step.",
            discussion: """
                One `regent serve` node (a child process) serves the API. RUNS runs of a 3-step linear \
                workflow are started, then carried by WORKERS workers holding up to CONCURRENCY steps \
                each: either StepWorker on the database (claim a batch, complete it with the next claim \
                in one statement) or RegentWorker over HTTP with a worker token (complete-and-claim \
                batching, a task per step). The two alternate for ROUNDS rounds on the same server; \
                the medians and their ratio are printed (goal: HTTP at least 70% of the database \
                path). Then start → first step in a waiting worker's hands, SAMPLES times each way. \
                --json prints one JSON object.
                """)
        @Option(help: "Runs per round (100-100000).") var runs = 1000
        @Option(help: "Workers (1-32).") var workers = 4
        @Option(help: "Steps each worker holds at once: its claim batch (1-256).") var concurrency = 16
        @Option(help: "Rounds of each (1-10), alternating which goes first.") var rounds = 3
        @Option(help: "Start → first step samples each way (10-2000).") var samples = 100
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database (it must be disposable).", valueName: "url"))
        var databaseURL: String?
        @Flag(help: "Print one JSON object instead of tables.") var json = false

        func validate() throws {
            guard (100...100_000).contains(runs) else { throw ValidationError("--runs must be 100 to 100000, got \(runs)") }
            guard (1...32).contains(workers) else { throw ValidationError("--workers must be 1 to 32, got \(workers)") }
            guard (1...256).contains(concurrency) else { throw ValidationError("--concurrency must be 1 to 256, got \(concurrency)") }
            guard (1...10).contains(rounds) else { throw ValidationError("--rounds must be 1 to 10, got \(rounds)") }
            guard (10...2000).contains(samples) else { throw ValidationError("--samples must be 10 to 2000, got \(samples)") }
        }

        struct Report: Encodable {
            var runs = 0, workers = 0, concurrency = 0, rounds = 0
            var database_steps_per_s: [Double] = []
            var http_steps_per_s: [Double] = []
            var database_steps_per_s_median = 0.0
            var http_steps_per_s_median = 0.0
            var http_vs_database = 0.0
            var database_start_to_step_p50_ms = 0.0
            var database_start_to_step_p99_ms = 0.0
            var http_start_to_step_p50_ms = 0.0
            var http_start_to_step_p99_ms = 0.0
        }

        func run() async throws {
            let quiet = json
            let say: @Sendable (String) -> Void = { line in if !quiet { print(line) } }
            let (url, embedded) = try benchDatabase(databaseURL, say: say)
            defer { embedded?.destroy() }
            let r = try await WorkerBench(url: url, runs: runs, workers: workers, concurrency: concurrency, rounds: rounds, samples: samples, say: say).run()
            if json { return try printJSON(r) }
            print("\n" + table(["figure", "over HTTP (RegentWorker)", "on the database (StepWorker)", "ratio", "goal"], [
                ["steps/s, median of \(rounds) (\(workers) workers × \(concurrency))", String(format: "%.0f", r.http_steps_per_s_median),
                 String(format: "%.0f", r.database_steps_per_s_median), String(format: "%.0f%%", 100 * r.http_vs_database), "≥ 70%"],
                ["start → first step, p50", String(format: "%.2f ms", r.http_start_to_step_p50_ms), String(format: "%.2f ms", r.database_start_to_step_p50_ms), "", ""],
                ["start → first step, p99", String(format: "%.2f ms", r.http_start_to_step_p99_ms), String(format: "%.2f ms", r.database_start_to_step_p99_ms), "", ""],
            ]))
        }
    }
}

/// The measuring part of `regent bench workers`.
struct WorkerBench {
    let url: String
    let runs: Int
    let workers: Int
    let concurrency: Int
    let rounds: Int
    let samples: Int
    let say: @Sendable (String) -> Void

    func run() async throws -> BenchCommand.Workers.Report {
        let config = try ConnectionConfiguration(url)
        let boot = try await Boot(options: .init(database: config, actor: "bench")).run()
        let pool = boot.pool
        defer { Task { await pool.shutdown() } }
        let token = try await pool.withConnection { conn in
            let dir = NSTemporaryDirectory() + "regent-bench-workers-\(getpid())"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            for manifest in [
                #"{"workflow_type": "bench.linear", "steps": [{"name": "one", "lane": "bench"}, {"name": "two", "lane": "bench"}, {"name": "three", "lane": "bench"}]}"#,
                #"{"workflow_type": "bench.one", "steps": [{"name": "first", "lane": "first"}]}"#,
            ] {
                try Data(manifest.utf8).write(to: URL(fileURLWithPath: dir + "/workflow.json"))
                _ = try await PackageStore().deploy(try PackageContents(path: dir, limits: .default), actor: .named("bench"), on: conn)
            }
            return try await TokenStore().create(name: "bench-worker-\(getpid())", role: .worker, actor: "bench", on: conn).1
        }
        // The API node: a child process, as in production.
        let port = try EmbeddedPostgres.freeLoopbackPort()
        let logs = NSTemporaryDirectory() + "regent-bench-workers-logs-\(getpid())"
        let cluster = LocalCluster(databaseURL: url, logDirectory: logs, extraArguments: ["--http-address", "127.0.0.1:\(port)", "--log-level", "warning"])
        defer {
            cluster.stopAll()
            try? FileManager.default.removeItem(atPath: logs)
        }
        try cluster.spawn()
        let base = "http://127.0.0.1:\(port)"
        try await waitUntilReady(base)
        say("▶ one node serving the API at \(base); \(runs) runs of 3 steps per round, \(workers) workers × \(concurrency) steps each")

        var report = BenchCommand.Workers.Report()
        (report.runs, report.workers, report.concurrency, report.rounds) = (runs, workers, concurrency, rounds)
        for round in 1...rounds {
            for http in round % 2 == 1 ? [false, true] : [true, false] {
                try await startRuns(pool, type: "bench.linear", count: runs)
                let rate = http ? try await drainOverHTTP(base, token: token, pool: pool) : try await drainOnDatabase(config, pool: pool)
                if http { report.http_steps_per_s.append(rate) } else { report.database_steps_per_s.append(rate) }
                say(String(format: "  round %d %@: %.0f steps/s", round, http ? "over HTTP    " : "on the database", rate))
            }
        }
        report.http_steps_per_s_median = median(report.http_steps_per_s)
        report.database_steps_per_s_median = median(report.database_steps_per_s)
        report.http_vs_database = report.http_steps_per_s_median / max(report.database_steps_per_s_median, 1)

        say("▶ start → first step in a waiting worker's hands, \(samples) samples each way")
        let database = try await timeToClaim(
            config, namespace: RunStore.namespace, lane: try Lane("first"), worker: try registered(pool, "bench-latency-db", lane: "first"), samples: samples,
            act: { conn, i in try await RunStore().start(.init(workflowType: try WorkflowType("bench.one"), input: #"{"sample": \#(i)}"#), actor: .named("bench"), on: conn).runID },
            settle: { conn, runID, _ in _ = try await RunStore().cancel(runID, reason: "bench sample", actor: .named("bench"), on: conn) })
        report.database_start_to_step_p50_ms = database.median.milliseconds
        report.database_start_to_step_p99_ms = database.p99.milliseconds
        let http = try await startToStepOverHTTP(base, token: token, config: config)
        report.http_start_to_step_p50_ms = http.median.milliseconds
        report.http_start_to_step_p99_ms = http.p99.milliseconds
        say(String(format: "  database p50 %.2f ms p99 %.2f ms; HTTP p50 %.2f ms p99 %.2f ms", report.database_start_to_step_p50_ms,
                   report.database_start_to_step_p99_ms, report.http_start_to_step_p50_ms, report.http_start_to_step_p99_ms))
        return report
    }

    func median(_ values: [Double]) -> Double {
        let s = values.sorted()
        return s.isEmpty ? 0 : s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    func registered(_ pool: ConnectionPool, _ name: String, lane: String) async throws -> WorkerInstanceID {
        let id = try WorkerInstanceID(name)
        _ = try await pool.withConnection {
            try await WorkerRegistry().register(
                namespace: RunStore.namespace, workerInstanceID: id, workerID: try WorkerID("bench"), lanes: [try Lane(lane)], capabilities: [],
                livenessTTL: .seconds(3600), on: $0)
        }
        return id
    }

    func startRuns(_ pool: ConnectionPool, type: String, count: Int) async throws {
        let t = try WorkflowType(type)
        try await pool.withConnection { conn in
            for i in 0..<count { _ = try await RunStore().start(.init(workflowType: t, input: #"{"i": \#(i)}"#), actor: .named("bench"), on: conn) }
            try await conn.query("ANALYZE workflow.ready")
        }
    }

    /// Succeeded runs of the linear type.
    func succeeded(_ pool: ConnectionPool) async throws -> Int {
        try await pool.query("SELECT count(*) AS n FROM workflow.runs WHERE workflow_type = 'bench.linear' AND state = 'succeeded'").single().decode("n", as: Int.self)
    }

    /// Polls until every started linear run succeeded; steps/s from the workers' start.
    func waitDrained(_ pool: ConnectionPool, from started: ContinuousClock.Instant, target: Int) async throws -> Double {
        let deadline = started + .seconds(600)
        while try await succeeded(pool) < target {
            guard ContinuousClock.now < deadline else { throw RegentError(.timeout, "the runs did not finish within 10 minutes") }
            try await Task.sleep(for: .milliseconds(20))
        }
        return Double(runs * 3) / (started.duration(to: .now).milliseconds / 1000)
    }

    func drainOnDatabase(_ config: ConnectionConfiguration, pool: ConnectionPool) async throws -> Double {
        let target = try await succeeded(pool) + runs
        let workerPool = ConnectionPool(configuration: config, options: .init(maxConnections: workers + 2))
        let waker = QueueWaker(configuration: config)
        var quiet = Logger(label: "bench.worker")
        quiet.logLevel = .warning
        let log = quiet
        let started = ContinuousClock.now
        let rate = try await withThrowingTaskGroup(of: Double?.self) { group in
            group.addTask { await workerPool.run(); return nil }
            group.addTask { await waker.run(); return nil }
            for w in 0..<workers {
                var worker = StepWorker(instanceID: try WorkerInstanceID("bench-db-\(w)"), lanes: [try Lane("bench")])
                worker.batch = concurrency
                group.addTask { _ = await worker.run(pool: workerPool, waker: waker, logger: log); return nil }
            }
            let rate = try await waitDrained(pool, from: started, target: target)
            group.cancelAll()
            return rate
        }
        await workerPool.shutdown()
        return rate
    }

    func sdkWorker(_ base: String, token: String, name: String, lane: String, concurrency: Int) -> RegentWorker {
        var c = WorkerConfiguration(urls: [base], token: token)
        c.instanceID = name
        c.workerID = "bench"
        c.lanes = [lane]
        c.maxConcurrentSteps = concurrency
        c.longPoll = .seconds(1)
        var quiet = Logger(label: "bench.worker")
        quiet.logLevel = .warning
        return RegentWorker(configuration: c, logger: quiet)
    }

    func drainOverHTTP(_ base: String, token: String, pool: ConnectionPool) async throws -> Double {
        let target = try await succeeded(pool) + runs
        let sdk = (0..<workers).map { sdkWorker(base, token: token, name: "bench-http-\($0)", lane: "bench", concurrency: concurrency) }
        for w in sdk {
            w.fallback { ctx in
                ctx.reportCost(1)
                return ["step": .string(ctx.step), "attempt": .integer(Int64(ctx.attempt))]
            }
        }
        let started = ContinuousClock.now
        return try await withThrowingTaskGroup(of: Double?.self) { group in
            for w in sdk { group.addTask { try await w.run(); return nil } }
            let rate = try await waitDrained(pool, from: started, target: target)
            for w in sdk { w.shutdown() }
            try await group.waitForAll()
            var requests = 0, carried = 0, leases = 0
            for w in sdk {
                let c = w.tally.claims
                requests += c.requests
                carried += c.completionsCarried
                leases += c.leases
            }
            let per = Double(max(requests, 1))
            say(String(format: "    %d claim requests carrying %.1f completions and bringing %.1f leases each on average", requests,
                       Double(carried) / per, Double(leases) / per))
            return rate
        }
    }

    /// Times a start → the handler of a RegentWorker already long-polling for it.
    func startToStepOverHTTP(_ base: String, token: String, config: ConnectionConfiguration) async throws -> Figures {
        let worker = sdkWorker(base, token: token, name: "bench-latency-http", lane: "first", concurrency: 1)
        let (arrivals, arrived) = AsyncStream<(Int, ContinuousClock.Instant)>.makeStream()
        worker.on("first") { ctx in
            let now = ContinuousClock.now
            if let i = ctx.input["sample"]?.intValue { arrived.yield((Int(i), now)) }
            return [:]
        }
        let task = Task { try await worker.run() }
        let conn = try await PostgresConnection.connect(config)
        var latencies: [Duration] = []
        var iterator = arrivals.makeAsyncIterator()
        // Let the worker register and reach its long poll.
        try await Task.sleep(for: .milliseconds(300))
        for i in 0..<samples {
            try await Task.sleep(for: .milliseconds(10))
            let sent = ContinuousClock.now
            _ = try await RunStore().start(.init(workflowType: try WorkflowType("bench.one"), input: #"{"sample": \#(i)}"#), actor: .named("bench"), on: conn)
            while let (n, at) = await iterator.next() {
                if n == i {
                    latencies.append(sent.duration(to: at))
                    break
                }
            }
        }
        await conn.close()
        worker.shutdown()
        arrived.finish()
        try await task.value
        return Figures(latencies)
    }
}
