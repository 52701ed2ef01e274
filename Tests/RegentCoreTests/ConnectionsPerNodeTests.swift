import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Synchronization
import Testing

@Suite("Connections per node", .serialized)
struct ConnectionsPerNodeTests {
    @Test func anIdleFollowerHoldsAtMostFourBackends() async throws {
        let (config, conn) = try await bootedDatabase()
        // A leader by hand, kept heartbeating, so the node below stays a follower. Its heartbeat
        // is dated an hour ahead: on a loaded machine this loop can stall past the stale window,
        // and the follower would then rightly end the "frozen" leader's session and take over.
        let leader = try await FrozenLeader.start(config)
        let beat = Task {
            let c = try await PostgresConnection.connect(config)
            while !Task.isCancelled {
                try await c.query("UPDATE engine.instances SET last_heartbeat = now() + interval '1 hour' WHERE instance_id = \(leader.instanceID)")
                try await Task.sleep(for: .milliseconds(200))
            }
            await c.close()
            return c.backendPID
        }
        var cluster = Cluster(config: config)
        let follower = cluster.start("follower")
        #expect(await eventually { try await conn.query("SELECT count(*) AS n FROM engine.instances").single().decode("n", as: Int.self) == 2 })
        let mine = [conn.backendPID, leader.connection.backendPID]
        // The follower's: its lock session, its listener, about one pooled connection (the
        // pool's idle timeout is 1 s in tests); plus the test's heartbeat connection.
        func followerBackends() async throws -> Int {
            let rows = try await conn.query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'regent' AND backend_type = 'client backend'")
            return try rows.map { try $0.decode("pid", as: Int32.self) }.filter { !mine.contains($0) }.count - 1
        }
        // The steady state after the idle timeout and some heartbeats (which open pooled
        // connections) have passed: on a loaded machine a heartbeat can overlap another pooled
        // statement and the reaper can run late, so the count must come down to the bound (a
        // leak never does), not be at it at one instant.
        try await Task.sleep(for: .seconds(3))
        #expect(await !follower.isLeader)
        var count = 0
        #expect(await eventually {
            count = try await followerBackends()
            return count <= 4
        }, "\(count) backends for an idle follower")
        beat.cancel()
        _ = try? await beat.value
        await cluster.stopAll()
        await leader.connection.close()
        await conn.close()
    }
}
