import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Synchronization
import Testing

/// The name of the database a configuration points at.
func databaseName(_ config: ConnectionConfiguration) async throws -> String {
    let conn = try await PostgresConnection.connect(config)
    let name = try await conn.query("SELECT current_database() AS d").single().decode("d", as: String.self)
    await conn.close()
    return name
}

/// Runs `body` with a private PgBouncer in `mode` in front of the tests' private server, or
/// prints why the test is skipped (no pgbouncer installed, or an external test server).
func withPgBouncer(
    _ mode: EmbeddedPgBouncer.PoolMode, _ test: String = #function, _ body: (_ pooled: ConnectionConfiguration, _ direct: ConnectionConfiguration) async throws -> Void
) async throws {
    guard EmbeddedPgBouncer.binary != nil else {
        print("SKIPPED \(test): pgbouncer is not installed (apt-get install -y pgbouncer; scripts/ensure-deps.sh installs it as root)")
        return
    }
    guard let pg = try await TestDatabase.shared.embedded() else {
        print("SKIPPED \(test): REGENT_TEST_DATABASE_URL is set; the pooler tests need the private server")
        return
    }
    let db = try await TestDatabase.shared.freshDatabase(test)
    let name = try await databaseName(db)
    let bouncer = try await offThePool { try EmbeddedPgBouncer.start(inFrontOf: pg, mode: mode) }
    do {
        try await body(try ConnectionConfiguration(bouncer.url(database: name)), db)
    } catch {
        print("pgbouncer log:\n\(bouncer.log.suffix(2000))")
        bouncer.stop()
        throw error
    }
    bouncer.stop()
}

@Suite("Poolers between nodes and PostgreSQL", .serialized)
struct PoolerTests {
    @Test func aTransactionModePoolerIsRefusedWithOneClearErrorAndNoLockIsOrphaned() async throws {
        try await withPgBouncer(.transaction) { pooled, direct in
            // The lock connection: refused at connect, before any lock is asked for.
            await #expect {
                _ = try await PostgresConnection.connect(pooled, requireSession: true)
            } throws: { ($0 as? PostgresError)?.code == .sessionNotPinned && "\($0)".contains("pool_mode=session") }
            // The listener: refused too.
            await #expect {
                _ = try await PostgresListener.open(pooled, channels: [try SQLIdentifier("regent_events")])
            } throws: { ($0 as? PostgresError)?.code == .sessionNotPinned }
            // A whole node refuses to start, naming the pooler mode.
            let node = RegentNode(configuration: fastNode(pooled, name: "pooled"))
            await #expect {
                try await node.run()
            } throws: { "\($0)".contains("transaction- or statement-mode pooler") }
            // An elector left running through it never leads and leaves no lock behind.
            let elector = LeaderElector(instanceID: UUID(), configuration: pooled, options: .init(leaseWindow: .seconds(1)))
            let running = Task { await elector.run() }
            try await Task.sleep(for: .seconds(1))
            #expect(await elector.electionsWon == 0)
            await elector.stop()
            await running.value
            let conn = try await PostgresConnection.connect(direct)
            #expect(try await conn.query(LeadershipQueries.countLockHolders).single().decode("n", as: Int.self) == 0)
            await conn.close()
        }
    }

    @Test func sessionModePoolingWorksForLeadershipDutiesAndEvents() async throws {
        try await withPgBouncer(.session) { pooled, _ in
            var cluster = Cluster(config: pooled)
            for i in 1...2 { _ = cluster.start("s\(i)") }
            #expect(await eventually { await cluster.leaders().count == 1 })
            let leader = try #require(await cluster.leaders().first)
            // The fence sees the lock session by its real server pid: a fenced duty writes.
            let conn = try await PostgresConnection.connect(pooled)
            try await conn.query(
                """
                INSERT INTO engine.instances (instance_id, node_name, host, pid, version, last_heartbeat)
                VALUES (gen_random_uuid(), 'ghost', 'h', 1, 'v', now() - interval '1 hour')
                """)
            #expect(await eventually(timeout: .seconds(10)) {
                try await conn.query("SELECT count(*) AS n FROM engine.instances WHERE node_name = 'ghost'").single().decode("n", as: Int.self) == 0
            })
            let status = try await cluster.status()
            #expect(status.leader?.instanceID == leader.instanceID)
            let fence = try #require(await leader.currentFence)
            #expect(fence.lockBackendPID == status.leader?.backendPID)
            // Events cross nodes through the pooler.
            let other = try #require(cluster.nodes.first { $0 !== leader })
            let bus = try #require(await other.eventBus)
            await bus.waitUntilListening()
            let sub = try await bus.subscribe(topics: ["pooled.test"])
            let publisherBus = try #require(await leader.eventBus)
            let id = try await publisherBus.publish(topic: "pooled.test", payload: #"{"via":"pgbouncer"}"#)
            var got: Int64?
            for try await event in sub { got = event.id; break }
            #expect(got == id)
            // The lock session ended by its server pid: the other node takes over.
            try await conn.query("SELECT pg_terminate_backend(\(Int(fence.lockBackendPID)))")
            #expect(await eventually(timeout: .seconds(10)) {
                let s = try await cluster.status()
                return s.term > status.term && s.leader != nil
            })
            await conn.close()
            await cluster.stopAll()
        }
    }
}

/// A leader that froze: a session that holds the leadership lock and is recorded as the
/// leader of a new term, for an instance whose heartbeat stopped `heartbeatAge` ago.
struct FrozenLeader {
    let connection: PostgresConnection
    let instanceID: UUID
    let term: Int64

    static func start(_ config: ConnectionConfiguration, heartbeatAge: Duration = .zero) async throws -> FrozenLeader {
        let conn = try await PostgresConnection.connect(config)
        let id = UUID()
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
            """).single().decode("term", as: Int64.self)
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
        return (HungLeaderWatch(instanceID: UUID(), pool: pool, staleAfter: staleAfter, isHealthy: { _ in healthy }, isLeader: { false }), pool)
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
        #expect(try audit.first?.decode("term", as: Int64.self) == frozen.term)
        #expect(try audit.first?.decode("instance_id", as: UUID.self) == frozen.instanceID)
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
        try await Task.sleep(for: .seconds(2))
        #expect(await !node.isLeader)
        #expect(try await conn.query("SELECT term FROM engine.leadership").single().decode("term", as: Int64.self) == 0)
        #expect(try await conn.query(LeadershipQueries.countLockHolders).single().decode("n", as: Int.self) == 0)
        // Once the operator clears it (after pg_rewind, say), the node leads and records its timeline.
        try await conn.query("DELETE FROM engine.server_timelines WHERE timeline > \(timeline)")
        ServerTimelines.forgetForTests()
        #expect(await eventually(timeout: .seconds(15)) { await node.isLeader })
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
        try await Task.sleep(for: .seconds(3))
        #expect(await !restarted.isLeader)
        #expect(try await onA.query("SELECT term FROM engine.leadership").single().decode("term", as: Int64.self) == termOnA)
        await after.stopAll()
        // With the new primary first, a node leads there and records the new timeline.
        var good = Cluster(config: try url(b, a))
        let n2 = good.start("n2")
        #expect(await eventually(timeout: .seconds(15)) { await n2.isLeader })
        let timelines = try await onB.query("SELECT timeline FROM engine.server_timelines ORDER BY timeline").map { try $0.decode("timeline", as: Int.self) }
        #expect(timelines == [1, 2])
        await good.stopAll()
        await onA.close()
        await onB.close()
        try await offThePool { b.destroy() }
        try await offThePool { a.destroy() }
    }
}

@Suite("Connections per node", .serialized)
struct ConnectionsPerNodeTests {
    @Test func anIdleFollowerHoldsAtMostFourBackends() async throws {
        let (config, conn) = try await bootedDatabase()
        // A leader by hand, kept heartbeating, so the node below stays a follower.
        let leader = try await FrozenLeader.start(config)
        let beat = Task {
            let c = try await PostgresConnection.connect(config)
            while !Task.isCancelled {
                try await c.query("UPDATE engine.instances SET last_heartbeat = now() WHERE instance_id = \(leader.instanceID)")
                try await Task.sleep(for: .milliseconds(200))
            }
            await c.close()
            return c.backendPID
        }
        var cluster = Cluster(config: config)
        let follower = cluster.start("follower")
        #expect(await eventually { try await conn.query("SELECT count(*) AS n FROM engine.instances").single().decode("n", as: Int.self) == 2 })
        // Past the pool's idle timeout (1 s in tests) and some heartbeats.
        try await Task.sleep(for: .seconds(3))
        #expect(await !follower.isLeader)
        let mine = [conn.backendPID, leader.connection.backendPID]
        let rows = try await conn.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'regent' AND backend_type = 'client backend'")
        let others = try rows.map { try $0.decode("pid", as: Int32.self) }.filter { !mine.contains($0) }
        // The follower's: its lock session, its listener, about one pooled connection; plus the
        // test's heartbeat connection.
        print("idle follower backends:", others.count - 1)
        #expect(others.count - 1 <= 4, "\(others.count - 1) backends for an idle follower")
        beat.cancel()
        _ = try? await beat.value
        await cluster.stopAll()
        await leader.connection.close()
        await conn.close()
    }
}
