import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Synchronization
import Testing

@Suite("Database outages", .serialized)
struct OutageTests {
    /// Connects, retrying while the server is down.
    func reconnect(_ config: ConnectionConfiguration) async throws -> PostgresConnection {
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            do { return try await PostgresConnection.connect(config) } catch {
                if ContinuousClock.now > deadline { throw error }
                try await Task.sleep(for: .milliseconds(25))
            }
        }
    }

    @Test func anOutageLongerThanTTLAndLeaseSweepsNoWorkerThatHeartbeatsAfterRecovery() async throws {
        let pg = try await EmbeddedPostgresForTest.start()
        defer { pg.destroy() }
        let db = try await pg.createDatabase("outage_test")
        var cluster = Cluster(config: db)
        _ = cluster.start("o1")
        #expect(await eventually { await cluster.leaders().count == 1 })
        var conn = try await PostgresConnection.connect(db)
        #expect(await eventually { try await conn.query(WorkflowSchema.present).single().decode("present", as: Bool.self) })
        let ns = try Namespace("ops"), lane = try Lane("work")
        let alive = try WorkerInstanceID("alive"), silent = try WorkerInstanceID("silent")
        let reg = WorkerRegistry(), store = LeaseStore()
        let ttl = Duration.seconds(1)
        for w in [alive, silent] {
            _ = try await reg.register(namespace: ns, workerInstanceID: w, workerID: try WorkerID(w.value), lanes: [lane], capabilities: [], livenessTTL: ttl, on: conn)
        }
        let id = try await store.enqueue(namespace: ns, lane: lane, payload: "{}", maxAttempts: 3, on: conn)
        let lease = try #require(try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: alive, capabilities: [], leaseDuration: ttl, limit: 1, on: conn).first)
        await conn.close()

        // The database is gone for three times the TTL and the lease.
        try await offThePool { pg.stop() }
        try await Task.sleep(for: .seconds(3))
        try await offThePool { try pg.startAgain() }

        // The live worker comes back as soon as it can: heartbeat and renew, both accepted.
        conn = try await reconnect(db)
        let back = try await conn.query("SELECT now() AS t").single().decode("t", as: Date.self)
        #expect(try await reg.heartbeat(namespace: ns, workerInstanceID: alive, on: conn) != .notRegistered)
        _ = try await store.renew(executionID: id, epoch: lease.epoch, leaseDuration: ttl, on: conn)
        // It keeps heartbeating and renewing (every quarter TTL) while the leader comes back and sweeps.
        let refused = Atomic<Int>(0)
        let worker = Task {
            while !Task.isCancelled {
                if (try? await reg.heartbeat(namespace: ns, workerInstanceID: alive, on: conn)) == .notRegistered { refused.add(1, ordering: .relaxed) }
                do { _ = try await store.renew(executionID: id, epoch: lease.epoch, leaseDuration: ttl, on: conn) } catch {
                    if (error as? RegentError)?.code == .staleLease { refused.add(1, ordering: .relaxed) }
                }
                try? await Task.sleep(for: .milliseconds(250))
            }
        }
        // The silent worker is swept, one TTL of reachable database after the recovery at the earliest.
        let sweptQuery: PostgresQuery =
            "SELECT extract(epoch FROM at - \(back)::timestamptz)::float8 AS after FROM workflow.worker_events WHERE kind = 'ttl_swept' AND worker_instance_id = 'silent'"
        #expect(await eventually(timeout: .seconds(20)) { try await !conn.query(sweptQuery).isEmpty })
        try await Task.sleep(for: ttl)  // one more TTL for anything wrong to show
        worker.cancel()
        await worker.value
        #expect(await eventually { await cluster.leaders().count == 1 })
        #expect(refused.load(ordering: .relaxed) == 0)
        let sweptAlive = try await conn.query(
            "SELECT count(*) AS n FROM workflow.worker_events WHERE kind = 'ttl_swept' AND worker_instance_id = 'alive'").single().decode("n", as: Int.self)
        #expect(sweptAlive == 0)
        #expect(try await conn.query("SELECT count(*) AS n FROM workflow.lease_decisions").single().decode("n", as: Int.self) == 0)
        let after = try await conn.query(sweptQuery).first?.decode("after", as: Double.self) ?? -1
        #expect(after >= 0.8, "swept \(after) s after the database came back")
        await conn.close()
        await cluster.stopAll()
        try await offThePool { pg.destroy() }
    }
}
