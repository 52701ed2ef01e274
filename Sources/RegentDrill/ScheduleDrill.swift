import Foundation
import PostgresClient
import RegentCore

/// Schedules every second on a local cluster while its leader is SIGKILLed again and again
/// (issue 31); then, from the database's records alone: every slot between each schedule's
/// first and last was fired exactly once or skipped by its policy (never both, never twice);
/// no slot's run started before its slot (plus its jitter); each fired slot started one run
/// with its key.
package struct ScheduleDrill {
    package let env: DrillEnvironment
    package let schedules: Int
    package let duration: Duration
    /// Seconds between leader kills (a random pause in this range).
    package let killEvery: ClosedRange<Int>
    package let say: (String) -> Void

    package init(env: DrillEnvironment, schedules: Int, duration: Duration, killEvery: ClosedRange<Int> = 2...5, say: @escaping (String) -> Void) {
        self.env = env
        self.schedules = schedules
        self.duration = duration
        self.killEvery = killEvery
        self.say = say
    }

    package struct Result {
        package var violations: [String] = []
        package var leaderKills = 0
        package var fired = 0
        package var skipped = 0
        /// Lateness of fired slots (run start against due time), sorted, in milliseconds.
        package var lateness: [Double] = []
        package var took: Duration = .zero

        package func latenessPercentile(_ p: Double) -> Double {
            guard !lateness.isEmpty else { return 0 }
            return lateness[min(lateness.count - 1, Int((Double(lateness.count - 1) * p).rounded()))]
        }
    }

    static let type = "drill.cron"

    /// Schedule i: `all` (every missed slot fires), `skip` (only those within the grace), or
    /// `all` with 800 ms of jitter.
    static func policy(_ i: Int) -> (catchUp: String, jitterMs: Int64) {
        switch i % 3 {
        case 0: ("all", 0)
        case 1: ("skip", 0)
        default: ("all", 800)
        }
    }

    package func run() async throws -> Result {
        var result = Result()
        let conn = env.probeConnection
        _ = try await env.firstLeader()
        try await env.waitForWorkflowSchema()
        while try await !conn.query("SELECT to_regclass('workflow.schedules') IS NOT NULL AS ok").single().decode("ok", as: Bool.self) {
            try await Task.sleep(for: .milliseconds(50))
        }
        let dir = NSTemporaryDirectory() + "regent-drill-cron-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data(#"{"workflow_type": "\#(Self.type)", "steps": [{"name": "tick", "lane": "cron"}]}"#.utf8).write(to: URL(fileURLWithPath: dir + "/workflow.json"))
        let package = try PackageContents(path: dir, limits: .default)
        try? FileManager.default.removeItem(atPath: dir)
        _ = try await PackageStore().deploy(package, actor: .named("drill"), on: conn)
        for i in 0..<schedules {
            let (catchUp, jitterMs) = Self.policy(i)
            _ = try await ScheduleStore().create(
                try ScheduleSpec(name: "drill-\(i)", workflowType: Self.type, cron: "* * * * * *", input: #"{"schedule": \#(i)}"#, catchUp: catchUp,
                                 jitter: .milliseconds(jitterMs)),
                actor: .named("drill"), on: conn)
        }
        say("▶ \(schedules) schedules every second (catch-up all, skip, all with 800 ms jitter); SIGKILLing the leader every \(killEvery.lowerBound)-\(killEvery.upperBound) s for \(duration)")
        let started = ContinuousClock.now
        let end = started + duration
        var rng = SystemRandomNumberGenerator()
        while ContinuousClock.now < end {
            let pause = Duration.seconds(Int64.random(in: Int64(killEvery.lowerBound)...Int64(killEvery.upperBound), using: &rng))
                + .milliseconds(Int64.random(in: 0...999, using: &rng))
            try await Task.sleep(for: min(pause, end - ContinuousClock.now))
            guard ContinuousClock.now < end else { break }
            let (reading, killed) = try await env.killLeaderAndReplace()
            if killed {
                result.leaderKills += 1
                say("  kill \(result.leaderKills): leader of term \(reading.term.value) SIGKILLed and replaced")
            }
            env.cluster.reap()
        }
        // A leader catches up what the last kill left, then every schedule stops where it is.
        _ = try await env.probe.waitForLeader(after: 0, timeout: .seconds(30))
        try await Task.sleep(for: .seconds(3))
        try await conn.query("UPDATE workflow.schedules SET paused = true", purpose: "drill: stop the schedules")
        try await Task.sleep(for: .milliseconds(500))  // a page in flight commits or rolls back
        result.took = started.duration(to: .now)
        result.violations = try await Self.check(conn, schedules: schedules)
        let totals = try await conn.query(
            "SELECT COALESCE(sum(fired), 0)::bigint AS fired, COALESCE(sum(skipped), 0)::bigint AS skipped FROM workflow.schedules").single()
        result.fired = try totals.decode("fired")
        result.skipped = try totals.decode("skipped")
        result.lateness = try await conn.query(
            """
            SELECT extract(epoch FROM r.started_at - f.due_at) * 1000 AS ms FROM workflow.schedule_fires f JOIN workflow.runs r USING (run_id)
            WHERE f.outcome = 'started' ORDER BY 1
            """).map { try $0.decode("ms", as: Double.self) }
        return result
    }

    /// The invariants, from the records alone.
    package static func check(_ conn: PostgresConnection, schedules: Int) async throws -> [String] {
        var violations: [String] = []
        let counts: [(String, PostgresQuery)] = [
            ("a slot recorded twice (fired twice, or fired and skipped)", """
                SELECT count(*) AS n FROM (
                    SELECT f.schedule, s AS slot FROM workflow.schedule_fires f
                    CROSS JOIN LATERAL generate_series(f.slot, COALESCE(f.through_slot, f.slot), interval '1 second') AS s
                    WHERE f.outcome <> 'triggered' GROUP BY 1, 2 HAVING count(*) > 1) AS t
                """),
            ("a slot's run started before its slot plus its jitter", """
                SELECT count(*) AS n FROM workflow.schedule_fires f JOIN workflow.runs r USING (run_id)
                WHERE f.outcome = 'started' AND (r.started_at < f.slot OR r.started_at < f.due_at)
                """),
            ("a fired slot whose run is not the one its key names, or a run of a schedule with no fire recorded", """
                SELECT (SELECT count(*) FROM workflow.schedule_fires f JOIN workflow.runs r USING (run_id)
                        WHERE f.outcome = 'started' AND r.idempotency_key <> 'schedule:' || f.schedule || ':' || to_char(f.slot AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                     + (SELECT count(*) FROM workflow.runs r WHERE r.idempotency_key LIKE 'schedule:drill-%'
                        AND NOT EXISTS (SELECT 1 FROM workflow.schedule_fires f WHERE f.run_id = r.run_id)) AS n
                """),
            ("a slot of a catch-up=all schedule skipped", """
                SELECT count(*) AS n FROM workflow.schedule_fires f JOIN workflow.schedules s ON s.name = f.schedule
                WHERE s.catch_up = 'all' AND f.outcome = 'skipped'
                """),
            ("a slot that failed to start its run", "SELECT count(*) AS n FROM workflow.schedule_fires WHERE outcome = 'failed'"),
            // Every second from each schedule's first recorded slot to its last: fired or skipped.
            ("a slot between a schedule's first and last neither fired nor skipped", """
                SELECT count(*) AS n FROM (
                    SELECT f.schedule, min(f.slot) AS first, max(COALESCE(f.through_slot, f.slot)) AS last
                    FROM workflow.schedule_fires f WHERE f.outcome <> 'triggered' GROUP BY 1) AS b
                CROSS JOIN LATERAL generate_series(b.first, b.last, interval '1 second') AS s
                WHERE NOT EXISTS (
                    SELECT 1 FROM workflow.schedule_fires f WHERE f.schedule = b.schedule AND f.outcome <> 'triggered'
                    AND s BETWEEN f.slot AND COALESCE(f.through_slot, f.slot))
                """),
        ]
        for (what, query) in counts {
            let n = try await conn.query(query, purpose: "drill: \(what)").single().decode("n", as: Int.self)
            if n > 0 { violations.append("\(n) × \(what)") }
        }
        let quiet = try await conn.query(
            "SELECT count(*) AS n FROM workflow.schedules WHERE fired = 0", purpose: "drill: schedules that never fired").single().decode("n", as: Int.self)
        if quiet > 0 { violations.append("\(quiet) of \(schedules) schedules never fired") }
        return violations
    }
}
