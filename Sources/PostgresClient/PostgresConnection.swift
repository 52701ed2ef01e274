import CLibPQ
import Dispatch
import Foundation
import Logging
import Synchronization

/// One PostgreSQL session.
///
/// Every libpq call that can wait long runs on the connection's own serial dispatch
/// queue, never on Swift's cooperative pool, so a slow statement blocks nobody else. The
/// exception is a statement on an idle connection: it is written from the calling thread
/// in libpq's nonblocking mode, so the server starts on it at once, and the caller then
/// waits for the result itself for at most `configuration.callerThreadWait` (1 ms by
/// default); a statement that takes longer is left to the queue, which flushes what the
/// socket did not take and collects the result. A short statement thus completes without
/// waking the queue's thread and then the caller's task. A connection runs one statement
/// at a time; callers that share one must not interleave transactions (the pool hands a
/// connection to one task at a time).
///
/// `abort()` may be called from any thread: it shuts the socket down so that a
/// statement stuck on a silent network returns at once with an error.
public final class PostgresConnection: @unchecked Sendable {
    // Why @unchecked Sendable is safe: `pgconn` is used by one thread at a time, as the
    // ``ConnectionOwnership`` in `shared` (a Mutex) decides: blocks on `queue` (a serial
    // queue) use it, and a caller's thread uses it only between `takeForCaller()` and
    // `callerReleases`, while every block submitted meanwhile is held back; blocks are
    // queued under the lock, so the hand-overs are ordered. No libpq call is made while
    // the lock is held. `pgconn` itself is written once more, by the closing block.
    private let queue: DispatchQueue
    private nonisolated(unsafe) var pgconn: OpaquePointer?
    private let shared: Mutex<Shared>
    public let configuration: ConnectionConfiguration
    /// The server process id of this session, read with `pg_backend_pid()` at connect (never
    /// `PQbackendPID()`, which a pooler fakes).
    public let backendPID: Int32

    struct Shared: Sendable {
        var ownership = ConnectionOwnership<@Sendable () -> Void>()
        var socketFD: Int32
        var canceller: Canceller?
        var statements = PreparedStatementCache()
    }

    private init(session: LibPQ.Session, configuration: ConnectionConfiguration, queue: DispatchQueue) {
        let conn = session.conn
        self.pgconn = conn
        self.queue = queue
        self.configuration = configuration
        self.backendPID = session.serverPID
        self.shared = Mutex(Shared(socketFD: PQsocket(conn), canceller: Canceller(conn)))
    }

    deinit {
        if let conn = pgconn { PQfinish(conn) }
    }

    /// Opens a session; errors name the host and port and carry libpq's reason.
    ///
    /// With `requireSession`, the connection must be one server session for its life (a
    /// session advisory lock needs that): a transaction-mode pooler in between is refused
    /// with ``PostgresError/Code/sessionNotPinned``.
    public static func connect(_ configuration: ConnectionConfiguration, requireSession: Bool = false) async throws -> PostgresConnection {
        let queue = DispatchQueue(label: "regent.pg.connection")
        return try await withCheckedThrowingContinuation { cont in
            queue.async {
                do {
                    let session = try LibPQ.connect(configuration)
                    if requireSession {
                        do { try LibPQ.verifySessionPinned(session, config: configuration) } catch {
                            PQfinish(session.conn)
                            throw error
                        }
                    }
                    cont.resume(returning: PostgresConnection(session: session, configuration: configuration, queue: queue))
                } catch {
                    cont.resume(throwing: error)
                }
            }
        }
    }

    /// The session's socket descriptor (tests read its options).
    var socketDescriptor: Int32 { shared.withLock { $0.socketFD } }

    /// True until the connection is closed or a statement found it broken.
    public var isUsable: Bool { shared.withLock { $0.ownership.isUsable } }

    /// True when the session is inside a transaction, or its state is unknown (a statement
    /// runs, or the connection broke), as libpq last saw it, read without a round trip. A
    /// pool must not lend such a session to anyone else.
    public var isInTransaction: Bool {
        let conn = shared.withLock { s -> OpaquePointer? in
            guard let conn = pgconn, s.ownership.takeForCaller() else { return nil }
            return conn
        }
        guard let conn else { return shared.withLock { !$0.ownership.closed } }
        let status = PQtransactionStatus(conn)
        release(finishing: nil, broken: false)
        return status != PQTRANS_IDLE
    }

    private func run<T: Sendable>(
        purpose: String?, _ body: @escaping @Sendable (OpaquePointer) throws(PostgresError) -> T
    ) async throws -> T {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
                submit(block(purpose: purpose, cont, body))
            }
        } onCancel: {
            cancelCurrentStatement()
        }
    }

    /// Counts `block` as outstanding and queues it, or holds it while a caller's thread
    /// owns the connection. Queued under the lock, so hand-overs keep their order.
    private func submit(_ block: @escaping @Sendable () -> Void) {
        shared.withLock { s in
            if let block = s.ownership.submit(block) { queue.async(execute: block) }
        }
    }

    /// The caller's thread lets go of the connection (see ``ConnectionOwnership``).
    private func release(finishing: (@Sendable () -> Void)?, broken: Bool) {
        shared.withLock { s in
            for block in s.ownership.callerReleases(finishing: finishing, broken: broken) { queue.async(execute: block) }
        }
    }

    /// The queue block that runs `body` and resumes `cont` with its outcome; a connection
    /// found broken is marked so.
    private func block<T: Sendable>(
        purpose: String?, _ cont: CheckedContinuation<T, any Error>,
        _ body: @escaping @Sendable (OpaquePointer) throws(PostgresError) -> T
    ) -> @Sendable () -> Void {
        { [self] in
            // The work ends before its caller resumes: a caller that hands the connection back
            // at once (to a pool) finds it idle, not still busy with this block.
            let outcome: Result<T, any Error>
            // A statement must not start while a cancel request meant for an earlier one is
            // on its way: PostgreSQL cancels whatever runs when the request arrives. Once sent,
            // the signal has reached the backend, which drops it if it is idle.
            shared.withLock { $0.canceller }?.waitUntilSent(timeout: .seconds(10))
            if let conn = pgconn, !shared.withLock({ $0.ownership.closed }) {
                do {
                    outcome = .success(try body(conn))
                } catch {
                    let broken = PQstatus(conn) != CONNECTION_OK
                    if broken { shared.withLock { $0.ownership.markBroken() } }
                    outcome = .failure(error.with(purpose: purpose))
                }
            } else {
                outcome = .failure(PostgresError(.connectionClosed, "connection is closed", purpose: purpose))
            }
            shared.withLock { $0.ownership.workEnded() }
            cont.resume(with: outcome)
        }
    }

    /// Runs one statement with bound parameters and returns all its rows.
    @discardableResult
    public func query(_ query: PostgresQuery, purpose: String? = nil) async throws -> PostgresRows {
        do {
            return try await run(query, purpose: purpose)
        } catch let error as PostgresError where query.reusesPlan && error.sqlState == "26000" {
            // The session lost the prepared statement (DISCARD ALL, DEALLOCATE ALL): it is
            // prepared again on the next run — this one, if no transaction was open (nothing
            // ran; a transaction is aborted by the error and must see it).
            shared.withLock { $0.statements.forget(query.sql) }
            guard try await run(purpose: purpose, { conn throws(PostgresError) in PQtransactionStatus(conn) == PQTRANS_IDLE }) else {
                throw error
            }
            return try await run(query, purpose: purpose)
        }
    }

    /// How `query` found the connection.
    private enum Take {
        /// Idle: this thread owns it and sends the statement (prepared as `statement`, if any).
        case taken(OpaquePointer, statement: String?)
        /// Another statement runs or waits, a cancel request is on its way, or the statement
        /// must be prepared first: it goes to the queue, unsent.
        case busy
    }

    private func run(_ query: PostgresQuery, purpose: String?) async throws -> PostgresRows {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<PostgresRows, any Error>) in
                let take = shared.withLock { s -> Take in
                    guard let conn = pgconn else { return .busy }
                    // A cancel request still on its way could reach this statement: the queue
                    // waits for it first.
                    if s.canceller?.isSending == true { return .busy }
                    let statement = query.reusesPlan ? s.statements.name(for: query.sql) : nil
                    if query.reusesPlan, statement == nil { return .busy }
                    return s.ownership.takeForCaller() ? .taken(conn, statement: statement) : .busy
                }
                guard case .taken(let conn, let statement) = take else {
                    submit(block(purpose: purpose, cont) { [self] conn throws(PostgresError) in try execute(conn, query) })
                    return
                }
                do throws(PostgresError) {
                    try LibPQ.send(conn, query, statement: statement)
                } catch {
                    release(finishing: nil, broken: PQstatus(conn) != CONNECTION_OK)
                    cont.resume(throwing: error.with(purpose: purpose))
                    return
                }
                if configuration.callerThreadWait > .zero, CallerThreadWaits.enter() {
                    collect(conn, purpose: purpose, cont)
                } else {
                    release(finishing: block(purpose: purpose, cont) { conn throws(PostgresError) in try LibPQ.receive(conn) }, broken: false)
                }
            }
        } onCancel: {
            cancelCurrentStatement()
        }
    }

    /// Runs `query` as the connection's owner (a block on the queue), preparing it first
    /// when it reuses a plan that this session has not prepared yet.
    private func execute(_ conn: OpaquePointer, _ query: PostgresQuery) throws(PostgresError) -> PostgresRows {
        guard query.reusesPlan else { return try LibPQ.exec(conn, query) }
        // The prepared name, or a fresh one to prepare under.
        let (name, known) = shared.withLock { s -> (String, Bool) in
            if let known = s.statements.name(for: query.sql) { return (known, true) }
            return (s.statements.newName(), false)
        }
        if known { return try LibPQ.exec(conn, query, statement: name) }
        try LibPQ.prepare(conn, query, as: name)
        shared.withLock { $0.statements.remember(query.sql, as: name) }
        return try LibPQ.exec(conn, query, statement: name)
    }

    /// Waits on this thread, briefly, for the result of the statement just sent; hands
    /// the rest of the wait to the queue if it does not come in time.
    private func collect(_ conn: OpaquePointer, purpose: String?, _ cont: CheckedContinuation<PostgresRows, any Error>) {
        let wait = min(max(configuration.callerThreadWait, .zero), ConnectionConfiguration.maxCallerThreadWait)
        let collected = LibPQ.receive(conn, within: .now + wait)
        CallerThreadWaits.leave()
        switch collected {
        case .done(let result):
            release(finishing: nil, broken: PQstatus(conn) != CONNECTION_OK)
            switch result {
            case .success(let rows): cont.resume(returning: rows)
            case .failure(let error): cont.resume(throwing: error.with(purpose: purpose))
            }
        case .pending(let last):
            let partial = PartialResult(last)
            release(
                finishing: block(purpose: purpose, cont) { conn throws(PostgresError) in try LibPQ.receive(conn, after: partial.take()) },
                broken: false)
        }
    }

    /// Runs a multi-statement script without parameters. Only for SQL compiled into
    /// the binary (migration files); user input never reaches it.
    public func executeScript(_ sql: String, purpose: String? = nil) async throws {
        _ = try await run(purpose: purpose) { conn throws(PostgresError) in try LibPQ.execScript(conn, sql) }
    }

    /// Asks the server to cancel the running statement (thread-safe; no-op when idle).
    ///
    /// Returns at once: the request goes out from a background thread (see ``Canceller``),
    /// so it is safe in a task-cancellation handler, which must never block.
    public func cancelCurrentStatement() {
        let (canceller, ended) = shared.withLock { s in
            s.ownership.closed || s.ownership.isIdle ? (nil, 0) : (s.canceller, s.ownership.ended)
        }
        // The request goes out later, from another thread: by then the statement may have
        // ended and the session begun another, which PostgreSQL would cancel instead.
        canceller?.request(unlessStale: { [weak self] in
            self?.shared.withLock { $0.ownership.cancelIsStale(endedThen: ended) } ?? true
        })
    }

    /// Tests only: holds this connection's cancel requests back (see ``Canceller``).
    func delayCancelRequestsForTesting(_ delay: Duration) {
        let canceller = shared.withLock { $0.canceller }
        let (seconds, attoseconds) = delay.components
        canceller?.testDelayMicroseconds.store(Int(seconds) * 1_000_000 + Int(attoseconds / 1_000_000_000_000), ordering: .relaxed)
    }

    /// Marks the session unusable (a failed rollback or commit left its state unknown): no
    /// pool lends it again.
    func markBroken() { shared.withLock { $0.ownership.markBroken() } }

    /// Shuts the socket down from any thread: a statement blocked on a silent peer
    /// fails at once, and the connection is unusable afterwards.
    public func abort() {
        shared.withLock { s in
            guard s.ownership.isUsable else { return }
            s.ownership.markBroken()
            if s.socketFD >= 0 { _ = shutdown(s.socketFD, Int32(SHUT_RDWR)) }
        }
    }

    /// Closes the session once a running statement ends, without waiting for that (a pool
    /// discarding a connection). The connection's own queue does the closing.
    public func closeWithoutWaiting() {
        submit(closing(then: {}))
    }

    /// The block that closes the session, then calls `done`.
    private func closing(then done: @escaping @Sendable () -> Void) -> @Sendable () -> Void {
        { [self] in
            defer { shared.withLock { $0.ownership.workEnded() } }
            // The cancel handle is freed (PQfreeCancel) outside the lock, when this goes.
            let canceller = shared.withLock { s -> Canceller? in
                s.ownership.markClosed()
                defer { s.canceller = nil }
                return s.canceller
            }
            if let conn = pgconn {
                PQfinish(conn)
                pgconn = nil
            }
            withExtendedLifetime(canceller) {}
            done()
        }
    }

    /// Closes the session (idempotent). Waits for a running statement to end.
    public func close() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            submit(closing(then: { cont.resume() }))
        }
    }

    /// Opens a session, runs `body` with it, and closes it (awaited) however `body` ends.
    public static func withConnection<T>(
        _ configuration: ConnectionConfiguration, requireSession: Bool = false,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        let conn = try await connect(configuration, requireSession: requireSession)
        do {
            let value = try await body(conn)
            await conn.close()
            return value
        } catch {
            await conn.close()
            throw error
        }
    }
}

extension Error {
    func with(purpose: String?) -> any Error {
        (self as? PostgresError)?.with(purpose: purpose) ?? self
    }
}

/// A libpq result handed from the caller's thread to the queue's block that finishes the
/// statement.
// @unchecked: the pointer is taken exactly once, by that block, which runs after the
// caller's thread let go of the connection (the hand-over is ordered by `shared`'s lock
// and `queue.async`); nothing else touches it.
private final class PartialResult: @unchecked Sendable {
    private var result: OpaquePointer?
    init(_ result: OpaquePointer?) { self.result = result }
    /// Frees a result nobody took (the connection was closed before the block ran).
    deinit { if let result { PQclear(result) } }
    func take() -> OpaquePointer? {
        defer { result = nil }
        return result
    }
}
