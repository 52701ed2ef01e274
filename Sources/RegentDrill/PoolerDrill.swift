import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore

/// Runs nodes through a private PgBouncer: in session mode they must elect, fail over and write
/// their duties; in transaction mode they must refuse to start and leave no lock behind.
package struct PoolerDrill {
    package let server: EmbeddedPostgres
    package let databaseURL: String
    package let kills: Int
    package let say: (String) -> Void

    package init(server: EmbeddedPostgres, databaseURL: String, kills: Int, say: @escaping (String) -> Void) {
        self.server = server
        self.databaseURL = databaseURL
        self.kills = kills
        self.say = say
    }

    package func run() async throws -> [String] {
        var violations: [String] = []
        let name = try await PostgresConnection.connect(try drillConfiguration(databaseURL))
        let database = try await name.query("SELECT current_database() AS d").single().decode("d", as: String.self)
        await name.close()

        say("▶ transaction mode")
        let txn = try EmbeddedPgBouncer.start(inFrontOf: server, mode: .transaction)
        defer { txn.stop() }
        let refused = LocalCluster(
            databaseURL: txn.url(database: database), logDirectory: NSTemporaryDirectory() + "regent-drill-\(getpid())-txn",
            extraArguments: DrillEnvironment.nodeArguments)
        let node = try refused.spawn()
        let deadline = ContinuousClock.now + .seconds(20)
        var status: Int32?
        while status == nil, ContinuousClock.now < deadline {
            status = ChildProcess.exitStatus(node.pid, wait: false)
            try await Task.sleep(for: .milliseconds(50))
        }
        let log = (try? String(contentsOfFile: "\(refused.logDirectory)/\(node.name).log", encoding: .utf8)) ?? ""
        if status == nil || status == 0 {
            violations.append("a node behind a transaction-mode pooler did not refuse to start")
            refused.stopAll()
        } else if !log.contains("transaction- or statement-mode pooler") {
            violations.append("the refusal did not name the pooler mode; log:\n\(log.suffix(600))")
        } else {
            say("  refused at start (exit \(status!)): \(log.split(separator: "\n").last { $0.contains("pooler") }.map(String.init)?.suffix(160) ?? "")")
        }
        let check = try await PostgresConnection.connect(try drillConfiguration(databaseURL))
        let holders = try await check.query(LeadershipQueries.countLockHolders).single().decode("n", as: Int.self)
        await check.close()
        if holders != 0 { violations.append("\(holders) leadership lock holders after the refused start (an orphaned lock)") }
        txn.stop()

        say("▶ session mode: \(kills) failovers through PgBouncer")
        let session = try EmbeddedPgBouncer.start(inFrontOf: server, mode: .session)
        defer { session.stop() }
        let cluster = LocalCluster(
            databaseURL: session.url(database: database), logDirectory: NSTemporaryDirectory() + "regent-drill-\(getpid())-session",
            extraArguments: DrillEnvironment.nodeArguments)
        for _ in 0..<3 { try cluster.spawn() }
        let probeConn = try await PostgresConnection.connect(try drillConfiguration(databaseURL))
        let probe = LeadershipProbe(connection: probeConn)
        let churn = ChurnLoad(databaseURL: databaseURL)
        do {
            guard var current = try await probe.waitForLeader(after: 0, timeout: .seconds(30)) else {
                throw RegentError(.timeout, "no leader through the session-mode pooler within 30 s; logs in \(cluster.logDirectory)")
            }
            for round in 1...kills {
                try await Task.sleep(for: .seconds(2))
                guard let pid = current.leaderPID, let node = cluster.node(pid: pid) else { break }
                let started = ContinuousClock.now
                cluster.kill(node, signal: SIGKILL)
                guard let next = try await probe.waitForLeader(after: current.term, timeout: .seconds(15)) else {
                    violations.append("round \(round): no new leader through the pooler within 15 s")
                    break
                }
                say("  round \(round)  SIGKILL \(node.name) (term \(current.term)) → term \(next.term)  \(ms(started.duration(to: .now)))")
                current = next
                try cluster.spawn()
                cluster.reap()
            }
            try await Task.sleep(for: .seconds(2))
        } catch {
            _ = await churn.stop()
            cluster.stopAll()
            await probeConn.close()
            throw error
        }
        _ = await churn.stop()
        let writes = try await probeConn.query(
            "SELECT (SELECT count(*) FROM workflow.worker_events WHERE kind = 'ttl_swept') + (SELECT count(*) FROM workflow.lease_decisions) AS n"
        ).single().decode("n", as: Int.self)
        await probeConn.close()
        cluster.stopAll()
        say("  leader duties wrote \(writes) sweeps and reclaims through the pooler")
        if writes == 0 { violations.append("no leader duty wrote anything through the session-mode pooler (fenced writes refused?)") }
        violations += try await DrillInvariants.check(databaseURL: databaseURL)
        return violations
    }
}
