import CLibPQ
import Foundation

/// Blocking libpq primitives. Every function here must be called by the single
/// owner of the `PGconn` (a connection's serial queue or a listener's thread).
enum LibPQ {
    /// Session settings every connection starts with: ISO dates (the row decoder relies on them).
    /// Run once per session: the date style our decoders read, then the session's process id
    /// as the server reports it (`PQbackendPID()` is what the client was told at startup, which a
    /// pooler such as PgBouncer fakes; `pg_locks.pid` and `pg_terminate_backend` use the real one).
    static let sessionSetup = "SET DateStyle TO ISO, YMD; SELECT pg_backend_pid()"

    /// A connected session and its server-side process id.
    struct Session {
        let conn: OpaquePointer
        let serverPID: Int32
    }

    static func connect(_ config: ConnectionConfiguration) throws(PostgresError) -> Session {
        let pairs = config.keywordValues
        let keys = pairs.map { strdup($0.0) }
        let values = pairs.map { strdup($0.1) }
        defer {
            keys.forEach { free($0) }
            values.forEach { free($0) }
        }
        var keyPtrs: [UnsafePointer<CChar>?] = keys.map { UnsafePointer($0) } + [nil]
        var valuePtrs: [UnsafePointer<CChar>?] = values.map { UnsafePointer($0) } + [nil]
        guard let conn = PQconnectdbParams(&keyPtrs, &valuePtrs, 1) else {
            throw PostgresError(.connectionFailed, "libpq could not allocate a connection (\(config.endpoint))")
        }
        guard PQstatus(conn) == CONNECTION_OK else {
            let msg = errorMessage(conn)
            PQfinish(conn)
            throw PostgresError(
                .connectionFailed, "cannot connect to PostgreSQL at \(config.endpoint): \(msg)",
                hint: "check that the server is running and the URL's host, port, user and database are right")
        }
        PQsetNoticeProcessor(conn, { _, _ in }, nil)  // NOTICEs (e.g. IF NOT EXISTS) are not errors
        do {
            let rows = try execScript(conn, sessionSetup)
            return Session(conn: conn, serverPID: try rows.single().decode(at: 0, as: Int32.self))
        } catch {
            PQfinish(conn)
            throw error
        }
    }

    /// Checks that this client connection is one server session for its whole life, as a
    /// session advisory lock and LISTEN need. A transaction- or statement-mode pooler hands
    /// each transaction to whichever server connection is free, and hands a connection that
    /// one client left idle to the next client: so (1) a session setting must survive into the
    /// next statement on the same server process, and (2) a second client connection opened
    /// now must not land on the server process this one was given (a pooler reuses its most
    /// recently freed server connection first). Direct connections and session pooling pass.
    static func verifySessionPinned(_ session: Session, config: ConnectionConfiguration) throws(PostgresError) {
        let conn = session.conn
        let marker = "\(UInt64.random(in: 1...UInt64.max))"
        _ = try execScript(conn, "SELECT set_config('regent.session_probe', '\(marker)', false)")
        let row = try execScript(conn, "SELECT current_setting('regent.session_probe', true), pg_backend_pid()").single()
        let seen = try row.decodeOptional(at: 0, as: String.self)
        let pid = try row.decode(at: 1, as: Int32.self)
        var other: Session?
        if seen == marker, pid == session.serverPID {
            other = try connect(config)
        }
        defer { if let other { PQfinish(other.conn) } }
        guard seen == marker, pid == session.serverPID, other?.serverPID != session.serverPID else {
            throw PostgresError(
                .sessionNotPinned,
                "the connection to \(config.endpoint) does not keep one server session: statements ran on server processes \(session.serverPID) and \(other?.serverPID ?? pid) (a session setting \(seen == marker ? "survived" : "was lost")); a transaction- or statement-mode pooler (PgBouncer pool_mode=transaction) is in between",
                hint: "point --database-url at PostgreSQL directly or at a pooler in session mode (pool_mode=session); advisory locks and LISTEN need one session")
        }
    }

    static func errorMessage(_ conn: OpaquePointer) -> String {
        guard let p = PQerrorMessage(conn) else { return "unknown error" }
        return String(cString: p).trimmingCharactersInWhitespace().replacingOccurrences(of: "\n", with: "; ").replacingOccurrences(of: "\t", with: "")
    }

    /// Runs one parameterized statement, or the statement prepared as `statement`.
    static func exec(_ conn: OpaquePointer, _ query: PostgresQuery, statement: String? = nil) throws(PostgresError) -> PostgresRows {
        let result = withParameters(query) { types, values, lengths, formats in
            if let statement {
                PQexecPrepared(conn, statement, Int32(query.binds.count), values, lengths, formats, 0)
            } else {
                PQexecParams(conn, query.sql, Int32(query.binds.count), types, values, lengths, formats, 0)
            }
        }
        return try consume(conn, result)
    }

    /// Prepares `query`'s text as the named statement `name` (parameter types as its binds give them).
    static func prepare(_ conn: OpaquePointer, _ query: PostgresQuery, as name: String) throws(PostgresError) {
        let result = withParameters(query) { types, _, _, _ in
            PQprepare(conn, name, query.sql, Int32(query.binds.count), types)
        }
        _ = try consume(conn, result)
    }

    /// Sends one parameterized statement without waiting: in nonblocking mode, so what the
    /// socket does not take at once stays in libpq's buffer for ``receive(_:)`` to flush.
    /// May be called from any thread that owns the connection for the moment.
    static func send(_ conn: OpaquePointer, _ query: PostgresQuery, statement: String? = nil) throws(PostgresError) {
        guard PQsetnonblocking(conn, 1) == 0 else {
            throw PostgresError(.connectionClosed, "cannot switch the connection to nonblocking mode: \(errorMessage(conn))")
        }
        let sent = withParameters(query) { types, values, lengths, formats in
            if let statement {
                PQsendQueryPrepared(conn, statement, Int32(query.binds.count), values, lengths, formats, 0)
            } else {
                PQsendQueryParams(conn, query.sql, Int32(query.binds.count), types, values, lengths, formats, 0)
            }
        }
        guard sent == 1 else {
            throw PostgresError(
                PQstatus(conn) == CONNECTION_OK ? .protocolViolation : .connectionClosed, "cannot send the statement: \(errorMessage(conn))")
        }
    }

    /// A wake-up pipe's read end that can cut ``receive(_:within:interrupt:)`` short.
    struct Interrupt {
        let fd: Int32
        let stop: () -> Bool

        func drain() {
            var buf = [UInt8](repeating: 0, count: 64)
            while read(fd, &buf, buf.count) > 0 {}
        }
    }

    /// What ``receive(_:within:interrupt:)`` got before its time ran out.
    enum Collected {
        /// The whole result: libpq is idle again.
        case done(Result<PostgresRows, PostgresError>)
        /// Not all of it yet; ``receive(_:after:)`` finishes (and frees `last`).
        case pending(last: OpaquePointer?)
    }

    /// Collects what ``send(_:_:)`` started without ever blocking past `deadline`: waits
    /// for the socket up to then, and returns `.pending` (with what it has) if the result
    /// is not all there. A broken connection counts as done (its error is the result).
    ///
    /// With an `interrupt`, the wait also ends (`.pending`) when its file descriptor turns
    /// readable and its `stop()` then says so; the descriptor is drained.
    static func receive(_ conn: OpaquePointer, within deadline: ContinuousClock.Instant, interrupt: Interrupt? = nil) -> Collected {
        func wait(_ events: Int32) -> Bool {
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else { return false }
            var fds = [pollfd(fd: PQsocket(conn), events: Int16(events), revents: 0), pollfd(fd: interrupt?.fd ?? -1, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, interrupt == nil ? 1 : 2, pollMilliseconds(left))
            if let interrupt, fds[1].revents != 0 {
                interrupt.drain()
                if interrupt.stop() { return false }
            }
            return ready != 0  // ready, or interrupted/failed (the next call sees why)
        }
        var flushed = PQflush(conn)
        while flushed == 1 {
            guard wait(Int32(POLLOUT | POLLIN)) else { return .pending(last: nil) }
            if PQconsumeInput(conn) == 0 { break }
            flushed = PQflush(conn)
        }
        if flushed == -1 { return .done(.failure(PostgresError(.connectionClosed, "cannot send the statement: \(errorMessage(conn))"))) }
        var last: OpaquePointer?
        while true {
            while PQisBusy(conn) == 1 {
                guard wait(Int32(POLLIN)) else { return .pending(last: last) }
                if PQconsumeInput(conn) == 0 { break }  // broken: PQgetResult reports it without waiting
            }
            guard let result = PQgetResult(conn) else { break }
            if let last { PQclear(last) }
            last = result
        }
        _ = PQsetnonblocking(conn, 0)
        do throws(PostgresError) {
            return .done(.success(try consume(conn, last)))
        } catch {
            return .done(.failure(error))
        }
    }

    /// Finishes what ``send(_:_:)`` started (or a ``receive(_:within:interrupt:)`` that ran out of
    /// time, with what it had), blocking: flushes the rest of the statement, then waits for
    /// and returns its result (the last one, as PQexec does).
    static func receive(_ conn: OpaquePointer, after last: OpaquePointer? = nil) throws(PostgresError) -> PostgresRows {
        var last = last
        while PQflush(conn) == 1 {
            var fd = pollfd(fd: PQsocket(conn), events: Int16(POLLOUT | POLLIN), revents: 0)
            if poll(&fd, 1, -1) < 0, errno != EINTR {
                if let last { PQclear(last) }
                throw PostgresError(.connectionClosed, "poll failed while sending (errno \(errno))")
            }
            if fd.revents & Int16(POLLIN) != 0, PQconsumeInput(conn) == 0 { break }
        }
        _ = PQsetnonblocking(conn, 0)
        while let result = PQgetResult(conn) {
            if let last { PQclear(last) }
            last = result
        }
        return try consume(conn, last)
    }

    /// `d` in whole milliseconds for `poll()`, rounded up (zero for none or less): rounding
    /// down would turn the last fraction of a millisecond of a wait into a busy loop of
    /// zero-timeout polls.
    static func pollMilliseconds(_ d: Duration) -> Int32 {
        let (seconds, attoseconds) = d.components
        guard seconds > 0 || (seconds == 0 && attoseconds > 0) else { return 0 }
        return Int32(clamping: seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
    }

    /// Calls `body` with the statement's parameters laid out as libpq wants them.
    private static func withParameters<R>(
        _ query: PostgresQuery,
        _ body: (UnsafePointer<Oid>, UnsafePointer<UnsafePointer<CChar>?>, UnsafePointer<Int32>, UnsafePointer<Int32>) -> R
    ) -> R {
        var cStrings: [UnsafeMutablePointer<CChar>?] = []
        var byteBuffers: [UnsafeMutablePointer<UInt8>] = []
        var lengths: [Int32] = []
        var formats: [Int32] = []
        var types: [Oid] = []
        for bind in query.binds {
            switch bind {
            case .null:
                cStrings.append(nil); lengths.append(0); formats.append(0); types.append(0)
            case .text(let s):
                cStrings.append(strdup(s)); lengths.append(0); formats.append(0); types.append(0)
            case .bytes(let b):
                let buf = UnsafeMutablePointer<UInt8>.allocate(capacity: max(b.count, 1))
                buf.initialize(from: b, count: b.count)
                byteBuffers.append(buf)
                cStrings.append(UnsafeMutableRawPointer(buf).assumingMemoryBound(to: CChar.self))
                lengths.append(Int32(b.count)); formats.append(1); types.append(17)  // bytea
            }
        }
        defer {
            for (i, p) in cStrings.enumerated() where formats[i] == 0 { free(p) }
            byteBuffers.forEach { $0.deallocate() }
        }
        let values: [UnsafePointer<CChar>?] = cStrings.map { $0.map { UnsafePointer($0) } }
        // One element at least, so the pointers are valid for a statement without parameters.
        return (types + [0]).withUnsafeBufferPointer { t in
            (values + [nil]).withUnsafeBufferPointer { v in
                (lengths + [0]).withUnsafeBufferPointer { l in
                    (formats + [0]).withUnsafeBufferPointer { f in body(t.baseAddress!, v.baseAddress!, l.baseAddress!, f.baseAddress!) }
                }
            }
        }
    }

    /// Runs a script of several statements with no parameters (embedded migration files only).
    static func execScript(_ conn: OpaquePointer, _ sql: String) throws(PostgresError) -> PostgresRows {
        try consume(conn, PQexec(conn, sql))
    }

    static func consume(_ conn: OpaquePointer, _ result: OpaquePointer?) throws(PostgresError) -> PostgresRows {
        guard let result else {
            throw PostgresError(
                PQstatus(conn) == CONNECTION_OK ? .protocolViolation : .connectionClosed,
                "connection lost: \(errorMessage(conn))")
        }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY:
            let nColumns = Int(PQnfields(result))
            let nRows = Int(PQntuples(result))
            var columns: [String] = []
            var oids: [UInt32] = []
            for c in 0..<nColumns {
                columns.append(String(cString: PQfname(result, Int32(c))))
                oids.append(PQftype(result, Int32(c)))
            }
            var rows: [[String?]] = []
            rows.reserveCapacity(nRows)
            for r in 0..<nRows {
                var row: [String?] = []
                row.reserveCapacity(nColumns)
                for c in 0..<nColumns {
                    if PQgetisnull(result, Int32(r), Int32(c)) == 1 {
                        row.append(nil)
                    } else {
                        row.append(String(cString: PQgetvalue(result, Int32(r), Int32(c))))
                    }
                }
                rows.append(row)
            }
            let tuples = String(cString: PQcmdTuples(result))
            return PostgresRows(columns: columns, typeOIDs: oids, values: rows, affectedRows: Int(tuples) ?? nRows)
        default:
            throw serverError(conn, result)
        }
    }

    static func serverError(_ conn: OpaquePointer, _ result: OpaquePointer) -> PostgresError {
        func field(_ code: UInt8) -> String? {
            guard let p = PQresultErrorField(result, Int32(code)) else { return nil }
            return String(cString: p)
        }
        let sqlState = field(UInt8(ascii: "C"))
        let message = field(UInt8(ascii: "M")) ?? errorMessage(conn)
        let broken = PQstatus(conn) != CONNECTION_OK
        return PostgresError(
            broken && sqlState == nil ? .connectionClosed : .server, message,
            sqlState: sqlState, detail: field(UInt8(ascii: "D")), hint: field(UInt8(ascii: "H")))
    }
}
