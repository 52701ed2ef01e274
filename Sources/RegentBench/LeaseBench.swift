import CLibPQ
import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore
import RegentDrill
import Synchronization

/// The measuring parts of `regent bench leases`: table resets, bulk leases, the scanner run
/// and the Regent side of the throughput loop (the raw side is ``RawLeaseLoop``).
package enum LeaseBench {
    package static func reset(_ pool: ConnectionPool) async throws {
        try await pool.withConnection { conn in
            try await conn.query("DELETE FROM workflow.attempts")
            try await conn.query("DELETE FROM workflow.executions")
            try await conn.query("DELETE FROM workflow.lease_decisions")
            try await conn.query("VACUUM ANALYZE workflow.executions")
            try await conn.query("VACUUM ANALYZE workflow.attempts")
        }
    }

    package static func insertLeases(_ pool: ConnectionPool, count: Int, expiresIn: String) async throws {
        var left = count
        while left > 0 {
            let n = min(left, 100_000)
            try await pool.query(
                """
                WITH e AS (
                    INSERT INTO workflow.executions (namespace, lane, max_attempts, state, attempts, lease_epoch)
                    SELECT 'bench', 'l', 3, 'running', 1, 1 FROM generate_series(1, \(n)) RETURNING execution_id
                )
                INSERT INTO workflow.attempts (execution_id, attempt_index, lease_epoch, worker_instance_id, state, lease_expires_at)
                SELECT execution_id, 1, 1, 'bench-worker', 'leased', now() + \(expiresIn)::interval FROM e
                """, purpose: "bench: insert leases")
            left -= n
        }
        try await pool.query("ANALYZE workflow.attempts")
    }

    package static func scan(_ scanner: LeaseExpiryScanner, fence: LeaderFence, expected: Int, say: (String) -> Void) async throws -> Double {
        let started = ContinuousClock.now
        var total = 0
        while total < expected {
            let page = try await scanner.reclaimOnce(fence: fence)
            if page.expired == 0 { break }
            total += page.expired
        }
        let rate = Double(total) / (started.duration(to: .now).milliseconds / 1000)
        say(String(format: "  reclaimed %d in %.2f s: %.0f rows/s", total, started.duration(to: .now).milliseconds / 1000, rate))
        return rate
    }

    package static func regentLoop(config: ConnectionConfiguration, workers: Int, cycles: Int) async throws -> Double {
        let ns = try Namespace("bench"), lane = try Lane("l")
        let store = LeaseStore()
        let perWorker = cycles / workers
        var conns: [PostgresConnection] = []
        for w in 0..<workers {
            let c = try await PostgresConnection.connect(config)
            _ = try await WorkerRegistry().register(
                namespace: ns, workerInstanceID: try WorkerInstanceID("w\(w)"), workerID: try WorkerID("w\(w)"), lanes: [lane],
                capabilities: [], livenessTTL: .seconds(600), on: c)
            conns.append(c)
        }
        let started = ContinuousClock.now
        let done = try await withThrowingTaskGroup(of: Int.self) { group in
            for (w, conn) in conns.enumerated() {
                group.addTask {
                    let me = try WorkerInstanceID("w\(w)")
                    var n = 0
                    for _ in 0..<perWorker {
                        _ = try await store.enqueue(namespace: ns, lane: lane, payload: "{}", maxAttempts: 3, on: conn)
                        for lease in try await store.claim(
                            namespace: ns, lanes: [lane], workerInstanceID: me, capabilities: [], leaseDuration: .seconds(60), limit: 1, on: conn)
                        {
                            try await store.complete(executionID: lease.executionID, epoch: lease.epoch, on: conn)
                            n += 1
                        }
                    }
                    return n
                }
            }
            return try await group.reduce(0, +)
        }
        let elapsed = started.duration(to: .now)
        for c in conns { await c.close() }
        return Double(done) / (elapsed.milliseconds / 1000)
    }
}
