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

/// Blocking work (pg_ctl) on a thread of its own.
package func runOffThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
        Thread { cont.resume(with: Result { try work() }) }.start()
    }
}
