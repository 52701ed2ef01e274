import ArgumentParser
import AsyncHTTPClient
import EmbeddedPostgres
import Foundation
import NIOCore
import NIOHTTP1
import PostgresClient
import RegentBench
import RegentCore
import RegentDrill

extension BenchCommand {
    struct Console: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The console's reads at scale, and what open consoles cost a node.",
            discussion: """
                Fills the database with FINISHED finished runs and RUNNING running ones (3 steps each, \
                started through the engine), starts one `regent serve` node (a child process) and times \
                the console's reads over HTTP, SAMPLES times each: the runs list's first page unfiltered \
                and filtered by type, state, type and state, version; a run's page. The baselines, timed \
                the same way in the same run: GET /healthz (HTTP alone) and GET /v1/whoami (HTTP, the \
                token check: one statement). Goal: every read under 100 ms at p95. Then VIEWERS consoles \
                stay open for SECONDS s as the console keeps them: one event stream each carrying the \
                snapshots its view needs (the queues view: cluster and queues; a running run's page: \
                cluster and that run), and then, for comparison, the queues view polling both reads \
                every 2 s instead: the node's CPU and the database's transactions per second, against \
                the same node idle.
                """)
        @Option(help: "Finished runs (10000-5000000).") var finished = 1_000_000
        @Option(help: "Running runs (100-100000).") var running = 10_000
        @Option(help: "Requests timed per read (20-5000).") var samples = 200
        @Option(help: "Open consoles (1-500).") var viewers = 50
        @Option(help: "Seconds each viewer phase lasts (5-300).") var seconds = 20
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database (it must be disposable).", valueName: "url"))
        var databaseURL: String?
        @Flag(help: "Print one JSON object instead of tables.") var json = false

        func validate() throws {
            guard (10_000...5_000_000).contains(finished) else { throw ValidationError("--finished must be 10000 to 5000000, got \(finished)") }
            guard (100...100_000).contains(running) else { throw ValidationError("--running must be 100 to 100000, got \(running)") }
            guard (20...5000).contains(samples) else { throw ValidationError("--samples must be 20 to 5000, got \(samples)") }
            guard (1...500).contains(viewers) else { throw ValidationError("--viewers must be 1 to 500, got \(viewers)") }
            guard (5...300).contains(seconds) else { throw ValidationError("--seconds must be 5 to 300, got \(seconds)") }
        }

        struct Read: Encodable {
            let name: String
            let path: String
            let p50_ms: Double
            let p95_ms: Double
            let vs_healthz_p50: Double
        }
        struct Load: Encodable {
            let phase: String
            let node_cpu_percent: Double
            let database_xacts_per_s: Double
            let requests_per_s: Double
        }
        struct Report: Encodable {
            var finished = 0, running = 0, samples = 0, viewers = 0, seconds = 0
            var reads: [Read] = []
            var load: [Load] = []
        }

        func run() async throws {
            let quiet = json
            let say: @Sendable (String) -> Void = { line in if !quiet { print(line) } }
            let (url, embedded) = try benchDatabase(databaseURL, say: say)
            defer { embedded?.destroy() }
            let r = try await ConsoleBench(url: url, finished: finished, running: running, samples: samples, viewers: viewers, seconds: seconds, say: say).run()
            if json { return try printJSON(r) }
            print("\n" + table(["read (\(samples) each)", "p50", "p95", "p50 / healthz p50", "goal p95 < 100 ms"], r.reads.map { read in
                [read.name, String(format: "%.2f ms", read.p50_ms), String(format: "%.2f ms", read.p95_ms), String(format: "%.1f×", read.vs_healthz_p50),
                 read.path.hasPrefix("/v1/runs") ? (read.p95_ms < 100 ? "met" : "MISSED") : "baseline"]
            }))
            print("\n" + table(["\(viewers) consoles, \(seconds) s each", "node CPU", "database xacts/s", "requests/s"], r.load.map { l in
                [l.phase, String(format: "%.1f%%", l.node_cpu_percent), String(format: "%.1f", l.database_xacts_per_s), String(format: "%.1f", l.requests_per_s)]
            }))
        }
    }
}

/// The measuring part of `regent bench console`.
struct ConsoleBench {
    let url: String
    let finished: Int
    let running: Int
    let samples: Int
    let viewers: Int
    let seconds: Int
    let say: @Sendable (String) -> Void
    /// One client for every simulated browser: each console holds a connection for its stream
    /// (the shared client would queue them behind its per-host limit).
    let client = HTTPClient(
        eventLoopGroupProvider: .singleton,
        configuration: .init(connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 1024)))

    func run() async throws -> BenchCommand.Console.Report {
        do {
            let report = try await measureAll()
            try await client.shutdown()
            return report
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    func measureAll() async throws -> BenchCommand.Console.Report {
        let config = try ConnectionConfiguration(url)
        let boot = try await Boot(options: .init(database: config, actor: "bench")).run()
        let pool = boot.pool
        defer { Task { await pool.shutdown() } }
        var report = BenchCommand.Console.Report()
        (report.finished, report.running, report.samples, report.viewers, report.seconds) = (finished, running, samples, viewers, seconds)

        let (token, hash, runID) = try await seed(pool)
        let port = try EmbeddedPostgres.freeLoopbackPort()
        let logs = NSTemporaryDirectory() + "regent-bench-console-logs-\(getpid())"
        let cluster = LocalCluster(databaseURL: url, logDirectory: logs, extraArguments: ["--http-address", "127.0.0.1:\(port)", "--log-level", "warning"])
        defer {
            cluster.stopAll()
            try? FileManager.default.removeItem(atPath: logs)
        }
        let node = try cluster.spawn()
        let base = "http://127.0.0.1:\(port)"
        try await waitUntilReady(base)
        say("▶ one node serving the API at \(base)")

        let reads: [(String, String)] = [
            ("GET /healthz (HTTP alone)", "/healthz"),
            ("GET /v1/whoami (HTTP + token check)", "/v1/whoami"),
            ("runs, first page", "/v1/runs?limit=50"),
            ("runs of a type", "/v1/runs?type=bench.type3&limit=50"),
            ("runs failed", "/v1/runs?state=failed&limit=50"),
            ("runs of a type, failed", "/v1/runs?type=bench.type3&state=failed&limit=50"),
            ("runs running", "/v1/runs?state=running&limit=50"),
            ("runs of a version", "/v1/runs?version=\(hash)&limit=50"),
            ("a run's page", "/v1/runs/\(runID)"),
        ]
        var healthz = 0.0
        for (name, path) in reads {
            var times: [Duration] = []
            for _ in 0..<10 { _ = try await get(base + path, token: token) }  // warm the plans and the pool
            for _ in 0..<samples {
                let started = ContinuousClock.now
                _ = try await get(base + path, token: token)
                times.append(started.duration(to: .now))
            }
            let figures = Figures(times)
            let p50 = figures.median.milliseconds, p95 = figures.percentile(0.95).milliseconds
            if path == "/healthz" { healthz = p50 }
            report.reads.append(.init(name: name, path: path, p50_ms: p50, p95_ms: p95, vs_healthz_p50: p50 / max(healthz, 0.001)))
            say(String(format: "  %@: p50 %.2f ms, p95 %.2f ms", name, p50, p95))
        }

        say("▶ the node idle for \(seconds) s, then \(viewers) consoles on the queues view, on a run's page, and the queues view by polling")
        report.load.append(try await measure("idle (no console)", node: node.pid, pool: pool) { _ in 0 })
        // What the console does: one stream each, with the snapshots its view needs; no request.
        report.load.append(try await measure("queues view: stream + cluster and queues snapshots", node: node.pid, pool: pool) { deadline in
            try await viewersLoad(base: base, token: token, deadline: deadline, stream: "snapshot=cluster&snapshot=queues", every: nil, paths: [])
        })
        report.load.append(try await measure("a run's page: stream + cluster and run snapshots", node: node.pid, pool: pool) { deadline in
            try await viewersLoad(base: base, token: token, deadline: deadline, stream: "snapshot=cluster&snapshot=run:\(runID)", every: nil, paths: [])
        })
        // For comparison: the same views polling their reads every 2 s, each request checking its token.
        report.load.append(try await measure("queues view by polling (no snapshots), 2 reads / 2 s", node: node.pid, pool: pool) { deadline in
            try await viewersLoad(base: base, token: token, deadline: deadline, stream: "", every: .seconds(2), paths: ["/v1/cluster", "/v1/queues"])
        })
        return report
    }

    /// Deploys a 3-step workflow, starts `running` runs through the engine and writes `finished`
    /// finished ones (10 types, 20 versions, 1% failed) straight into the runs table.
    func seed(_ pool: ConnectionPool) async throws -> (token: String, hash: String, runID: String) {
        try await pool.withConnection { conn in
            let dir = NSTemporaryDirectory() + "regent-bench-console-\(getpid())"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let manifest = #"{"workflow_type": "bench.console", "steps": [{"name": "one", "lane": "bench"}, {"name": "two", "lane": "bench"}, {"name": "three", "lane": "bench"}]}"#
            try Data(manifest.utf8).write(to: URL(fileURLWithPath: dir + "/workflow.json"))
            let hash = try await PackageStore().deploy(try PackageContents(path: dir, limits: .default), actor: .named("bench"), on: conn).contentHash
            let token = try await TokenStore().create(name: "bench-console-\(getpid())", role: .read, actor: "bench", on: conn).1
            say("▶ writing \(finished) finished runs …")
            let started = ContinuousClock.now
            var done = 0
            while done < finished {
                let n = min(100_000, finished - done)
                try await conn.query(
                    """
                    INSERT INTO workflow.runs (run_id, workflow_type, package_hash, state, input, idempotency_key, started_by, started_at,
                                               finished_at, finished_by, reason)
                    SELECT 'run_' || lpad(to_hex(g), 26, '0'), 'bench.type' || (g % 10),
                           encode(sha256(convert_to('bench-version-' || (g % 20), 'UTF8')), 'hex'),
                           CASE WHEN g % 100 = 0 THEN 'failed' ELSE 'succeeded' END, '{"n": 1}', 'key-' || g, 'bench',
                           now() - interval '1 day' + g * interval '10 ms', now() - interval '1 day' + g * interval '10 ms' + interval '2 s', 'engine',
                           CASE WHEN g % 100 = 0 THEN 'step_failed' END
                    FROM generate_series(\(done + 1)::bigint, \(done + n)::bigint) g
                    """, purpose: "bench: finished runs")
                done += n
            }
            say(String(format: "  %.1f s", started.duration(to: .now).milliseconds / 1000))
            say("▶ starting \(running) runs through the engine …")
            let type = try WorkflowType("bench.console")
            var runID = ""
            for i in 0..<running {
                runID = try await RunStore().start(.init(workflowType: type, input: #"{"i": \#(i)}"#), actor: .named("bench"), on: conn).runID
            }
            // The listing indexes, as the leader builds them online (here before the node starts, so
            // neither the reads nor the idle phase measure a build in progress).
            say("▶ building the listing indexes online …")
            try await OnlineIndexes.ensure(schemas: ["workflow"], on: conn)
            try await conn.query("VACUUM ANALYZE workflow.runs")
            try await conn.query("ANALYZE workflow.run_steps")
            return (token, SHA256.hex(bytes: Array("bench-version-3".utf8)), runID)
        }
    }

    func get(_ url: String, token: String) async throws -> Int {
        var request = HTTPClientRequest(url: url)
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        let response = try await client.execute(request, timeout: .seconds(30))
        _ = try await response.body.collect(upTo: 16 << 20)
        guard response.status == .ok else { throw RegentError(.invalidInput, "GET \(url) answered \(response.status.code)") }
        return 1
    }

    /// Node CPU (from /proc), database transactions/s (pg_stat_database) and requests/s while `load` runs for `seconds`.
    func measure(_ phase: String, node pid: Int32, pool: ConnectionPool, load: @escaping @Sendable (ContinuousClock.Instant) async throws -> Int)
        async throws -> BenchCommand.Console.Load
    {
        func xacts() async throws -> Int64 {
            try await pool.query("SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = current_database()").single()
                .decode("n", as: Int64.self)
        }
        let cpu0 = processCPUSeconds(pid), x0 = try await xacts(), t0 = ContinuousClock.now
        let deadline = t0 + .seconds(seconds)
        let requests = try await load(deadline)
        if ContinuousClock.now < deadline { try await Task.sleep(until: deadline) }
        let elapsed = t0.duration(to: .now).milliseconds / 1000
        let cpu1 = processCPUSeconds(pid), x1 = try await xacts()
        let result = BenchCommand.Console.Load(
            phase: phase, node_cpu_percent: 100 * (cpu1 - cpu0) / elapsed, database_xacts_per_s: Double(x1 - x0 - 2) / elapsed,
            requests_per_s: Double(requests) / elapsed)
        say(String(format: "  %@: node CPU %.1f%%, %.1f database xacts/s, %.1f requests/s", phase, result.node_cpu_percent, result.database_xacts_per_s, result.requests_per_s))
        return result
    }


    /// `viewers` consoles: each holds the event stream open and reads `paths` every `every`,
    /// starting at a random point of the period (as browsers opened at different times do).
    func viewersLoad(base: String, token: String, deadline: ContinuousClock.Instant, stream query: String, every: Duration?, paths: [String]) async throws -> Int {
        try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<viewers {
                group.addTask {
                    var request = HTTPClientRequest(url: base + "/v1/events" + (query.isEmpty ? "" : "?" + query))
                    request.headers.add(name: "Authorization", value: "Bearer \(token)")
                    let stream = try await client.execute(request, deadline: .now() + .seconds(Int64(seconds) + 30))
                    let reader = Task { for try await _ in stream.body {} }
                    defer { reader.cancel() }
                    var count = 0
                    guard let every else {
                        try await Task.sleep(until: deadline)
                        return 0
                    }
                    try await Task.sleep(for: .milliseconds(Int.random(in: 0..<Int(every.milliseconds))))
                    while ContinuousClock.now < deadline {
                        let next = ContinuousClock.now + every
                        for path in paths { count += try await get(base + path, token: token) }
                        if next < deadline { try await Task.sleep(until: next) } else { break }
                    }
                    return count
                }
            }
            var total = 0
            for try await n in group { total += n }
            return total
        }
    }
}
