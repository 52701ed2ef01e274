import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Synchronization
import Testing

/// Flow control (issue 31, sql/workflow/0018) against a real server, with racing claimers:
/// concurrency keys never exceeded at any instant (checked afterwards from the attempts' own
/// start and end times, not from any counter the gate keeps), fair keys interleaving a small
/// tenant ahead of a big backlog, lane limits (max running, a token bucket) held by the claim.
/// A count shared by racing tasks.
final class Tally: Sendable {
    let value = Mutex(0)
    func add(_ n: Int) { value.withLock { $0 += n } }
    var total: Int { value.withLock { $0 } }
}

@Suite("Flow control: concurrency keys, fair keys, lane limits")
struct FlowControlTests {
    let ns = try! Namespace("flow")
    let lane = try! Lane("work")
    let store = LeaseStore()

    func register(_ w: String, on conn: PostgresConnection) async throws -> WorkerInstanceID {
        let id = try WorkerInstanceID(w)
        _ = try await WorkerRegistry().register(
            namespace: ns, workerInstanceID: id, workerID: try WorkerID("flow"), lanes: [lane], capabilities: [], livenessTTL: .seconds(120), on: conn)
        return id
    }

    func request(_ gate: FlowGate?, payload: String = "{}") -> EnqueueRequest {
        var r = EnqueueRequest(lane: lane, payload: payload)
        r.flow = gate
        return r
    }

    /// The most attempts of one key that ran at the same instant, per key, from the attempts'
    /// start and end times (an attempt starting while `n` others of its key are unfinished).
    static func maxOverlap(_ conn: PostgresConnection) async throws -> [String: Int] {
        let rows = try await conn.query(
            """
            SELECT e.flow_key, max(o.n) AS most FROM workflow.attempts a JOIN workflow.executions e USING (execution_id)
            CROSS JOIN LATERAL (
                SELECT count(*) AS n FROM workflow.attempts b JOIN workflow.executions f USING (execution_id)
                WHERE f.flow_key = e.flow_key AND b.started_at <= a.started_at AND COALESCE(b.ended_at, 'infinity') > a.started_at) AS o
            WHERE e.flow_key IS NOT NULL GROUP BY 1
            """)
        return Dictionary(uniqueKeysWithValues: try rows.map { (try $0.decode("flow_key", as: String.self), try $0.decode("most", as: Int.self)) })
    }

    /// Claims and completes until nothing is left, on `workers` connections side by side, each
    /// holding its executions a moment; returns how many it completed.
    func drain(_ config: ConnectionConfiguration, workers: [WorkerInstanceID], limit: Int = 5, hold: Duration = .milliseconds(2)) async throws -> Int {
        let done = Tally()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for w in workers {
                group.addTask { [store, ns, lane] in
                    try await PostgresConnection.withConnection(config) { c in
                        var idle = 0
                        while idle < 20 {
                            let leases = try await store.claim(
                                namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: limit, on: c)
                            if leases.isEmpty {
                                idle += 1
                                try await Task.sleep(for: .milliseconds(10))
                                continue
                            }
                            idle = 0
                            try await Task.sleep(for: hold)
                            _ = try await store.complete(leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch) }, on: c)
                            done.add(leases.count)
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        return done.total
    }

    @Test func concurrencyKeysAreNeverExceededByRacingClaimersAndNothingStarves() async throws {
        try await withBootedDatabase { config, conn in
            // 40 keys of limit 1, 10 of limit 3, 300 unkeyed: 1,100 executions.
            var requests: [EnqueueRequest] = []
            for i in 0..<600 { requests.append(request(.concurrency(key: "one-\(i % 40)", limit: 1))) }
            for i in 0..<200 { requests.append(request(.concurrency(key: "three-\(i % 10)", limit: 3))) }
            for _ in 0..<300 { requests.append(request(nil)) }
            requests.shuffle()
            for chunk in stride(from: 0, to: requests.count, by: 250) {
                _ = try await store.enqueue(namespace: ns, Array(requests[chunk..<min(chunk + 250, requests.count)]), on: conn)
            }
            let waiting = try await conn.query("SELECT count(*) AS n FROM workflow.flow_waiting").single().decode("n", as: Int.self)
            #expect(waiting == 800 - 40 - 30, "beyond each key's limit, executions wait outside ready")
            var workers: [WorkerInstanceID] = []
            for w in 0..<12 { workers.append(try await register("w\(w)", on: conn)) }
            let done = try await drain(config, workers: workers)
            #expect(done == 1100, "every execution ran: no key starved")
            let overlap = try await Self.maxOverlap(conn)
            #expect(overlap.count == 50)
            for (key, most) in overlap {
                #expect(most <= (key.hasPrefix("c:one-") ? 1 : 3), "\(key): \(most) at once")
            }
            #expect(overlap.filter { $0.key.hasPrefix("c:three-") }.values.contains(3), "a limit of 3 is used, not just 1")
            let left = try await conn.query(
                "SELECT (SELECT count(*) FROM workflow.flow_keys) + (SELECT count(*) FROM workflow.flow_waiting) AS n").single().decode("n", as: Int.self)
            #expect(left == 0, "the gate forgets keys with nothing admitted or waiting")
        }
    }

    /// An UPDATE that sets a keyed execution's state to the state it has (the trigger's WHEN tests
    /// only for a key since workflow 0021) frees no slot: the next waiter stays waiting.
    @Test func aStateSetToItselfFreesNoSlot() async throws {
        try await withBootedDatabase { _, conn in
            let w = try await register("w", on: conn)
            let made = try await store.enqueue(namespace: ns, (0..<3).map { request(.concurrency(key: "same", limit: 1), payload: #"{"i": \#($0)}"#) }, on: conn)
            let first = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 10, on: conn)
            #expect(first.map(\.executionID) == [made[0].executionID])
            _ = try await store.complete(first.map { Completion(executionID: $0.executionID, epoch: $0.epoch) }, on: conn)
            func state() async throws -> (admitted: Int, waiting: Int, ready: Int) {
                let row = try await conn.query("""
                    SELECT (SELECT admitted FROM workflow.flow_keys WHERE flow_key = 'c:same') AS admitted,
                           (SELECT count(*) FROM workflow.flow_waiting WHERE flow_key = 'c:same')::int AS waiting,
                           (SELECT count(*) FROM workflow.ready WHERE namespace = 'flow')::int AS ready
                    """).single()
                return (try row.decode("admitted"), try row.decode("waiting"), try row.decode("ready"))
            }
            let before = try await state()
            #expect(before.admitted == 1 && before.waiting == 1 && before.ready == 1, "\(before)")
            for id in [made[0].executionID, made[1].executionID] {
                try await conn.query("UPDATE workflow.executions SET state = state WHERE execution_id = \(id)")
            }
            let after = try await state()
            #expect(after.admitted == before.admitted && after.waiting == before.waiting && after.ready == before.ready, "\(after)")
        }
    }

    /// A freed slot admits the next at once, and a cancel of a waiting or an admitted execution
    /// keeps the count right; a failure that is retried keeps its slot, a final one frees it.
    /// The commit's settle is queued by the first note of a transaction (a row of
    /// flow_settle_hooks, workflow 0024): a plain claim and completion write no hook; a batch
    /// completing executions of three keys writes one, which its settle deletes at commit, and
    /// every slot it noted is free afterwards.
    @Test func onlyATransactionThatNotesAKeyQueuesASettleAndItsHookIsGoneAtCommit() async throws {
        try await withBootedDatabase { _, conn in
            let w = try await register("w", on: conn)
            /// The hook rows this transaction holds, and the keys it noted for its commit.
            func hooks(_ tx: PostgresConnection) async throws -> (rows: Int, noted: [String]) {
                let row = try await tx.query(
                    """
                    SELECT (SELECT count(*) FROM workflow.flow_settle_hooks)::int AS n,
                           ARRAY(SELECT split_part(r, chr(31), 2) FROM string_to_table(COALESCE(current_setting('regent.flow_pending', true), ''), chr(30)) AS r
                                 WHERE r <> '' ORDER BY 1) AS noted
                    """
                ).single()
                return (try row.decode("n", as: Int.self), try row.decode("noted", as: [String].self))
            }
            _ = try await store.enqueue(namespace: ns, [request(nil)], on: conn)
            try await conn.withTransaction { tx in
                let plain = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 1, on: tx)
                #expect(plain.count == 1)
                _ = try await store.complete([Completion(executionID: plain[0].executionID, epoch: plain[0].epoch)], on: tx)
                let none = try await hooks(tx)
                #expect(none.rows == 0 && none.noted.isEmpty, "nothing noted, no settle queued: \(none)")
            }
            let made = try await store.enqueue(
                namespace: ns, ["a", "b", "c", "a", "b", "c"].map { request(.concurrency(key: $0, limit: 1)) }, on: conn)
            let first = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 10, on: conn)
            #expect(Set(first.map(\.executionID)) == Set(made.prefix(3).map(\.executionID)), "one per key")
            try await conn.withTransaction { tx in
                let done = try await store.complete(first.map { Completion(executionID: $0.executionID, epoch: $0.epoch) }, on: tx)
                #expect(done.done.count == 3)
                let three = try await hooks(tx)
                #expect(three.rows == 1, "three keys noted, one settle queued: \(three)")
                #expect(three.noted == ["c:a", "c:b", "c:c"])
            }
            #expect(try await conn.query("SELECT count(*)::int AS n FROM workflow.flow_settle_hooks").single().decode("n", as: Int.self) == 0)
            let second = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 10, on: conn)
            #expect(Set(second.map(\.executionID)) == Set(made.suffix(3).map(\.executionID)), "each key's slot freed at the commit")
        }
    }

    @Test func slotsFreeOnCompletionFailureAndCancelAndWaitersAreAdmittedInOrder() async throws {
        try await withBootedDatabase { _, conn in
            let w = try await register("w", on: conn)
            let made = try await store.enqueue(namespace: ns, (0..<4).map { request(.concurrency(key: "acct", limit: 1), payload: #"{"i": \#($0)}"#) }, on: conn)
            var first = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 10, on: conn)
            #expect(first.map(\.executionID) == [made[0].executionID], "one at a time")
            // Cancel the second while it waits: the third is next.
            #expect(try await store.cancel(executionID: made[1].executionID, on: conn) == .cancelledQueued)
            // A retryable failure keeps the slot (the retry is due at once: base 1 ms).
            _ = try await conn.query("UPDATE workflow.executions SET retry_base_ms = 1, retry_max_ms = 1 WHERE execution_id = \(made[0].executionID)")
            _ = try await store.fail([Failure(executionID: first[0].executionID, epoch: first[0].epoch, error: "again", retryable: true)], on: conn)
            try await Task.sleep(for: .milliseconds(20))
            first = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 10, on: conn)
            #expect(first.map(\.executionID) == [made[0].executionID], "the retry holds the key's one slot")
            _ = try await store.complete([Completion(executionID: first[0].executionID, epoch: first[0].epoch)], on: conn)
            let third = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 10, on: conn)
            #expect(third.map(\.executionID) == [made[2].executionID], "admitted the moment the slot freed, in arrival order")
            // Cancelling the running one frees its slot too.
            #expect(try await store.cancel(executionID: made[2].executionID, on: conn) == .cancelledRunning)
            let fourth = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 10, on: conn)
            #expect(fourth.map(\.executionID) == [made[3].executionID])
            let key = try await conn.query("SELECT admitted FROM workflow.flow_keys WHERE flow_key = 'c:acct'").single().decode("admitted", as: Int.self)
            #expect(key == 1)
        }
    }

    /// A waiting claim is woken by the slot freeing (the queue's announcement), not by a poll.
    @Test func aFreedSlotWakesAWaitingClaim() async throws {
        try await withBootedDatabase { config, conn in
            let w = try await register("w", on: conn)
            let made = try await store.enqueue(namespace: ns, (0..<2).map { _ in request(.concurrency(key: "k", limit: 1)) }, on: conn)
            let held = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 5, on: conn)
            #expect(held.count == 1)
            let waker = QueueWaker(configuration: config)
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await waker.run() }
                #expect(await eventually { waker.isListening })
                async let waited = store.claim(
                    namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 5, wait: .seconds(20),
                    waker: waker, pool: pool)
                try await Task.sleep(for: .milliseconds(300))
                let t0 = ContinuousClock.now
                _ = try await store.complete([Completion(executionID: held[0].executionID, epoch: held[0].epoch)], on: conn)
                let got = try await waited
                #expect(got.map(\.executionID) == [made[1].executionID])
                // (The claim looks again at least every second anyway: the announcement must beat that.)
                #expect(t0.duration(to: .now) < .milliseconds(900), "woken by the announcement")
                group.cancelAll()
            }
            await pool.shutdown()
        }
    }

    /// A backlog of 2,000 from one tenant and then one execution from another: the small
    /// tenant's is claimed within two claims of ten (fair keys), where without them it waits
    /// behind the whole backlog.
    @Test func aSmallTenantIsNotStuckBehindABigTenantsBacklog() async throws {
        try await withBootedDatabase { _, conn in
            let w = try await register("w", on: conn)
            func claimsUntilSmall(_ fair: Bool) async throws -> Int {
                for chunk in 0..<4 {
                    _ = try await store.enqueue(namespace: ns, (0..<500).map { i in request(fair ? .fair(key: "big", window: 10) : nil, payload: #"{"t": "big", "i": \#(chunk * 500 + i)}"#) }, on: conn)
                }
                _ = try await store.enqueue(namespace: ns, [request(fair ? .fair(key: "small", window: 10) : nil, payload: #"{"t": "small"}"#)], on: conn)
                var claims = 0
                while true {
                    let leases = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 10, on: conn)
                    claims += 1
                    if leases.isEmpty || leases.contains(where: { $0.payload.contains("small") }) { break }
                    _ = try await store.complete(leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch) }, on: conn)
                }
                for table in ["ready", "flow_waiting", "flow_keys"] { try await conn.query(PostgresQuery(unsafeSQL: "DELETE FROM workflow.\(table)")) }
                return claims
            }
            let unfair = try await claimsUntilSmall(false)
            let fair = try await claimsUntilSmall(true)
            #expect(unfair > 150, "without fair keys the small tenant waits behind the backlog (\(unfair) claims)")
            #expect(fair <= 2, "with fair keys: \(fair) claims")
            // The big tenant still drains, ten at a time.
            let admitted = try await conn.query("SELECT count(*) AS n FROM workflow.ready").single().decode("n", as: Int.self)
            #expect(admitted == 0)
        }
    }

    /// max running 3 under 8 racing claimers: never more than 3 leases of the lane at once
    /// (attempt times again); the token bucket: at most burst + rate × elapsed claims.
    @Test func laneLimitsHoldUnderRacingClaimers() async throws {
        try await withBootedDatabase { config, conn in
            _ = try await store.enqueue(namespace: ns, (0..<150).map { _ in request(nil) }, on: conn)
            _ = try await LaneLimitStore().set(namespace: ns, lane: lane, maxRunning: 3, rate: nil, burst: nil, actor: .named("test"), on: conn)
            var workers: [WorkerInstanceID] = []
            for w in 0..<8 { workers.append(try await register("w\(w)", on: conn)) }
            #expect(try await drain(config, workers: workers, limit: 2, hold: .milliseconds(5)) == 150)
            let most = try await conn.query(
                """
                SELECT max(o.n) AS most FROM workflow.attempts a
                CROSS JOIN LATERAL (SELECT count(*) AS n FROM workflow.attempts b
                                    WHERE b.started_at <= a.started_at AND COALESCE(b.ended_at, 'infinity') > a.started_at) AS o
                """).single().decode("most", as: Int.self)
            #expect(most <= 3 && most >= 2, "max running 3 (used, never passed): \(most)")
            let limits = try await LaneLimitStore().list(on: conn)
            #expect(limits.first?.blocked ?? 0 > 0, "claims held back are counted")
            // The bucket: 20/s with a burst of 5, for about a second of claiming.
            try await conn.query("DELETE FROM workflow.attempts")
            try await conn.query("DELETE FROM workflow.leases")
            _ = try await store.enqueue(namespace: ns, (0..<200).map { _ in request(nil) }, on: conn)
            _ = try await LaneLimitStore().set(namespace: ns, lane: lane, maxRunning: nil, rate: 20, burst: 5, actor: .named("test"), on: conn)
            let t0 = try await ScheduleStore.now(conn)
            let stop = ContinuousClock.now + .seconds(1)
            let claimed = Tally()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for w in workers.prefix(4) {
                    group.addTask { [store, ns, lane] in
                        try await PostgresConnection.withConnection(config) { c in
                            while ContinuousClock.now < stop {
                                let n = try await store.claim(
                                    namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 10, on: c).count
                                claimed.add(n)
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let elapsed = try await ScheduleStore.now(conn).timeIntervalSince(t0)
            let n = claimed.total
            #expect(n <= 5 + Int((20 * elapsed).rounded(.up)), "\(n) claims in \(elapsed) s at 20/s, burst 5")
            #expect(n >= 15, "the rate is served, not starved: \(n)")
            try await LaneLimitStore().clear(namespace: ns, lane: lane, actor: .named("test"), on: conn)
            await expectCode(.notFound) { try await LaneLimitStore().clear(namespace: ns, lane: lane, actor: .named("test"), on: conn) }
        }
    }

    /// A max-running limit set while executions already run in the lane counts them: no claim
    /// until the lane is back under the limit, and the one that brings it there wakes a waiting
    /// claim's announcement like any limited slot.
    @Test func aLimitSetWhileExecutionsRunCountsThem() async throws {
        try await withBootedDatabase { _, conn in
            let w = try await register("w", on: conn)
            _ = try await store.enqueue(namespace: ns, (0..<6).map { _ in request(nil) }, on: conn)
            let running = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 3, on: conn)
            #expect(running.count == 3)
            _ = try await LaneLimitStore().set(namespace: ns, lane: lane, maxRunning: 2, rate: nil, burst: nil, actor: .named("test"), on: conn)
            func claimOne() async throws -> [Lease] {
                try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 1, on: conn)
            }
            #expect(try await claimOne().isEmpty, "3 running against a limit of 2: nothing more")
            #expect(try await LaneLimitStore().list(on: conn).first?.running == 3)
            _ = try await store.complete([Completion(executionID: running[0].executionID, epoch: running[0].epoch)], on: conn)
            #expect(try await claimOne().isEmpty, "2 running: still at the limit")
            _ = try await store.complete([Completion(executionID: running[1].executionID, epoch: running[1].epoch)], on: conn)
            #expect(try await claimOne().count == 1, "1 running: one more may start")
            #expect(try await claimOne().isEmpty)
        }
    }

    /// A manifest's keys: at most one `charge` per customer at a time (read from each run's
    /// input), tenants interleaved in `notify`; the keys' rules are checked at deploy.
    @Test func aManifestsStepKeysAreReadFromEachRun() async throws {
        try await withBootedDatabase { _, conn in
            let f = try await RunFixture.deploy("billing", steps: [
                #"{"name": "charge", "lane": "work", "concurrency": {"key": "$.input.customer", "limit": 1}, "after": []}"#,
            ], on: conn)
            var runs: [String: [String]] = [:]
            for (i, customer) in ["acme", "acme", "acme", "globex", "globex", "initech"].enumerated() {
                runs[customer, default: []].append(try await f.start(#"{"customer": "\#(customer)", "n": \#(i)}"#).runID)
            }
            let first = try await f.claim(limit: 10)
            #expect(Set(first.compactMap(\.step?.runID)) == Set([runs["acme"]![0], runs["globex"]![0], runs["initech"]![0]]), "one per customer")
            let keys = try await conn.query("SELECT flow_key FROM workflow.flow_keys ORDER BY 1").map { try $0.decode("flow_key", as: String.self) }
            #expect(keys == ["c:billing/charge:acme", "c:billing/charge:globex", "c:billing/charge:initech"])
            let acme = try #require(first.first { $0.step?.runID == runs["acme"]![0] })
            _ = try await f.complete(acme)
            let next = try await f.claim(limit: 10)
            #expect(next.compactMap(\.step?.runID) == [runs["acme"]![1]], "the customer's next run, once the first finished")
        }
        let bad: [(String, String)] = [
            (#"{"name": "a", "lane": "l", "concurrency": {"key": "customer"}}"#, "concurrency.key"),
            (#"{"name": "a", "lane": "l", "concurrency": {"key": "$.input.c", "limit": 0}}"#, "concurrency.limit must be 1"),
            (#"{"name": "a", "lane": "l", "concurrency": {"key": "$.input.c"}, "fair_key": "$.input.t"}"#, "both concurrency and fair_key"),
            (#"{"name": "a", "lane": "l", "fair_window": 5}"#, "fair_window needs fair_key"),
            (#"{"name": "a", "lane": "l", "concurrency": {"key": "$.input.c", "size": 2}}"#, "size"),
            (#"{"name": "a", "sleep": "1s", "concurrency": {"key": "$.input.c"}}"#, "worker step"),
        ]
        for (step, says) in bad {
            do {
                _ = try WorkflowManifest.parse(Array(PackageFixture.manifest(type: "bad", steps: [step]).utf8))
                Issue.record("accepted: \(step)")
            } catch let error as RegentError {
                #expect(error.code == .invalidInput && error.message.contains(says), "\(step): \(error.message)")
            }
        }
    }

    @Test func badGatesAndLimitsAreRefusedNamingWhatIsWrong() async throws {
        expectCode(.invalidInput) { try request(.concurrency(key: "", limit: 1)).check() }
        expectCode(.invalidInput) { try request(.concurrency(key: "k", limit: 0)).check() }
        expectCode(.invalidInput) { try request(.fair(key: "a\u{1}", window: 5)).check() }
        expectCode(.invalidInput) { try request(.fair(key: "k", window: 100_001)).check() }
        for bad in ["0/s", "fast", "5/d", "-3", "1e9/s", "/s"] { expectCode(.invalidInput) { _ = try LaneLimit.parseRate(bad) } }
        #expect(try LaneLimit.parseRate("50/s") == 50 && LaneLimit.parseRate("600/m") == 10 && LaneLimit.parseRate("7") == 7)
        try await withBootedDatabase { _, conn in
            await expectCode(.invalidInput) { _ = try await LaneLimitStore().set(namespace: ns, lane: lane, maxRunning: nil, rate: nil, burst: nil, actor: .named("t"), on: conn) }
            await expectCode(.invalidInput) { _ = try await LaneLimitStore().set(namespace: ns, lane: lane, maxRunning: 0, rate: nil, burst: nil, actor: .named("t"), on: conn) }
            await expectCode(.invalidInput) { _ = try await LaneLimitStore().set(namespace: ns, lane: lane, maxRunning: nil, rate: nil, burst: 3, actor: .named("t"), on: conn) }
            let limits = try await LaneLimitStore().list(on: conn)
            #expect(limits.isEmpty)
        }
    }
}
