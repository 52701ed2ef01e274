import ArgumentParser
import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentBench
import RegentCore
import RegentDrill

extension BenchCommand {
    struct Schedules: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Many schedules due at the same minute: how late their runs start, and what firing costs the leader.",
            discussion: """
                Deploys a one-step package, creates SCHEDULES schedules every minute (`* * * * *`, no jitter: every one \
                due at the same instant, the worst case) and starts one `regent serve` node (a child process), which \
                leads and fires them for MINUTES minutes. Reports, per minute, how late each slot's run started \
                against its slot (p50, p99, worst; goal p99 < 1 s for 10,000 schedules), the node's CPU over the whole \
                window (idle seconds between bursts included: a leader that scanned every schedule each second would \
                show here) and per fired slot. The raw baseline, in the same run and on the same server: the same \
                number of runs started by one SQL statement calling workflow.start_run in a loop (no cron, no \
                fencing, no leader): the ratio says what the schedule machinery adds to the runs' own cost.
                """)
        @Option(help: "Schedules (100-100000).") var schedules = 10_000
        @Option(help: "Minutes to watch (1-30).") var minutes = 2
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database (it must be disposable).", valueName: "url"))
        var databaseURL: String?
        @Flag(help: "Print one JSON object instead of tables.") var json = false

        func validate() throws {
            guard (100...100_000).contains(schedules) else { throw ValidationError("--schedules must be 100 to 100000, got \(schedules)") }
            guard (1...30).contains(minutes) else { throw ValidationError("--minutes must be 1 to 30, got \(minutes)") }
        }

        struct Minute: Encodable {
            let slot: Date
            let fired: Int
            let p50_ms: Double
            let p99_ms: Double
            let worst_ms: Double
            let burst_s: Double
        }
        struct Report: Encodable {
            var schedules = 0
            var raw_starts_per_s: Double = 0
            var raw_seconds: Double = 0
            var minutes: [Minute] = []
            var fired_starts_per_s: Double = 0
            var ratio_vs_raw: Double = 0
            var node_cpu_percent: Double = 0
            var node_cpu_ms_per_slot: Double = 0
            var goal_met = false
        }

        func run() async throws {
            let quiet = json
            let say: @Sendable (String) -> Void = { line in if !quiet { print(line) } }
            let (url, embedded) = try benchDatabase(databaseURL, say: say)
            defer { embedded?.destroy() }
            let config = try ConnectionConfiguration(url)
            let boot = try await Boot(options: .init(database: config, actor: "bench")).run()
            let pool = boot.pool
            defer { Task { await pool.shutdown() } }
            var report = Report()
            report.schedules = schedules
            try await pool.withConnection { conn in
                let dir = NSTemporaryDirectory() + "regent-bench-cron-\(getpid())"
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                defer { try? FileManager.default.removeItem(atPath: dir) }
                try Data(#"{"workflow_type": "bench.cron", "steps": [{"name": "tick", "lane": "bench"}]}"#.utf8).write(to: URL(fileURLWithPath: dir + "/workflow.json"))
                _ = try await PackageStore().deploy(try PackageContents(path: dir, limits: .default), actor: .named("bench"), on: conn)
                // The raw baseline: the same number of runs, started by one statement.
                say("▶ raw baseline: \(schedules) runs started by one statement looping over workflow.start_run")
                let t0 = ContinuousClock.now
                _ = try await conn.query(
                    """
                    SELECT count(*) AS n FROM generate_series(1, \(schedules)) AS g,
                    LATERAL workflow.start_run('bench.cron', '{}'::jsonb, 'raw:' || g, NULL, NULL, NULL, 'bench', 'runs', NULL, NULL, NULL) AS s
                    """, purpose: "bench: raw starts")
                report.raw_seconds = t0.duration(to: .now).milliseconds / 1000
                report.raw_starts_per_s = Double(schedules) / report.raw_seconds
                say(String(format: "  %.2f s: %.0f runs/s", report.raw_seconds, report.raw_starts_per_s))
                // Created in one statement (the store's create takes one transaction each: minutes for 100,000).
                try await conn.query(
                    """
                    INSERT INTO workflow.schedules (name, workflow_type, cron, timezone, catch_up, next_slot, next_fire_at, created_by, updated_by)
                    SELECT 'bench-' || g, 'bench.cron', '* * * * *', 'UTC', 'skip', date_trunc('minute', now()) + interval '1 minute',
                           date_trunc('minute', now()) + interval '1 minute', 'bench', 'bench'
                    FROM generate_series(1, \(schedules)) AS g
                    """, purpose: "bench: schedules")
                try await conn.query("ANALYZE workflow.schedules", purpose: "bench: statistics")
            }
            let logs = NSTemporaryDirectory() + "regent-bench-schedules-logs-\(getpid())"
            let cluster = LocalCluster(databaseURL: url, logDirectory: logs, extraArguments: ["--log-level", "warning"])
            defer {
                cluster.stopAll()
                try? FileManager.default.removeItem(atPath: logs)
            }
            let node = try cluster.spawn()
            let first = try await pool.query("SELECT date_trunc('minute', now()) + interval '1 minute' AS t", purpose: "bench: first slot").single()
                .decode("t", as: Date.self)
            say("▶ one node leads; \(schedules) schedules fire at every minute from \(ISO8601DateFormatter().string(from: first)) for \(minutes) minute(s)")
            // The window: from a second before the first slot to the end of the last minute's burst.
            while Date() < first.addingTimeInterval(-1) { try await Task.sleep(for: .milliseconds(200)) }
            let cpu0 = processCPUSeconds(node.pid), w0 = ContinuousClock.now
            var totalFired = 0, totalBurst = 0.0
            for m in 0..<minutes {
                let slot = first.addingTimeInterval(Double(60 * m))
                let deadline = slot.addingTimeInterval(58)
                var fired = 0
                while Date() < deadline {
                    fired = try await pool.query(
                        "SELECT count(*) AS n FROM workflow.schedule_fires WHERE slot = \(slot) AND outcome = 'started'", purpose: "bench: fired"
                    ).single().decode("n", as: Int.self)
                    if fired >= schedules { break }
                    try await Task.sleep(for: .milliseconds(100))
                }
                let late = try await pool.query(
                    """
                    SELECT extract(epoch FROM r.started_at - f.slot) * 1000 AS ms FROM workflow.schedule_fires f JOIN workflow.runs r USING (run_id)
                    WHERE f.slot = \(slot) AND f.outcome = 'started' ORDER BY 1
                    """, purpose: "bench: lateness").map { try $0.decode("ms", as: Double.self) }
                func pct(_ p: Double) -> Double { late.isEmpty ? 0 : late[min(late.count - 1, Int((Double(late.count - 1) * p).rounded()))] }
                let minute = Minute(slot: slot, fired: late.count, p50_ms: pct(0.5), p99_ms: pct(0.99), worst_ms: late.last ?? 0, burst_s: (late.last ?? 0) / 1000)
                report.minutes.append(minute)
                totalFired += late.count
                totalBurst += minute.burst_s
                say(String(format: "  %@: %d fired, lateness p50 %.0f ms, p99 %.0f ms, worst %.0f ms", ISO8601DateFormatter().string(from: slot), late.count,
                           minute.p50_ms, minute.p99_ms, minute.worst_ms))
                // Wait for the next minute (the idle part counts in the CPU figure).
                if m < minutes - 1 {
                    while Date() < slot.addingTimeInterval(59) { try await Task.sleep(for: .milliseconds(200)) }
                }
            }
            // Close the window at the end of the last minute, so that idle time is in it as it is in the others.
            let lastSlot = first.addingTimeInterval(Double(60 * (minutes - 1)))
            while Date() < lastSlot.addingTimeInterval(59) { try await Task.sleep(for: .milliseconds(200)) }
            let cpu = processCPUSeconds(node.pid) - cpu0, wall = w0.duration(to: .now).milliseconds / 1000
            report.node_cpu_percent = 100 * cpu / wall
            report.node_cpu_ms_per_slot = totalFired > 0 ? 1000 * cpu / Double(totalFired) : 0
            report.fired_starts_per_s = totalBurst > 0 ? Double(totalFired) / totalBurst : 0
            report.ratio_vs_raw = report.raw_starts_per_s > 0 ? report.fired_starts_per_s / report.raw_starts_per_s : 0
            report.goal_met = report.minutes.allSatisfy { $0.fired == schedules && $0.p99_ms < 1000 }
            if json { return try printJSON(report) }
            print("\n" + table(["minute", "fired", "p50", "p99", "worst", "goal p99 < 1 s"], report.minutes.map { m in
                [ISO8601DateFormatter().string(from: m.slot), "\(m.fired)/\(schedules)", String(format: "%.0f ms", m.p50_ms), String(format: "%.0f ms", m.p99_ms),
                 String(format: "%.0f ms", m.worst_ms), m.fired == schedules && m.p99_ms < 1000 ? "met" : "MISSED"]
            }))
            print("\n" + table(["starts/s", "raw (one statement)", "fired by the leader", "fired / raw", "node CPU over the window", "node CPU per slot"], [[
                "", String(format: "%.0f", report.raw_starts_per_s), String(format: "%.0f", report.fired_starts_per_s), String(format: "%.2f×", report.ratio_vs_raw),
                String(format: "%.1f%%", report.node_cpu_percent), String(format: "%.3f ms", report.node_cpu_ms_per_slot),
            ]]))
        }
    }
}
