import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore

/// Stops the private PostgreSQL for longer than the workers' TTL and lease, then checks that no
/// worker that heartbeats on recovery is swept and no lease it renews is reclaimed, while a
/// silent worker is swept one TTL of reachable database later.
package struct OutageDrill {
    package let env: DrillEnvironment
    package let server: EmbeddedPostgres
    package let downFor: Duration
    package let ttl: Duration
    package let workers: Int
    package let say: (String) -> Void

    package init(env: DrillEnvironment, server: EmbeddedPostgres, downFor: Duration, ttl: Duration, workers: Int, say: @escaping (String) -> Void) {
        self.env = env
        self.server = server
        self.downFor = downFor
        self.ttl = ttl
        self.workers = workers
        self.say = say
    }

    /// A worker that heartbeats and renews every quarter TTL, reconnecting through the outage.
    package static func liveWorker(url: String, name: String, execution: UUID, epoch: LeaseEpoch, ttl: Duration) -> Task<Int, Never> {
        Task {
            var refused = 0
            let conn = DrillConnection(url)
            let ns = try! Namespace("drill")
            while !Task.isCancelled {
                do {
                    let c = try await conn.get()
                    if try await WorkerRegistry().heartbeat(namespace: ns, workerInstanceID: try WorkerInstanceID(name), on: c) == .notRegistered {
                        refused += 1
                    }
                    _ = try await LeaseStore().renew(executionID: execution, epoch: epoch, leaseDuration: ttl, on: c)
                } catch let error as RegentError where error.code == .staleLease {
                    refused += 1
                } catch {
                    conn.drop()
                }
                try? await Task.sleep(for: ttl / 4)
            }
            await conn.close()
            return refused
        }
    }

    package func run() async throws -> [String] {
        var violations: [String] = []
        _ = try await env.firstLeader()
        let setup = try await PostgresConnection.connect(try drillConfiguration(env.databaseURL))
        // Wait for the leader to migrate the workflow schema.
        let deadline = ContinuousClock.now + .seconds(30)
        while try await !setup.query(DrillInvariants.workflowPresent).single().decode("present", as: Bool.self) {
            guard ContinuousClock.now < deadline else { throw RegentError(.timeout, "the workflow schema was not migrated within 30 s") }
            try await Task.sleep(for: .milliseconds(100))
        }
        let ns = try Namespace("drill"), lane = try Lane("outage")
        var tasks: [Task<Int, Never>] = []
        for i in 1...workers {
            let name = "alive-\(i)"
            _ = try await WorkerRegistry().register(
                namespace: ns, workerInstanceID: try WorkerInstanceID(name), workerID: try WorkerID("alive"), lanes: [lane], capabilities: [],
                livenessTTL: ttl, on: setup)
            let id = try await LeaseStore().enqueue(namespace: ns, lane: lane, payload: "{}", maxAttempts: 3, on: setup)
            guard let lease = try await LeaseStore().claim(
                namespace: ns, lanes: [lane], workerInstanceID: try WorkerInstanceID(name), capabilities: [], leaseDuration: ttl, limit: 1, on: setup).first
            else { throw RegentError(.invalidInput, "the drill could not claim its own execution") }
            tasks.append(Self.liveWorker(url: env.databaseURL, name: name, execution: id, epoch: lease.epoch, ttl: ttl))
        }
        _ = try await WorkerRegistry().register(
            namespace: ns, workerInstanceID: try WorkerInstanceID("silent"), workerID: try WorkerID("silent"), lanes: [lane], capabilities: [],
            livenessTTL: ttl, on: setup)
        await setup.close()
        try await Task.sleep(for: ttl)

        say("  stopping PostgreSQL for \(ms(downFor)) (TTL and lease \(ms(ttl)))")
        let server = self.server
        try await runOffThePool { server.stop() }
        try await Task.sleep(for: downFor)
        try await runOffThePool { try server.startAgain() }
        let back = ContinuousClock.now
        say("  PostgreSQL is back")
        let conn = try await PostgresConnection.connect(try drillConfiguration(env.databaseURL))
        let probe = LeadershipProbe(connection: conn)  // the environment's probe died with the server
        let backAt = try await conn.query("SELECT now() AS t").single().decode("t", as: Date.self)
        var leaderAfter: Duration?
        var sweptAfter: Double?
        let watchUntil = ContinuousClock.now + ttl * 3 + .seconds(3)
        while ContinuousClock.now < watchUntil {
            if leaderAfter == nil, try await probe.read().settled { leaderAfter = back.duration(to: .now) }
            if sweptAfter == nil, let row = try await conn.query(
                "SELECT extract(epoch FROM at - \(backAt)::timestamptz)::float8 AS s FROM workflow.worker_events WHERE kind = 'ttl_swept' AND worker_instance_id = 'silent'"
            ).first {
                sweptAfter = try row.decode("s", as: Double.self)
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        var refused = 0
        for t in tasks {
            t.cancel()
            refused += await t.value
        }
        let sweptAlive = try await conn.query(
            "SELECT count(*) AS n FROM workflow.worker_events WHERE kind = 'ttl_swept' AND worker_instance_id LIKE 'alive-%'").single().decode("n", as: Int.self)
        let reclaimed = try await conn.query(
            """
            SELECT count(*) AS n FROM workflow.lease_decisions d JOIN workflow.attempts a USING (execution_id, attempt_index)
            WHERE a.worker_instance_id LIKE 'alive-%'
            """).single().decode("n", as: Int.self)
        await conn.close()
        say("  leader back \(leaderAfter.map(ms) ?? "never"); silent worker swept \(sweptAfter.map { String(format: "%.0f ms", $0 * 1000) } ?? "never") after recovery")
        say("  live workers: \(sweptAlive) swept, \(reclaimed) leases reclaimed, \(refused) heartbeats/renewals refused")
        if sweptAlive > 0 { violations.append("\(sweptAlive) live workers were swept although they heartbeated as soon as the database was back") }
        if reclaimed > 0 { violations.append("\(reclaimed) leases of live workers were reclaimed although they were renewed as soon as the database was back") }
        if refused > 0 { violations.append("\(refused) heartbeats or renewals of live workers were refused after the outage") }
        if let s = sweptAfter {
            if s * 1000 < ttl.milliseconds * 0.9 { violations.append(String(format: "the silent worker was swept %.0f ms after recovery, before a TTL of reachable database", s * 1000)) }
        } else {
            violations.append("the silent worker was never swept")
        }
        if leaderAfter == nil { violations.append("no leader after the outage") }
        violations += try await DrillInvariants.check(databaseURL: env.databaseURL)
        return violations
    }
}
