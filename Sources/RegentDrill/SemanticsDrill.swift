import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore

/// `regent drill semantics`: runs of a package that uses every step kind (a worker fan-out, a
/// timer, an approval signal, a child workflow, and a worker step that fails on its first run
/// and is resumed with `retry`), carried by `regent worker` processes while the leader node and
/// a worker are SIGKILLed round after round and the child type is re-routed to a new version
/// mid-drill; then the invariants of docs/runs.md ("Steps that wait") are checked in SQL.
package struct SemanticsDrill {
    package let env: DrillEnvironment
    package let runs: Int
    package let kills: Int
    package let workers: Int
    package let say: (String) -> Void

    package init(env: DrillEnvironment, runs: Int, kills: Int, workers: Int, say: @escaping (String) -> Void) {
        self.env = env
        self.runs = runs
        self.kills = kills
        self.workers = workers
        self.say = say
    }

    package struct Result {
        package var violations: [String] = []
        package var succeeded = 0
        package var retried = 0
        package var signalsEarly = 0
        package var signalsLate = 0
        package var signalsRefused = 0
        package var children = 0
        package var leaderKills = 0
        package var workerKills = 0
        package var timerLatenessMaxMs = 0.0
        package var deadlocks: Int64 = 0
        package var took: Duration = .zero
    }

    static let type = "drill.semantics"
    static let childType = "drill.child"

    /// prepare → (left, right) → nap (timer) → flaky (fails first when 3 | n) ┐
    /// prepare → approve (signal "go")                                        ├→ ship (child) → finish
    static let manifest = """
        {"workflow_type": "\(type)", "steps": [
          {"name": "prepare", "lane": "drill", "timeout": "2s", "max_attempts": 50, "backoff": {"base": "100ms", "max": "1s"}},
          {"name": "left", "lane": "drill", "after": ["prepare"], "timeout": "2s", "max_attempts": 50, "backoff": {"base": "100ms", "max": "1s"}},
          {"name": "right", "lane": "drill", "after": ["prepare"], "timeout": "2s", "max_attempts": 50, "backoff": {"base": "100ms", "max": "1s"}},
          {"name": "nap", "sleep": "300ms", "after": ["left", "right"]},
          {"name": "approve", "wait_for": "go", "after": ["prepare"], "timeout": "10m"},
          {"name": "flaky", "lane": "drill-flaky", "after": ["nap"], "timeout": "5s", "max_attempts": 1},
          {"name": "ship", "child": "\(childType)", "input": "$.steps.prepare.output", "after": ["approve", "flaky"]},
          {"name": "finish", "lane": "drill", "after": ["ship"], "timeout": "2s", "max_attempts": 50, "backoff": {"base": "100ms", "max": "1s"}}]}
        """

    static func childManifest(version: Int) -> String {
        """
        {"workflow_type": "\(childType)", "description": "child version \(version)", "steps": [
          {"name": "work", "lane": "drill", "timeout": "2s", "max_attempts": 50, "backoff": {"base": "100ms", "max": "1s"}}]}
        """
    }

    static func package(_ manifest: String, _ tag: String) throws -> PackageContents {
        let dir = NSTemporaryDirectory() + "regent-drill-semantics-\(getpid())-\(tag)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(manifest.utf8).write(to: URL(fileURLWithPath: dir + "/workflow.json"))
        return try PackageContents(path: dir, limits: .default)
    }

    /// The drill's own worker for lane `drill-flaky`: it fails a run's `flaky` step for good on
    /// the run's first round when the run's `n` is a multiple of 3, and completes it otherwise
    /// (so resumed runs got their approval both before and after the failure).
    struct FlakyWorker {
        let instance: WorkerInstanceID
        let lane: Lane

        func register(on conn: PostgresConnection) async throws {
            _ = try await WorkerRegistry().register(
                namespace: RunStore.namespace, workerInstanceID: instance, workerID: try WorkerID("drill-flaky"), lanes: [lane], capabilities: [],
                livenessTTL: .seconds(3600), on: conn)
        }

        /// Claims what is there and settles it; returns the runs whose step it failed.
        func round(retried: Set<String>, on conn: PostgresConnection) async throws -> [String] {
            let leases = try await LeaseStore().claim(
                namespace: RunStore.namespace, lanes: [lane], workerInstanceID: instance, capabilities: [], leaseDuration: nil, limit: 50, on: conn)
            var failed: [String] = []
            for lease in leases {
                guard let runID = lease.step?.runID else { continue }
                let payload = (try? JSONSerialization.jsonObject(with: Data(lease.payload.utf8))) as? [String: Any]
                let n = (payload?["input"] as? [String: Any])?["n"] as? Int ?? 1
                if n % 3 == 0 && !retried.contains(runID) {
                    _ = try await LeaseStore().fail(
                        [Failure(executionID: lease.executionID, epoch: lease.epoch, error: "drill: fails on its first run", retryable: false, worker: instance)],
                        on: conn)
                    failed.append(runID)
                } else {
                    _ = try await LeaseStore().complete(
                        [Completion(executionID: lease.executionID, epoch: lease.epoch, result: #"{"flaky": "ok"}"#, cost: [try Cost(amount: 1)], worker: instance,
                                    runID: runID)],
                        on: conn)
                }
            }
            return failed
        }
    }

    package func run() async throws -> Result {
        var result = Result()
        let conn = env.probeConnection
        _ = try await env.firstLeader()
        try await env.waitForWorkflowSchema()
        let deadlocksBefore = try await WorkflowDrill.deadlockCount(conn)
        let child1 = try Self.package(Self.childManifest(version: 1), "c1"), child2 = try Self.package(Self.childManifest(version: 2), "c2")
        _ = try await PackageStore().deploy(child1, actor: .named("drill"), on: conn)
        _ = try await PackageStore().deploy(try Self.package(Self.manifest, "p"), actor: .named("drill"), on: conn)
        say("▶ deployed \(Self.type) (worker fan-out, timer, approval signal, a step failing on its first run, child \(Self.childType) \(child1.contentHash.prefix(12))…)")
        let flaky = FlakyWorker(instance: try WorkerInstanceID("drill-flaky"), lane: try Lane("drill-flaky"))
        try await flaky.register(on: conn)

        var pids: [pid_t] = []
        var counter = 0
        func spawnWorker() throws {
            counter += 1
            pids.append(try env.spawnWorker(name: "drill-s\(counter)", arguments: ["--lane", "drill", "--work", "10ms", "--batch", "4", "--log-level", "warning"]))
        }
        for _ in 0..<workers { try spawnWorker() }

        // Runs, and when each gets its signal: half at once (before the run can reach the wait),
        // half at a random later moment.
        var rng = SystemRandomNumberGenerator()
        var pendingSignals: [(run: String, at: ContinuousClock.Instant)] = []
        let started = ContinuousClock.now
        for i in 0..<runs {
            let run = try await RunStore().start(
                .init(workflowType: try WorkflowType(Self.type), input: #"{"n": \#(i)}"#, idempotencyKey: "semantics-\(i)"), actor: .named("drill"), on: conn)
            if i % 2 == 0 {
                _ = try await RunStore().signal(run.runID, name: "go", payloadJSON: #"{"n": \#(i), "early": true}"#, signalID: "go-\(i)", actor: .named("drill"), on: conn)
                result.signalsEarly += 1
            } else {
                pendingSignals.append((run.runID, .now + .milliseconds(Int64.random(in: 50...3000, using: &rng))))
            }
        }
        say("▶ \(runs) runs started on \(workers) worker processes; \(result.signalsEarly) approvals sent before their runs reached the wait")

        var retried = Set<String>()
        var nextKill = ContinuousClock.now + .milliseconds(600)
        var killsLeft = kills
        var rerouted = false
        var child1Gone = false
        let deadline = ContinuousClock.now + .seconds(240)
        while ContinuousClock.now < deadline {
            // The flaky lane; failed runs resumed from where they stopped.
            for runID in try await flaky.round(retried: retried, on: conn) { retried.insert(runID) }
            for row in try await conn.query(
                "SELECT run_id FROM workflow.runs WHERE workflow_type = \(Self.type) AND state = 'failed' AND reason = 'step_failed'", purpose: "drill: failed runs")
            {
                let runID: String = try row.decode("run_id")
                do {
                    _ = try await RunStore().retry(runID, .init(), actor: .named("drill"), on: conn)
                    retried.insert(runID)
                    result.retried += 1
                } catch let error as RegentError where error.code == .conflict {
                    continue  // its last round is still being fenced: next pass
                }
            }
            // Signals that came due; one refused because its run was failed (awaiting its retry) is sent again later.
            let now = ContinuousClock.now
            var later: [(run: String, at: ContinuousClock.Instant)] = []
            for p in pendingSignals {
                guard p.at <= now else { later.append(p); continue }
                do {
                    _ = try await RunStore().signal(p.run, name: "go", payloadJSON: #"{"late": true}"#, signalID: "go-late-\(p.run)", actor: .named("drill"), on: conn)
                    result.signalsLate += 1
                } catch let error as RegentError where error.code == .runFinished {
                    result.signalsRefused += 1
                    later.append((p.run, now + .milliseconds(200)))
                }
            }
            pendingSignals = later
            // Mid-drill, as soon as children are recorded on it: a new version of the child type,
            // routed; the recorded children stay on theirs, and the first version cannot go.
            if !rerouted, try await conn.query(
                "SELECT count(*) AS n FROM workflow.run_steps WHERE kind = 'child' AND state = 'waiting'", purpose: "drill: children waiting"
            ).single().decode("n", as: Int.self) > 0 || now >= started + .seconds(5) {
                _ = try await PackageStore().deploy(child2, actor: .named("drill"), on: conn)
                do {
                    try await PackageStore().unload(type: try WorkflowType(Self.childType), hash: child1.contentHash, actor: .named("drill"), on: conn)
                    child1Gone = true
                    let pinned = try await conn.query(
                        "SELECT count(*) AS n FROM workflow.runs WHERE package_hash = \(child1.contentHash) AND state = 'running'", purpose: "drill: pins"
                    ).single().decode("n", as: Int.self)
                    if pinned > 0 { result.violations.append("the first child version was unloaded while \(pinned) child runs ran on it") }
                } catch let error as RegentError where error.code == .conflict {
                    say("  \(Self.childType) re-routed to \(child2.contentHash.prefix(12))…; unload of the first version refused: \(error.message.prefix(100))…")
                }
                rerouted = true
            }
            // The faults: the leader and a worker, SIGKILLed and replaced.
            if killsLeft > 0, now >= nextKill {
                let (reading, killed) = try await env.killLeaderAndReplace()
                if killed { result.leaderKills += 1 }
                DrillEnvironment.killRandomWorker(&pids, using: &rng)
                try spawnWorker()
                result.workerKills += 1
                killsLeft -= 1
                nextKill = now + .milliseconds(Int64.random(in: 500...1000, using: &rng))
                say("  kill \(kills - killsLeft): leader (term \(reading.term.value)) and a worker SIGKILLed and replaced")
                env.cluster.reap()
            }
            if pendingSignals.isEmpty, killsLeft == 0, try await env.unfinishedRuns() == 0 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        result.took = started.duration(to: .now)
        for pid in pids { kill(pid, SIGTERM) }
        for pid in pids { _ = ChildProcess.exitStatus(pid, wait: true) }
        let open = try await env.unfinishedRuns()
        if open > 0 { result.violations.append("\(open) runs had not finished 240 s after the start") }

        result.succeeded = try await conn.query(
            "SELECT count(*) AS n FROM workflow.runs WHERE workflow_type = \(Self.type) AND state = 'succeeded'").single().decode("n")
        if result.succeeded != runs { result.violations.append("\(runs - result.succeeded) of \(runs) runs did not succeed (each is resumed until it does)") }
        result.children = try await conn.query("SELECT count(*) AS n FROM workflow.runs WHERE parent_run_id IS NOT NULL").single().decode("n")
        result.timerLatenessMaxMs = try await conn.query(
            """
            SELECT COALESCE(max(extract(epoch FROM ((output ->> 'fired_at')::timestamptz - due_at)) * 1000), 0)::float8 AS ms
            FROM workflow.run_steps WHERE kind = 'timer' AND state = 'succeeded'
            """).single().decode("ms")
        result.violations += try await WorkflowDrill.check(conn)
        result.violations += try await Self.check(conn, retried: retried)
        result.deadlocks = try await WorkflowDrill.deadlockCount(conn) - deadlocksBefore
        if result.deadlocks > 0 {
            result.violations.append("the server broke \(result.deadlocks) deadlock(s) in the drill's database (pg_stat_database.deadlocks)")
        }
        // Nothing pins the first child version any more.
        if !child1Gone {
            try await PackageStore().unload(type: try WorkflowType(Self.childType), hash: child1.contentHash, actor: .named("drill"), on: conn)
        }
        return result
    }

    /// The invariants of the waiting kinds, each a count of offending rows that must be zero.
    static let invariants: [(String, PostgresQuery)] = [
        ("a timer that fired before its due time (database time), or whose step has no fire time", """
            SELECT count(*) AS n FROM workflow.run_steps
            WHERE kind = 'timer' AND state = 'succeeded' AND ((output ->> 'fired_at') IS NULL OR (output ->> 'fired_at')::timestamptz < due_at)
            """),
        ("a timer step that fired more than once (step.succeeded events)", """
            SELECT count(*) AS n FROM (
                SELECT e.payload ->> 'run_id', e.payload ->> 'step' FROM engine.events e
                WHERE e.topic = 'step.succeeded' AND e.payload ->> 'kind' = 'timer'
                GROUP BY 1, 2 HAVING count(*) > 1) AS t
            """),
        ("a run whose approval was not consumed exactly once, or whose approve step's output is not the consumed signal's data", """
            SELECT count(*) AS n FROM workflow.runs r JOIN workflow.run_steps s ON s.run_id = r.run_id AND s.name = 'approve'
            WHERE r.workflow_type = 'drill.semantics' AND (
                (SELECT count(*) FROM workflow.signals g WHERE g.run_id = r.run_id AND g.consumed_by IS NOT NULL) <> 1
                OR s.output IS DISTINCT FROM (SELECT g.payload FROM workflow.signals g WHERE g.run_id = r.run_id AND g.consumed_by = 'approve'))
            """),
        ("a signal consumed by a step that does not wait for its name", """
            SELECT count(*) AS n FROM workflow.signals g JOIN workflow.run_steps s ON s.run_id = g.run_id AND s.name = g.consumed_by
            WHERE s.kind <> 'signal' OR s.wait ->> 'signal' <> g.name
            """),
        ("a child step with other than one child run, or a child run not on the version recorded for it", """
            SELECT count(*) AS n FROM workflow.run_steps s
            WHERE s.kind = 'child' AND s.state = 'succeeded' AND (
                (SELECT count(*) FROM workflow.runs c WHERE c.parent_step_id = s.step_id) <> 1
                OR NOT EXISTS (SELECT 1 FROM workflow.runs c WHERE c.run_id = s.child_run_id AND c.parent_step_id = s.step_id
                               AND c.package_hash = s.child_hash AND c.state = 'succeeded'))
            """),
        ("a child step whose output is not its child run's output", """
            SELECT count(*) AS n FROM workflow.run_steps s JOIN workflow.runs c ON c.run_id = s.child_run_id
            WHERE s.kind = 'child' AND s.state = 'succeeded' AND s.output IS DISTINCT FROM c.output
            """),
        ("a worker step run more than once (more than one execution) other than a resumed run's flaky step", """
            SELECT count(*) AS n FROM workflow.run_steps s
            WHERE s.kind = 'worker' AND s.name <> 'flaky' AND (SELECT count(*) FROM workflow.executions e WHERE e.step_id = s.step_id) > 1
            """),
    ]

    package static func check(_ conn: PostgresConnection, retried: Set<String>) async throws -> [String] {
        var violations: [String] = []
        for (what, query) in invariants {
            let n = try await conn.query(query, purpose: "drill: semantics invariant").single().decode("n", as: Int.self)
            if n > 0 { violations.append("\(n) × \(what)") }
        }
        // Resumed runs re-ran only what had not succeeded: their flaky step ran twice, once failed.
        for row in try await conn.query(
            """
            SELECT r.run_id, (SELECT count(*) FROM workflow.executions e WHERE e.step_id = s.step_id) AS runs_of_flaky
            FROM workflow.runs r JOIN workflow.run_steps s ON s.run_id = r.run_id AND s.name = 'flaky'
            WHERE r.workflow_type = 'drill.semantics'
            """)
        {
            let runID: String = try row.decode("run_id")
            let n: Int = try row.decode("runs_of_flaky")
            if n != (retried.contains(runID) ? 2 : 1) {
                violations.append("run \(runID): its flaky step ran \(n) time(s), expected \(retried.contains(runID) ? 2 : 1)")
            }
        }
        return violations
    }
}
