import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Synchronization
import Testing

@Suite("Server timelines", .serialized)
struct TimelineTests {
    @Test func aNodeRefusesToLeadOnATimelineBehindTheHighestRecordedAndRecordsItsOwn() async throws {
        let (config, conn) = try await bootedDatabase()
        let row = try await conn.query(
            "SELECT s.system_identifier::text AS id, c.timeline_id AS tl FROM pg_control_system() s, pg_control_checkpoint() c").single()
        let systemID = try row.decode("id", as: String.self)
        let timeline = try row.decode("tl", as: Int.self)
        // The cluster once elected a leader on a later timeline of this server: this server is an
        // old primary that came back writable.
        try await conn.query(
            "INSERT INTO engine.server_timelines (system_identifier, timeline, first_term) VALUES (\(systemID), \(timeline + 1), 1)")
        var cluster = Cluster(config: config)
        let node = cluster.start("old-primary")
        #expect(await eventually { await (node.leaderElector?.refusals ?? 0) >= 1 })
        #expect(await !node.isLeader)
        #expect(try await conn.query("SELECT term FROM engine.leadership").single().decode("term", as: Int64.self) == 0)
        // The refusing node closed its lock session; the server releases the lock when that
        // backend has exited, which a loaded machine can take a moment to do.
        #expect(await eventually { try await conn.query(LeadershipQueries.countLockHolders).single().decode("n", as: Int.self) == 0 })
        // Once the operator clears it (after pg_rewind, say), the node leads and records its timeline.
        try await conn.query("DELETE FROM engine.server_timelines WHERE timeline > \(timeline)")
        ServerTimelines.forgetForTests()
        #expect(await eventually { await node.isLeader })
        let recorded = try await conn.query(
            "SELECT timeline, first_term FROM engine.server_timelines WHERE system_identifier = \(systemID)")
        #expect(try recorded.map { try $0.decode("timeline", as: Int.self) } == [timeline])
        await cluster.stopAll()
        await conn.close()
    }
}

@Suite("A promoted standby and an old primary", .serialized)
struct PromotionTests {
    @Test func aNodeRefusesAnOldPrimaryThatCameBackWritableWhileTheURLListsTheNewOne() async throws {
        let a = try await EmbeddedPostgresForTest.start()
        defer { a.destroy() }
        let dbA = try await a.createDatabase("ha")
        let boot = try await Boot(options: .init(database: dbA, actor: "test")).run()
        await boot.pool.shutdown()
        let b = try await offThePool { try a.startStandby() }
        defer { b.destroy() }
        func url(_ first: EmbeddedPostgres, _ second: EmbeddedPostgres) throws -> ConnectionConfiguration {
            try ConnectionConfiguration(
                "host=127.0.0.1,127.0.0.1 port=\(first.port),\(second.port) dbname=ha user=postgres sslmode=disable target_session_attrs=read-write")
        }
        // Before the failover: a leader on A, its timeline recorded (and replicated to B).
        var before = Cluster(config: try url(a, b))
        let n1 = before.start("n1")
        #expect(await eventually { await n1.isLeader })
        await before.stopAll()
        // Let B replay everything A wrote (the election and its timeline record) before the failover.
        let directA = try await PostgresConnection.connect(try ConnectionConfiguration(a.url(database: "ha")))
        // The insert position: with synchronous_commit off, the write position can lag it.
        let lsn = try await directA.query("SELECT pg_current_wal_insert_lsn()::text AS l").single().decode("l", as: String.self)
        await directA.close()
        let directB = try await PostgresConnection.connect(try ConnectionConfiguration(b.url(database: "ha")))
        #expect(await eventually {
            try await directB.query("SELECT pg_last_wal_replay_lsn() >= \(lsn)::pg_lsn AS caught_up").single().decode("caught_up", as: Bool.self)
        })
        await directB.close()
        // Failover: B is promoted. A is never stopped: it is the old primary, still writable.
        try await offThePool { try b.promote() }
        let onB = try await PostgresConnection.connect(try ConnectionConfiguration(b.url(database: "ha")))
        #expect(await eventually {
            try await onB.query("SELECT NOT pg_is_in_recovery() AS w").single().decode("w", as: Bool.self)
        })
        // A node that starts now with A first in the URL reaches A (writable), asks B, and refuses.
        ServerTimelines.forgetForTests()
        let onA = try await PostgresConnection.connect(try ConnectionConfiguration(a.url(database: "ha")))
        let termOnA = try await onA.query("SELECT term FROM engine.leadership").single().decode("term", as: Int64.self)
        var after = Cluster(config: try url(a, b))
        let restarted = after.start("restarted")
        #expect(await eventually { await (restarted.leaderElector?.refusals ?? 0) >= 1 })
        #expect(await !restarted.isLeader)
        #expect(try await onA.query("SELECT term FROM engine.leadership").single().decode("term", as: Int64.self) == termOnA)
        await after.stopAll()
        // With the new primary first, a node leads there and records the new timeline.
        var good = Cluster(config: try url(b, a))
        let n2 = good.start("n2")
        #expect(await eventually { await n2.isLeader })
        let timelines = try await onB.query("SELECT timeline FROM engine.server_timelines ORDER BY timeline").map { try $0.decode("timeline", as: Int.self) }
        #expect(timelines == [1, 2])
        await good.stopAll()
        await onA.close()
        await onB.close()
        try await offThePool { b.destroy() }
        try await offThePool { a.destroy() }
    }
}
