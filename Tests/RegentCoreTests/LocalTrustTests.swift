import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Synchronization
import Testing

@Suite("The local lease window", .serialized)
struct LocalTrustTests {
    @Test func aFenceWhoseWindowClosedSendsNothingEvenWhileTheLockIsHeld() async throws {
        let (config, conn) = try await bootedDatabase()
        // A leader by hand: a session holding the lock and recorded with its term (no node runs).
        let leader = try await FrozenLeader.start(config)
        let pool = ConnectionPool(configuration: config)
        try await conn.query(
            """
            INSERT INTO engine.instances (instance_id, node_name, host, pid, version, last_heartbeat)
            VALUES (gen_random_uuid(), 'ghost', 'h', 1, 'v', now() - interval '1 hour')
            """)
        let membership = Membership(identity: NodeIdentity(nodeName: "sweeper"), pool: pool, heartbeatInterval: .seconds(1))
        try await membership.join()
        try await Task.sleep(for: .milliseconds(1100))  // healthy for the stale window
        let cleanup = StaleInstanceCleanup(pool: pool, membership: membership, staleAfter: .seconds(1))
        let audited = try await conn.query("SELECT count(*) AS n FROM engine.audit").single().decode("n", as: Int.self)
        func fence(validFor: Duration) -> LeaderFence {
            LeaderFence(
                term: leader.term, instanceID: leader.instanceID, lockBackendPID: leader.connection.backendPID,
                trust: LeadershipTrust(leaseWindow: .seconds(1), validUntil: .now + validFor))
        }
        // The term is current and its session holds the lock, as for a leader that just thawed,
        // but its last confirmation is older than the window: refused before anything is sent.
        await #expect { _ = try await cleanup.sweepOnce(fence: fence(validFor: .milliseconds(-1))) }
            throws: { ($0 as? RegentError)?.code == .notLeader && "\($0)".contains("lease window") }
        #expect(try await conn.query("SELECT count(*) AS n FROM engine.instances WHERE node_name = 'ghost'").single().decode("n", as: Int.self) == 1)
        #expect(try await conn.query("SELECT count(*) AS n FROM engine.audit").single().decode("n", as: Int.self) == audited)
        // The same fence inside its window writes.
        #expect(try await cleanup.sweepOnce(fence: fence(validFor: .seconds(5))).contains("ghost"))
        await pool.shutdown()
        await leader.connection.close()
        await conn.close()
    }

    @Test func aFencedTransactionLeftIdleLongerThanTheWindowIsEndedByTheServer() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let (fence, cluster) = try await leaderFence(config)
        let pool = ConnectionPool(configuration: config)
        // A leader frozen inside a fenced transaction would hold the leadership row against its
        // successor; the fence bounds the transaction's idle time by the lease window (1 s here).
        let lived = LeaderFence(
            term: fence.term, instanceID: fence.instanceID, lockBackendPID: fence.lockBackendPID,
            trust: LeadershipTrust(leaseWindow: .seconds(1), validUntil: .now + .seconds(60)))
        let started = ContinuousClock.now
        await #expect(throws: (any Error).self) {
            try await lived.withTransaction(pool) { tx in
                try await Task.sleep(for: .milliseconds(1600))
                try await tx.query("SELECT 1 AS one")
            }
        }
        #expect(ContinuousClock.now - started < .seconds(5))
        await pool.shutdown()
        await cluster.stopAll()
    }
}
