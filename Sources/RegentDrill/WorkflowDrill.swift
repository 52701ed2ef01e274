import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore

/// Runs of a workflow with a fan-out and a join, carried by a pool of `regent worker`
/// processes, while the leader node and workers are SIGKILLed again and again and runs are
/// cancelled under the workers' hands; then checks that every run finished exactly once and
/// that nothing of a finished run is left claimable or running (docs/runs.md lists the
/// invariants).
package struct WorkflowDrill {
    package let env: DrillEnvironment
    package let runs: Int
    package let kills: Int
    package let workers: Int
    /// Runs cancelled in all, spread over the fault rounds.
    package let cancels: Int
    /// Steps each worker claims and completes at once (batches complete sibling steps of
    /// several runs in one statement: the lock order across runs is what they test).
    package let batch: Int
    package let say: (String) -> Void

    package init(
        env: DrillEnvironment, runs: Int, kills: Int, workers: Int, cancels: Int = 0, batch: Int = 4, say: @escaping (String) -> Void
    ) {
        self.env = env
        self.batch = batch
        self.runs = runs
        self.kills = kills
        self.workers = workers
        self.cancels = cancels
        self.say = say
    }

    package struct Result {
        package var violations: [String] = []
        package var states: [String: Int] = [:]
        package var took: Duration = .zero
        package var leaderKills = 0
        package var workerKills = 0
        package var reclaimedLeases = 0
        /// Step executions fenced because their run finished first (cancelled or failed).
        package var fencedSteps = 0
        /// Deadlocks the server broke in the drill's database while it ran (pg_stat_database).
        package var deadlocks: Int64 = 0
    }

    /// The database's deadlock counter (statistics read fresh).
    package static func deadlockCount(_ conn: PostgresConnection) async throws -> Int64 {
        try await conn.query("SELECT pg_stat_clear_snapshot()", purpose: "drill: fresh statistics")
        return try await conn.query(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()", purpose: "drill: deadlocks"
        ).single().decode("deadlocks", as: Int64.self)
    }

    static let type = "drill.fanout"

    /// prepare → (left, middle, right) → join → finish; short step timeouts so a killed
    /// worker's lease lapses within the drill, many attempts so no run fails for it.
    static func manifest(version: Int) -> String {
        let step = #""lane": "drill", "timeout": "2s", "max_attempts": 50, "backoff": {"base": "100ms", "max": "1s"}"#
        return """
            {"workflow_type": "\(type)", "description": "drill version \(version)", "budget": {"limit": 1000, "unit": "units"}, "steps": [
              {"name": "prepare", \(step)},
              {"name": "left", "after": ["prepare"], \(step)}, {"name": "middle", "after": ["prepare"], \(step)},
              {"name": "right", "after": ["prepare"], \(step)},
              {"name": "join", "after": ["left", "middle", "right"], \(step)},
              {"name": "finish", \(step)}]}
            """
    }

    static func package(version: Int) throws -> PackageContents {
        let dir = NSTemporaryDirectory() + "regent-drill-package-\(getpid())-\(version)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(manifest(version: version).utf8).write(to: URL(fileURLWithPath: dir + "/workflow.json"))
        return try PackageContents(path: dir, limits: .default)
    }

    package func run() async throws -> Result {
        var result = Result()
        let config = try drillConfiguration(env.databaseURL)
        let conn = env.probeConnection
        _ = try await env.firstLeader()
        try await env.waitForWorkflowSchema()
        let deadlocksBefore = try await Self.deadlockCount(conn)
        let v1 = try Self.package(version: 1), v2 = try Self.package(version: 2)
        _ = try await PackageStore().deploy(v1, actor: .named("drill"), on: conn)
        say("▶ deployed \(Self.type) \(v1.contentHash.prefix(16))… (prepare → left, middle, right → join → finish)")

        var pids: [pid_t] = []
        var counter = 0
        func spawnWorker() throws {
            counter += 1
            pids.append(try env.spawnWorker(
                name: "drill-w\(counter)", arguments: ["--lane", "drill", "--work", "20ms", "--batch", "\(batch)", "--log-level", "warning"]))
        }
        for _ in 0..<workers { try spawnWorker() }
        let started = ContinuousClock.now
        // The runs are started in waves, one before the faults and one just before each fault
        // round, so every round finds runs in flight however fast the workers drain them (with
        // all runs started up front, a fast machine finished 150 of them before the first kill
        // and the drill proved nothing).
        let waves = kills > 0 ? kills + 1 : 1
        say("▶ \(workers) worker processes; starting \(runs) runs" + (waves > 1 ? " in \(waves) waves, the first now, one before each fault round" : ""))
        var nextRun = 0
        func startWave(_ wave: Int) async throws {
            let upTo = runs * (wave + 1) / waves
            try await PostgresConnection.withConnection(config) { starter in
                while nextRun < upTo {
                    _ = try await RunStore().start(
                        .init(workflowType: try WorkflowType(Self.type), input: #"{"n": \#(nextRun)}"#, idempotencyKey: "drill-\(nextRun)"),
                        actor: .named("drill"), on: starter)
                    nextRun += 1
                }
            }
        }
        try await startWave(0)
        // A new version mid-drill: new runs would take it; the old one is pinned and cannot go.
        _ = try await PackageStore().deploy(v2, actor: .named("drill"), on: conn)
        do {
            try await PackageStore().unload(type: try WorkflowType(Self.type), hash: v1.contentHash, actor: .named("drill"), on: conn)
            let open = try await env.unfinishedRuns()
            if open > 0 { result.violations.append("version 1 was unloaded while \(open) runs were unfinished") }
        } catch let error as RegentError where error.code == .conflict {
            say("  unload of the pinned version 1 refused, as it must be: \(error.message.prefix(90))…")
        }

        // The faults: SIGKILL the leader and a worker, respawn both, while runs remain.
        var rng = SystemRandomNumberGenerator()
        for round in 1...max(kills, 1) where kills > 0 {
            try await Task.sleep(for: .milliseconds(Int64.random(in: 300...700, using: &rng)))
            try await startWave(round)
            let open = try await env.unfinishedRuns()
            if open == 0 {
                result.violations.append("fault round \(round) found no run in flight: the faults tested nothing")
                break
            }
            let (reading, killed) = try await env.killLeaderAndReplace()
            if killed { result.leaderKills += 1 }
            DrillEnvironment.killRandomWorker(&pids, using: &rng)
            try spawnWorker()
            result.workerKills += 1
            // Cancels while the workers hold steps: some of their executions are held by a claim
            // or a completion in flight, which the finish must skip and record as strays.
            var cancelledNow = 0
            let share = cancels / max(kills, 1) + (round <= cancels % max(kills, 1) ? 1 : 0)
            if share > 0 {
                for row in try await conn.query(
                    "SELECT run_id FROM workflow.runs WHERE state = 'running' ORDER BY random() LIMIT \(share)", purpose: "drill: runs to cancel")
                where try await RunStore().cancel(try row.decode("run_id"), reason: "drill", actor: .named("drill"), on: conn) == .cancelled {
                    cancelledNow += 1
                }
            }
            let strays = try await conn.query("SELECT count(*) AS n FROM workflow.run_strays", purpose: "drill: strays").single().decode("n", as: Int.self)
            say("  kill \(round): leader (term \(reading.term.value)) and a worker SIGKILLed, \(open) runs unfinished; both replaced"
                + (share > 0 ? "; \(cancelledNow) runs cancelled, \(strays) step executions held at that moment recorded as strays" : ""))
            env.cluster.reap()
        }

        // Every run must finish.
        let open = try await env.waitForRuns(timeout: .seconds(180))
        if open > 0 { result.violations.append("\(open) runs had not finished 180 s after the last fault") }
        result.took = started.duration(to: .now)
        // What a finish had to skip is fenced by the leader's deadline duty within about a second
        // of its holder letting go: give it a few (the invariants below then require none left).
        let settled = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < settled {
            let left = try await conn.query(Self.strayQuery, purpose: "drill: strays left").single().decode("n", as: Int.self)
            if left == 0 { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        result.fencedSteps = try await conn.query("SELECT count(*) AS n FROM workflow.run_steps WHERE state = 'cancelled'").single().decode("n")
        for pid in pids { kill(pid, SIGTERM) }
        for pid in pids { _ = ChildProcess.exitStatus(pid, wait: true) }
        for row in try await conn.query("SELECT state, count(*) AS n FROM workflow.runs GROUP BY state") {
            result.states[try row.decode("state")] = try row.decode("n")
        }
        result.reclaimedLeases = try await conn.query("SELECT count(*) AS n FROM workflow.attempts WHERE state = 'expired'").single().decode("n")
        result.violations += try await Self.check(conn)
        // One lock order (sql/workflow 0012): the server never had to break a lock cycle.
        result.deadlocks = try await Self.deadlockCount(conn) - deadlocksBefore
        if result.deadlocks > 0 {
            result.violations.append("the server broke \(result.deadlocks) deadlock(s) in the drill's database (pg_stat_database.deadlocks)")
        }
        // Nothing pins version 1 any more: it can go now.
        try await PackageStore().unload(type: try WorkflowType(Self.type), hash: v1.contentHash, actor: .named("drill"), on: conn)
        return result
    }

    /// Step executions of finished runs still claimable or running, and stray records left.
    static let strayQuery: PostgresQuery = """
        SELECT (SELECT count(*) FROM workflow.run_steps s JOIN workflow.runs r ON r.run_id = s.run_id AND r.state <> 'running'
                JOIN workflow.executions e ON e.execution_id = s.execution_id AND e.state IN ('queued', 'running'))
             + (SELECT count(*) FROM workflow.run_strays) AS n
        """

    /// The invariants, each a count of offending rows that must be zero.
    static let invariants: [(String, PostgresQuery)] = [
        ("a step execution of a finished run still claimable or running, or a stray record left, 15 s after the last run finished", strayQuery),
        ("a run that did not finish", "SELECT count(*) AS n FROM workflow.runs WHERE state = 'running'"),
        ("a succeeded step without exactly one accepted completion (one completed attempt, at the execution's current epoch, one output)", """
            SELECT count(*) AS n FROM workflow.run_steps s JOIN workflow.executions e ON e.execution_id = s.execution_id
            WHERE s.state = 'succeeded' AND (
                COALESCE(s.output, e.result) IS NULL OR e.state <> 'completed'
                OR (SELECT count(*) FROM workflow.attempts a WHERE a.execution_id = e.execution_id AND a.state = 'completed') <> 1
                OR NOT EXISTS (SELECT 1 FROM workflow.attempts a
                               WHERE a.execution_id = e.execution_id AND a.state = 'completed' AND a.lease_epoch = e.lease_epoch))
            """),
        ("a step enqueued or started before one of its after steps succeeded", """
            SELECT count(*) AS n FROM workflow.run_steps s
            JOIN workflow.run_steps d ON d.run_id = s.run_id AND d.name = ANY (s.after_steps)
            WHERE s.queued_at IS NOT NULL AND (
                d.state <> 'succeeded' OR d.finished_at > s.queued_at
                OR EXISTS (SELECT 1 FROM workflow.attempts a WHERE a.execution_id = s.execution_id AND a.started_at < d.finished_at))
            """),
        ("a run that advanced after it failed or was cancelled", """
            SELECT count(*) AS n FROM workflow.run_steps s JOIN workflow.runs r ON r.run_id = s.run_id
            WHERE r.state IN ('failed', 'cancelled') AND (s.queued_at > r.finished_at OR (s.state = 'succeeded' AND s.finished_at > r.finished_at))
            """),
        ("a run whose budget spent differs from its ledger total", """
            SELECT count(*) AS n FROM workflow.runs r
            WHERE r.budget_spent <> (SELECT COALESCE(sum(l.amount), 0) FROM workflow.budget_ledger l
                                     WHERE l.run_id = r.run_id AND l.unit = COALESCE(r.budget_unit, 'units'))
            """),
        ("a ledger row that is not the one accepted cost of a succeeded step", """
            SELECT (SELECT count(*) FROM workflow.budget_ledger l JOIN workflow.run_steps s ON s.run_id = l.run_id AND s.name = l.step_name
                    WHERE s.state <> 'succeeded')
                 + (SELECT count(*) FROM workflow.run_steps s WHERE s.state = 'succeeded' AND s.kind = 'worker'
                    AND (SELECT count(*) FROM workflow.budget_ledger l WHERE l.run_id = s.run_id AND l.step_name = s.name) <> 1) AS n
            """),
        ("an unfinished run pinned to a version that is gone", """
            SELECT count(*) AS n FROM workflow.runs r
            WHERE r.state = 'running' AND NOT EXISTS (SELECT 1 FROM workflow.packages p WHERE p.content_hash = r.package_hash)
            """),
    ]

    package static func check(_ conn: PostgresConnection) async throws -> [String] {
        var violations: [String] = []
        for (what, query) in invariants {
            let n = try await conn.query(query, purpose: "drill: workflow invariant").single().decode("n", as: Int.self)
            if n > 0 { violations.append("\(n) × \(what)") }
        }
        return violations
    }
}
