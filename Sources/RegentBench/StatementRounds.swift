import CLibPQ
import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore
import RegentDrill
import Synchronization

/// One round of `regent bench statements`: short statements one after another on one
/// connection, raw libpq or Regent's, with each statement's time.
package enum StatementRounds {
    package static func raw(_ conninfo: String, sql: String, statements: Int) throws -> [Duration] {
        guard let conn = PQconnectdb(conninfo), PQstatus(conn) == CONNECTION_OK else {
            throw RegentError(.invalidInput, "raw bench: cannot connect to \(conninfo)")
        }
        defer { PQfinish(conn) }
        var times: [Duration] = []
        times.reserveCapacity(statements)
        for k in 0..<statements {
            let text = strdup(String(k))
            var values: [UnsafePointer<CChar>?] = [UnsafePointer(text)]
            let t0 = ContinuousClock.now
            let result = PQexecParams(conn, sql, 1, nil, &values, nil, nil, 0)
            _ = PQgetvalue(result, 0, 0)
            times.append(t0.duration(to: .now))
            PQclear(result)
            free(text)
        }
        return times
    }

    package static func regent(_ base: ConnectionConfiguration, wait: Duration, statements: Int) async throws -> [Duration] {
        var config = base
        config.callerThreadWait = wait
        let conn = try await PostgresConnection.connect(config)
        var times: [Duration] = []
        times.reserveCapacity(statements)
        for k in 0..<statements {
            let t0 = ContinuousClock.now
            let row = try await conn.query("SELECT \(k)::int + 1 AS v").single()
            _ = try row.decode("v", as: Int.self)
            times.append(t0.duration(to: .now))
        }
        await conn.close()
        return times
    }
}
