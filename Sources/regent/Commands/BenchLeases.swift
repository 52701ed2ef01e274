import ArgumentParser
import CLibPQ
import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore
import Synchronization

extension BenchCommand {
    struct Leases: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Lease throughput against raw libpq, and the expiry scanner with and without a million live leases.",
            discussion: """
                Throughput: 1, 4 and 16 concurrent workers each loop enqueue → claim → complete, \
                through Regent's LeaseStore and, as the ceiling, the very same statements through \
                plain libpq. Scanner: reclaims N expired leases page by page (rows per second), \
                first alone, then beside a million live, unexpired leases.
                """
        )
        @Option(help: "enqueue→claim→complete cycles per concurrency level.") var cycles = 2000
        @Option(help: "Expired leases for the scanner run.") var expired = 100_000
        @Option(help: "Live (unexpired) leases beside them in the second scanner run.") var live = 1_000_000
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database (it must be disposable).", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (100...1_000_000).contains(cycles), (1000...10_000_000).contains(expired), (0...10_000_000).contains(live) else {
                throw ValidationError("--cycles 100-1000000, --expired 1000-10000000, --live 0-10000000")
            }
        }

        func run() async throws {
            let (url, embedded) = try benchDatabase(databaseURL)
            defer { embedded?.destroy() }
            let config = try ConnectionConfiguration(url)
            let boot = try await Boot(options: .init(database: config, actor: "bench")).run()
            defer { Task { await boot.pool.shutdown() } }

            var rows: [[String]] = []
            for workers in [1, 4, 16] {
                try await reset(boot.pool)
                let raw = try RawLeaseLoop.run(conninfo: url, workers: workers, cycles: cycles)
                try await reset(boot.pool)
                let regent = try await regentLoop(config: config, workers: workers, cycles: cycles)
                rows.append(["\(workers)", String(format: "%.0f /s", raw), String(format: "%.0f /s", regent), String(format: "%.0f%%", 100 * regent / raw)])
                print("  \(workers) worker(s): raw \(Int(raw))/s, Regent \(Int(regent))/s")
            }
            print("")
            print(table(["workers", "raw libpq (ceiling)", "Regent", "Regent / raw (goal ≥ 70%)"], rows))

            print("\n▶ lease-expiry scanner")
            let fenceBox = Mutex<LeaderFence?>(nil)
            let elector = LeaderElector(
                instanceID: UUID(), configuration: config, options: .init(leaseWindow: .seconds(5)),
                hooks: .init(elected: { fence in fenceBox.withLock { $0 = fence } }))
            let electorTask = Task { await elector.run() }
            defer { electorTask.cancel() }
            while fenceBox.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(10)) }
            let fence = fenceBox.withLock { $0 }!
            let scanner = LeaseExpiryScanner(pool: boot.pool, pageSize: 5000)

            try await reset(boot.pool)
            try await insertLeases(boot.pool, count: expired, expiresIn: "-1 hour")
            let alone = try await scan(scanner, fence: fence, expected: expired)
            try await reset(boot.pool)
            print("  inserting \(live) live leases …")
            try await insertLeases(boot.pool, count: live, expiresIn: "1 day")
            try await insertLeases(boot.pool, count: expired, expiresIn: "-1 hour")
            let beside = try await scan(scanner, fence: fence, expected: expired)
            let untouched = try await boot.pool.query(
                "SELECT count(*) AS n FROM workflow.attempts WHERE state = 'leased' AND lease_expires_at > now()").single().decode("n", as: Int.self)
            await elector.stop()
            await electorTask.value
            print("")
            print(table(["scanner run", "expired reclaimed", "rows / s", "live leases untouched"], [
                ["alone", "\(expired)", String(format: "%.0f", alone), "-"],
                ["beside \(live) live leases", "\(expired)", String(format: "%.0f", beside), "\(untouched)"],
            ]))
            print(String(format: "\nratio with / without live leases: %.2f (1.0 = not slowed)", beside / alone))
            if untouched != live { throw RegentError(.invalidInput, "the scanner touched live leases: \(live - untouched) of them") }
        }

        func reset(_ pool: ConnectionPool) async throws {
            try await pool.withConnection { conn in
                try await conn.query("DELETE FROM workflow.attempts")
                try await conn.query("DELETE FROM workflow.executions")
                try await conn.query("DELETE FROM workflow.lease_decisions")
                try await conn.query("VACUUM ANALYZE workflow.executions")
                try await conn.query("VACUUM ANALYZE workflow.attempts")
            }
        }

        func insertLeases(_ pool: ConnectionPool, count: Int, expiresIn: String) async throws {
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

        func scan(_ scanner: LeaseExpiryScanner, fence: LeaderFence, expected: Int) async throws -> Double {
            let started = ContinuousClock.now
            var total = 0
            while total < expected {
                let page = try await scanner.reclaimOnce(fence: fence)
                if page.expired == 0 { break }
                total += page.expired
            }
            let rate = Double(total) / (started.duration(to: .now).milliseconds / 1000)
            print(String(format: "  reclaimed %d in %.2f s: %.0f rows/s", total, started.duration(to: .now).milliseconds / 1000, rate))
            return rate
        }

        func regentLoop(config: ConnectionConfiguration, workers: Int, cycles: Int) async throws -> Double {
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
}

/// The same enqueue → claim → complete statements through plain libpq, one thread per worker.
enum RawLeaseLoop {
    static func exec(_ conn: OpaquePointer, _ q: PostgresQuery) -> [[String?]] {
        let texts: [UnsafeMutablePointer<CChar>?] = q.binds.map { bind in
            if case .text(let s) = bind { return strdup(s) }
            return nil
        }
        defer { texts.forEach { free($0) } }
        var values: [UnsafePointer<CChar>?] = texts.map { $0.map { UnsafePointer($0) } }
        guard let r = PQexecParams(conn, q.sql, Int32(q.binds.count), nil, &values, nil, nil, 0) else { return [] }
        defer { PQclear(r) }
        var rows: [[String?]] = []
        for i in 0..<PQntuples(r) {
            rows.append((0..<PQnfields(r)).map { j in PQgetisnull(r, i, j) == 1 ? nil : String(cString: PQgetvalue(r, i, j)) })
        }
        return rows
    }

    static func run(conninfo: String, workers: Int, cycles: Int) throws -> Double {
        let ns = try Namespace("bench"), lane = try Lane("l")
        let perWorker = cycles / workers
        let done = Mutex(0)
        let group = DispatchGroup()
        let started = ContinuousClock.now
        for w in 0..<workers {
            group.enter()
            Thread {
                defer { group.leave() }
                guard let conn = PQconnectdb(conninfo), PQstatus(conn) == CONNECTION_OK else { return }
                defer { PQfinish(conn) }
                let me = try! WorkerInstanceID("raw\(w)")
                _ = exec(conn, WorkerRegistry.upsert(ns, me, try! WorkerID("raw\(w)"), lanes: ["l"], capabilities: [], ttl: .seconds(600)))
                var n = 0
                for _ in 0..<perWorker {
                    _ = exec(conn, LeaseStore.enqueue(ns, lane, payload: "{}", maxAttempts: 3, required: []))
                    _ = exec(conn, "BEGIN ISOLATION LEVEL READ COMMITTED")
                    _ = exec(conn, LeaseStore.workerAlive(ns, me))
                    let claimed = exec(conn, LeaseStore.claim(ns, lanes: ["l"], worker: me, capabilities: [], lease: .seconds(60), limit: 1))
                    _ = exec(conn, "COMMIT")
                    for row in claimed {
                        guard let id = row[0].flatMap(UUID.init(uuidString:)), let epoch = row[3].flatMap(Int64.init) else { continue }
                        _ = exec(conn, "BEGIN ISOLATION LEVEL READ COMMITTED")
                        _ = exec(conn, LeaseStore.finishExecution(id, LeaseEpoch(epoch), state: "completed", result: "{}", error: nil))
                        _ = exec(conn, LeaseStore.endAttempt(id, LeaseEpoch(epoch), state: "completed"))
                        _ = exec(conn, "COMMIT")
                        n += 1
                    }
                }
                done.withLock { $0 += n }
            }.start()
        }
        group.wait()
        let elapsed = started.duration(to: .now)
        return Double(done.withLock { $0 }) / (elapsed.milliseconds / 1000)
    }
}
