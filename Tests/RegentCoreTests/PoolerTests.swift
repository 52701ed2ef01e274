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

/// Whether the pooler tests can run here: pgbouncer installed, and the tests' own private
/// server (not REGENT_TEST_DATABASE_URL). The suite is skipped (reported as skipped, with this
/// reason) otherwise; `.ci/run` fails before the tests when it could not install pgbouncer.
let poolerTestsEnabled = EmbeddedPgBouncer.binary != nil && ProcessInfo.processInfo.environment["REGENT_TEST_DATABASE_URL"] == nil
let poolerSkipReason: Comment = EmbeddedPgBouncer.binary == nil
    ? "pgbouncer is not installed (apt-get install -y pgbouncer; scripts/ensure-deps.sh installs it as root)"
    : "REGENT_TEST_DATABASE_URL is set; the pooler tests need the private server"

/// Runs `body` with a private PgBouncer in `mode` in front of the tests' private server.
func withPgBouncer(
    _ mode: EmbeddedPgBouncer.PoolMode, _ test: String = #function, _ body: (_ pooled: ConnectionConfiguration, _ direct: ConnectionConfiguration) async throws -> Void
) async throws {
    guard EmbeddedPgBouncer.binary != nil, let pg = try await TestDatabase.shared.embedded() else {
        // The suite's trait skips it in this case; reaching here is a mistake in the test.
        Issue.record("\(test) ran without pgbouncer or without the private server: \(poolerSkipReason)")
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

@Suite("Poolers between nodes and PostgreSQL", .serialized, .enabled(if: poolerTestsEnabled, poolerSkipReason))
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
            let elector = LeaderElector(instanceID: InstanceID(), configuration: pooled, options: .init(leaseWindow: .seconds(1)))
            let running = Task { await elector.run() }
            #expect(await eventually { await elector.refusals >= 2 })
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
