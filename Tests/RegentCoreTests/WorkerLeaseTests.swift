import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Testing

/// A fully booted database (engine + workflow schemas) and a connection to it.
func bootedDatabase(_ label: String = #function) async throws -> (ConnectionConfiguration, PostgresConnection) {
    let config = try await TestDatabase.shared.freshDatabase(label)
    let boot = try await Boot(options: .init(database: config, actor: "test")).run()
    await boot.pool.shutdown()
    return (config, try await PostgresConnection.connect(config))
}

/// A booted fresh database and a connection to it for the length of `body`.
func withBootedDatabase<T>(
    _ label: String = #function, isolation: isolated (any Actor)? = #isolation,
    _ body: (ConnectionConfiguration, PostgresConnection) async throws -> T
) async throws -> T {
    let config = try await TestDatabase.shared.freshDatabase(label)
    let boot = try await Boot(options: .init(database: config, actor: "test")).run()
    await boot.pool.shutdown()
    return try await PostgresConnection.withConnection(config) { try await body(config, $0) }
}

/// Expects `body` to throw a ``RegentError`` with `code` (not merely some error).
func expectCode(
    _ code: RegentError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void
) async {
    await #expect(sourceLocation: sourceLocation) { try await body() } throws: { error in
        let got = (error as? RegentError)?.code
        if got != code { Issue.record("expected RegentError \(code), got \(error)", sourceLocation: sourceLocation) }
        return got == code
    }
}

func expectCode(_ code: RegentError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    #expect(sourceLocation: sourceLocation) { try body() } throws: { error in
        let got = (error as? RegentError)?.code
        if got != code { Issue.record("expected RegentError \(code), got \(error)", sourceLocation: sourceLocation) }
        return got == code
    }
}

/// A fence held by a real leader node on `config`, for calling leader duties directly.
func leaderFence(_ config: ConnectionConfiguration) async throws -> (LeaderFence, Cluster) {
    var cluster = Cluster(config: config)
    let node = cluster.start("leader")
    // Read together: a loaded node can lose its leadership between two separate reads.
    var fence: LeaderFence?
    #expect(await eventually {
        fence = await node.isLeader ? await node.currentFence : nil
        return fence != nil
    })
    return (try #require(fence), cluster)
}

/// The fence refused the write (`notLeader`), or the server ended the fenced transaction after
/// it sat idle longer than the lease window (SQLSTATE 25P03: a loaded client stalled mid-way).
func refusedForLeadership(_ error: any Error) -> Bool {
    if let error = error as? RegentError { return error.code == .notLeader }
    if let error = error as? PostgresError {
        return error.sqlState == "25P03" || error.message.contains("idle-in-transaction timeout")
    }
    return false
}

/// Runs a leader duty's one pass with `fence`, again while it answers `notLeader`: on a loaded
/// machine the test node's 1 s lease window can lapse between two lock confirmations (the
/// fence then refuses, rightly, until the node confirms again), or the node can even step down
/// and be elected again (then the pass is retried with the fence of `cluster`'s leader of the
/// moment), or while the server ends its fenced transaction for idling past the lease window.
/// Any other error, or 15 s of refusals, fails the test.
func asLeader<T>(
    _ fence: LeaderFence, of cluster: Cluster, isolation: isolated (any Actor)? = #isolation, _ body: (LeaderFence) async throws -> T
) async throws -> T {
    try await asLeader(fence, of: cluster.nodes, body)
}

/// The same, given the cluster's nodes (which, unlike the cluster, may cross into child tasks).
func asLeader<T>(
    _ fence: LeaderFence, of nodes: [RegentNode], isolation: isolated (any Actor)? = #isolation, _ body: (LeaderFence) async throws -> T
) async throws -> T {
    let deadline = ContinuousClock.now + .seconds(45)
    var fence = fence
    while true {
        do {
            return try await body(fence)
        } catch where ContinuousClock.now < deadline && refusedForLeadership(error) {
            try await Task.sleep(for: .milliseconds(50))
            for node in nodes where await node.isLeader {
                if let current = await node.currentFence { fence = current }
            }
        }
    }
}

@Suite("Worker registry and leases against a real server")
struct WorkerLeaseTests {
    let ns = try! Namespace("ns1")
    let w1 = try! WorkerInstanceID("w-1")
    let lane = try! Lane("default")

    @Test func registerRefreshRebindHeartbeatMarkDead() async throws {
        try await withBootedDatabase { _, conn in
            let reg = WorkerRegistry()
            let worker = try WorkerID("alpha")
            #expect(try await reg.register(namespace: ns, workerInstanceID: w1, workerID: worker, lanes: [lane], capabilities: [], livenessTTL: .seconds(30), on: conn) == .registered)
            #expect(try await reg.register(namespace: ns, workerInstanceID: w1, workerID: worker, lanes: [lane], capabilities: [try Capability("gpu")], livenessTTL: .seconds(30), on: conn) == .refreshed)
            do {
                _ = try await reg.register(namespace: ns, workerInstanceID: w1, workerID: try WorkerID("beta"), lanes: [lane], capabilities: [], livenessTTL: .seconds(30), on: conn)
                Issue.record("rebinding an instance id to another worker id must be refused")
            } catch let error as RegentError {
                #expect(error.code == .instanceBound)
                #expect(error.message.contains("bound to worker alpha"))
            }
            let listed = try await reg.list(namespace: ns, after: nil, limit: 10, on: conn)
            #expect(listed.map(\.workerID) == ["alpha"])
            #expect(listed.first?.capabilities == ["gpu"])
            guard case .alive(let expiry) = try await reg.heartbeat(namespace: ns, workerInstanceID: w1, on: conn) else {
                Issue.record("heartbeat of a live worker must succeed"); return
            }
            #expect(expiry > Date().addingTimeInterval(20))
            #expect(try await reg.heartbeat(namespace: ns, workerInstanceID: try WorkerInstanceID("nobody"), on: conn) == .notRegistered)
            #expect(try await reg.markDead(namespace: ns, workerInstanceID: w1, reason: try DeathReason("oom"), on: conn) == .marked)
            #expect(try await reg.markDead(namespace: ns, workerInstanceID: w1, reason: try DeathReason("again"), on: conn) == .notRegistered)
            #expect(try await reg.heartbeat(namespace: ns, workerInstanceID: w1, on: conn) == .notRegistered)
            let kinds = try await conn.query("SELECT kind FROM workflow.worker_events ORDER BY id").map { try $0.decode("kind", as: String.self) }
            #expect(kinds == ["registered", "refreshed", "marked_dead"])
        }
    }

    @Test func heartbeatAfterTTLLapsedRevivesAnUnsweptWorkerAndIsRefusedOnceSwept() async throws {
        try await withBootedDatabase { _, conn in
            let reg = WorkerRegistry()
            _ = try await reg.register(namespace: ns, workerInstanceID: w1, workerID: try WorkerID("a"), lanes: [lane], capabilities: [], livenessTTL: .milliseconds(150), on: conn)
            try await Task.sleep(for: .milliseconds(300))
            // Lapsed but not swept (after an outage the leader waits a TTL of reachable database):
            // the worker's heartbeat is accepted, not answered `notRegistered`.
            let before = try await conn.query("SELECT now() AS t").single().decode("t", as: Date.self)
            guard case .alive(let expiry) = try await reg.heartbeat(namespace: ns, workerInstanceID: w1, on: conn) else {
                Issue.record("a lapsed, unswept worker's heartbeat was refused")
                return
            }
            #expect(expiry > before)  // renewed from the heartbeat's time, not left in the past
            // Once the sweep removed it, it must register again.
            try await conn.query("DELETE FROM workflow.workers WHERE worker_instance_id = \(w1.value)")
            #expect(try await reg.heartbeat(namespace: ns, workerInstanceID: w1, on: conn) == .notRegistered)
        }
    }

    @Test func renewOfALeasePastItsExpiryButWithTheCurrentEpochSucceeds() async throws {
        try await withBootedDatabase { _, conn in
            let reg = WorkerRegistry()
            let store = LeaseStore()
            _ = try await reg.register(namespace: ns, workerInstanceID: w1, workerID: try WorkerID("a"), lanes: [lane], capabilities: [], livenessTTL: .seconds(30), on: conn)
            let id = try await store.enqueue(namespace: ns, lane: lane, payload: "{}", maxAttempts: 3, on: conn)
            let lease = try #require(try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w1, capabilities: [], leaseDuration: .milliseconds(100), limit: 1, on: conn).first)
            try await Task.sleep(for: .milliseconds(250))
            // Expired, not reclaimed: nobody else has it, so the current epoch may renew.
            let renewed = try await store.renew(executionID: id, epoch: lease.epoch, leaseDuration: .seconds(5), on: conn)
            #expect(renewed > lease.expiresAt)
            #expect(try await conn.query("SELECT lease_ms FROM workflow.leases WHERE execution_id = \(id)").single().decode("lease_ms", as: Int64.self) == 5000)
            // A stale epoch still may not.
            await #expect { _ = try await store.renew(executionID: id, epoch: LeaseEpoch(lease.epoch.value + 1), leaseDuration: .seconds(5), on: conn) }
                throws: { ($0 as? RegentError)?.code == .staleLease }
        }
    }

    @Test func listingAcrossNamespacesPagesWithoutSkipOrRepeat() async throws {
        try await withBootedDatabase { _, conn in
            let reg = WorkerRegistry()
            var expected: [String] = []
            for n in ["a", "b", "c"] {
                for i in 0..<7 {
                    _ = try await reg.register(namespace: try Namespace(n), workerInstanceID: try WorkerInstanceID("w\(i)"), workerID: try WorkerID("x\(i)"), lanes: [lane], capabilities: [], livenessTTL: .seconds(60), on: conn)
                    expected.append("\(n)/w\(i)")
                }
            }
            var seen: [String] = []
            var cursor: WorkerCursor?
            while true {
                let page = try await reg.list(namespace: nil, after: cursor, limit: 4, on: conn)
                if page.isEmpty { break }
                seen += page.map { "\($0.namespace)/\($0.workerInstanceID)" }
                cursor = WorkerCursor(namespace: page.last!.namespace, workerInstanceID: page.last!.workerInstanceID)
            }
            #expect(seen == expected.sorted())
            await expectCode(.invalidInput) { _ = try await reg.list(namespace: nil, after: WorkerCursor(namespace: "bad ns", workerInstanceID: "x"), limit: 4, on: conn) }
            await expectCode(.invalidInput) { _ = try await reg.list(namespace: nil, after: nil, limit: 0, on: conn) }
        }
    }

    @Test func badInputIsRefusedAndChangesNothing() async throws {
        try await withBootedDatabase { _, conn in
            for bad in ["", "has space", "semi;colon", String(repeating: "n", count: 129), "tab\t"] {
                expectCode(.invalidInput) { try Namespace(bad) }
            }
            expectCode(.invalidInput) { try DeathReason(String(repeating: "r", count: 257)) }
            expectCode(.invalidInput) { try DeathReason("line\nbreak") }
            #expect((try? DeathReason(String(repeating: "é", count: 128))) != nil)  // 256 bytes
            let reg = WorkerRegistry()
            await expectCode(.invalidInput) {
                _ = try await reg.register(namespace: ns, workerInstanceID: w1, workerID: try WorkerID("a"), lanes: [], capabilities: [], livenessTTL: .seconds(1), on: conn)
            }
            await expectCode(.invalidInput) {
                _ = try await reg.register(namespace: ns, workerInstanceID: w1, workerID: try WorkerID("a"), lanes: [lane], capabilities: [], livenessTTL: .milliseconds(1), on: conn)
            }
            let store = LeaseStore()
            await expectCode(.invalidInput) { _ = try await store.enqueue(namespace: ns, lane: lane, payload: "[1]", maxAttempts: 1, on: conn) }
            await expectCode(.invalidInput) { _ = try await store.enqueue(namespace: ns, lane: lane, payload: "{}", maxAttempts: 0, on: conn) }
            let counts = try await conn.query("SELECT (SELECT count(*) FROM workflow.workers) + (SELECT count(*) FROM workflow.executions) + (SELECT count(*) FROM workflow.worker_events) AS n").single()
            #expect(try counts.decode("n", as: Int.self) == 0)
        }
    }

    @Test func claimRenewCompleteAndEveryStaleOutcome() async throws {
        try await withBootedDatabase { _, conn in
            let reg = WorkerRegistry(), store = LeaseStore()
            // Not registered: refused.
            await expectCode(.notRegistered) {
                _ = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w1, capabilities: [], leaseDuration: .seconds(5), limit: 1, on: conn)
            }
            _ = try await reg.register(namespace: ns, workerInstanceID: w1, workerID: try WorkerID("a"), lanes: [lane], capabilities: [], livenessTTL: .seconds(30), on: conn)
            let plain = try await store.enqueue(namespace: ns, lane: lane, payload: #"{"job": 1}"#, maxAttempts: 3, on: conn)
            let needsGPU = try await store.enqueue(namespace: ns, lane: lane, payload: "{}", maxAttempts: 3, requiredCapabilities: [try Capability("gpu")], on: conn)
            let leases = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w1, capabilities: [], leaseDuration: .seconds(5), limit: 10, on: conn)
            #expect(leases.map(\.executionID) == [plain])  // the GPU job needs a capability this worker lacks
            let lease = try #require(leases.first)
            #expect(lease.epoch == LeaseEpoch(1))
            #expect(lease.attemptIndex == 1)
            #expect(lease.payload == #"{"job": 1}"#)
            let renewed = try await store.renew(executionID: plain, epoch: lease.epoch, leaseDuration: .seconds(60), on: conn)
            #expect(renewed > lease.expiresAt)
            await expectCode(.staleLease) { _ = try await store.renew(executionID: plain, epoch: LeaseEpoch(7), leaseDuration: .seconds(5), on: conn) }
            await expectCode(.staleLease) { try await store.complete(executionID: plain, epoch: LeaseEpoch(0), on: conn) }
            try await store.complete(executionID: plain, epoch: lease.epoch, result: #"{"ok": true}"#, on: conn)
            // Completing twice: the same completion is told it counted (and changes nothing); another
            // worker instance's is refused.
            #expect(try await store.complete(executionID: plain, epoch: lease.epoch, result: #"{"ok": false}"#, on: conn) == .alreadyCompleted)
            await expectCode(.staleLease) {
                try await store.complete(executionID: plain, epoch: lease.epoch, worker: try WorkerInstanceID("w-other"), on: conn)
            }
            let state = try await conn.query("SELECT state, result::text AS r FROM workflow.executions WHERE execution_id = \(plain)").single()
            #expect(try state.decode("state", as: String.self) == "completed")
            #expect(try state.decode("r", as: String.self) == #"{"ok": true}"#)
            _ = needsGPU
        }
    }

    @Test func failRetriesThenDeadLetters() async throws {
        try await withBootedDatabase { _, conn in
            let reg = WorkerRegistry(), store = LeaseStore()
            _ = try await reg.register(namespace: ns, workerInstanceID: w1, workerID: try WorkerID("a"), lanes: [lane], capabilities: [], livenessTTL: .seconds(30), on: conn)
            // A retry policy of 1 ms: the requeued execution is claimable again almost at once.
            let id = try await store.enqueue(
                namespace: ns, [EnqueueRequest(lane: lane, maxAttempts: 2, retry: try RetryPolicy(base: .milliseconds(1), maximum: .milliseconds(1)))],
                on: conn)[0].executionID
            let first = try #require(try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w1, capabilities: [], leaseDuration: .seconds(5), limit: 1, on: conn).first)
            #expect(try await store.fail(executionID: id, epoch: first.epoch, error: "boom", retryable: true, on: conn) == .requeued)
            var second: Lease?
            #expect(await eventually {
                second = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w1, capabilities: [], leaseDuration: .seconds(5), limit: 1, on: conn).first
                return second != nil
            })
            let secondLease = try #require(second)
            #expect(secondLease.attemptIndex == 2)
            #expect(secondLease.epoch.value == first.epoch.value + 1)
            #expect(try await store.fail(executionID: id, epoch: secondLease.epoch, error: "boom", retryable: true, on: conn) == .deadLettered)
            let other = try await store.enqueue(namespace: ns, lane: lane, payload: "{}", maxAttempts: 5, on: conn)
            let l = try #require(try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w1, capabilities: [], leaseDuration: .seconds(5), limit: 1, on: conn).first)
            #expect(l.executionID == other)
            #expect(try await store.fail(executionID: other, epoch: l.epoch, error: "bad input", retryable: false, on: conn) == .failed)
            await expectCode(.staleLease) { _ = try await store.fail(executionID: other, epoch: l.epoch, error: "x", retryable: true, on: conn) }
        }
    }

    @Test func twoWorkersRacingNeverGetTheSameExecution() async throws {
        try await withBootedDatabase { config, conn in
            let reg = WorkerRegistry(), store = LeaseStore()
            var ids: [UUID] = []
            for _ in 0..<200 { ids.append(try await store.enqueue(namespace: ns, lane: lane, payload: "{}", maxAttempts: 1, on: conn)) }
            let claimed = try await withThrowingTaskGroup(of: [UUID].self) { group in
                for w in 0..<4 {
                    group.addTask {
                        let c = try await PostgresConnection.connect(config)
                        let me = try WorkerInstanceID("racer-\(w)")
                        _ = try await reg.register(namespace: ns, workerInstanceID: me, workerID: try WorkerID("r\(w)"), lanes: [lane], capabilities: [], livenessTTL: .seconds(30), on: c)
                        var mine: [UUID] = []
                        while true {
                            let got = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: me, capabilities: [], leaseDuration: .seconds(30), limit: 3, on: c)
                            if got.isEmpty { break }
                            mine += got.map(\.executionID)
                        }
                        await c.close()
                        return mine
                    }
                }
                return try await group.reduce(into: [UUID]()) { $0 += $1 }
            }
            #expect(claimed.count == 200)
            #expect(Set(claimed) == Set(ids))
        }
    }

    @Test func scannerReclaimsOnlyExpiredLeasesOnlyOnTheLeaderAndStaleWorkerCannotComplete() async throws {
        try await withBootedDatabase { config, conn in
            let reg = WorkerRegistry(), store = LeaseStore()
            _ = try await reg.register(namespace: ns, workerInstanceID: w1, workerID: try WorkerID("a"), lanes: [lane], capabilities: [], livenessTTL: .seconds(60), on: conn)
            let short = try await store.enqueue(namespace: ns, lane: lane, payload: #"{"k":"short"}"#, maxAttempts: 1, on: conn)
            let shortLease = try #require(try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w1, capabilities: [], leaseDuration: .milliseconds(200), limit: 1, on: conn).first)
            let retry = try await store.enqueue(namespace: ns, lane: lane, payload: #"{"k":"retry"}"#, maxAttempts: 3, on: conn)
            let retryLease = try #require(try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w1, capabilities: [], leaseDuration: .milliseconds(200), limit: 1, on: conn).first)
            let long = try await store.enqueue(namespace: ns, lane: lane, payload: #"{"k":"long"}"#, maxAttempts: 3, on: conn)
            let longLease = try #require(try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w1, capabilities: [], leaseDuration: .seconds(60), limit: 1, on: conn).first)
            #expect([shortLease.executionID, retryLease.executionID, longLease.executionID] == [short, retry, long])

            let pool = ConnectionPool(configuration: config)
            let scanner = LeaseExpiryScanner(pool: pool, pageSize: 1)
            // A node that is not the leader cannot reclaim anything.
            await #expect {
                _ = try await scanner.reclaimOnce(fence: LeaderFence(term: 99, instanceID: InstanceID(), lockBackendPID: 0))
            } throws: { ($0 as? RegentError)?.code == .notLeader }
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.lease_decisions").single().decode("n", as: Int.self) == 0)
            // A leader; its node's own scanner runs too (both are fenced and skip-locked): wait until
            // the two short leases expired and were reclaimed, by whichever.
            let (fence, cluster) = try await leaderFence(config)
            #expect(await eventually {
                try await conn.query("SELECT count(*) AS n FROM workflow.lease_decisions").single().decode("n", as: Int.self) == 2
            })
            // Page through the expired ones with the operator listing: stable cursor, no repeats.
            var page: [ExpiredLease] = []
            var cursor: ExpiredLeaseCursor?
            let asOf = Date()
            repeat {
                let got = try await store.listExpiredLeases(asOf: asOf, namespace: ns, after: cursor, limit: 1, on: conn)
                page += got
                cursor = got.last.map { ExpiredLeaseCursor(expiresAt: $0.expiresAt, executionID: $0.executionID) }
                if got.isEmpty { break }
            } while true
            #expect(page.allSatisfy { $0.executionID != long })
            // Reclaim (the node's own scanner may have done it already; either way the result must hold).
            for _ in 0..<3 { _ = try await asLeader(fence, of: cluster) { try await scanner.reclaimOnce(fence: $0) } }
            let states = try await conn.query("SELECT execution_id, state, lease_epoch FROM workflow.executions").reduce(into: [UUID: (String, Int64)]()) {
                $0[try $1.decode("execution_id", as: UUID.self)] = (try $1.decode("state", as: String.self), try $1.decode("lease_epoch", as: Int64.self))
            }
            #expect(states[short]?.0 == "dead_lettered")
            #expect(states[retry]?.0 == "queued")
            #expect(states[long]?.0 == "running")
            #expect(states[long]?.1 == longLease.epoch.value)
            // The reclaimed worker's epoch is stale: it can change nothing.
            await expectCode(.staleLease) { try await store.complete(executionID: retry, epoch: retryLease.epoch, on: conn) }
            await expectCode(.staleLease) { _ = try await store.renew(executionID: short, epoch: shortLease.epoch, leaseDuration: .seconds(5), on: conn) }
            let decisions = try await conn.query("SELECT decision, term FROM workflow.lease_decisions ORDER BY decision").map {
                (try $0.decode("decision", as: String.self), try $0.decode("term", as: Int64.self))
            }
            #expect(decisions.map(\.0) == ["dead_lettered", "requeued"])
            // Each under this leader's term, or a later one of the same node (a loaded machine can
            // make it step down and be elected again before its scanner gets to them).
            #expect(decisions.allSatisfy { $0.1 >= fence.term.value }, "\(decisions)")
            await pool.shutdown()
            await cluster.stopAll()
        }
    }

    @Test func expiredLeaseCursorNeverSkipsOrRepeatsWithEqualExpiryTimes() async throws {
        try await withBootedDatabase { _, conn in
            let reg = WorkerRegistry(), store = LeaseStore()
            _ = try await reg.register(namespace: ns, workerInstanceID: w1, workerID: try WorkerID("a"), lanes: [lane], capabilities: [], livenessTTL: .seconds(60), on: conn)
            for _ in 0..<10 { _ = try await store.enqueue(namespace: ns, lane: lane, payload: "{}", maxAttempts: 1, on: conn) }
            // One claim: all ten leases share one lease_expires_at.
            let leases = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w1, capabilities: [], leaseDuration: .milliseconds(100), limit: 10, on: conn)
            #expect(Set(leases.map(\.expiresAt)).count == 1)
            try await Task.sleep(for: .milliseconds(200))
            var seen: [UUID] = []
            var cursor: ExpiredLeaseCursor?
            while true {
                let got = try await store.listExpiredLeases(after: cursor, limit: 3, on: conn)
                if got.isEmpty { break }
                seen += got.map(\.executionID)
                cursor = ExpiredLeaseCursor(expiresAt: got.last!.expiresAt, executionID: got.last!.executionID)
            }
            #expect(seen.count == 10)
            #expect(Set(seen) == Set(leases.map(\.executionID)))
        }
    }

    @Test func ttlSweepRemovesLapsedWorkersOnlyOnTheLeader() async throws {
        try await withBootedDatabase { config, conn in
            let reg = WorkerRegistry()
            _ = try await reg.register(namespace: ns, workerInstanceID: w1, workerID: try WorkerID("a"), lanes: [lane], capabilities: [], livenessTTL: .milliseconds(100), on: conn)
            _ = try await reg.register(namespace: ns, workerInstanceID: try WorkerInstanceID("w-2"), workerID: try WorkerID("b"), lanes: [lane], capabilities: [], livenessTTL: .seconds(60), on: conn)
            try await Task.sleep(for: .milliseconds(200))
            let pool = ConnectionPool(configuration: config)
            let sweep = WorkerTTLSweep(pool: pool)
            await expectCode(.notLeader) { _ = try await sweep.sweepOnce(fence: LeaderFence(term: 5, instanceID: InstanceID(), lockBackendPID: 0)) }
            #expect(try await reg.list(namespace: ns, after: nil, limit: 10, on: conn).count == 2)
            let (fence, cluster) = try await leaderFence(config)
            _ = try await asLeader(fence, of: cluster) { try await sweep.sweepOnce(fence: $0) }
            #expect(await eventually { try await reg.list(namespace: ns, after: nil, limit: 10, on: conn).map(\.workerInstanceID) == ["w-2"] })
            let swept = try await conn.query("SELECT count(*) AS n FROM workflow.worker_events WHERE kind = 'ttl_swept'").single().decode("n", as: Int.self)
            #expect(swept == 1)
            let events = try await conn.query("SELECT count(*) AS n FROM engine.events WHERE topic = 'workers.swept'").single().decode("n", as: Int.self)
            #expect(events == 1)
            await pool.shutdown()
            await cluster.stopAll()
        }
    }
}
