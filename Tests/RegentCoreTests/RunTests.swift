import Foundation
import PostgresClient
@testable import RegentCore
import RegentDrill
import RegentTestSupport
import Testing

/// A test workflow: a package deployed from a manifest, a registered worker in the runs
/// namespace, and helpers that claim and finish its steps.
struct RunFixture {
    let conn: PostgresConnection
    let type: WorkflowType
    let hash: String
    let worker: WorkerInstanceID
    let actor = AuditActor.named("test")

    /// `steps`: manifest step objects; every step's lane is `work` unless it says otherwise.
    /// `top`: more top-level manifest fields (`"concurrency": {…}`).
    static func deploy(_ type: String, steps: [String], budget: String? = nil, top: String? = nil, on conn: PostgresConnection) async throws -> RunFixture {
        var manifest = PackageFixture.manifest(type: type, steps: steps)
        if let budget { manifest = manifest.replacingOccurrences(of: #""steps":"#, with: #""budget": \#(budget), "steps":"#) }
        if let top { manifest = manifest.replacingOccurrences(of: #""steps":"#, with: #"\#(top), "steps":"#) }
        let fixture = try PackageFixture(files: ["workflow.json": manifest])
        defer { fixture.remove() }
        let contents = try PackageContents(path: fixture.directory.path, limits: .default)
        let deployed = try await PackageStore().deploy(contents, actor: .named("test"), on: conn)
        let worker = try WorkerInstanceID("w-\(type)")
        _ = try await WorkerRegistry().register(
            namespace: RunStore.namespace, workerInstanceID: worker, workerID: try WorkerID("runner"), lanes: [try Lane("work")],
            capabilities: [], livenessTTL: .seconds(300), on: conn)
        return RunFixture(conn: conn, type: try WorkflowType(type), hash: deployed.contentHash, worker: worker)
    }

    func start(_ input: String = "{}", key: String? = nil, deadline: Duration? = nil, on c: PostgresConnection? = nil) async throws -> RunStore.Started {
        try await RunStore().start(.init(workflowType: type, input: input, idempotencyKey: key, deadline: deadline), actor: actor, on: c ?? conn)
    }

    /// Claims what is claimable in lane `work` (up to `limit`).
    func claim(limit: Int = 10, on c: PostgresConnection? = nil) async throws -> [Lease] {
        try await LeaseStore().claim(
            namespace: RunStore.namespace, lanes: [try Lane("work")], workerInstanceID: worker, capabilities: [], leaseDuration: nil,
            limit: limit, on: c ?? conn)
    }

    /// The claimed lease of step `name` (of any run when `run` is nil).
    func claimStep(_ name: String, run: String? = nil) async throws -> Lease {
        let leases = try await claim(limit: 100)
        guard let lease = leases.first(where: { $0.step?.name == name && (run == nil || $0.step?.runID == run) }) else {
            throw RegentError(.notFound, "step \(name) is not claimable; claimed \(leases.compactMap(\.step?.name))")
        }
        return lease
    }

    func complete(_ lease: Lease, output: String = "{}", cost: [Cost] = [], on c: PostgresConnection? = nil) async throws -> BatchOutcome {
        try await LeaseStore().complete([Completion(executionID: lease.executionID, epoch: lease.epoch, result: output, cost: cost)], on: c ?? conn)
    }

    func run(_ id: String) async throws -> RunStore.Run { try #require(try await RunStore().get(id, on: conn)) }

    func stepStates(_ id: String) async throws -> [String: String] {
        Dictionary(uniqueKeysWithValues: try await run(id).steps.map { ($0.name, $0.state) })
    }
}

@Suite("Durable workflow runs against a real server")
struct RunTests {
    static let linear = [#"{"name": "a", "lane": "work"}"#, #"{"name": "b", "lane": "work"}"#, #"{"name": "c", "lane": "work"}"#]
    static let diamond = [
        #"{"name": "a", "lane": "work"}"#, #"{"name": "b", "lane": "work", "after": ["a"]}"#, #"{"name": "c", "lane": "work", "after": ["a"]}"#,
        #"{"name": "d", "lane": "work", "after": ["b", "c"]}"#,
    ]

    /// A session whose run-engine plans were made while the run tables were empty (a fresh
    /// deployment's first runs), then a burst: advancing a run must still find its rows by key,
    /// not scan the tables (the run functions are declared with sequential scans off, sql/workflow
    /// 0010; before, each start scanned `runs`).
    @Test func advancingARunNeverScansTheRunTablesWhateverTheStatistics() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("scans", steps: Self.linear, on: conn)
            let burst = try await RunFixture.deploy(
                "burst", steps: [#"{"name": "x", "lane": "idle"}"#, #"{"name": "y", "lane": "idle"}"#], on: conn)
            try await conn.query("VACUUM ANALYZE workflow.runs")
            try await conn.query("VACUUM ANALYZE workflow.run_steps")
            // Runs `body` in a transaction; what it returned, and the sequential scans it made of
            // the run tables (the session's pending counters, read before and after).
            func scans<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> (T, [String: Int]) {
                try await conn.withTransaction { tx in
                    func read() async throws -> [String: Int] {
                        var out: [String: Int] = [:]
                        for row in try await tx.query(
                            "SELECT relname, seq_scan FROM pg_stat_xact_user_tables WHERE schemaname = 'workflow' AND relname IN ('runs', 'run_steps')")
                        {
                            out[try row.decode("relname")] = try row.decode("seq_scan", as: Int.self)
                        }
                        return out
                    }
                    let before = try await read()
                    let value = try await body(tx)
                    var made: [String: Int] = [:]
                    for (key, count) in try await read() { made[key] = count - (before[key] ?? 0) }
                    return (value, made)
                }
            }
            func carry(_ run: String, measured: Bool, round: Int) async throws {
                for step in ["a", "b", "c"] {
                    let lease = try await f.claimStep(step, run: run)
                    guard measured else {
                        _ = try await f.complete(lease)
                        continue
                    }
                    let (outcome, made) = try await scans { try await f.complete(lease, on: $0) }
                    #expect(Array(outcome.done.keys) == [lease.executionID])
                    #expect(made["runs"] == 0 && made["run_steps"] == 0, "round \(round), step \(step): \(made)")
                }
            }
            // Plans made on near-empty tables, past PL/pgSQL's first custom plans.
            for round in 0..<6 { try await carry(try await f.start().runID, measured: false, round: round) }
            for _ in 0..<400 { _ = try await burst.start() }
            for round in 6..<9 {
                let (started, made) = try await scans { try await f.start(on: $0).runID }
                #expect(made["runs"] == 0 && made["run_steps"] == 0, "round \(round), start: \(made)")
                try await carry(started, measured: true, round: round)
            }
            #expect(try await f.run(try await f.start().runID).state == "running")
        }
    }

    /// A step's state changes are HOT updates (in place, no new index entries): no index of
    /// run_steps, the online ones included, names a column the step path writes on its way
    /// (state, finished_at, error) in its keys, expressions or predicate, and completing a step
    /// of a fresh run updates its row in place (sql/workflow/0020; before it, the unload rule's
    /// index had `state` in its predicate, and every step's every change wrote four index entries).
    @Test func aStepsStateChangesAreHotUpdates() async throws {
        try await withBootedDatabase { _, conn in
            try await OnlineIndexes.ensure(schemas: ["workflow"], on: conn)
            let naming = try await conn.query(
                """
                SELECT i.indexrelid::regclass::text AS name, a.attname::text AS col
                FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum > 0
                WHERE i.indrelid = 'workflow.run_steps'::regclass
                  AND a.attname IN ('state', 'finished_at', 'error')
                  AND (a.attnum = ANY (i.indkey)
                       OR COALESCE(pg_get_expr(i.indpred, i.indrelid), '') ~ ('\\m' || a.attname || '\\M')
                       OR COALESCE(pg_get_expr(i.indexprs, i.indrelid), '') ~ ('\\m' || a.attname || '\\M'))
                """
            ).map { "\(try $0.decode("name", as: String.self)) (\(try $0.decode("col", as: String.self)))" }
            #expect(naming.isEmpty, "indexes of run_steps naming a column every step changes: \(naming)")

            let f = try await RunFixture.deploy("hot", steps: Self.linear, on: conn)
            let run = try await f.start().runID
            let lease = try await f.claimStep("a", run: run)
            let hot = try await conn.withTransaction { tx in
                func read() async throws -> Int {
                    try await tx.query("SELECT n_tup_hot_upd AS n FROM pg_stat_xact_user_tables WHERE relid = 'workflow.run_steps'::regclass")
                        .single().decode("n", as: Int.self)
                }
                let before = try await read()
                #expect(try await f.complete(lease, on: tx).done.keys.contains(lease.executionID))
                return try await read() - before
            }
            #expect(hot >= 1, "completing step a updated its run_steps row in place \(hot) times")
            #expect(try await f.stepStates(run)["a"] == "succeeded")
        }
    }

    @Test func aStartPinsTheRoutedVersionAndALaterRouteChangeDoesNotMoveIt() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("pinned", steps: Self.linear, on: conn)
            let first = try await f.start(#"{"order": 1}"#)
            #expect(first.created && first.packageHash == f.hash && RunStore.isRunID(first.runID))
            let v2 = try await RunFixture.deploy("pinned", steps: Self.linear + [#"{"name": "d", "lane": "work"}"#], on: conn)
            let second = try await f.start()
            #expect(second.packageHash == v2.hash && second.packageHash != f.hash)
            let run = try await f.run(first.runID)
            #expect(run.packageHash == f.hash && run.steps.map(\.name) == ["a", "b", "c"])
            #expect(try await f.run(second.runID).steps.count == 4)
            // The first step is claimable at once, and carries its run, step and version.
            let lease = try await f.claimStep("a", run: first.runID)
            #expect(lease.step == Lease.StepRef(runID: first.runID, name: "a", packageHash: f.hash))
            let payload = try StrictJSON.parse(Array(lease.payload.utf8))
            guard case .object(let p) = payload, case .object(let input)? = p["input"] else { Issue.record("payload \(lease.payload)"); return }
            #expect(input["order"] == .integer(1) && p["after"] == .object([:]))
            // A claim that names no lease length gets the step's timeout (the default 5 m here);
            // one that names a length gets that length (sql/workflow 0012).
            #expect(lease.expiresAt.timeIntervalSinceNow > 200)
            _ = try await f.start(#"{"order": 3}"#)
            let short = try await LeaseStore().claim(
                namespace: RunStore.namespace, lanes: [try Lane("work")], workerInstanceID: f.worker, capabilities: [], leaseDuration: .seconds(20),
                limit: 1, on: conn)
            #expect(short.count == 1 && short[0].expiresAt.timeIntervalSinceNow < 21)
        }
    }

    @Test func concurrentStartsWithOneIdempotencyKeyMakeOneRun() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("idem", steps: Self.linear, on: conn)
            let ids = try await withThrowingTaskGroup(of: [String].self) { group in
                for _ in 0..<2 {
                    group.addTask {
                        try await PostgresConnection.withConnection(config) { c in
                            var out: [String] = []
                            for _ in 0..<10 { out.append(try await f.start(key: "order-7", on: c).runID) }
                            return out
                        }
                    }
                }
                return try await group.reduce(into: [String]()) { $0 += $1 }
            }
            #expect(Set(ids).count == 1 && ids.count == 20)
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.runs").single().decode("n", as: Int.self) == 1)
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.executions").single().decode("n", as: Int.self) == 1)
            // Another type may use the same key.
            let other = try await RunFixture.deploy("idem2", steps: Self.linear, on: conn)
            #expect(try await other.start(key: "order-7").runID != ids[0])
        }
    }

    @Test func aDiamondRunAdvancesThroughItsJoin() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("diamond", steps: Self.diamond, on: conn)
            let run = try await f.start(#"{"x": 1}"#)
            let a = try await f.claim()
            #expect(a.compactMap(\.step?.name) == ["a"])
            #expect(try await f.claim().isEmpty, "b and c wait for a")
            #expect(try await f.complete(a[0], output: #"{"a": 1}"#).done.count == 1)
            let bc = try await f.claim()
            #expect(Set(bc.compactMap(\.step?.name)) == ["b", "c"])
            // b and c complete at the same moment from two connections: d is enqueued exactly once.
            try await PostgresConnection.withConnection(config) { other in
                async let one = f.complete(bc[0], output: #"{"\#(bc[0].step!.name)": 2}"#)
                async let two = f.complete(bc[1], output: #"{"\#(bc[1].step!.name)": 3}"#, on: other)
                _ = try await (one, two)
            }
            let d = try await f.claim()
            #expect(d.compactMap(\.step?.name) == ["d"])
            let payload = try StrictJSON.parse(Array(d[0].payload.utf8))
            guard case .object(let p) = payload, case .object(let after)? = p["after"] else { Issue.record("payload \(d[0].payload)"); return }
            #expect(Set(after.keys) == ["b", "c"], "d's input carries the outputs of the steps it runs after")
            #expect(try await f.run(run.runID).state == "running")
            _ = try await f.complete(d[0], output: #"{"done": true}"#)
            let finished = try await f.run(run.runID)
            #expect(finished.state == "succeeded" && finished.finishedAt != nil)
            #expect(finished.output.map { try? StrictJSON.parse(Array($0.utf8)) } == .object(["d": .object(["done": .bool(true)])]))
            #expect(finished.steps.allSatisfy { $0.state == "succeeded" })
            let events = try await conn.query(
                "SELECT topic, payload->>'step' AS step FROM engine.events WHERE payload->>'run_id' = \(run.runID) ORDER BY id"
            ).map { "\(try $0.decode("topic", as: String.self))\(try $0.decodeOptional("step", as: String.self).map { " " + $0 } ?? "")" }
            #expect(events.first == "run.started" && events.last == "run.succeeded")
            #expect(events.filter { $0.hasPrefix("step.succeeded") }.count == 4 && events.count == 6)
        }
    }

    @Test func manyJoinsRacingNeverEnqueueTheJoinTwiceOrNever() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("joins", steps: Self.diamond, on: conn)
            var runs: [String] = []
            for _ in 0..<15 { runs.append(try await f.start().runID) }
            let roots = try await f.claim(limit: 100)
            _ = try await LeaseStore().complete(roots.map { Completion(executionID: $0.executionID, epoch: $0.epoch) }, on: conn)
            let middles = try await f.claim(limit: 100)
            #expect(middles.count == 30)
            try await PostgresConnection.withConnection(config) { other in
                for run in runs {
                    let pair = middles.filter { $0.step?.runID == run }
                    async let one = f.complete(pair[0])
                    async let two = f.complete(pair[1], on: other)
                    _ = try await (one, two)
                }
            }
            let joins = try await f.claim(limit: 100)
            #expect(joins.count == 15 && Set(joins.compactMap(\.step?.runID)) == Set(runs))
        }
    }

    @Test func aStepThatFailsForGoodFailsTheRunWithTheRightStepStates() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("fails", steps: [
                #"{"name": "a", "lane": "work"}"#,
                #"{"name": "b", "lane": "work", "after": ["a"], "max_attempts": 2, "backoff": {"base": "1ms", "max": "1ms"}}"#,
                #"{"name": "c", "lane": "work", "after": ["a"]}"#, #"{"name": "d", "lane": "work", "after": ["b", "c"]}"#,
            ], on: conn)
            let run = try await f.start()
            _ = try await f.complete(try await f.claimStep("a"))
            let both = try await f.claim()
            let b = try #require(both.first { $0.step?.name == "b" })
            // b fails once (retried), then again: out of attempts, the run fails. c is running meanwhile.
            #expect(try await LeaseStore().fail(executionID: b.executionID, epoch: b.epoch, error: "boom 1", retryable: true, on: conn) == .requeued)
            try await Task.sleep(for: .milliseconds(20))
            let b2 = try await f.claimStep("b")
            #expect(try await f.stepStates(run.runID)["b"] == "running")
            #expect(try await LeaseStore().fail(executionID: b2.executionID, epoch: b2.epoch, error: "boom 2", retryable: true, on: conn) == .deadLettered)
            let failed = try await f.run(run.runID)
            #expect(failed.state == "failed" && failed.reason == "step_failed" && failed.error?.contains("boom 2") == true)
            #expect(try await f.stepStates(run.runID) == ["a": "succeeded", "b": "failed", "c": "cancelled", "d": "skipped"])
            // c's worker is fenced: its completion is refused and changes nothing.
            let c = try #require(both.first { $0.step?.name == "c" })
            let late = try await f.complete(c, output: #"{"late": true}"#)
            #expect(late.done.isEmpty && late.stale == [c.executionID])
            #expect(try await f.run(run.runID).steps.first { $0.name == "c" }?.output == nil)
            #expect(try await f.claim().isEmpty, "nothing of a failed run is claimable")
        }
    }

    @Test func cancelWhileQueuedAndWhileRunningFencesTheWorkers() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("cancels", steps: Self.diamond, on: conn)
            let queued = try await f.start()
            let running = try await f.start()
            let a = try await f.claimStep("a", run: running.runID)
            #expect(try await RunStore().cancel(queued.runID, reason: "customer changed their mind", actor: .named("ops"), on: conn) == .cancelled)
            #expect(try await RunStore().cancel(running.runID, reason: "wrong input", actor: .named("ops"), on: conn) == .cancelled)
            #expect(try await RunStore().cancel(running.runID, reason: "again", actor: .named("ops"), on: conn) == .alreadyFinished)
            let late = try await f.complete(a)
            #expect(late.stale == [a.executionID], "a cancelled run's running step is fenced")
            for id in [queued.runID, running.runID] {
                let run = try await f.run(id)
                #expect(run.state == "cancelled" && run.finishedBy == "ops" && run.error != nil)
                #expect(run.steps.map(\.state) == ["cancelled", "skipped", "skipped", "skipped"])
            }
            #expect(try await f.claim().isEmpty)
            await expectCode(.notFound) { _ = try await RunStore().cancel("run_" + String(repeating: "0", count: 26), reason: "x", actor: .named("ops"), on: conn) }
            await expectCode(.invalidInput) { _ = try await RunStore().cancel("nope", reason: "x", actor: .named("ops"), on: conn) }
            await expectCode(.invalidInput) { _ = try await RunStore().cancel(queued.runID, reason: "", actor: .named("ops"), on: conn) }
        }
    }

    @Test func cancellingAStepsExecutionDirectlyFailsItsRun() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("direct", steps: Self.linear, on: conn)
            let run = try await f.start()
            let a = try await f.claimStep("a")
            #expect(try await LeaseStore().cancel(executionID: a.executionID, on: conn) == .cancelledRunning)
            let shown = try await f.run(run.runID)
            #expect(shown.state == "failed" && shown.reason == "step_failed")
            #expect(shown.steps.map(\.state) == ["failed", "skipped", "skipped"])
        }
    }

    /// One batch completes two sibling steps and a plain execution: the first step's cost stops
    /// the run, whose finish fences the second step's completion in the same statement. The
    /// batch reports the first step and the plain execution done and the fenced step stale
    /// (sql/workflow/0013 reads step executions again only for such a batch).
    @Test func aBatchReportsASiblingFencedByItsOwnBudgetStopAsStale() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("fenced", steps: Self.diamond, budget: #"{"limit": 5, "unit": "units"}"#, on: conn)
            let run = try await f.start()
            _ = try await f.complete(try await f.claimStep("a"))
            let plain = try await LeaseStore().enqueue(
                namespace: RunStore.namespace, [EnqueueRequest(lane: try Lane("work"), payload: #"{"plain": true}"#)], on: conn)
            let leases = try await f.claim()
            #expect(leases.count == 3 && Set(leases.compactMap(\.step?.name)) == ["b", "c"])
            let outcome = try await LeaseStore().complete(
                leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch, result: "{}", cost: $0.step == nil ? [] : [try! Cost(amount: 5)]) },
                on: conn)
            #expect(outcome.done.count == 2 && outcome.stale.count == 1)
            #expect(outcome.done[plain[0].executionID] == "completed", "the plain execution is done")
            let fenced = try #require(outcome.stale.first)
            let state = try await conn.query("SELECT state::text AS s FROM workflow.executions WHERE execution_id = \(fenced)").single().decode("s", as: String.self)
            #expect(state == "cancelled", "the stale one is the step its sibling's budget stop fenced")
            let shown = try await f.run(run.runID)
            #expect(shown.state == "failed" && shown.reason == "budget_exceeded")
            // The same batch again (its answer lost, say): the two that landed are told so, the
            // fenced one is still stale, and nothing changes.
            let again = try await LeaseStore().complete(
                leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch, result: "{}") }, on: conn)
            #expect(again.stale == [fenced])
            #expect(Set(again.done.values) == ["already_completed"] && again.done.count == 2)
            #expect(try await f.run(run.runID).state == "failed")
            let fencedState = try await conn.query("SELECT state::text AS s FROM workflow.executions WHERE execution_id = \(fenced)").single()
            #expect(try fencedState.decode("s", as: String.self) == "cancelled")
        }
    }

    /// `start --version`: the run is pinned to that stored version though the type is routed
    /// to another; a version not stored for the type (unknown, or another type's) starts nothing.
    @Test func aRunStartsOnAChosenStoredVersion() async throws {
        try await withBootedDatabase { _, conn in
            let first = try await RunFixture.deploy("versions", steps: [#"{"name": "old", "lane": "work"}"#], on: conn)
            let second = try await RunFixture.deploy("versions", steps: [#"{"name": "new", "lane": "work"}"#], on: conn)
            let other = try await RunFixture.deploy("elsewhere", steps: Self.linear, on: conn)
            var request = RunStore.StartRequest(workflowType: first.type)
            request.version = first.hash
            let canary = try await RunStore().start(request, actor: first.actor, on: conn)
            #expect(canary.packageHash == first.hash)
            #expect(try await first.run(canary.runID).steps.map(\.name) == ["old"])
            #expect(try await second.start().packageHash == second.hash, "without a version, the routed one")
            let runs = try await conn.query("SELECT count(*) AS n FROM workflow.runs").single().decode("n", as: Int64.self)
            for (hash, why) in [(other.hash, "another type's"), (String(repeating: "a", count: 64), "unknown")] {
                request.version = hash
                await #expect(throws: RegentError.self, "\(why) version") {
                    do { _ = try await RunStore().start(request, actor: first.actor, on: conn) } catch let e as RegentError {
                        #expect(e.code == .notFound && e.message.contains("is not stored"))
                        throw e
                    }
                }
            }
            request.version = "ABC"
            #expect(throws: RegentError.self) { try request.check() }
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.runs").single().decode("n", as: Int64.self) == runs)
            let started = try await conn.query(
                "SELECT payload FROM engine.events WHERE topic = 'run.started' AND payload->>'run_id' = \(canary.runID)").single().decode("payload", as: String.self)
            #expect(started.contains(#""version_chosen": true"#))
        }
    }

    /// `runs retry`: a run whose middle step failed for good resumes from that step on its
    /// pinned version; the step before keeps its output (the retried step's payload carries it),
    /// the failed step runs as a new execution with fresh attempts, the ledger continues, and
    /// the event and audit row name who did it. A succeeded or running run is refused.
    @Test func aFailedRunResumesFromTheFailedStepKeepingWhatSucceeded() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("resume", steps: Self.linear, budget: #"{"limit": 10, "unit": "units"}"#, on: conn)
            let run = try await f.start(#"{"x": 1}"#)
            _ = try await f.complete(try await f.claimStep("a"), output: #"{"a": 1}"#, cost: [try Cost(amount: 2)])
            let b = try await f.claimStep("b")
            _ = try await LeaseStore().fail(executionID: b.executionID, epoch: b.epoch, error: "a bug", retryable: false, on: conn)
            var shown = try await f.run(run.runID)
            #expect(shown.state == "failed" && shown.steps.map(\.state) == ["succeeded", "failed", "skipped"])
            await #expect(throws: RegentError.self) { _ = try await RunStore().retry(run.runID, .init(mode: .failed, budgetLimit: 1), actor: f.actor, on: conn) }
            let retried = try await RunStore().retry(run.runID, .init(), actor: .named("operator"), on: conn)
            #expect(retried.requeued == ["b"] && retried.reset == ["b", "c"])
            shown = try await f.run(run.runID)
            #expect(shown.state == "running" && shown.reason == nil && shown.finishedAt == nil)
            #expect(shown.steps.map(\.state) == ["succeeded", "queued", "pending"])
            await #expect(throws: RegentError.self, "a running run") { _ = try await RunStore().retry(run.runID, .init(), actor: f.actor, on: conn) }
            let b2 = try await f.claimStep("b")
            #expect(b2.executionID != b.executionID && b2.attemptIndex == 1, "a new execution with fresh attempts")
            #expect(b2.payload.contains(#""a": 1"#) || b2.payload.contains(#""a":1"#), "the succeeded step's output reaches the retried one: \(b2.payload)")
            _ = try await f.complete(b2, output: #"{"b": 2}"#, cost: [try Cost(amount: 3)])
            _ = try await f.complete(try await f.claimStep("c"), output: #"{"c": 3}"#)
            shown = try await f.run(run.runID)
            #expect(shown.state == "succeeded" && shown.budgetSpent == 5, "the ledger continued: \(shown.budgetSpent)")
            #expect(shown.output.map { try? StrictJSON.parse(Array($0.utf8)) } == .object(["c": .object(["c": .integer(3)])]))
            let history = try await conn.query(
                "SELECT count(*) AS n FROM workflow.attempts a JOIN workflow.executions e ON e.execution_id = a.execution_id WHERE e.run_id = \(run.runID)"
            ).single().decode("n", as: Int64.self)
            #expect(history == 4, "every attempt of both rounds is kept")
            let event = try await conn.query("SELECT payload FROM engine.events WHERE topic = 'run.retried' AND payload->>'run_id' = \(run.runID)").single()
            #expect(try event.decode("payload", as: String.self).contains("operator"))
            let audit = try await conn.query("SELECT actor FROM engine.audit WHERE action = 'run.retry' AND detail->>'run_id' = \(run.runID)").single()
            #expect(try audit.decode("actor", as: String.self).contains("operator"))
            await #expect(throws: RegentError.self, "a succeeded run") { _ = try await RunStore().retry(run.runID, .init(), actor: f.actor, on: conn) }
        }
    }

    /// A cancelled run has no failed step: `--steps failed` says so and changes nothing;
    /// `all-unfinished` resumes it, the cancelled and skipped steps running again. A run that
    /// spent its budget resumes only with a higher limit.
    @Test func aCancelledOrOverBudgetRunResumesOnlyAsAsked() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("resume2", steps: Self.linear, budget: #"{"limit": 5, "unit": "units"}"#, on: conn)
            let run = try await f.start()
            _ = try await f.claimStep("a")
            _ = try await RunStore().cancel(run.runID, reason: "operator", actor: f.actor, on: conn)
            do {
                _ = try await RunStore().retry(run.runID, .init(mode: .failed), actor: f.actor, on: conn)
                Issue.record("a cancelled run has no failed step")
            } catch let e as RegentError {
                #expect(e.code == .conflict && e.message.contains("no step") && (e.hint ?? "").contains("all-unfinished"))
            }
            #expect(try await f.run(run.runID).state == "cancelled", "nothing changed")
            let retried = try await RunStore().retry(run.runID, .init(mode: .allUnfinished), actor: f.actor, on: conn)
            #expect(retried.requeued == ["a"] && retried.reset == ["a", "b", "c"])
            _ = try await f.complete(try await f.claimStep("a"), cost: [try Cost(amount: 5)])
            #expect(try await f.run(run.runID).reason == "budget_exceeded")
            do {
                _ = try await RunStore().retry(run.runID, .init(mode: .allUnfinished), actor: f.actor, on: conn)
                Issue.record("a spent budget needs a higher limit")
            } catch let e as RegentError { #expect(e.code == .conflict && e.message.contains("budget")) }
            let raised = try await RunStore().retry(run.runID, .init(mode: .allUnfinished, budgetLimit: 20), actor: f.actor, on: conn)
            #expect(raised.requeued == ["b"])
            let shown = try await f.run(run.runID)
            #expect(shown.state == "running" && shown.budgetLimit == 20 && shown.budgetSpent == 5)
            await #expect(throws: RegentError.self) { _ = try await RunStore().retry("run_nope", .init(), actor: f.actor, on: conn) }
        }
    }

    /// Completion items may name their run (`run_id`, as the claim gave it): a batch whose
    /// every item does skips the statement for plain executions. The steps complete as without
    /// it; a plain execution sent with a run is not completed (stale) and stays running.
    @Test func completionsNamingTheirRunCompleteStepsAndNeverAPlainExecution() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("hinted", steps: Self.diamond, on: conn)
            let run = try await f.start()
            let a = try await f.claimStep("a")
            let one = try await LeaseStore().complete([Completion(executionID: a.executionID, epoch: a.epoch, result: #"{"a": 1}"#, runID: run.runID)], on: conn)
            #expect(one.done.count == 1)
            let plain = try await LeaseStore().enqueue(namespace: RunStore.namespace, [EnqueueRequest(lane: try Lane("work"))], on: conn)
            let leases = try await f.claim()
            #expect(leases.count == 3)
            let outcome = try await LeaseStore().complete(
                leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch, result: "{}", runID: $0.step?.runID ?? run.runID) }, on: conn)
            #expect(outcome.done.count == 2 && outcome.stale == [plain[0].executionID], "the plain one named a run: stale")
            let state = try await conn.query("SELECT state::text AS s FROM workflow.executions WHERE execution_id = \(plain[0].executionID)").single().decode("s", as: String.self)
            #expect(state == "running")
            #expect(try await f.run(run.runID).steps.map(\.state) == ["succeeded", "succeeded", "succeeded", "queued"])
        }
    }

    /// The step trigger (its WHEN only column tests since workflow 0024) names the final states in its function: they
    /// are exactly the final states of the execution_state domain, and a state this test does not
    /// know fails it (the function must then be read again). A step's final state set to itself
    /// fires the trigger and changes nothing: no event, the run and its steps as they were.
    @Test func theStepTriggerSeesEveryFinalStateAndNoRepeat() async throws {
        try await withBootedDatabase { _, conn in
            let definition = try await conn.query("""
                SELECT pg_get_constraintdef(c.oid) AS def FROM pg_constraint c WHERE c.contypid = 'workflow.execution_state'::regtype
                """).single().decode("def", as: String.self)
            let states = try await conn.query("SELECT m[1] AS s FROM regexp_matches(\(definition), '''([a-z_]+)''', 'g') AS m")
                .map { try $0.decode("s", as: String.self) }
            let final: Set = ["completed", "failed", "dead_lettered", "cancelled"]
            #expect(Set(states) == final.union(["queued", "running"]), "execution_state is \(definition): read the step trigger's function again")
            let trigger = try await conn.query("SELECT pg_get_triggerdef(oid) AS d FROM pg_trigger WHERE tgname = 'step_execution_changed'").single()
                .decode("d", as: String.self)
            #expect(trigger.contains("WHEN (((new.step_id IS NOT NULL) OR (new.flow_key IS NOT NULL) OR new.lane_limited))"), "\(trigger)")
            let source = try await conn.query("SELECT prosrc AS s FROM pg_proc WHERE oid = 'workflow.step_execution_changed'::regproc").single()
                .decode("s", as: String.self)
            #expect(source.contains("NEW.state IN ('completed', 'failed', 'dead_lettered', 'cancelled')"))
            let triggers = try await conn.query("SELECT count(*)::int AS n FROM pg_trigger WHERE tgrelid = 'workflow.executions'::regclass AND NOT tgisinternal AND tgtype & 16 <> 0")
                .single().decode("n", as: Int.self)
            #expect(triggers == 1, "one row trigger on an execution's update")

            let f = try await RunFixture.deploy("repeat", steps: Self.linear, on: conn)
            let run = try await f.start()
            let a = try await f.claimStep("a", run: run.runID)
            _ = try await f.complete(a, output: #"{"a": 1}"#)
            func snapshot() async throws -> String {
                try await conn.query("""
                    SELECT (SELECT count(*) FROM engine.events)::text || ' ' || (SELECT state || ' ' || coalesce(finished_at::text, '-') FROM workflow.runs WHERE run_id = \(run.runID))
                           || ' ' || (SELECT string_agg(name || ':' || state || ':' || coalesce(finished_at::text, '-'), ',' ORDER BY position) FROM workflow.run_steps WHERE run_id = \(run.runID))
                           || ' ' || (SELECT count(*) FROM workflow.executions WHERE run_id = \(run.runID))::text AS s
                    """).single().decode("s", as: String.self)
            }
            let before = try await snapshot()
            try await conn.query("UPDATE workflow.executions SET state = state WHERE execution_id = \(a.executionID)")
            #expect(try await snapshot() == before, "a completed step's state set to itself advanced the run again")
            #expect(try await f.stepStates(run.runID) == ["a": "succeeded", "b": "queued", "c": "pending"])
        }
    }

    /// Workflow 0023 reads a step's input and its dependencies' outputs in the claim's own plan,
    /// with the dependencies' names carried in the execution (`after`); an execution enqueued
    /// before 0023 (no `after` in its payload) is read through step_payload. Both give a worker
    /// the same payload, through the claim of a limited lane (claim_limited) as of any other.
    @Test func aStepPayloadIsTheSameWhicheverWayTheClaimReadsIt() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("payloads", steps: Self.diamond, on: conn)
            let current = try await f.start(#"{"x": 1}"#).runID
            let older = try await f.start(#"{"x": 2}"#).runID
            for lease in try await f.claim(limit: 100) { _ = try await f.complete(lease, output: #"{"a": 1}"#) }
            let middle = try await f.claim(limit: 100)
            #expect(middle.compactMap(\.step?.name).sorted() == ["b", "b", "c", "c"])
            for lease in middle { _ = try await f.complete(lease, output: lease.step?.name == "b" ? #"{"b": [2]}"# : #"{"c": null}"#) }
            let stored = try await conn.query("""
                SELECT e.payload -> 'after' AS after FROM workflow.executions e
                JOIN workflow.run_steps s ON s.execution_id = e.execution_id WHERE s.run_id = \(current) AND s.name = 'd'
                """).single().decode("after", as: String.self)
            #expect(stored == #"["b", "c"]"#, "enqueue_steps carries the dependencies' names")
            // As an execution enqueued before 0023 would be.
            try await conn.query("""
                UPDATE workflow.executions e SET payload = e.payload - 'after' FROM workflow.run_steps s
                WHERE s.execution_id = e.execution_id AND s.run_id = \(older) AND s.name = 'd'
                """)
            // Claimed through a limited lane (workflow.claim_limited), which reads payloads as the claim does.
            _ = try await LaneLimitStore().set(
                namespace: RunStore.namespace, lane: try Lane("work"), maxRunning: 10, rate: nil, burst: nil, actor: .named("test"), on: conn)
            let ds = try await f.claim(limit: 100)
            #expect(ds.count == 2)
            try await LaneLimitStore().clear(namespace: RunStore.namespace, lane: try Lane("work"), actor: .named("test"), on: conn)
            for (run, input) in [(current, #"{"x": 1}"#), (older, #"{"x": 2}"#)] {
                let lease = try #require(ds.first { $0.step?.name == "d" && $0.step?.runID == run })
                let ok = try await conn.query("""
                    SELECT \(lease.payload)::jsonb = jsonb_build_object('run_id', \(run)::text, 'step', 'd', 'package_hash', \(f.hash)::text,
                                                    'input', \(input)::jsonb, 'after', '{"b": {"b": [2]}, "c": {"c": null}}'::jsonb) AS ok
                    """).single().decode("ok", as: Bool.self)
                #expect(ok, "run \(run): \(lease.payload)")
            }
            // A root step: no dependencies, an empty object.
            let root = try await f.start(#"{"x": 3}"#)
            let a = try await f.claimStep("a", run: root.runID)
            let rootOK = try await conn.query("""
                SELECT (\(a.payload)::jsonb -> 'after') = '{}'::jsonb AND (\(a.payload)::jsonb -> 'input') = '{"x": 3}'::jsonb AS ok
                """).single().decode("ok", as: Bool.self)
            #expect(rootOK, "\(a.payload)")
        }
    }

    /// Workflow 0023 matches a batch's items to executions by (id, current epoch) through an
    /// object, not a join: a batch naming one execution twice, once with a stale epoch, completes
    /// it with the current item's result whichever comes first; a JSON null result is stored as
    /// no result; an item without an epoch changes nothing.
    @Test func aBatchCompletionMatchesEachItemByItsCurrentEpoch() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("batches", steps: Self.linear, on: conn)
            let ns = RunStore.namespace
            var ids: [UUID] = []
            for _ in 0..<4 { ids.append(try await LeaseStore().enqueue(namespace: ns, lane: try Lane("work"), payload: "{}", maxAttempts: 3, on: conn)) }
            let leases = try await f.claim(limit: 10).filter { $0.step == nil }
            #expect(leases.count == 4)
            func lease(_ id: UUID) throws -> Lease { try #require(leases.first { $0.executionID == id }) }
            func complete(_ items: String) async throws -> [UUID] {
                try await conn.query("SELECT execution_id FROM workflow.complete(\(items)::jsonb, NULL::text)").map { try $0.decode("execution_id", as: UUID.self) }
            }
            let e0 = try lease(ids[0]).epoch.value, e1 = try lease(ids[1]).epoch.value
            let done = try await complete("""
                [{"execution_id": "\(ids[0].uuidString)", "epoch": \(e0), "result": {"right": 0}},
                 {"execution_id": "\(ids[0].uuidString)", "epoch": \(e0 + 7), "result": {"wrong": 0}},
                 {"execution_id": "\(ids[1].uuidString)", "epoch": \(e1 + 7), "result": {"wrong": 1}},
                 {"execution_id": "\(ids[1].uuidString)", "epoch": \(e1), "result": {"right": 1}}]
                """)
            #expect(Set(done) == [ids[0], ids[1]])
            for (n, id) in ids[0...1].enumerated() {
                let result = try await conn.query("SELECT result::text AS r FROM workflow.executions WHERE execution_id = \(id)").single()
                    .decode("r", as: String.self)
                #expect(result == #"{"right": \#(n)}"#)
            }
            let nulls = try await complete(#"[{"execution_id": "\#(ids[2].uuidString.lowercased())", "epoch": \#(try lease(ids[2]).epoch.value), "result": null}]"#)
            #expect(nulls == [ids[2]])
            #expect(try await conn.query("SELECT result IS NULL AS n FROM workflow.executions WHERE execution_id = \(ids[2])").single().decode("n", as: Bool.self))
            #expect(try await complete(#"[{"execution_id": "\#(ids[3].uuidString)", "result": {}}]"#).isEmpty, "no epoch, no completion")
            #expect(try await conn.query("SELECT state FROM workflow.executions WHERE execution_id = \(ids[3])").single().decode("state", as: String.self) == "running")
        }
    }

    @Test func aBudgetReachedStopsTheRunAndTheLedgerAddsUp() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("budget", steps: Self.linear, budget: #"{"limit": 10, "unit": "cents"}"#, on: conn)
            let run = try await f.start()
            _ = try await f.complete(try await f.claimStep("a"), cost: [try Cost(amount: 4), try Cost(amount: 2.5, unit: "cents"), try Cost(amount: 99, unit: "tokens")])
            var shown = try await f.run(run.runID)
            #expect(shown.state == "running" && shown.budgetSpent == 6.5 && shown.budgetRemaining == 3.5 && shown.ledger.count == 3)
            _ = try await f.complete(try await f.claimStep("b"), cost: [try Cost(amount: 3.5)])
            shown = try await f.run(run.runID)
            #expect(shown.state == "failed" && shown.reason == "budget_exceeded" && shown.budgetRemaining == 0)
            #expect(shown.steps.map(\.state) == ["succeeded", "succeeded", "skipped"])
            #expect(try await f.claim().isEmpty, "nothing more is enqueued")
            let total = try await conn.query(
                "SELECT sum(amount)::float8 AS s FROM workflow.budget_ledger WHERE run_id = \(run.runID) AND unit = 'cents'").single().decode("s", as: Double.self)
            #expect(total == shown.budgetSpent)
            #expect(throws: RegentError.self) { _ = try Cost(amount: -1) }
        }
    }

    @Test func theDeadlineDutyFailsOverdueRunsOnlyOnTheLeader() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("deadlines", steps: Self.linear, on: conn)
            let overdue = try await f.start(deadline: .milliseconds(10))
            let fine = try await f.start(deadline: .seconds(3600))
            let lease = try await f.claimStep("a", run: overdue.runID)
            try await Task.sleep(for: .milliseconds(30))
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
            let duty = RunDeadlines(pool: pool)
            await expectCode(.notLeader) { _ = try await duty.expireOnce(fence: LeaderFence(term: 9, instanceID: InstanceID(), lockBackendPID: 0)) }
            #expect(try await f.run(overdue.runID).state == "running")
            let (fence, cluster) = try await leaderFence(config)
            _ = try await asLeader(fence, of: cluster) { try await duty.expireOnce(fence: $0) }  // the node's own duty may have done it first
            try await waitUntil("the overdue run fails") { try await f.run(overdue.runID).state == "failed" }
            let run = try await f.run(overdue.runID)
            // This call's term, or a later one of the same node's duty (a loaded machine can make it re-elect).
            #expect(run.reason == "deadline_exceeded" && (run.term ?? 0) >= fence.term.value)
            #expect(try await f.run(fine.runID).state == "running")
            #expect(try await f.complete(lease).stale == [lease.executionID])
            await cluster.stopAll()
            await pool.shutdown()
        }
    }

    /// How many stray records (sql/workflow 0011) are left.
    static func strays(_ conn: PostgresConnection) async throws -> Int {
        try await conn.query("SELECT count(*) AS n FROM workflow.run_strays").single().decode("n", as: Int.self)
    }

    /// A run whose step `a` is claimed, cancelled while another session (returned, its
    /// transaction still open) holds that step's execution row: the finish has to skip it.
    static func cancelWhileHeld(
        _ type: String, _ config: ConnectionConfiguration, _ conn: PostgresConnection
    ) async throws -> (f: RunFixture, run: RunStore.Started, a: Lease, holder: PostgresConnection) {
        let f = try await RunFixture.deploy(type, steps: Self.linear, on: conn)
        let run = try await f.start()
        let a = try await f.claimStep("a")
        let holder = try await PostgresConnection.connect(config)
        try await holder.query("BEGIN")
        try await holder.query("SELECT 1 AS one FROM workflow.executions WHERE execution_id = \(a.executionID) FOR UPDATE")
        _ = try await RunStore().cancel(run.runID, reason: "test", actor: f.actor, on: conn)
        return (f, run, a, holder)
    }

    /// A run cancelled while another transaction holds its running step's execution (here a
    /// plain row lock; in life a claim, a requeue or the lease scanner): the finish cannot
    /// fence it and records it as a stray; once the holder lets go, the deadline duty fences it.
    @Test func theDeadlineDutyFencesTheStepExecutionAFinishHadToSkip() async throws {
        try await withBootedDatabase { config, conn in
            let (f, run, a, holder) = try await Self.cancelWhileHeld("strays", config, conn)
            #expect(try await f.run(run.runID).state == "cancelled")
            let held = try await conn.query("SELECT state FROM workflow.executions WHERE execution_id = \(a.executionID)").single()
            #expect(try held.decode("state", as: String.self) == "running")
            let recorded = try await conn.query("SELECT execution_id, run_id FROM workflow.run_strays").map {
                (try $0.decode("execution_id", as: UUID.self), try $0.decode("run_id", as: String.self))
            }
            #expect(recorded.map(\.0) == [a.executionID] && recorded.map(\.1) == [run.runID])
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
            let (fence, cluster) = try await leaderFence(config)
            // Still held: the duty skips it and keeps the record.
            _ = try await asLeader(fence, of: cluster) { try await RunDeadlines(pool: pool).expireOnce(fence: $0) }
            #expect(try await Self.strays(conn) == 1)
            try await holder.query("ROLLBACK")
            await holder.close()
            _ = try await asLeader(fence, of: cluster) { try await RunDeadlines(pool: pool).expireOnce(fence: $0) }
            try await waitUntil("the stray execution is fenced") {
                try await conn.query("SELECT state FROM workflow.executions WHERE execution_id = \(a.executionID)").single()
                    .decode("state", as: String.self) == "cancelled"
            }
            try await waitUntil("the stray record is cleared") { try await Self.strays(conn) == 0 }
            #expect(try await f.run(run.runID).steps.first?.state == "cancelled")
            #expect(try await f.complete(a).stale == [a.executionID])
            await cluster.stopAll()
            await pool.shutdown()
        }
    }

    /// A stray whose worker completes it after the finish is fenced by its own completion (the
    /// step trigger); the duty then only clears the record, and changes nothing else.
    @Test func aStrayFencedByItsOwnCompletionIsOnlyClearedByTheDuty() async throws {
        try await withBootedDatabase { config, conn in
            let (f, _, a, holder) = try await Self.cancelWhileHeld("strays2", config, conn)
            try await holder.query("ROLLBACK")
            await holder.close()
            #expect(try await Self.strays(conn) == 1)
            #expect(try await f.complete(a).stale == [a.executionID])
            let epoch = try await conn.query("SELECT lease_epoch FROM workflow.executions WHERE execution_id = \(a.executionID)").single()
                .decode("lease_epoch", as: Int64.self)
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
            let (fence, cluster) = try await leaderFence(config)
            _ = try await asLeader(fence, of: cluster) { try await RunDeadlines(pool: pool).expireOnce(fence: $0) }
            try await waitUntil("the stray record is cleared") { try await Self.strays(conn) == 0 }
            let after = try await conn.query("SELECT state, lease_epoch FROM workflow.executions WHERE execution_id = \(a.executionID)").single()
            #expect(try after.decode("state", as: String.self) == "cancelled")
            #expect(try after.decode("lease_epoch", as: Int64.self) == epoch)
            await cluster.stopAll()
            await pool.shutdown()
        }
    }

    /// A stray left from before 0011 (a finished run whose step execution is still running) is
    /// recorded by the migration itself, and the sweep fences it.
    @Test func theUpgradeRecordsTheStraysAlreadyThere() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            let runner = MigrationRunner(appliedBy: "test")
            try await runner.migrate(on: conn, schemas: ["engine", "workflow"], target: MigrationTarget(schema: "workflow", version: 10))
            let f = try await RunFixture.deploy("upgraded", steps: Self.linear, on: conn)
            // Started and claimed as a binary of workflow 10 did (that schema's functions).
            let runID = try await conn.query(
                "SELECT run_id FROM workflow.start_run('upgraded', '{}'::jsonb, NULL, NULL::timestamptz, NULL::numeric, NULL, 'test', 'runs', NULL::uuid)"
            ).single().decode("run_id", as: String.self)
            let claimed = try await conn.query(
                "SELECT execution_id, lease_epoch FROM workflow.claim('runs', \(f.worker.value), ARRAY['work'], ARRAY[]::text[], 30000, 1)").single()
            let a = Lease(
                executionID: try claimed.decode("execution_id"), lane: "work", attemptIndex: 1, epoch: LeaseEpoch(try claimed.decode("lease_epoch")),
                payload: "{}", expiresAt: Date())
            try await conn.query(
                "UPDATE workflow.runs SET state = 'cancelled', reason = 'cancelled', finished_at = now() WHERE run_id = \(runID)")
            #expect(try await runner.migrate(on: conn, schemas: ["workflow"], target: MigrationTarget(schema: "workflow", version: 11)).map(\.description)
                == ["workflow 0011_run_strays"])
            let recorded = try await conn.query("SELECT execution_id FROM workflow.run_strays").map { try $0.decode("execution_id", as: UUID.self) }
            #expect(recorded == [a.executionID])
            // And on to the newest schema (sql/workflow 0012) with the stray still there.
            _ = try await runner.migrate(on: conn, schemas: ["workflow"])
            try await conn.query("SELECT workflow.expire_runs(100, 'test', NULL) AS n")
            #expect(try await Self.strays(conn) == 0)
            #expect(try await conn.query("SELECT state FROM workflow.executions WHERE execution_id = \(a.executionID)").single()
                .decode("state", as: String.self) == "cancelled")
            #expect(try await f.complete(a).stale == [a.executionID])
        }
    }

    /// The duty's every-second read probes two indexes whatever the number of runs and steps in
    /// flight: it never scans `runs` or reads `run_steps` (the old one joined every queued step
    /// to its run, a sequential scan of `runs` while none had finished).
    @Test func theDeadlineDutysIdleReadNeverScansTheRunTables() async throws {
        try await withBootedDatabase { _, conn in
            try await conn.query("""
                INSERT INTO workflow.runs (run_id, workflow_type, package_hash, input, started_by)
                SELECT 'run_' || lpad(to_hex(g), 26, '0'), 't', repeat('a', 64), '{}', 'test' FROM generate_series(1, 5000) g
                """)
            try await conn.query("""
                INSERT INTO workflow.run_steps (step_id, run_id, name, position, after_steps, lane, capabilities, max_attempts, timeout_ms,
                                                backoff_base_ms, backoff_max_ms, state, execution_id)
                SELECT 'step_' || lpad(to_hex(g), 26, '0'), 'run_' || lpad(to_hex(g), 26, '0'), 'one', 0, '{}', 'work', '{}', 3, 60000,
                       1000, 60000, 'queued', gen_random_uuid() FROM generate_series(1, 5000) g
                """)
            try await conn.query("ANALYZE workflow.runs")
            try await conn.query("ANALYZE workflow.run_steps")
            let plan = try await conn.query(PostgresQuery(unsafeSQL: "EXPLAIN (FORMAT JSON) " + RunDeadlines.pending.sql)).single()
                .decode("QUERY PLAN", as: String.self)
            // Every node of the plan as (type, relation, index).
            var nodes: [(String, String?, String?)] = []
            func walk(_ node: [String: Any]) {
                nodes.append((node["Node Type"] as? String ?? "", node["Relation Name"] as? String, node["Index Name"] as? String))
                for child in node["Plans"] as? [[String: Any]] ?? [] { walk(child) }
            }
            let top = try #require((try JSONSerialization.jsonObject(with: Data(plan.utf8)) as? [[String: Any]])?.first?["Plan"] as? [String: Any])
            walk(top)
            #expect(!nodes.contains { $0.1 == "run_steps" })
            #expect(!nodes.contains { $0.0 == "Seq Scan" && $0.1 == "runs" })
            #expect(nodes.contains { $0.2 == "runs_deadline_idx" })
            #expect(try await conn.query(RunDeadlines.pending).single().decode("pending", as: Bool.self) == false)
        }
    }

    @Test func retentionDeletesOnlyFinishedRuns() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("retained", steps: Self.linear, on: conn)
            let done = try await f.start(), open = try await f.start()
            _ = try await RunStore().cancel(done.runID, reason: "old", actor: .named("t"), on: conn)
            try await conn.query(
                "UPDATE workflow.runs SET started_at = now() - interval '10 days', finished_at = CASE WHEN state <> 'running' THEN now() - interval '10 days' END")
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
            let (fence, cluster) = try await leaderFence(config)
            _ = try await asLeader(fence, of: cluster) { try await RunRetention(pool: pool, retention: .seconds(86_400)).pruneOnce(fence: $0) }
            // The leader node's own retention duty may hold the row at that moment (SKIP LOCKED): either deletes it.
            try await waitUntil("the finished run is pruned") { try await RunStore().get(done.runID, on: conn) == nil }
            #expect(try await RunStore().get(open.runID, on: conn)?.state == "running")
            let orphans = try await conn.query(
                "SELECT count(*) AS n FROM workflow.executions e WHERE step_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM workflow.run_steps s WHERE s.step_id = e.step_id)"
            ).single().decode("n", as: Int.self)
            #expect(orphans == 0)
            await cluster.stopAll()
            await pool.shutdown()
        }
    }

    /// Queue retention deletes old finished executions, but not the finished steps of a run
    /// that is still running (its history); once the run has finished, they are its to delete.
    @Test func queueRetentionKeepsTheFinishedStepsOfAnUnfinishedRun() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("longrun", steps: Self.linear, on: conn)
            let open = try await f.start()
            _ = try await f.complete(try await f.claimStep("a", run: open.runID))
            let plain = try await LeaseStore().enqueue(namespace: RunStore.namespace, [EnqueueRequest(lane: try Lane("plain"))], on: conn)[0]
            try await conn.query("UPDATE workflow.executions SET state = 'completed', finished_at = now() WHERE execution_id = \(plain.executionID)")
            try await conn.query(
                "UPDATE workflow.executions SET created_at = now() - interval '10 days', finished_at = finished_at - interval '10 days' WHERE state = 'completed'")
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
            let (fence, cluster) = try await leaderFence(config)
            _ = try await asLeader(fence, of: cluster) { try await QueueRetention(pool: pool, retention: .seconds(86_400)).pruneOnce(fence: $0) }
            // The leader node's own retention duty may hold the plain row at that moment (SKIP LOCKED).
            try await waitUntil("the plain execution is pruned") {
                try await conn.query("SELECT count(*) AS n FROM workflow.executions WHERE execution_id = \(plain.executionID)").single()
                    .decode("n", as: Int.self) == 0
            }
            let steps = try await f.run(open.runID).steps
            let a = try #require(steps.first { $0.name == "a" })
            #expect(a.state == "succeeded")
            let kept = try await conn.query(
                "SELECT count(*) AS n FROM workflow.executions e JOIN workflow.run_steps s ON s.execution_id = e.execution_id WHERE s.run_id = \(open.runID) AND s.name = 'a'"
            ).single().decode("n", as: Int.self)
            #expect(kept == 1)
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.attempts a JOIN workflow.run_steps s ON s.execution_id = a.execution_id WHERE s.run_id = \(open.runID)").single().decode("n", as: Int.self) == 1)
            await cluster.stopAll()
            await pool.shutdown()
        }
    }

    @Test func unloadOfAPinnedVersionIsRefusedUntilTheRunFinishes() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("unpin", steps: [#"{"name": "only", "lane": "work"}"#], on: conn)
            let run = try await f.start()
            _ = try await RunFixture.deploy("unpin", steps: [#"{"name": "only", "lane": "work"}"#, #"{"name": "more", "lane": "work"}"#], on: conn)
            await expectCode(.conflict) { try await PackageStore().unload(type: f.type, hash: f.hash, actor: f.actor, on: conn) }
            _ = try await f.complete(try await f.claimStep("only", run: run.runID))
            #expect(try await f.run(run.runID).state == "succeeded")
            try await PackageStore().unload(type: f.type, hash: f.hash, actor: f.actor, on: conn)
        }
    }

    @Test func aConnectionKilledInTheMiddleOfACompletionLeavesNothingHalfDone() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("crash", steps: Self.linear, on: conn)
            let run = try await f.start()
            let a = try await f.claimStep("a")
            // The completion runs inside a transaction that never commits: its session dies first.
            let victim = try await PostgresConnection.connect(config)
            try await victim.query("BEGIN")
            _ = try await f.complete(a, output: #"{"half": true}"#, on: victim)
            let pid = try await victim.query("SELECT pg_backend_pid() AS pid").single().decode("pid", as: Int32.self)
            #expect(try await f.stepStates(run.runID)["a"] == "running", "uncommitted: nothing visible yet")
            try await conn.query("SELECT pg_terminate_backend(\(pid))")
            await victim.close()
            try await waitUntil("the backend is gone") {
                try await conn.query("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = \(pid)").single().decode("n", as: Int.self) == 0
            }
            let shown = try await f.run(run.runID)
            #expect(shown.steps.map(\.state) == ["running", "pending", "pending"])
            #expect(shown.steps[0].output == nil)
            #expect(try await f.claim().isEmpty, "b was not enqueued")
            // The lease is still the worker's: completing for real advances the run.
            #expect(try await f.complete(a, output: #"{"whole": true}"#).done.count == 1)
            #expect(try await f.claim().compactMap(\.step?.name) == ["b"])
        }
    }

    @Test func theDrillInvariantsHoldForARealRunAndCatchBrokenOnes() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("checked", steps: Self.diamond, budget: #"{"limit": 100, "unit": "units"}"#, on: conn)
            let run = try await f.start()
            for _ in 0..<3 {
                let leases = try await f.claim(limit: 10)
                _ = try await LeaseStore().complete(leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch, cost: [try! Cost(amount: 1)]) }, on: conn)
            }
            #expect(try await f.run(run.runID).state == "succeeded")
            #expect(try await WorkflowDrill.check(conn) == [])
            // A second accepted cost for one step, and a step that "ran" before its after step finished.
            try await conn.query(
                "INSERT INTO workflow.budget_ledger (entry_id, run_id, step_name, amount, unit) VALUES ('budget_' || workflow.ulid(), \(run.runID), 'a', 1, 'units')")
            try await conn.query("UPDATE workflow.run_steps SET queued_at = queued_at - interval '1 hour' WHERE run_id = \(run.runID) AND name = 'd'")
            let violations = try await WorkflowDrill.check(conn)
            #expect(violations.contains { $0.contains("ledger total") } && violations.contains { $0.contains("not the one accepted cost") })
            #expect(violations.contains { $0.contains("before one of its after steps succeeded") }, "\(violations)")
        }
    }

    @Test func badStartInputIsRefusedWithNothingChanged() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("bad", steps: Self.linear, on: conn)
            await expectCode(.notFound) { _ = try await RunStore().start(.init(workflowType: try WorkflowType("unknown")), actor: f.actor, on: conn) }
            await expectCode(.invalidInput) { _ = try await f.start("[1, 2]") }
            await expectCode(.invalidInput) { _ = try await f.start("{") }
            await expectCode(.invalidInput) { _ = try await f.start(key: "") }
            await expectCode(.invalidInput) { _ = try await f.start(key: "a\u{1}b") }
            await expectCode(.invalidInput) { _ = try await f.start(deadline: .seconds(-5)) }
            await expectCode(.invalidInput) { _ = try await RunStore().get("run_NOPE", on: conn) }
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.runs").single().decode("n", as: Int.self) == 0)
        }
    }
}
