import CLibPQ
import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore
import RegentDrill
import Synchronization

/// The same enqueue → claim → complete statements through plain libpq, one thread per worker.
package enum RawLeaseLoop {
    package static func exec(_ conn: OpaquePointer, _ q: PostgresQuery) -> [[String?]] {
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

    package static func run(conninfo: String, workers: Int, cycles: Int) throws -> Double {
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
