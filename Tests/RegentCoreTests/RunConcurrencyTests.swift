import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Testing

/// Run concurrency keys (issue 31, sql/workflow/0019): a manifest's top-level `concurrency`
/// lets at most `limit` runs of a type with the same key value run at once; the others wait
/// `queued`, nothing of them begun, and are admitted in arrival order as slots free. Checked
/// afterwards from the runs' own admission and finish times, with racing workers, and through
/// every way a run ends or comes back (cancel, deadline, failure, retry, signal).
@Suite("Run concurrency keys against a real server")
struct RunConcurrencyTests {
    /// The most runs of one key that ran at the same instant, per key, from their admission and
    /// finish times (a run admitted while `n` others of its key were admitted and unfinished).
    static func maxOverlap(_ conn: PostgresConnection) async throws -> [String: Int] {
        let rows = try await conn.query(
            """
            SELECT a.flow_key, max(o.n) AS most FROM workflow.runs a
            CROSS JOIN LATERAL (
                SELECT count(*) AS n FROM workflow.runs b
                WHERE b.flow_key = a.flow_key AND b.admitted_at <= a.admitted_at AND COALESCE(b.finished_at, 'infinity') > a.admitted_at) AS o
            WHERE a.flow_key IS NOT NULL AND a.admitted_at IS NOT NULL GROUP BY 1
            """)
        return Dictionary(uniqueKeysWithValues: try rows.map { (try $0.decode("flow_key", as: String.self), try $0.decode("most", as: Int.self)) })
    }

    static func states(_ conn: PostgresConnection) async throws -> [String: Int] {
        let rows = try await conn.query("SELECT state, count(*)::int AS n FROM workflow.runs GROUP BY 1")
        return Dictionary(uniqueKeysWithValues: try rows.map { (try $0.decode("state", as: String.self), try $0.decode("n", as: Int.self)) })
    }

    /// 84 runs over 9 keys (limits 1 and 2), drained by 6 racing workers: no key ever over its
    /// limit, every run succeeded, each key's runs admitted in the order they started, and the
    /// gate empty afterwards. The first type's step also has a step key on the same customer,
    /// so run keys and step keys are settled in the same commits (their one lock order), and
    /// the server's deadlock counter must not move.
    @Test func runKeysAreNeverExceededByRacingWorkersAndRunsAreAdmittedInOrder() async throws {
        try await withBootedDatabase { config, conn in
            let orders = try await RunFixture.deploy(
                "orders",
                steps: [#"{"name": "pick", "lane": "work", "concurrency": {"key": "$.input.customer", "limit": 1}}"#, #"{"name": "ship", "lane": "work", "after": ["pick"]}"#],
                top: #""concurrency": {"key": "$.input.customer", "limit": 1}"#, on: conn)
            let exports = try await RunFixture.deploy(
                "exports", steps: [#"{"name": "dump", "lane": "work"}"#], top: #""concurrency": {"key": "$.input.tenant", "limit": 2}"#, on: conn)
            let deadlocks = try await conn.query("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").single().decode("deadlocks", as: Int64.self)
            for i in 0..<60 { _ = try await orders.start(#"{"customer": "c\#(i % 6)", "n": \#(i)}"#) }
            for i in 0..<24 { _ = try await exports.start(#"{"tenant": \#(i % 3), "n": \#(i)}"#) }
            #expect(try await Self.states(conn) == ["running": 6 + 6, "queued": 54 + 18], "one run per customer, two per tenant; the rest wait")
            let waiting = try await conn.query("SELECT count(*)::int AS n FROM workflow.run_waiting").single().decode("n", as: Int.self)
            #expect(waiting == 72)
            let begun = try await conn.query(
                "SELECT count(*)::int AS n FROM workflow.run_steps s JOIN workflow.runs r USING (run_id) WHERE r.state = 'queued' AND s.state <> 'pending'"
            ).single().decode("n", as: Int.self)
            #expect(begun == 0, "nothing of a queued run has begun")
            try await withThrowingTaskGroup(of: Void.self) { group in
                for w in 0..<6 {
                    let worker = try WorkerInstanceID("racer-\(w)")
                    _ = try await WorkerRegistry().register(
                        namespace: RunStore.namespace, workerInstanceID: worker, workerID: try WorkerID("racer"), lanes: [try Lane("work")],
                        capabilities: [], livenessTTL: .seconds(300), on: conn)
                    group.addTask {
                        try await PostgresConnection.withConnection(config) { c in
                            var idle = 0
                            while idle < 40 {
                                let leases = try await LeaseStore().claim(
                                    namespace: RunStore.namespace, lanes: [try Lane("work")], workerInstanceID: worker, capabilities: [],
                                    leaseDuration: .seconds(30), limit: 3, on: c)
                                if leases.isEmpty {
                                    idle += 1
                                    try await Task.sleep(for: .milliseconds(10))
                                    continue
                                }
                                idle = 0
                                try await Task.sleep(for: .milliseconds(1))
                                _ = try await LeaseStore().complete(leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch) }, on: c)
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await Self.states(conn) == ["succeeded": 84], "every run finished: no key starved")
            let overlap = try await Self.maxOverlap(conn)
            #expect(overlap.count == 9)
            for (key, most) in overlap { #expect(most <= (key.hasPrefix("r:orders/") ? 1 : 2), "\(key): \(most) at once") }
            #expect(overlap.filter { $0.key.hasPrefix("r:exports/") }.values.contains(2), "a limit of 2 is used, not just 1")
            let disorder = try await conn.query(
                """
                SELECT count(*)::int AS n FROM (
                    SELECT flow_key, started_at, admitted_at, lag(admitted_at) OVER (PARTITION BY flow_key ORDER BY started_at) AS before FROM workflow.runs
                ) AS x WHERE admitted_at < before
                """
            ).single().decode("n", as: Int.self)
            #expect(disorder == 0, "each key admits its runs in the order they started")
            let left = try await conn.query(
                "SELECT (SELECT count(*) FROM workflow.flow_keys) + (SELECT count(*) FROM workflow.run_waiting) + (SELECT count(*) FROM workflow.flow_waiting) AS n"
            ).single().decode("n", as: Int.self)
            #expect(left == 0, "the gate forgets keys with nothing admitted or waiting")
            let after = try await conn.query("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").single().decode("deadlocks", as: Int64.self)
            #expect(after == deadlocks, "no deadlock between run keys and step keys")
        }
    }

    /// Every way a run ends or comes back keeps the key's count right: a queued run cancelled
    /// (it held no slot), one past its deadline while queued, a running one succeeding, failing
    /// and being cancelled (each frees its slot for the next), a failed run retried (it waits
    /// again), a signal to a queued run (kept for its step); queued runs pin their version.
    @Test func cancelDeadlineFailureRetryAndSignalsKeepTheCountRight() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy(
                "accounts", steps: [#"{"name": "work", "lane": "work", "max_attempts": 1}"#, #"{"name": "approve", "wait_for": "approval", "after": ["work"]}"#],
                top: #""concurrency": {"key": "$.input.account", "limit": 1}"#, on: conn)
            let r1 = try await f.start(#"{"account": "acme"}"#).runID
            let r2 = try await f.start(#"{"account": "acme"}"#).runID
            let r3 = try await f.start(#"{"account": "acme"}"#, deadline: .milliseconds(300)).runID
            let r4 = try await f.start(#"{"account": "acme"}"#).runID
            let other = try await f.start(#"{"account": "globex"}"#).runID
            #expect(try await f.run(r1).state == "running")
            #expect(try await f.run(other).state == "running")
            let queued = try await f.run(r2)
            #expect(queued.state == "queued" && queued.concurrencyKey == "acme" && queued.admittedAt == nil)
            let json = String(decoding: try JSONEncoder().encode(queued), as: UTF8.self)
            #expect(json.contains(#""concurrency_key":"acme""#) && json.contains(#""state":"queued""#) && !json.contains("admitted_at"), "\(json)")
            #expect(try await f.run(r1).admittedAt != nil)
            let listed = try await RunStore().list(state: "queued", on: conn).runs.map(\.runID)
            #expect(Set(listed) == [r2, r3, r4])
            // A signal to a queued run is kept for its step.
            let sent = try await RunStore().signal(r4, name: "approval", payloadJSON: #"{"ok": true}"#, signalID: nil, actor: f.actor, on: conn)
            #expect(sent.consumedBy == nil && sent.runState == "queued")
            // A queued run pins its version (a second version routed, the first cannot go).
            _ = try await RunFixture.deploy(
                "accounts", steps: [#"{"name": "work", "lane": "work", "max_attempts": 1}"#, #"{"name": "approve", "wait_for": "approval", "after": ["work"]}"#],
                top: #""description": "v2", "concurrency": {"key": "$.input.account", "limit": 1}"#, on: conn)
            do {
                try await PackageStore().unload(type: f.type, hash: f.hash, actor: .named("test"), on: conn)
                Issue.record("a version with queued runs was unloaded")
            } catch let error as RegentError {
                #expect(error.code == .conflict && error.message.contains("queued for its concurrency key"), "\(error.message)")
            }
            // Cancelled while queued: it held no slot, r1 still runs alone.
            #expect(try await RunStore().cancel(r2, reason: "not needed", actor: f.actor, on: conn) == .cancelled)
            #expect(try await f.run(r2).state == "cancelled")
            #expect(try await f.stepStates(r2).values.allSatisfy { $0 == "skipped" })
            // Past its deadline while queued: failed by the deadline duty's page.
            try await Task.sleep(for: .milliseconds(400))
            _ = try await conn.query("SELECT workflow.expire_runs(100, 'test', 1)")
            let expired = try await f.run(r3)
            #expect(expired.state == "failed" && expired.reason == "deadline_exceeded")
            #expect(try await f.run(r4).state == "queued", "neither freed r1's slot")
            // r1 fails its step: its slot goes to r4, which finds its signal kept.
            let lease = try await f.claimStep("work", run: r1)
            _ = try await LeaseStore().fail([Failure(executionID: lease.executionID, epoch: lease.epoch, error: "boom", retryable: false)], on: conn)
            #expect(try await f.run(r1).state == "failed")
            #expect(try await f.run(r4).state == "running")
            let w4 = try await f.claimStep("work", run: r4)
            _ = try await f.complete(w4)
            #expect(try await f.run(r4).state == "succeeded", "the kept signal let its wait step pass")
            // Retrying r1 puts it back in line: admitted at once, the key being free.
            let r5 = try await f.start(#"{"account": "acme"}"#).runID
            #expect(try await f.run(r5).state == "running")
            _ = try await RunStore().retry(r1, .init(), actor: f.actor, on: conn)
            #expect(try await f.run(r1).state == "queued", "a retried keyed run waits for its key again")
            await expectCode(.conflict) { _ = try await RunStore().retry(r1, .init(), actor: f.actor, on: conn) }
            // Cancelling the running r5 admits r1.
            #expect(try await RunStore().cancel(r5, reason: "make room", actor: f.actor, on: conn) == .cancelled)
            #expect(try await f.run(r1).state == "running")
            let admitted = try await conn.query("SELECT admitted FROM workflow.flow_keys WHERE flow_key = 'r:accounts/acme'").single().decode("admitted", as: Int.self)
            #expect(admitted == 1)
            let events = try await conn.query(
                "SELECT count(*) FILTER (WHERE topic = 'run.queued')::int AS q, count(*) FILTER (WHERE topic = 'run.started')::int AS s FROM engine.events"
            ).single()
            #expect(try events.decode("q", as: Int.self) == 5 + 1)
            #expect(try events.decode("s", as: Int.self) >= 4)
        }
    }

    @Test func badRunKeysAreRefusedNamingWhatIsWrong() throws {
        let bad: [(String, String)] = [
            (#""concurrency": {"key": "customer"}"#, "concurrency.key"),
            (#""concurrency": {"key": "$.steps.a.output.x"}"#, "a run's key is read from its input"),
            (#""concurrency": {"key": "$.input.c", "limit": 0}"#, "concurrency.limit must be 1"),
            (#""concurrency": {"key": "$.input.c", "size": 2}"#, "size"),
            (#""concurrency": 3"#, "concurrency"),
        ]
        for (top, says) in bad {
            let manifest = PackageFixture.manifest(type: "bad", steps: [#"{"name": "a", "lane": "l"}"#])
                .replacingOccurrences(of: #""steps":"#, with: #"\#(top), "steps":"#)
            do {
                _ = try WorkflowManifest.parse(Array(manifest.utf8))
                Issue.record("accepted: \(top)")
            } catch let error as RegentError {
                #expect(error.code == .invalidInput && error.message.contains(says), "\(top): \(error.message)")
            }
        }
        let good = try WorkflowManifest.parse(Array(PackageFixture.manifest(type: "ok", steps: [#"{"name": "a", "lane": "l"}"#])
            .replacingOccurrences(of: #""steps":"#, with: #""concurrency": {"key": "$.input.c"}, "steps":"#).utf8))
        #expect(good.concurrency?.limit == 1 && good.normalizedJSON.contains(#""flow":{"key":["input","c"],"kind":"r","limit":1}"#))
    }
}
