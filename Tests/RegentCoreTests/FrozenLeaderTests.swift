import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Synchronization
import Testing

/// A leader that froze: a session that holds the leadership lock and is recorded as the
/// leader of a new term, for an instance whose heartbeat stopped `heartbeatAge` ago.
struct FrozenLeader {
    let connection: PostgresConnection
    let instanceID: InstanceID
    let term: Term

    static func start(_ config: ConnectionConfiguration, heartbeatAge: Duration = .zero) async throws -> FrozenLeader {
        let conn = try await PostgresConnection.connect(config)
        let id = InstanceID()
        try await conn.query(LeadershipQueries.waitForLock)
        try await conn.query(
            """
            INSERT INTO engine.instances (instance_id, node_name, host, pid, version, last_heartbeat)
            VALUES (\(id), 'frozen', 'h', 1, 'v', now() - \(heartbeatAge)::interval)
            """)
        let term = try await conn.query(
            """
            UPDATE engine.leadership SET term = term + 1, leader_instance = \(id)::uuid, leader_backend_pid = pg_backend_pid(),
                   elected_at = now() - \(heartbeatAge)::interval
            WHERE id = 1 RETURNING term
            """).single().decode("term", as: Term.self)
        return FrozenLeader(connection: conn, instanceID: id, term: term)
    }

    /// True while its session lives (a terminated one answers with an error).
    var alive: Bool { get async { (try? await connection.query("SELECT 1 AS one")) != nil } }
}

/// Roles for the privilege tests: cluster-wide, created once, granted what a node needs.
func ensureRoles(on conn: PostgresConnection) async throws {
    for (role, extra) in [("regent_plain", ""), ("regent_frozen", ""), ("regent_signaller", "GRANT pg_signal_backend TO regent_signaller;")] {
        try await conn.query(PostgresQuery(unsafeSQL: """
            DO $$ BEGIN CREATE ROLE \(role) LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
            """))
        if !extra.isEmpty { try await conn.query(PostgresQuery(unsafeSQL: extra)) }
        for grant in [
            "GRANT USAGE ON SCHEMA engine TO \(role)", "GRANT ALL ON ALL TABLES IN SCHEMA engine TO \(role)",
            "GRANT ALL ON ALL SEQUENCES IN SCHEMA engine TO \(role)", "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA engine TO \(role)",
        ] { try await conn.query(PostgresQuery(unsafeSQL: grant)) }
    }
}

@Suite("Frozen leaders", .serialized)
struct FrozenLeaderTests {
    func watch(_ config: ConnectionConfiguration, healthy: Bool = true, staleAfter: Duration = .seconds(1)) -> (HungLeaderWatch, ConnectionPool) {
        let pool = ConnectionPool(configuration: config)
        return (HungLeaderWatch(instanceID: InstanceID(), pool: pool, staleAfter: staleAfter, isHealthy: { _ in healthy }, isLeader: { false }), pool)
    }

    @Test func aFollowerEndsTheSessionOfALeaderWhoseHeartbeatIsStaleAndAuditsIt() async throws {
        let (config, conn) = try await bootedDatabase()
        let frozen = try await FrozenLeader.start(config, heartbeatAge: .seconds(5))
        let (w, pool) = watch(config)
        let found = try #require(try await w.checkOnce())
        #expect(found.term == frozen.term && found.leaderInstance == frozen.instanceID && found.backendPID == frozen.connection.backendPID)
        #expect(found.permitted && found.terminated == true)
        #expect(found.heartbeatAgeMs >= 5000)
        #expect(await eventually(timeout: .seconds(5)) { await !frozen.alive })
        let audit = try await conn.query(
            "SELECT term, instance_id, (detail->>'heartbeat_age_ms')::bigint AS age, detail->>'by_instance' AS by FROM engine.audit WHERE action = 'leader.terminated'")
        #expect(audit.count == 1)
        #expect(try audit.first?.decode("term", as: Term.self) == frozen.term)
        #expect(try audit.first?.decode("instance_id", as: InstanceID.self) == frozen.instanceID)
        #expect(try (audit.first?.decode("age", as: Int64.self) ?? 0) >= 5000)
        // Once ended, nobody holds the lock: a second look finds nothing to do.
        #expect(try await w.checkOnce() == nil)
        await pool.shutdown()
        await conn.close()
    }

    @Test func aLeaderThatStillHeartbeatsIsLeftAloneAndAnUnhealthyFollowerDoesNotJudge() async throws {
        let (config, conn) = try await bootedDatabase()
        let frozen = try await FrozenLeader.start(config, heartbeatAge: .milliseconds(100))
        let (w, pool) = watch(config)
        #expect(try await w.checkOnce() == nil)
        #expect(await frozen.alive)
        // Stale now, but this follower has not itself been healthy for the stale window.
        try await conn.query("UPDATE engine.instances SET last_heartbeat = now() - interval '1 minute' WHERE instance_id = \(frozen.instanceID)")
        let (blind, pool2) = watch(config, healthy: false)
        #expect(try await blind.checkOnce() == nil)
        #expect(await frozen.alive)
        #expect(try await conn.query("SELECT count(*) AS n FROM engine.audit WHERE action = 'leader.terminated'").single().decode("n", as: Int.self) == 0)
        await pool.shutdown()
        await pool2.shutdown()
        await frozen.connection.close()
        await conn.close()
    }

    @Test func exactlyOneOfManyFollowersActs() async throws {
        let (config, conn) = try await bootedDatabase()
        let frozen = try await FrozenLeader.start(config, heartbeatAge: .seconds(5))
        let watches = (0..<4).map { _ in watch(config) }
        let results = try await withThrowingTaskGroup(of: HungLeaderWatch.Check?.self) { group in
            for (w, _) in watches { group.addTask { try await w.checkOnce() } }
            var out: [HungLeaderWatch.Check?] = []
            for try await r in group { out.append(r) }
            return out
        }
        #expect(results.filter { $0?.terminated == true }.count == 1, "\(results)")
        #expect(try await conn.query("SELECT count(*) AS n FROM engine.audit WHERE action = 'leader.terminated'").single().decode("n", as: Int.self) == 1)
        #expect(await eventually(timeout: .seconds(5)) { await !frozen.alive })
        for (_, p) in watches { await p.shutdown() }
        await conn.close()
    }

    @Test func withoutPgSignalBackendAnotherRolesLeaderIsNotEndedAndTheNodeSaysSo() async throws {
        let (config, conn) = try await bootedDatabase()
        try await ensureRoles(on: conn)
        // The frozen leader runs as the superuser; the follower as a plain role.
        let frozen = try await FrozenLeader.start(config, heartbeatAge: .seconds(5))
        let plain = try config.withUser("regent_plain")
        let (w, pool) = watch(plain)
        let found = try #require(try await w.checkOnce())
        #expect(!found.permitted && found.terminated == nil)
        #expect(await frozen.alive)
        // Membership records (and status shows) that this role cannot end others' sessions.
        let membership = Membership(identity: NodeIdentity(nodeName: "plain"), pool: pool, heartbeatInterval: .seconds(1))
        try await membership.join()
        #expect(try await membership.canSignalBackends() == false)
        let status = try await ClusterStatus.read(on: conn)
        #expect(status.instances.first { $0.nodeName == "plain" }?.canSignalBackends == false)
        await pool.shutdown()
        await frozen.connection.close()
        await conn.close()
    }

    @Test func withPgSignalBackendOrTheSameRoleTheFrozenLeaderIsEnded() async throws {
        let (config, conn) = try await bootedDatabase()
        try await ensureRoles(on: conn)
        let frozen = try await FrozenLeader.start(try config.withUser("regent_frozen"), heartbeatAge: .seconds(5))
        let (w, pool) = watch(try config.withUser("regent_signaller"))
        let found = try #require(try await w.checkOnce())
        #expect(found.permitted && found.terminated == true)
        #expect(await eventually(timeout: .seconds(5)) { await !frozen.alive })
        let membership = Membership(identity: NodeIdentity(nodeName: "signaller"), pool: pool, heartbeatInterval: .seconds(1))
        try await membership.join()
        #expect(try await membership.canSignalBackends())
        // A plain role may end sessions of its own role without any grant.
        let same = try await FrozenLeader.start(try config.withUser("regent_plain"), heartbeatAge: .seconds(5))
        let (w2, pool2) = watch(try config.withUser("regent_plain"))
        #expect(try await w2.checkOnce()?.terminated == true)
        #expect(await eventually(timeout: .seconds(5)) { await !same.alive })
        await pool.shutdown()
        await pool2.shutdown()
        await conn.close()
    }

    @Test func nodesReplaceAFrozenLeaderWithinStaleAfterPlusTwoSeconds() async throws {
        let (config, conn) = try await bootedDatabase()
        var cluster = Cluster(config: config)
        // The frozen leader heartbeated just now; the followers join after it.
        let frozen = try await FrozenLeader.start(config)
        let started = ContinuousClock.now
        for i in 1...2 { _ = cluster.start("f\(i)") }
        // fastNode: stale-after 1 s. A follower judges only after 1 s of its own heartbeats.
        #expect(await eventually(timeout: .seconds(8)) { await cluster.leaders().count == 1 })
        let took = ContinuousClock.now - started
        #expect(took < .seconds(1) + .seconds(1) + .seconds(2), "took \(took)")
        let status = try await cluster.status()
        #expect(status.term == frozen.term + 1)
        #expect(await eventually(timeout: .seconds(5)) { await !frozen.alive })
        // The audit row commits right after the session is ended (the election may come first).
        #expect(await eventually(timeout: .seconds(5)) {
            try await conn.query("SELECT count(*) AS n FROM engine.audit WHERE action = 'leader.terminated' AND term = \(frozen.term)")
                .single().decode("n", as: Int.self) == 1
        })
        await cluster.stopAll()
        await conn.close()
    }
}
