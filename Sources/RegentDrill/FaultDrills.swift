import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore

/// The invariants every fault drill checks, from the database's own records.
package enum DrillInvariants {
    /// A leader-only write stamped with a term, committed in a transaction that began after a
    /// later term was elected. The fence makes a successor's term bump wait for every fenced
    /// transaction of the old term, so any such row is a write by a leader that was deposed.
    package static let lateWrites: PostgresQuery = """
        WITH elections AS (SELECT term, at FROM engine.audit WHERE action = 'leader.elected'),
        writes AS (
            SELECT 'engine.audit ' || action AS what, id, term, at FROM engine.audit
            WHERE term IS NOT NULL AND action NOT IN ('leader.elected', 'leader.resigned', 'leader.terminated')
            UNION ALL
            SELECT 'workflow.lease_decisions ' || decision, id, term, at FROM workflow.lease_decisions
            UNION ALL
            SELECT 'workflow.worker_events ' || kind, id, (detail->>'term')::bigint, at FROM workflow.worker_events WHERE detail ? 'term'
        )
        SELECT w.what, w.id, w.term, e.term AS later_term,
               (extract(epoch FROM w.at - e.at) * 1000)::float8 AS after_ms
        FROM writes w
        JOIN LATERAL (SELECT term, at FROM elections e WHERE e.term > w.term AND e.at < w.at ORDER BY e.term LIMIT 1) e ON true
        ORDER BY w.at LIMIT 20
        """

    package static let workflowPresent: PostgresQuery =
        "SELECT to_regclass('workflow.lease_decisions') IS NOT NULL AND to_regclass('workflow.worker_events') IS NOT NULL AS present"

    /// Terms strictly increase and each is elected once; no duty write under a term after a later
    /// term began (engine.audit, workflow.lease_decisions, workflow.worker_events); at most one
    /// lock holder now.
    package static func check(databaseURL: String) async throws -> [String] {
        return try await PostgresConnection.withConnection(try drillConfiguration(databaseURL)) { conn in
            var violations: [String] = []
            let elected = try await conn.query(
                "SELECT term FROM engine.audit WHERE action = 'leader.elected' ORDER BY id", purpose: "drill: read elections")
            var last: Int64 = 0
            for row in elected {
                let term = try row.decode("term", as: Int64.self)
                if term <= last { violations.append("term \(term) was elected after term \(last)") }
                last = term
            }
            if try await conn.query(workflowPresent).single().decode("present", as: Bool.self) {
                for row in try await conn.query(lateWrites, purpose: "drill: writes under an old term") {
                    violations.append(String(
                        format: "%@ #%lld was written under term %lld %.1f ms after term %lld began",
                        try row.decode("what", as: String.self), try row.decode("id", as: Int64.self), try row.decode("term", as: Int64.self),
                        try row.decode("after_ms", as: Double.self), try row.decode("later_term", as: Int64.self)))
                }
            }
            let holders = try await conn.query(LeadershipQueries.countLockHolders).single().decode("n", as: Int.self)
            if holders > 1 { violations.append("\(holders) sessions hold the leadership lock") }
            return violations
        }
    }
}

/// The drill's own connections name themselves, so `terminate-all` spares them.
package func drillConfiguration(_ url: String) throws -> ConnectionConfiguration {
    var c = try ConnectionConfiguration(url)
    c.applicationName = "regent-drill"
    return c
}

/// A drill's own connection that reconnects on demand: the database may be away (outages,
/// terminate-all), and a drill keeps going through that.
package final class DrillConnection {
    package let url: String
    private var conn: PostgresConnection?
    package init(_ url: String) { self.url = url }
    package func get() async throws -> PostgresConnection {
        if let conn, conn.isUsable { return conn }
        let fresh = try await PostgresConnection.connect(try drillConfiguration(url))
        conn = fresh
        return fresh
    }
    package func drop() { conn = nil }
    package func close() async { await conn?.close() }
}

/// Keeps the leader's duties busy: workers that register and never heartbeat (swept a TTL
/// later) and executions claimed on leases that expire (reclaimed), so a drill sees duty
/// writes around every fault.
package final class ChurnLoad: Sendable {
    package let task: Task<Int, Never>

    package init(databaseURL: String, every: Duration = .milliseconds(150), ttl: Duration = .milliseconds(300)) {
        task = Task {
            var made = 0
            let conn = DrillConnection(databaseURL)
            let ns = try! Namespace("drill"), lane = try! Lane("churn")
            while !Task.isCancelled {
                do {
                    let c = try await conn.get()
                    made += 1
                    let worker = try WorkerInstanceID("churn-\(made)")
                    _ = try await WorkerRegistry().register(
                        namespace: ns, workerInstanceID: worker, workerID: try WorkerID("churn"), lanes: [lane], capabilities: [], livenessTTL: ttl, on: c)
                    _ = try await LeaseStore().enqueue(namespace: ns, lane: lane, payload: "{}", maxAttempts: 1000, on: c)
                    _ = try await LeaseStore().claim(
                        namespace: ns, lanes: [lane], workerInstanceID: worker, capabilities: [], leaseDuration: ttl, limit: 1, on: c)
                } catch {
                    // The workflow schema may not be migrated yet, or the database is away.
                }
                try? await Task.sleep(for: every)
            }
            await conn.close()
            return made
        }
    }

    package func stop() async -> Int {
        task.cancel()
        return await task.value
    }
}

/// Samples how many sessions hold the leadership lock until cancelled; returns the most seen.
package func sampleLockHolders(databaseURL: String, every: Duration = .milliseconds(20)) -> Task<Int, Never> {
    Task {
        var most = 0
        let conn = DrillConnection(databaseURL)
        while !Task.isCancelled {
            do {
                most = max(most, try await conn.get().query(LeadershipQueries.countLockHolders).single().decode("n", as: Int.self))
            } catch {
                conn.drop()
            }
            try? await Task.sleep(for: every)
        }
        await conn.close()
        return most
    }
}

/// What a drill runs beside its faults: a churn that keeps the leader's duties writing, and a
/// sampler of how many sessions hold the leadership lock.
package struct DrillBackground {
    package let churn: ChurnLoad
    package let sampler: Task<Int, Never>

    package init(databaseURL: String) {
        churn = ChurnLoad(databaseURL: databaseURL)
        sampler = sampleLockHolders(databaseURL: databaseURL)
    }

    /// Stops both: how many workers the churn made, and a violation if two sessions ever
    /// held the lock at once.
    package func finish() async -> (made: Int, violations: [String]) {
        let made = await churn.stop()
        sampler.cancel()
        let most = await sampler.value
        return (made, most > 1 ? ["\(most) sessions held the leadership lock at once"] : [])
    }
}

/// Freezes the leader with SIGSTOP and checks that a follower ends its session and takes over
/// within `--stale-after` + 2 s, and that after SIGCONT the thawed node writes nothing under its
/// old term and rejoins as a follower.
package struct FreezeDrill {
    package let env: DrillEnvironment
    package let freezes: Int
    package let staleAfter: Duration
    package let say: (String) -> Void

    package init(env: DrillEnvironment, freezes: Int, staleAfter: Duration, say: @escaping (String) -> Void) {
        self.env = env
        self.freezes = freezes
        self.staleAfter = staleAfter
        self.say = say
    }

    package struct Result {
        package var takeovers: [Duration] = []
        package var violations: [String] = []
    }

    package func run() async throws -> Result {
        var result = Result()
        let background = DrillBackground(databaseURL: env.databaseURL)
        var current = try await env.firstLeader()
        // Let the followers heartbeat for a whole stale window: only then may they judge.
        try await Task.sleep(for: staleAfter + .seconds(1))
        for round in 1...freezes {
            guard let pid = current.leaderPID, let node = env.cluster.node(pid: pid) else {
                result.violations.append("round \(round): the leader is not one of the drill's nodes")
                break
            }
            let started = ContinuousClock.now
            _ = kill(node.pid, SIGSTOP)
            let next = try await env.probe.waitForLeader(after: current.term, timeout: staleAfter + .seconds(10))
            let took = started.duration(to: .now)
            // Keep it frozen a moment longer, then thaw it into a cluster that moved on.
            try await Task.sleep(for: .milliseconds(500))
            _ = kill(node.pid, SIGCONT)
            guard let next else {
                result.violations.append("round \(round): no new leader within \(staleAfter + .seconds(10)) of freezing \(node.name)")
                break
            }
            result.takeovers.append(took)
            let bound = staleAfter + .seconds(2)
            say(String(format: "  round %2d  SIGSTOP %@ (term %lld) → term %lld  after %@ (bound %@)%@", round, node.name, current.term, next.term,
                       ms(took), ms(bound), took > bound ? "  ✘ over the bound" : ""))
            if took > bound { result.violations.append("round \(round): takeover took \(ms(took)), over stale-after + 2 s (\(ms(bound)))") }
            // The thawed node must see its session gone, step down and heartbeat again as a follower.
            try await Task.sleep(for: .seconds(2))
            if next.leaderPID == node.pid {
                result.violations.append("round \(round): the thawed node \(node.name) leads again under term \(next.term)")
            }
            // ... and heartbeats again as a follower (its row re-inserted if the new leader swept it).
            let rejoined = try await env.probe.connection.query(
                "SELECT count(*) AS n FROM engine.instances WHERE pid = \(Int(node.pid)) AND last_heartbeat > now() - interval '2 seconds'"
            ).single().decode("n", as: Int.self)
            if rejoined != 1 { result.violations.append("round \(round): the thawed node \(node.name) is not heartbeating as a follower") }
            current = next
        }
        let (made, overlaps) = await background.finish()
        result.violations += overlaps
        say("  (churn: \(made) short-lived workers and leases kept the duties writing)")
        let conn = try await PostgresConnection.connect(try drillConfiguration(env.databaseURL))
        let terminated = try await conn.query("SELECT count(*) AS n FROM engine.audit WHERE action = 'leader.terminated'").single().decode("n", as: Int.self)
        await conn.close()
        if terminated < result.takeovers.count {
            result.violations.append("\(result.takeovers.count) takeovers but only \(terminated) leader.terminated audit rows")
        }
        result.violations += try await DrillInvariants.check(databaseURL: env.databaseURL)
        return result
    }
}

/// Ends every node's sessions at once (`pg_terminate_backend` on every `regent` backend, as a
/// server-side kill or a network blip would) and times the return of a leader.
package struct TerminateAllDrill {
    package let env: DrillEnvironment
    package let rounds: Int
    package let say: (String) -> Void

    package init(env: DrillEnvironment, rounds: Int, say: @escaping (String) -> Void) {
        self.env = env
        self.rounds = rounds
        self.say = say
    }

    package static let terminateAll: PostgresQuery = """
        SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS ended FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'regent' AND pid <> pg_backend_pid()
        """

    package func run() async throws -> (recoveries: [Duration], violations: [String]) {
        var recoveries: [Duration] = []
        var violations: [String] = []
        let background = DrillBackground(databaseURL: env.databaseURL)
        var current = try await env.firstLeader()
        let admin = try await PostgresConnection.connect(try drillConfiguration(env.databaseURL))
        for round in 1...rounds {
            try await Task.sleep(for: .seconds(1))
            let started = ContinuousClock.now
            let ended = try await admin.query(Self.terminateAll, purpose: "drill: end every node session").single().decode("ended", as: Int.self)
            guard let next = try await env.probe.waitForLeader(after: current.term, timeout: .seconds(20)) else {
                violations.append("round \(round): no leader within 20 s after every session was ended")
                break
            }
            let took = started.duration(to: .now)
            recoveries.append(took)
            say(String(format: "  round %2d  ended %d sessions (term %lld) → term %lld  after %@", round, ended, current.term, next.term, ms(took)))
            current = next
        }
        await admin.close()
        violations += await background.finish().violations
        violations += try await DrillInvariants.check(databaseURL: env.databaseURL)
        return (recoveries, violations)
    }
}

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

/// Blocking work (pg_ctl) on a thread of its own.
package func runOffThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
        Thread { cont.resume(with: Result { try work() }) }.start()
    }
}
