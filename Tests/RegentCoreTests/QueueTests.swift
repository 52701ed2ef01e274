import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Synchronization
import Testing

/// Executions claimed by the racing claimers of a test, to check none is handed out twice.
final class ClaimLog: Sendable {
    let ids = Mutex<[UUID]>([])
    func add(_ leases: [Lease]) { ids.withLock { $0 += leases.map(\.executionID) } }
}

@Suite("The execution queue against a real server")
struct QueueTests {
    let ns = try! Namespace("q")
    let lane = try! Lane("work")
    let store = LeaseStore()

    func register(_ w: String, lanes: [Lane]? = nil, on conn: PostgresConnection) async throws -> WorkerInstanceID {
        let id = try WorkerInstanceID(w)
        _ = try await WorkerRegistry().register(
            namespace: ns, workerInstanceID: id, workerID: try WorkerID("q"), lanes: lanes ?? [lane], capabilities: [], livenessTTL: .seconds(60),
            on: conn)
        return id
    }

    func claim(_ w: WorkerInstanceID, lanes: [Lane]? = nil, limit: Int = 1, on conn: PostgresConnection) async throws -> [Lease] {
        try await store.claim(
            namespace: ns, lanes: lanes ?? [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: limit, on: conn)
    }

    /// Completion and enqueue items are JSON written by hand (jsonString, no Foundation): the
    /// server must read back every string exactly, quotes, backslashes, control characters, DEL
    /// and non-ASCII included.
    @Test func handWrittenJSONStringsReadBackExactlyOnTheServer() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            var samples = ["run_01JABCDEF", "", "a\"b", "back\\slash", "line\nbreak\r\ttab", "\u{01}\u{1F}\u{7F}", "é世界🚀", "/slash/", "\u{2028}\u{2029}"]
            samples.append(String((1..<128).map { Character(Unicode.Scalar(UInt8($0))) }))
            let items = "[" + samples.map(jsonString).joined(separator: ",") + "]"
            let back = try await conn.query("SELECT array_agg(v ORDER BY n) AS v FROM jsonb_array_elements_text(\(PostgresJSON(items))::jsonb) WITH ORDINALITY AS t(v, n)")
                .single().decode("v", as: [String].self)
            #expect(back == samples)
            let id = UUID()
            let built = try LeaseStore.completionItems([
                Completion(executionID: id, epoch: LeaseEpoch(3), result: #"{"k": "v"}"#, worker: try WorkerInstanceID("w-1"), runID: "run \"x\"\n")
            ])
            let row = try await conn.query(
                "SELECT (j -> 0 ->> 'execution_id')::uuid AS id, j -> 0 ->> 'run_id' AS run, j -> 0 ->> 'worker' AS worker, (j -> 0 ->> 'epoch')::bigint AS epoch FROM (SELECT \(PostgresJSON(built))::jsonb AS j) s"
            ).single()
            #expect(try row.decode("id", as: UUID.self) == id)
            #expect(try row.decode("run", as: String.self) == "run \"x\"\n")
            #expect(try row.decode("worker", as: String.self) == "w-1")
            #expect(try row.decode("epoch", as: Int64.self) == 3)
        }
    }

    @Test func racingBatchClaimersNeverShareAnExecution() async throws {
        try await withBootedDatabase { config, conn in
            let total = 3000
            for _ in 0..<3 { _ = try await store.enqueue(namespace: ns, Array(repeating: EnqueueRequest(lane: lane), count: total / 3), on: conn) }
            var workers: [WorkerInstanceID] = []
            for w in 0..<8 { workers.append(try await register("w\(w)", on: conn)) }
            let log = ClaimLog()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (i, w) in workers.enumerated() {
                    group.addTask { [store, ns, lane] in
                        try await PostgresConnection.withConnection(config) { c in
                            while true {
                                let leases = try await store.claim(
                                    namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30),
                                    limit: [1, 10, 50, 100][i % 4], on: c)
                                if leases.isEmpty { return }
                                log.add(leases)
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let ids = log.ids.withLock { $0 }
            #expect(ids.count == total)
            #expect(Set(ids).count == total, "an execution was claimed twice")
            let leased = try await conn.query("SELECT count(*) AS n FROM workflow.leases").single().decode("n", as: Int.self)
            #expect(leased == total)
        }
    }

    @Test func completeAndClaimFinishesTheHeldWorkAndTakesTheNextInOneStatement() async throws {
        try await withBootedDatabase { _, conn in
            let w = try await register("w", on: conn)
            let ids = try await store.enqueue(namespace: ns, Array(repeating: EnqueueRequest(lane: lane), count: 5), on: conn).map(\.executionID)
            // An empty first call is a claim.
            let (none, first) = try await store.completeAndClaim(
                [], namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 2, on: conn)
            #expect(none.done.isEmpty && none.stale.isEmpty && first.count == 2)
            // One current completion and one stale: the current one is done, the stale reported, two more claimed.
            let held = [
                Completion(executionID: first[0].executionID, epoch: first[0].epoch, result: #"{"ok":1}"#),
                Completion(executionID: first[1].executionID, epoch: LeaseEpoch(first[1].epoch.value + 5)),
            ]
            let (outcome, next) = try await store.completeAndClaim(
                held, namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 2, on: conn)
            #expect(outcome.done.keys.sorted() == [first[0].executionID] && outcome.stale == [first[1].executionID])
            #expect(next.count == 2 && Set(next.map(\.executionID)).isDisjoint(with: first.map(\.executionID)))
            #expect(Set(ids).isSuperset(of: next.map(\.executionID)))
            let result = try await conn.query("SELECT result::text AS r FROM workflow.executions WHERE execution_id = \(first[0].executionID)").single()
                .decode("r", as: String.self)
            #expect(result == #"{"ok": 1}"#)
            // A worker that is no longer registered: its completions still apply, the claim is refused.
            try await conn.query("UPDATE workflow.workers SET dead = true WHERE worker_instance_id = 'w'")
            do {
                _ = try await store.completeAndClaim(
                    next.map { Completion(executionID: $0.executionID, epoch: $0.epoch) }, namespace: ns, lanes: [lane], workerInstanceID: w,
                    capabilities: [], leaseDuration: .seconds(30), limit: 2, on: conn)
                Issue.record("a dead worker claimed")
            } catch let error as RegentError {
                #expect(error.code == .notRegistered && error.message.contains("2 completion(s) of this call were applied"))
            }
            let completed = try await conn.query("SELECT count(*) AS n FROM workflow.executions WHERE state = 'completed'").single()
                .decode("n", as: Int.self)
            #expect(completed == 3)
            await expectCode(.invalidInput) {
                _ = try await store.completeAndClaim(
                    [], namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 0, on: conn)
            }
        }
    }

    @Test func batchCompletionCompletesTheCurrentEpochsAndReportsTheStaleOnes() async throws {
        try await withBootedDatabase { _, conn in
            let w = try await register("w", on: conn)
            _ = try await store.enqueue(namespace: ns, Array(repeating: EnqueueRequest(lane: lane), count: 4), on: conn)
            let leases = try await claim(w, limit: 4, on: conn)
            #expect(leases.count == 4)
            // Two are presented with a wrong epoch; one of the right ones twice in two batches.
            let batch = leases.enumerated().map { i, l in
                Completion(executionID: l.executionID, epoch: i < 2 ? l.epoch : LeaseEpoch(l.epoch.value + 7), result: #"{"i":\#(i)}"#)
            }
            let outcome = try await store.complete(batch, on: conn)
            #expect(Set(outcome.done.keys) == Set(leases.prefix(2).map(\.executionID)))
            #expect(Set(outcome.stale) == Set(leases.suffix(2).map(\.executionID)))
            // The same completion again (its answer lost): it counted, and it changes nothing.
            let again = try await store.complete([batch[0]], on: conn)
            #expect(again.done == [leases[0].executionID: "already_completed"] && again.stale.isEmpty)
            // Another worker instance sending it is not told that it counted.
            var foreign = batch[0]
            foreign.worker = try WorkerInstanceID("someone-else")
            let refused = try await store.complete([foreign], on: conn)
            #expect(refused.done.isEmpty && refused.stale == [leases[0].executionID])
            let states = try await conn.query("SELECT state, count(*) AS n FROM workflow.executions GROUP BY state ORDER BY state")
                .map { "\(try $0.decode("state", as: String.self))=\(try $0.decode("n", as: Int.self))" }
            #expect(states == ["completed=2", "running=2"])
            // The completed ones left no live lease; their attempts ended.
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.leases").single().decode("n", as: Int.self) == 2)
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.attempts WHERE state = 'completed'").single().decode("n", as: Int.self) == 2)
        }
    }

    @Test func retriesBackOffExponentiallyWithinTheJitterBounds() async throws {
        try await withBootedDatabase { _, conn in
            let w = try await register("w", on: conn)
            // Seconds, not milliseconds: "not claimable before its run_at" must hold however long a
            // loaded machine takes between the failure and the next claim (it stalled past 300 ms
            // once, and past 1.5 s in another test): the shortest delay here is 3 s.
            let policy = try RetryPolicy(base: .seconds(4), maximum: .seconds(16))
            let id = try await store.enqueue(namespace: ns, [EnqueueRequest(lane: lane, maxAttempts: 5, retry: policy)], on: conn)[0].executionID
            for attempt in 1...4 {
                // Make it runnable now (the wait itself is what is measured), claim, fail.
                try await conn.query("UPDATE workflow.ready SET run_at = now() - interval '1 second' WHERE execution_id = \(id)")
                let lease = try #require(try await claim(w, on: conn).first)
                #expect(lease.attemptIndex == attempt)
                let outcome = try await store.fail([Failure(executionID: id, epoch: lease.epoch, error: "e", retryable: true)], on: conn)
                #expect(outcome.done[id] == "queued")
                // The delay the failing statement chose: its run_at minus its own now() (updated_at).
                let waitMs = try await conn.query(
                    "SELECT extract(epoch FROM run_at - updated_at) * 1000 AS ms FROM workflow.executions WHERE execution_id = \(id)"
                ).single().decode("ms", as: Double.self)
                let expected = policy.delay(afterAttempt: attempt).milliseconds  // 4000, 8000, 16000, 16000
                #expect(expected == [4000.0, 8000, 16000, 16000][attempt - 1])
                #expect(waitMs >= expected * 0.75 && waitMs <= expected * 1.25, "attempt \(attempt): waits \(waitMs) ms, expected \(expected) ±25%")
                // Not claimable before its run_at.
                #expect(try await claim(w, on: conn).isEmpty)
            }
            // The default policy applies without one: 1 s base.
            #expect(RetryPolicy.default.delay(afterAttempt: 1) == .seconds(1))
            #expect(RetryPolicy.default.delay(afterAttempt: 30) == .seconds(3600))
        }
    }

    /// Judged by database time only. Two executions: one due in an hour, which no claim may take;
    /// one due in 1.5 s, which the claims must take, at or after its run_at. (How soon the first
    /// claim runs after the enqueue is the machine's business: on a loaded CI machine more than
    /// 1.5 s can pass, and a claim then rightly takes the near one.)
    @Test func aScheduledExecutionIsNotClaimableBeforeItsRunAt() async throws {
        try await withBootedDatabase { _, conn in
            let w = try await register("w", on: conn)
            let dbNow = try await conn.query("SELECT now() AS t").single().decode("t", as: Date.self)
            let made = try await store.enqueue(
                namespace: ns,
                [EnqueueRequest(lane: lane, runAt: dbNow.addingTimeInterval(3600)), EnqueueRequest(lane: lane, runAt: dbNow.addingTimeInterval(1.5))],
                on: conn)
            let (later, soon) = (made[0].executionID, made[1].executionID)
            // Claims until it gets one; an error fails the test at once (not hidden as "not yet").
            var got: [Lease] = []
            let deadline = ContinuousClock.now + .seconds(10)
            while got.isEmpty, ContinuousClock.now < deadline {
                got = try await claim(w, limit: 2, on: conn)
                if got.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
            }
            #expect(got.map(\.executionID) == [soon])
            let claimedAt = try await conn.query("SELECT started_at FROM workflow.attempts WHERE execution_id = \(soon)").single()
                .decode("started_at", as: Date.self)
            #expect(claimedAt >= dbNow.addingTimeInterval(1.5))
            #expect(try await claim(w, limit: 2, on: conn).isEmpty)
            let state = try await conn.query("SELECT state FROM workflow.executions WHERE execution_id = \(later)").single()
            #expect(try state.decode("state", as: String.self) == "queued")
        }
    }

    @Test func higherPriorityRunsFirstThenOlderRunAt() async throws {
        try await withBootedDatabase { _, conn in
            let w = try await register("w", on: conn)
            let made = try await store.enqueue(
                namespace: ns,
                [5, 0, 3, 0].map { EnqueueRequest(lane: lane, payload: #"{"p":\#($0)}"#, priority: $0) }, on: conn)
            var order: [UUID] = []
            for _ in 0..<4 { order += try await claim(w, on: conn).map(\.executionID) }
            #expect(order == [made[1], made[3], made[2], made[0]].map(\.executionID))
        }
    }

    @Test func aUniqueKeyYieldsOneExecutionUnderConcurrentEnqueuesUntilItFinishes() async throws {
        try await withBootedDatabase { config, conn in
            let box = ResultBox()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<8 {
                    group.addTask { [store, ns, lane] in
                        try await PostgresConnection.withConnection(config) { c in
                            let r = try await store.enqueue(namespace: ns, [EnqueueRequest(lane: lane, uniqueKey: "order-42")], on: c)
                            box.add(r)
                        }
                    }
                }
                try await group.waitForAll()
            }
            let all = box.values
            #expect(all.count == 8)
            #expect(Set(all.map(\.executionID)).count == 1)
            #expect(all.filter(\.created).count == 1)
            // In one batch too: the second request gets the first's id.
            let batch = try await store.enqueue(
                namespace: ns, [EnqueueRequest(lane: lane, uniqueKey: "k2"), EnqueueRequest(lane: lane, uniqueKey: "k2")], on: conn)
            #expect(batch[0].created && !batch[1].created && batch[0].executionID == batch[1].executionID)
            // Once it finished, the key is free again.
            let w = try await register("w", on: conn)
            let leases = try await claim(w, limit: 10, on: conn)
            _ = try await store.complete(leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch) }, on: conn)
            let again = try await store.enqueue(namespace: ns, [EnqueueRequest(lane: lane, uniqueKey: "order-42")], on: conn)
            #expect(again[0].created && again[0].executionID != all[0].executionID)
        }
    }

    @Test func cancellingAQueuedOrARunningExecution() async throws {
        try await withBootedDatabase { _, conn in
            let w = try await register("w", on: conn)
            let ids = try await store.enqueue(namespace: ns, Array(repeating: EnqueueRequest(lane: lane), count: 2), on: conn).map(\.executionID)
            let running = try #require(try await claim(w, on: conn).first)
            let queued = ids.first { $0 != running.executionID }!
            #expect(try await store.cancel(executionID: queued, on: conn) == .cancelledQueued)
            #expect(try await claim(w, on: conn).isEmpty)  // it will not run
            #expect(try await store.cancel(executionID: running.executionID, on: conn) == .cancelledRunning)
            await expectCode(.staleLease) { try await store.complete(executionID: running.executionID, epoch: running.epoch, on: conn) }
            await expectCode(.staleLease) {
                _ = try await store.renew(executionID: running.executionID, epoch: running.epoch, leaseDuration: .seconds(5), on: conn)
            }
            #expect(try await store.cancel(executionID: running.executionID, on: conn) == .alreadyFinished)
            #expect(try await store.cancel(executionID: UUID(), on: conn) == .notFound)
            let states = try await conn.query("SELECT DISTINCT state FROM workflow.executions").map { try $0.decode("state", as: String.self) }
            #expect(states == ["cancelled"])
            #expect(try await conn.query("SELECT state FROM workflow.attempts WHERE execution_id = \(running.executionID)").single()
                .decode("state", as: String.self) == "cancelled")
        }
    }

    @Test func retentionDeletesOnlyOldFinishedRowsOnlyUnderAFenceInPages() async throws {
        try await withBootedDatabase { config, conn in
            let w = try await register("w", on: conn)
            let ids = try await store.enqueue(namespace: ns, Array(repeating: EnqueueRequest(lane: lane), count: 7), on: conn).map(\.executionID)
            let leases = try await claim(w, limit: 5, on: conn)
            _ = try await store.complete(leases.prefix(4).map { Completion(executionID: $0.executionID, epoch: $0.epoch) }, on: conn)
            // Everything is ten days old; four finished, one running, two queued.
            try await conn.query(
                "UPDATE workflow.executions SET created_at = now() - interval '10 days', finished_at = finished_at - interval '10 days'")
            try await conn.query("UPDATE workflow.worker_events SET at = now() - interval '10 days'")
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
            let retention = QueueRetention(pool: pool, retention: .seconds(86_400), pageSize: 3)
            await expectCode(.notLeader) { _ = try await retention.pruneOnce(fence: LeaderFence(term: 9, instanceID: InstanceID(), lockBackendPID: 0)) }
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.executions").single().decode("n", as: Int.self) == 7)
            let (fence, cluster) = try await leaderFence(config)
            // In pages of at most 3. The leader node's own retention duty may take some too, in a
            // transaction of its own: a page of 0 can mean "its rows are locked by the other", so
            // go on until the table holds exactly the unfinished ones (or time runs out).
            let unfinished = Set(ids).subtracting(leases.prefix(4).map(\.executionID))
            var left: [UUID] = []
            let deadline = ContinuousClock.now + .seconds(10)
            repeat {
                let page = try await asLeader(fence, of: cluster) { try await retention.pruneOnce(fence: $0) }
                #expect(page.executions <= 3)
                left = try await conn.query("SELECT execution_id FROM workflow.executions ORDER BY execution_id").map { try $0.decode("execution_id", as: UUID.self) }
                if Set(left) != unfinished { try await Task.sleep(for: .milliseconds(50)) }
            } while Set(left) != unfinished && ContinuousClock.now < deadline
            #expect(Set(left) == unfinished)
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.attempts").single().decode("n", as: Int.self) == 1)
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.worker_events").single().decode("n", as: Int.self) == 0)
            await cluster.stopAll()
            await pool.shutdown()
        }
    }

    @Test func theClaimWalksTheReadyIndexWhateverTheBacklogAndTheStatistics() async throws {
        try await withBootedDatabase { _, conn in
            let w = try await register("w", lanes: [lane, try Lane("other")], on: conn)
            // A worker that claimed on an empty queue long enough for its session to keep a plan
            // made for an empty table, then a burst: the case in which a claim planned from the
            // statistics of the moment would scan and sort the whole backlog.
            try await conn.query("VACUUM ANALYZE workflow.ready")
            try await conn.query("VACUUM ANALYZE workflow.executions")
            for _ in 0..<8 { #expect(try await claim(w, lanes: [lane, try Lane("other")], limit: 10, on: conn).isEmpty) }
            for _ in 0..<20 { _ = try await store.enqueue(namespace: ns, Array(repeating: EnqueueRequest(lane: lane), count: 1000), on: conn) }
            _ = try await store.enqueue(namespace: ns, Array(repeating: EnqueueRequest(lane: try Lane("other")), count: 1000), on: conn)
            for round in 0..<7 {  // past PL/pgSQL's first custom plans, onto its cached one
                var counts: [String: Int] = [:]
                do {
                    try await conn.withTransaction { tx in
                        // The session's pending counters, read before and after: what the claim read.
                        func read() async throws -> [String: Int] {
                            var out: [String: Int] = [:]
                            for row in try await tx.query(
                                """
                                SELECT relname, seq_scan, COALESCE(idx_tup_fetch, 0) AS fetched FROM pg_stat_xact_user_tables
                                WHERE schemaname = 'workflow' AND relname IN ('ready', 'executions')
                                """)
                            {
                                let name = try row.decode("relname", as: String.self)
                                out[name + ".seq"] = try row.decode("seq_scan", as: Int.self)
                                out[name + ".fetched"] = try row.decode("fetched", as: Int.self)
                            }
                            return out
                        }
                        let before = try await read()
                        let leases = try await store.claim(
                            namespace: ns, lanes: [lane, try Lane("other")], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30),
                            limit: 10, on: tx)
                        #expect(leases.count == 10)
                        let after = try await read()
                        for (key, value) in after { counts[key] = value - (before[key] ?? 0) }
                        throw RollBack()  // every round sees the same backlog
                    }
                } catch is RollBack {}
                #expect(counts["ready.seq"] == 0 && counts["executions.seq"] == 0, "round \(round): \(counts)")
                // At most `limit` rows per lane (two lanes) read from `ready`, not the 21,000 queued.
                #expect((counts["ready.fetched"] ?? 99) <= 20, "round \(round): \(counts)")
            }
        }
    }

    @Test func aWaitingClaimWakesOnItsLaneOnlyAndTimesOutCleanly() async throws {
        try await withBootedDatabase { config, conn in
            let other = try Lane("other")
            let w = try await register("w", lanes: [lane, other], on: conn)
            let waker = QueueWaker(configuration: config)
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await waker.run() }
                #expect(await eventually { waker.isListening })
                // Woken by work in its lane, long before its wait is over.
                async let woken = store.claim(
                    namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 1,
                    wait: .seconds(20), waker: waker, pool: pool)
                try await Task.sleep(for: .milliseconds(200))
                let started = ContinuousClock.now
                let id = try await store.enqueue(namespace: ns, [EnqueueRequest(lane: lane)], on: conn)[0].executionID
                #expect(try await woken.map(\.executionID) == [id])
                #expect(started.duration(to: .now) < .seconds(10))  // of its 20 s (wake latency: `bench queue`)
                // Work in another lane does not wake it; its wait ends empty, on time.
                let before = ContinuousClock.now
                async let idle = store.claim(
                    namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(30), limit: 1,
                    wait: .milliseconds(1500), waker: waker, pool: pool)
                try await Task.sleep(for: .milliseconds(200))
                _ = try await store.enqueue(namespace: ns, [EnqueueRequest(lane: other)], on: conn)
                #expect(try await idle.isEmpty)
                let waited = before.duration(to: .now)
                #expect(waited >= .milliseconds(1500) && waited < .seconds(5), "waited \(waited)")
                group.cancelAll()
            }
            await pool.shutdown()
        }
    }

    @Test func badInputIsRefusedAndChangesNothing() async throws {
        try await withBootedDatabase { _, conn in
            let w = try await register("w", on: conn)
            await expectCode(.invalidInput) { _ = try await store.enqueue(namespace: ns, [], on: conn) }
            await expectCode(.invalidInput) {
                _ = try await store.enqueue(namespace: ns, Array(repeating: EnqueueRequest(lane: lane), count: 1001), on: conn)
            }
            await expectCode(.invalidInput) { _ = try await store.enqueue(namespace: ns, [EnqueueRequest(lane: lane, priority: -1)], on: conn) }
            await expectCode(.invalidInput) { _ = try await store.enqueue(namespace: ns, [EnqueueRequest(lane: lane, priority: 1001)], on: conn) }
            await expectCode(.invalidInput) {
                _ = try await store.enqueue(namespace: ns, [EnqueueRequest(lane: lane, uniqueKey: String(repeating: "k", count: 256))], on: conn)
            }
            await expectCode(.invalidInput) { _ = try await store.enqueue(namespace: ns, [EnqueueRequest(lane: lane, uniqueKey: "a\u{1}b")], on: conn) }
            await expectCode(.invalidInput) {
                _ = try await store.enqueue(namespace: ns, [EnqueueRequest(lane: lane), EnqueueRequest(lane: lane, payload: "[1]")], on: conn)
            }
            expectCode(.invalidInput) { _ = try RetryPolicy(base: .zero, maximum: .seconds(1)) }
            expectCode(.invalidInput) { _ = try RetryPolicy(base: .seconds(2), maximum: .seconds(1)) }
            await expectCode(.invalidInput) { _ = try await claim(w, limit: 0, on: conn) }
            await expectCode(.invalidInput) { _ = try await claim(w, limit: 1001, on: conn) }
            await expectCode(.invalidInput) { _ = try await store.complete([], on: conn) }
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.executions").single().decode("n", as: Int.self) == 0)
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.ready").single().decode("n", as: Int.self) == 0)
        }
    }

    /// The queue-vacuum duty vacuums `ready` and `leases` once their dead rows pass its
    /// threshold (absolute, and relative to the live rows), and leaves them alone below it.
    @Test func theVacuumDutyVacuumsTheChurningTablesPastTheirThresholdOnly() async throws {
        try await withBootedDatabase { config, conn in
            let w = try await register("w", on: conn)
            _ = try await store.enqueue(namespace: ns, Array(repeating: EnqueueRequest(lane: lane), count: 1000), on: conn)
            _ = try await store.enqueue(namespace: ns, Array(repeating: EnqueueRequest(lane: lane), count: 500), on: conn)
            var done = 0
            while done < 1200 {
                let leases = try await claim(w, limit: 100, on: conn)
                _ = try await store.complete(leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch) }, on: conn)
                done += leases.count
            }
            func stats() async throws -> [String: (dead: Int, live: Int, vacuums: Int)] {
                var out: [String: (dead: Int, live: Int, vacuums: Int)] = [:]
                for row in try await conn.query(
                    """
                    SELECT relname::text AS name, n_dead_tup AS dead, n_live_tup AS live, vacuum_count AS vacuums FROM pg_stat_user_tables
                    WHERE schemaname = 'workflow' AND relname IN ('ready', 'leases')
                    """)
                {
                    out[try row.decode("name")] = (try row.decode("dead"), try row.decode("live"), try row.decode("vacuums"))
                }
                return out
            }
            // This session's deletes reach the statistics when it has been idle a moment.
            let deadline = ContinuousClock.now + .seconds(15)
            while true {
                let now = try await stats()
                if (now["ready"]?.dead ?? 0) >= 1200 && (now["leases"]?.dead ?? 0) >= 1200 { break }
                #expect(ContinuousClock.now < deadline, "the statistics never showed the deletes")
                if ContinuousClock.now >= deadline { return }
                try await Task.sleep(for: .milliseconds(200))
            }
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 1))
            let before = try await stats()
            // Under an absolute threshold: nothing.
            #expect(try await QueueVacuum(pool: pool, minimumDeadRows: 5000).vacuumDue() == [])
            #expect(try await stats()["ready"]?.vacuums == before["ready"]?.vacuums)
            // Relative: 1,200 dead rows in `ready` next to 300 live ones stay under 5× the live
            // rows; `leases` (no live row) is past its floor of 10.
            #expect(try await QueueVacuum(pool: pool, minimumDeadRows: 10, deadFraction: 5).vacuumDue() == ["leases"])
            // Past the default threshold (1,000, or 2 % of the live rows): `ready` too.
            #expect(try await QueueVacuum(pool: pool).vacuumDue() == ["ready"])
            let after = try await stats()
            for table in ["ready", "leases"] {
                #expect((after[table]?.vacuums ?? 0) == (before[table]?.vacuums ?? 0) + 1, "\(table)")
                #expect((after[table]?.dead ?? 99) < 10, "\(table)")
            }
            #expect(try await QueueVacuum(pool: pool).vacuumDue() == [])
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.ready").single().decode("n", as: Int.self) == 300)
            await pool.shutdown()
        }
    }

    /// A vacuum round that fails (here: its pool is already shut down) is logged, and the round
    /// still succeeds: a maintenance statement must not make the duty runner resign the leader.
    @Test func aFailingVacuumNeverCountsAgainstTheLeader() async throws {
        try await withBootedDatabase { config, _ in
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 1))
            let duty = QueueVacuum(pool: pool, minimumDeadRows: 0)
            let first = try await duty.vacuumDue()
            #expect(Set(first) == ["ready", "leases"])
            await pool.shutdown()
            await #expect(throws: (any Error).self) { _ = try await duty.vacuumDue() }
            let more = try await duty.runOnce(fence: LeaderFence(term: 1, instanceID: InstanceID(), lockBackendPID: 0))
            #expect(more == false)
        }
    }

    /// The hot tables' rules moved from CHECK constraints to domains (sql/workflow/0009): a write
    /// that goes around the library is still refused, by the same rules, and changes nothing.
    @Test func theQueueTablesStillRefuseWhatTheirRulesForbid() async throws {
        try await withBootedDatabase { _, conn in
            let id = try await store.enqueue(namespace: ns, [EnqueueRequest(lane: lane)], on: conn)[0].executionID
            let refused: [PostgresQuery] = [
                "INSERT INTO workflow.executions (namespace, lane, max_attempts) VALUES ('q', 'bad lane', 1)",
                "INSERT INTO workflow.executions (namespace, lane, max_attempts) VALUES ('bad/ns', 'l', 1)",
                "INSERT INTO workflow.executions (namespace, lane, max_attempts) VALUES ('q', 'l', 0)",
                "INSERT INTO workflow.executions (namespace, lane, max_attempts, unique_key) VALUES ('q', 'l', 1, '')",
                "UPDATE workflow.executions SET state = 'lost' WHERE execution_id = \(id)",
                "UPDATE workflow.executions SET priority = 1001 WHERE execution_id = \(id)",
                "UPDATE workflow.executions SET retry_base_ms = 0 WHERE execution_id = \(id)",
                "UPDATE workflow.executions SET step_lease_ms = 999 WHERE execution_id = \(id)",
                "INSERT INTO workflow.attempts (execution_id, attempt_index, lease_epoch, worker_instance_id, state, lease_expires_at, lease_ms) VALUES (\(id), 1, 1, 'w', 'won', now(), 1)",
                "INSERT INTO workflow.leases (execution_id, namespace, attempt_index, lease_epoch, worker_instance_id, lease_expires_at, lease_ms) VALUES (\(id), 'q', 1, 1, 'w', now(), 0)",
            ]
            for statement in refused {
                do {
                    try await conn.query(statement)
                    Issue.record("accepted: \(statement.sql)")
                } catch let error as PostgresError {
                    #expect(error.sqlState == "23514", "\(statement.sql): \(error)")  // check_violation
                }
            }
            let row = try await conn.query(
                "SELECT state::text AS state, priority::int AS priority, (SELECT count(*) FROM workflow.executions)::int AS n FROM workflow.executions WHERE execution_id = \(id)"
            ).single()
            #expect(try row.decode("state", as: String.self) == "queued")
            #expect(try row.decode("priority", as: Int.self) == 0)
            #expect(try row.decode("n", as: Int.self) == 1)
        }
    }
}

/// Thrown to roll a test's transaction back once it has read what it needed.
struct RollBack: Error {}

/// Results gathered from concurrent enqueues.
final class ResultBox: Sendable {
    private let results = Mutex<[Enqueued]>([])
    func add(_ r: [Enqueued]) { results.withLock { $0 += r } }
    var values: [Enqueued] { results.withLock { $0 } }
}
