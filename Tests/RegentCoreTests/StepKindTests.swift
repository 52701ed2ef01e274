import Foundation
import PostgresClient
@testable import RegentCore
import RegentDrill
import RegentTestSupport
import Testing

/// Timers, signals and child workflows (issue 27, sql/workflow/0016), against a real server:
/// each advanced by the transaction that decides it, and timers by the leader's timer duty of a
/// real node.
@Suite("Runs that wait: timers, signals, child workflows")
struct StepKindTests {
    static func waiting(_ f: RunFixture, _ run: String, _ step: String) async throws -> RunStore.Step {
        try #require(try await f.run(run).steps.first { $0.name == step })
    }

    /// How long to wait for what the leader's timer duty does: on a loaded machine (CI's parallel
    /// phase) leadership can change hands several times first.
    static let leaderWork = Duration.seconds(45)

    static func wakeups(_ conn: PostgresConnection) async throws -> Int {
        try await conn.query("SELECT count(*) AS n FROM workflow.wakeups").single().decode("n", as: Int.self)
    }

    // MARK: Manifest rules

    @Test func eachKindsRulesAreEnforcedAtDeployNamingTheField() throws {
        func m(_ steps: String...) -> [UInt8] { Array(PackageFixture.manifest(type: "kinds", steps: steps).utf8) }
        let refused: [([UInt8], String)] = [
            (m(#"{"name": "a", "lane": "l", "sleep": "1s"}"#), "steps[0] is both a worker step and a timer step"),
            (m(#"{"name": "a"}"#), "steps[0] has no kind"),
            (m(#"{"name": "a", "sleep": "1s", "max_attempts": 3}"#), "steps[0].max_attempts belongs to a worker step, and this is a timer step"),
            (m(#"{"name": "a", "wait_for": "ok", "input": "$.input"}"#), "steps[0].input belongs to a child step"),
            (m(#"{"name": "a", "sleep": "1s", "sleep_until": "$.input.t"}"#), "steps[0] has both sleep and sleep_until"),
            (m(#"{"name": "a", "sleep": "400d"}"#), "invalid duration \"400d\""),
            (m(#"{"name": "a", "sleep_until": "input.t"}"#), "steps[0].sleep_until \"input.t\""),
            (m(#"{"name": "a", "sleep_until": "$.steps.b.output"}"#, #"{"name": "b", "lane": "l", "after": []}"#),
             "steps[0] reads $.steps.b.output but does not run after step \"b\""),
            (m(#"{"name": "a", "wait_for": "Bad Name"}"#), "steps[0].wait_for \"Bad Name\""),
            (m(#"{"name": "a", "wait_for": "ok"}"#, #"{"name": "b", "wait_for": "ok"}"#), "steps[1].wait_for \"ok\" is already awaited by step \"a\""),
            (m(#"{"name": "a", "wait_for": "ok", "on_timeout": "continue"}"#), "steps[0].on_timeout needs a timeout"),
            (m(#"{"name": "a", "wait_for": "ok", "timeout": "1h", "on_timeout": "maybe"}"#), "on_timeout must be fail or continue"),
            (m(#"{"name": "a", "wait_for": "ok", "timeout": "10ms"}"#), "steps[0].timeout must be at least"),
            (m(#"{"name": "a", "child": "bad type!"}"#), "steps[0].child"),
            (m(#"{"name": "a", "child": "kinds"}"#), "steps[0].child names this workflow's own type"),
            (m(#"{"name": "a", "child": "other", "input": "$.nothing"}"#), "steps[0].input \"$.nothing\""),
        ]
        for (bytes, expected) in refused {
            #expect(throws: RegentError.self) { _ = try WorkflowManifest.parse(bytes) }
            do { _ = try WorkflowManifest.parse(bytes) } catch {
                #expect(error.message.contains(expected), "\(error.message) should say \(expected)")
            }
        }
        let ok = try WorkflowManifest.parse(m(
            #"{"name": "pack", "lane": "l"}"#, #"{"name": "cool", "sleep": "72h"}"#, #"{"name": "send", "sleep_until": "$.steps.pack.output.at"}"#,
            #"{"name": "approve", "wait_for": "approval", "timeout": "7d", "on_timeout": "continue"}"#,
            #"{"name": "ship", "child": "shipping.dispatch", "input": "$.steps.pack.output"}"#))
        #expect(ok.steps.map(\.kind.label) == ["worker", "timer", "timer", "signal", "child"])
        #expect(ok.steps[3].kind == .signal(name: "approval", timeout: .seconds(7 * 86_400), continueOnTimeout: true))
        #expect(ok.normalizedJSON.contains(#""sleep_ms":259200000"#) && ok.normalizedJSON.contains(#""input":["steps","pack","output"]"#))
    }

    // MARK: Timers

    /// A timer sleeps in the database: no worker, no lease. The leader's duty fires it once, never
    /// before its due time (both read on the database's clock), and the run goes on.
    @Test func aTimerFiresOnceNeverBeforeItsDueTimeAndTheRunGoesOn() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("sleeper", steps: [
                #"{"name": "a", "lane": "work"}"#, #"{"name": "nap", "sleep": "400ms"}"#, #"{"name": "b", "lane": "work"}"#,
            ], on: conn)
            var cluster = Cluster(config: config)
            _ = cluster.start("leader")
            let run = try await f.start()
            _ = try await f.complete(try await f.claimStep("a"))
            let nap = try await Self.waiting(f, run.runID, "nap")
            #expect(nap.kind == "timer" && nap.state == "waiting" && nap.wait?.dueAt != nil)
            #expect(try await f.claim().isEmpty, "nothing is claimable while the timer sleeps")
            try await waitUntil("the timer fires", timeout: Self.leaderWork) { try await Self.waiting(f, run.runID, "nap").state == "succeeded" }
            // (How promptly is `regent bench runs`' business, not a test's.)
            let fired = try await conn.query(
                """
                SELECT (output ->> 'fired_at')::timestamptz >= due_at AS on_time
                FROM workflow.run_steps WHERE run_id = \(run.runID) AND name = 'nap'
                """).single()
            #expect(try fired.decode("on_time", as: Bool.self), "never before its due time")
            #expect(try await Self.wakeups(conn) == 0, "the fired wakeup is gone")
            let b = try await f.claimStep("b")
            _ = try await f.complete(b, output: #"{"done": true}"#)
            #expect(try await f.run(run.runID).state == "succeeded")
            await cluster.stopAll()
        }
    }

    /// `sleep_until` reads an RFC 3339 time from the run: a past time is due at once; a value that
    /// is not such a time fails the step, naming the path and what it found.
    @Test func sleepUntilReadsTheRunAndABadTimeFailsTheStepSayingWhy() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("until", steps: [#"{"name": "wait", "sleep_until": "$.input.send_at"}"#, #"{"name": "b", "lane": "work"}"#], on: conn)
            var cluster = Cluster(config: config)
            _ = cluster.start("leader")
            let past = try await f.start(#"{"send_at": "2020-01-01T00:00:00Z"}"#)
            try await waitUntil("a past time fires at once", timeout: Self.leaderWork) { try await Self.waiting(f, past.runID, "wait").state == "succeeded" }
            for (input, says) in [(#"{"send_at": "tomorrow"}"#, "\"tomorrow\""), (#"{}"#, "absent"), (#"{"send_at": "2027-02-30T00:00:00Z"}"#, "not a valid time")] {
                let bad = try await f.start(input)
                let r = try await f.run(bad.runID)
                #expect(r.state == "failed" && r.reason == "step_failed", "\(input)")
                #expect(r.error?.contains("$.input.send_at") == true && r.error?.contains(says) == true, "\(r.error ?? "")")
            }
            await cluster.stopAll()
        }
    }

    /// With nothing due, a round of the timer duty waits for its idle probe (or a notification)
    /// and reads nothing else: an idle leader never spins on an empty table.
    @Test func anIdleTimerDutyWaitsInsteadOfSpinning() async throws {
        try await withBootedDatabase { config, conn in
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
            let (fence, cluster) = try await leaderFence(config)
            let duty = RunTimers(pool: pool, bell: Doorbell(), idleProbe: .milliseconds(500))
            #expect(try await duty.nextDue() == nil, "no wakeup: nothing is due, not 'due now'")
            let started = ContinuousClock.now
            for _ in 0..<3 { _ = try await asLeader(fence, of: cluster) { try await duty.runOnce(fence: $0) } }
            #expect(started.duration(to: .now) >= .milliseconds(1400), "three idle rounds wait their probe interval each")
            #expect(try await Self.wakeups(conn) == 0)
            await cluster.stopAll()
            await pool.shutdown()
        }
    }

    /// Pages fired side by side (and the leader's own duty beside them) split the due wakeups by
    /// id. Each run here has two timers due at once, and the first to fire makes ready a child
    /// step that fails (no route), whose finish deletes the run's other wakeup, which may belong
    /// to another page: every run fails once, no timer fires twice, and no deadlock is broken.
    @Test func pagesFiredSideBySideFireEachWakeupOnceWithoutWaitingForEachOther() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("twin.naps", steps: [
                #"{"name": "a", "sleep": "1ms", "after": []}"#, #"{"name": "b", "sleep": "1ms", "after": []}"#,
                #"{"name": "x", "child": "nobody.here", "after": ["a"]}"#, #"{"name": "d", "lane": "work", "after": ["b", "x"]}"#,
            ], on: conn)
            let deadlocksBefore = try await LockOrderTests.deadlocks(conn)
            for _ in 0..<60 { _ = try await f.start() }
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 6))
            let (fence, cluster) = try await leaderFence(config)
            let duty = RunTimers(pool: pool, bell: nil, pageSize: 10)
            let nodes = cluster.nodes
            for _ in 0..<30 {
                // Each page as the leader: a loaded test process can stall inside a fenced
                // transaction past the lease window, and the server ends it (then it is retried).
                async let p0 = asLeader(fence, of: nodes) { try await duty.fireOnce(fence: $0, part: 0, parts: 3) }
                async let p1 = asLeader(fence, of: nodes) { try await duty.fireOnce(fence: $0, part: 1, parts: 3) }
                async let p2 = asLeader(fence, of: nodes) { try await duty.fireOnce(fence: $0, part: 2, parts: 3) }
                _ = try await (p0, p1, p2)
                if try await Self.wakeups(conn) == 0 { break }
            }
            try await waitUntil("every wakeup is gone", timeout: Self.leaderWork) { try await Self.wakeups(conn) == 0 }
            let twice = try await conn.query(
                """
                SELECT count(*) AS n FROM (SELECT payload ->> 'run_id', payload ->> 'step' FROM engine.events
                WHERE topic = 'step.succeeded' AND payload ->> 'kind' = 'timer' GROUP BY 1, 2 HAVING count(*) > 1) AS t
                """).single().decode("n", as: Int.self)
            #expect(twice == 0, "no timer fired twice")
            let failed = try await conn.query(
                "SELECT count(*) AS n FROM workflow.runs WHERE state = 'failed' AND error LIKE '%nobody.here has no routed version%'"
            ).single().decode("n", as: Int.self)
            #expect(failed == 60)
            #expect(try await LockOrderTests.deadlocks(conn) == deadlocksBefore)
            await cluster.stopAll()
            await pool.shutdown()
        }
    }

    /// With no leader, nothing fires; a leader elected later fires what came due meanwhile, once.
    @Test func aTimerDueWithNoLeaderFiresOnceWhenOneIsElected() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("leaderless", steps: [#"{"name": "nap", "sleep": "50ms"}"#, #"{"name": "b", "lane": "work"}"#], on: conn)
            var runs: [RunStore.Started] = []
            for _ in 0..<20 { runs.append(try await f.start()) }
            try await Task.sleep(for: .milliseconds(200))
            #expect(try await Self.waiting(f, runs[0].runID, "nap").state == "waiting")
            var cluster = Cluster(config: config)
            _ = cluster.start("one")
            _ = cluster.start("two")
            try await waitUntil("every timer fires", timeout: Self.leaderWork) {
                try await conn.query("SELECT count(*) AS n FROM workflow.run_steps WHERE name = 'b' AND state = 'queued'").single().decode("n", as: Int.self) == 20
            }
            let events = try await conn.query("SELECT count(*) AS n FROM engine.events WHERE topic = 'step.succeeded' AND payload ->> 'step' = 'nap'")
                .single().decode("n", as: Int.self)
            #expect(events == 20, "each fired once, whichever node led")
            await cluster.stopAll()
        }
    }

    // MARK: Signals

    /// A signal sent before the run reaches its wait is kept; the wait consumes the first by
    /// arrival; later ones are listed, not consumed. A resend with the same id is the same
    /// delivery; the same id with other data, an unknown name, a finished run are refused.
    @Test func signalsAreKeptConsumedOnceAndRefusedWhenTheyCannotApply() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("approvals", steps: [
                #"{"name": "a", "lane": "work"}"#, #"{"name": "approve", "wait_for": "approval"}"#, #"{"name": "b", "lane": "work"}"#,
            ], on: conn)
            let store = RunStore()
            let run = try await f.start()
            let first = try await store.signal(run.runID, name: "approval", payloadJSON: #"{"by": "ana"}"#, signalID: "s-1", actor: f.actor, on: conn)
            #expect(first.consumedBy == nil && !first.duplicate, "no step waits yet: kept")
            _ = try await store.signal(run.runID, name: "approval", payloadJSON: #"{"by": "bo"}"#, signalID: nil, actor: f.actor, on: conn)
            let again = try await store.signal(run.runID, name: "approval", payloadJSON: #"{"by": "ana"}"#, signalID: "s-1", actor: f.actor, on: conn)
            #expect(again.duplicate && again.signalID == "s-1")
            await expectCode(.signalConflict) {
                _ = try await store.signal(run.runID, name: "approval", payloadJSON: #"{"by": "eve"}"#, signalID: "s-1", actor: f.actor, on: conn)
            }
            await expectCode(.unknownSignal) { _ = try await store.signal(run.runID, name: "nope", payloadJSON: "1", signalID: nil, actor: f.actor, on: conn) }
            await expectCode(.notFound) {
                _ = try await store.signal("run_00000000000000000000000000", name: "approval", payloadJSON: "1", signalID: nil, actor: f.actor, on: conn)
            }
            await expectCode(.invalidInput) { _ = try await store.signal(run.runID, name: "approval", payloadJSON: "{nope", signalID: nil, actor: f.actor, on: conn) }
            _ = try await f.complete(try await f.claimStep("a"))
            let approve = try await Self.waiting(f, run.runID, "approve")
            #expect(approve.state == "succeeded" && approve.output == #"{"by": "ana"}"#, "the first by arrival")
            let b = try await f.claimStep("b")
            let shown = try await f.run(run.runID)
            #expect(shown.signals.map(\.consumedBy) == ["approve", nil], "the second is listed, not consumed")
            _ = try await f.complete(b)
            await expectCode(.runFinished) { _ = try await store.signal(run.runID, name: "approval", payloadJSON: "1", signalID: nil, actor: f.actor, on: conn) }
            let audited = try await conn.query("SELECT count(*) AS n FROM engine.audit WHERE action = 'run.signal'").single().decode("n", as: Int.self)
            #expect(audited == 2, "each delivery audited once (not the duplicate, not the refusals)")
        }
    }

    /// A signal to a run already waiting advances it in the signal's own transaction: the next
    /// worker step is claimable the moment the call returns.
    @Test func aSignalToAWaitingRunAdvancesItInItsTransaction() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("waiting", steps: [#"{"name": "approve", "wait_for": "go"}"#, #"{"name": "b", "lane": "work"}"#], on: conn)
            let run = try await f.start(#"{"order": 7}"#)
            #expect(try await Self.waiting(f, run.runID, "approve").wait?.signal == "go")
            let sent = try await RunStore().signal(run.runID, name: "go", payloadJSON: #"{"ok": true}"#, signalID: nil, actor: f.actor, on: conn)
            #expect(sent.consumedBy == "approve")
            let b = try await f.claimStep("b")
            #expect(b.payload.contains(#""approve": {"ok": true}"#) || b.payload.contains(#""approve":{"ok":true}"#), "\(b.payload)")
        }
    }

    /// A wait with a timeout: `fail` fails the run naming the signal; `continue` goes on with a
    /// null output. A failed run resumes with `retry`, waiting again.
    @Test func aSignalTimeoutFailsOrContinuesAndAFailedWaitResumes() async throws {
        try await withBootedDatabase { config, conn in
            let strict = try await RunFixture.deploy("strict", steps: [#"{"name": "approve", "wait_for": "go", "timeout": "1s"}"#, #"{"name": "b", "lane": "work"}"#], on: conn)
            let lenient = try await RunFixture.deploy(
                "lenient", steps: [#"{"name": "approve", "wait_for": "go", "timeout": "1s", "on_timeout": "continue"}"#, #"{"name": "b", "lane": "work"}"#], on: conn)
            var cluster = Cluster(config: config)
            _ = cluster.start("leader")
            let s = try await strict.start()
            let l = try await lenient.start()
            try await waitUntil("the strict run fails", timeout: Self.leaderWork) { try await strict.run(s.runID).state == "failed" }
            #expect(try await strict.run(s.runID).error?.contains("no go signal arrived") == true)
            try await waitUntil("the lenient run goes on", timeout: Self.leaderWork) { try await Self.waiting(lenient, l.runID, "approve").state == "succeeded" }
            #expect(try await Self.waiting(lenient, l.runID, "approve").output == "null")
            let retried = try await RunStore().retry(s.runID, .init(), actor: strict.actor, on: conn)
            #expect(retried.reset == ["approve", "b"])
            #expect(try await Self.waiting(strict, s.runID, "approve").state == "waiting")
            _ = try await RunStore().signal(s.runID, name: "go", payloadJSON: "true", signalID: nil, actor: strict.actor, on: conn)
            _ = try await strict.complete(try await strict.claimStep("b", run: s.runID))
            #expect(try await strict.run(s.runID).state == "succeeded")
            await cluster.stopAll()
        }
    }

    /// The semantics drill's checks catch what they claim to: a timer fired before its due time,
    /// a child run on another version than its recorded one, a second consumed signal.
    @Test func theSemanticsDrillInvariantsCatchBrokenRuns() async throws {
        try await withBootedDatabase { config, conn in
            let child = try await RunFixture.deploy("drill.child", steps: [#"{"name": "work", "lane": "work"}"#], on: conn)
            let f = try await RunFixture.deploy("drill.semantics", steps: [
                #"{"name": "nap", "sleep": "10ms"}"#, #"{"name": "approve", "wait_for": "go", "after": []}"#,
                #"{"name": "flaky", "lane": "work", "after": []}"#, #"{"name": "ship", "child": "drill.child", "after": ["nap", "approve", "flaky"]}"#,
            ], on: conn)
            var cluster = Cluster(config: config)
            _ = cluster.start("leader")
            let run = try await f.start()
            _ = try await RunStore().signal(run.runID, name: "go", payloadJSON: "1", signalID: nil, actor: f.actor, on: conn)
            _ = try await f.complete(try await f.claimStep("flaky"), cost: [try Cost(amount: 1)])
            try await waitUntil("the child starts", timeout: Self.leaderWork) { try await Self.waiting(f, run.runID, "ship").wait?.childRunID != nil }
            let kid = try #require(try await Self.waiting(f, run.runID, "ship").wait?.childRunID)
            _ = try await child.complete(try await child.claimStep("work", run: kid), cost: [try Cost(amount: 1)])
            #expect(try await f.run(run.runID).state == "succeeded")
            #expect(try await SemanticsDrill.check(conn, retried: []) == [])
            try await conn.query("UPDATE workflow.run_steps SET due_at = (output ->> 'fired_at')::timestamptz + interval '1 second' WHERE name = 'nap'")
            try await conn.query("UPDATE workflow.runs SET package_hash = repeat('0', 64) WHERE run_id = \(kid)")
            try await conn.query("INSERT INTO workflow.signals (run_id, signal_id, name, payload, sent_by, consumed_by, consumed_at) VALUES (\(run.runID), 'x', 'go', '2', 't', 'approve', now())")
            let violations = try await SemanticsDrill.check(conn, retried: [])
            #expect(violations.contains { $0.contains("fired before its due time") }, "\(violations)")
            #expect(violations.contains { $0.contains("not on the version recorded for it") }, "\(violations)")
            #expect(violations.contains { $0.contains("approval was not consumed exactly once") }, "\(violations)")
            #expect(try await SemanticsDrill.check(conn, retried: [run.runID]).contains { $0.contains("flaky step ran 1 time(s), expected 2") })
            await cluster.stopAll()
        }
    }

    // MARK: Child workflows

    /// The child's version is the type's route when the parent's step became ready, recorded in
    /// the step row; re-routing the type later changes nothing for it; unloading that version is
    /// refused naming the parent; the parent's step succeeds with the child's output.
    @Test func aChildRunsOnTheVersionRecordedForItAndItsOutputIsTheParentStepsOutput() async throws {
        try await withBootedDatabase { _, conn in
            let child = try await RunFixture.deploy("ship.dispatch", steps: [#"{"name": "label", "lane": "work"}"#], on: conn)
            let parent = try await RunFixture.deploy("ship.order", steps: [
                #"{"name": "pack", "lane": "work"}"#, #"{"name": "ship", "child": "ship.dispatch", "input": "$.steps.pack.output"}"#,
                #"{"name": "done", "lane": "work"}"#,
            ], on: conn)
            let run = try await parent.start()
            _ = try await parent.complete(try await parent.claimStep("pack"), output: #"{"parcel": 42}"#)
            let ship = try await Self.waiting(parent, run.runID, "ship")
            let childID = try #require(ship.wait?.childRunID)
            #expect(ship.state == "waiting" && ship.wait?.childVersion == child.hash)
            let c = try await child.run(childID)
            #expect(c.parentRunID == run.runID && c.parentStep == "ship" && c.packageHash == child.hash && c.input == #"{"parcel": 42}"#)
            // A new version of the child type, routed: the recorded child stays on the old one.
            let v2 = try await RunFixture.deploy("ship.dispatch", steps: [#"{"name": "label", "lane": "work"}"#, #"{"name": "extra", "lane": "work"}"#], on: conn)
            #expect(v2.hash != child.hash)
            await #expect { try await PackageStore().unload(type: child.type, hash: child.hash, actor: child.actor, on: conn) } throws: { error in
                (error as? RegentError)?.message.contains("child of \(run.runID)") == true
            }
            _ = try await child.complete(try await child.claimStep("label", run: childID), output: #"{"tracking": "T1"}"#)
            #expect(try await child.run(childID).state == "succeeded", "the child ran its recorded version's one step")
            let shipped = try await Self.waiting(parent, run.runID, "ship")
            #expect(shipped.state == "succeeded" && shipped.output == #"{"label": {"tracking": "T1"}}"#)
            _ = try await parent.complete(try await parent.claimStep("done"))
            #expect(try await parent.run(run.runID).state == "succeeded")
            try await PackageStore().unload(type: child.type, hash: child.hash, actor: child.actor, on: conn)
        }
    }

    /// A child that fails fails its parent's step and run; cancelling a parent cancels its
    /// running children.
    @Test func aFailedChildFailsItsParentAndCancellingAParentCancelsItsChildren() async throws {
        try await withBootedDatabase { _, conn in
            let child = try await RunFixture.deploy("kid", steps: [#"{"name": "work", "lane": "work", "max_attempts": 1}"#], on: conn)
            let parent = try await RunFixture.deploy("mom", steps: [
                #"{"name": "one", "child": "kid", "after": []}"#, #"{"name": "two", "child": "kid", "after": []}"#,
            ], on: conn)
            let failing = try await parent.start(#"{"n": 1}"#)
            let kids = try await parent.run(failing.runID).steps.compactMap { $0.wait?.childRunID }
            #expect(kids.count == 2)
            let lease = try await child.claimStep("work", run: kids[0])
            _ = try await LeaseStore().fail([Failure(executionID: lease.executionID, epoch: lease.epoch, error: "boom", retryable: false)], on: conn)
            let r = try await parent.run(failing.runID)
            #expect(r.state == "failed" && r.error?.contains("child run \(kids[0])") == true && r.error?.contains("boom") == true, "\(r.error ?? "")")
            #expect(try await child.run(kids[1]).state == "cancelled", "the sibling child is cancelled with its parent")

            let cancelled = try await parent.start(#"{"n": 2}"#)
            let more = try await parent.run(cancelled.runID).steps.compactMap { $0.wait?.childRunID }
            _ = try await RunStore().cancel(cancelled.runID, reason: "changed my mind", actor: parent.actor, on: conn)
            for id in more { #expect(try await child.run(id).state == "cancelled") }
            #expect(try await child.run(more[0]).error?.contains("its parent run \(cancelled.runID) finished") == true)
            #expect(try await Self.wakeups(conn) == 0)
        }
    }

    /// Types that start each other (A → B → A) are refused at the second start with the chain
    /// named; a child type with no routed version fails the step, saying so.
    @Test func aCycleOfTypesAndAMissingRouteFailTheStepSayingWhy() async throws {
        try await withBootedDatabase { _, conn in
            let a = try await RunFixture.deploy("cyc.a", steps: [#"{"name": "call", "child": "cyc.b"}"#], on: conn)
            _ = try await RunFixture.deploy("cyc.b", steps: [#"{"name": "back", "child": "cyc.a"}"#], on: conn)
            let run = try await a.start()
            let r = try await a.run(run.runID)
            #expect(r.state == "failed" && r.error?.contains("cycle of types: cyc.a → cyc.b → cyc.a") == true, "\(r.error ?? "")")
            let orphan = try await RunFixture.deploy("orphan", steps: [#"{"name": "call", "child": "nobody.here"}"#], on: conn)
            let o = try await orphan.run(try await orphan.start().runID)
            #expect(o.state == "failed" && o.error?.contains("nobody.here has no routed version") == true)
        }
    }

    /// A child that finishes while another transaction holds its parent's row never waits for it:
    /// it leaves a `child_done` wakeup, and the timer duty resolves the parent's step once free.
    @Test func aChildFinishingWhileItsParentIsHeldHandsOverThroughAWakeup() async throws {
        try await withBootedDatabase { config, conn in
            let child = try await RunFixture.deploy("held.kid", steps: [#"{"name": "w", "lane": "work"}"#], on: conn)
            let parent = try await RunFixture.deploy("held.mom", steps: [#"{"name": "call", "child": "held.kid"}"#], on: conn)
            let run = try await parent.start()
            let kid = try #require(try await Self.waiting(parent, run.runID, "call").wait?.childRunID)
            let lease = try await child.claimStep("w", run: kid)
            let holder = try await PostgresConnection.connect(config)
            try await holder.query("BEGIN")
            try await holder.query("SELECT 1 AS one FROM workflow.runs WHERE run_id = \(run.runID) FOR UPDATE")
            _ = try await child.complete(lease)  // returns: it did not wait for the parent's row
            #expect(try await child.run(kid).state == "succeeded")
            #expect(try await Self.waiting(parent, run.runID, "call").state == "waiting")
            #expect(try await Self.wakeups(conn) == 1)
            try await holder.query("ROLLBACK")
            await holder.close()
            var cluster = Cluster(config: config)
            _ = cluster.start("leader")
            try await waitUntil("the parent's step resolves", timeout: Self.leaderWork) { try await parent.run(run.runID).state == "succeeded" }
            #expect(try await Self.wakeups(conn) == 0)
            await cluster.stopAll()
        }
    }

    /// A parent cancelled while another transaction holds its running child's row never waits
    /// for it: the child gets a `parent_finished` wakeup, and the timer duty cancels it once free.
    @Test func aParentCancelledWhileItsChildIsHeldCancelsItThroughAWakeup() async throws {
        try await withBootedDatabase { config, conn in
            _ = try await RunFixture.deploy("held2.kid", steps: [#"{"name": "w", "lane": "work"}"#], on: conn)
            let parent = try await RunFixture.deploy("held2.mom", steps: [#"{"name": "call", "child": "held2.kid"}"#], on: conn)
            let run = try await parent.start()
            let kid = try #require(try await Self.waiting(parent, run.runID, "call").wait?.childRunID)
            let holder = try await PostgresConnection.connect(config)
            try await holder.query("BEGIN")
            try await holder.query("SELECT 1 AS one FROM workflow.runs WHERE run_id = \(kid) FOR UPDATE")
            #expect(try await RunStore().cancel(run.runID, reason: "stop", actor: parent.actor, on: conn) == .cancelled, "the cancel did not wait")
            #expect(try await parent.run(kid).state == "running")
            let reasons = try await conn.query("SELECT reason FROM workflow.wakeups WHERE run_id = \(kid)").map { try $0.decode("reason", as: String.self) }
            #expect(reasons == ["parent_finished"])
            try await holder.query("ROLLBACK")
            await holder.close()
            var cluster = Cluster(config: config)
            _ = cluster.start("leader")
            try await waitUntil("the child is cancelled", timeout: Self.leaderWork) { try await parent.run(kid).state == "cancelled" }
            #expect(try await parent.run(kid).error?.contains("its parent run \(run.runID) finished") == true)
            #expect(try await Self.wakeups(conn) == 0)
            await cluster.stopAll()
        }
    }
}
