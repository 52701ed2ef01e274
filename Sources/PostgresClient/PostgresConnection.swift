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
    // Why @unchecked Sendable is safe: `pgconn` is used by one thread at a time. Blocks
    // on `queue` (a serial queue) use it; so does `query`'s caller thread, but only after
    // finding, under `shared`'s lock, that no block is running or queued (`outstanding ==
    // 0`, counted under that lock for every block) and marking `callerOwns` there: while
    // that is set, blocks are held in `deferred` rather than queued, and they are queued
    // (after the one that finishes the caller's statement, if any) under the lock when the
    // caller lets go. The lock orders the hand-overs. The fields shared with other threads
    // (`socketFD`, `canceller`, `closed`, …) live in `shared`, a Mutex.
    private let queue: DispatchQueue
    private nonisolated(unsafe) var pgconn: OpaquePointer?
    private let shared: Mutex<Shared>
    public let configuration: ConnectionConfiguration
    /// The server process id of this session, read with `pg_backend_pid()` at connect (never
    /// `PQbackendPID()`, which a pooler fakes).
    public let backendPID: Int32

    struct Shared: Sendable {
        var socketFD: Int32
        var canceller: Canceller?
        var closed = false
        var broken = false
        /// Blocks queued or running on `queue` (and a statement on a caller's thread).
        var outstanding = 0
        /// Blocks and caller-thread statements that have ended: a cancel request sent late
        /// checks it, so that it never reaches a statement that began after its own ended.
        var ended = 0
        /// A caller's thread is using the connection: blocks wait in `deferred`.
        var callerOwns = false
        var deferred: [@Sendable () -> Void] = []
        /// Statements prepared on this session (``PostgresQuery/prepared()``): text → name.
        /// Added to only by the connection's owner of the moment, after the server said yes.
        var statements: [String: String] = [:]
        /// Names are never reused on a session, even for a statement it lost.
        var statementsNamed = 0

        /// A block or a caller-thread statement has ended.
        mutating func endOne() {
            outstanding -= 1
            ended += 1
        }

        /// Queues `block`, or holds it while a caller's thread owns the connection.
        mutating func schedule(_ block: @escaping @Sendable () -> Void, on queue: DispatchQueue) {
            if callerOwns { deferred.append(block) } else { queue.async(execute: block) }
        }
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
    public var isUsable: Bool { shared.withLock { !$0.closed && !$0.broken } }

    /// True when the session is inside a transaction (or its state is unknown), as libpq last
    /// saw it, read without a round trip. A pool must not lend such a session to anyone else.
    /// Read under `shared`'s lock while no statement runs (`outstanding == 0`), so no other
    /// thread uses `pgconn` meanwhile.
    public var isInTransaction: Bool {
        shared.withLock { s in
            guard !s.closed, s.outstanding == 0, let conn = pgconn else { return s.outstanding > 0 }
            return PQtransactionStatus(conn) != PQTRANS_IDLE
        }
    }

    private func run<T: Sendable>(
        purpose: String?, _ body: @escaping @Sendable (OpaquePointer) throws(PostgresError) -> T
    ) async throws -> T {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
                enqueue(purpose: purpose, cont, body)
            }
        } onCancel: {
            cancelCurrentStatement()
        }
    }

    /// Runs `body` on the queue (counted as outstanding until it ends) and resumes `cont`
    /// with its outcome; a connection found broken is marked so.
    private func enqueue<T: Sendable>(
        purpose: String?, _ cont: CheckedContinuation<T, any Error>,
        _ body: @escaping @Sendable (OpaquePointer) throws(PostgresError) -> T
    ) {
        let block = block(purpose: purpose, cont, body)
        shared.withLock { s in
            s.outstanding += 1
            s.schedule(block, on: queue)
        }
    }

    /// The queue block that runs `body` and resumes `cont`.
    private func block<T: Sendable>(
        purpose: String?, _ cont: CheckedContinuation<T, any Error>,
        _ body: @escaping @Sendable (OpaquePointer) throws(PostgresError) -> T
    ) -> @Sendable () -> Void {
        { [self] in
            defer { shared.withLock { $0.endOne() } }
            // A statement must not start while a cancel request meant for an earlier one is
            // on its way: PostgreSQL cancels whatever runs when the request arrives. Once sent,
            // the signal has reached the backend, which drops it if it is idle.
            shared.withLock { $0.canceller }?.waitUntilSent(timeout: .seconds(10))
            guard let conn = pgconn, !shared.withLock({ $0.closed }) else {
                cont.resume(throwing: PostgresError(.connectionClosed, "connection is closed", purpose: purpose))
                return
            }
            do {
                let value = try body(conn)
                cont.resume(returning: value)
            } catch {
                if PQstatus(conn) != CONNECTION_OK { shared.withLock { $0.broken = true } }
                cont.resume(throwing: error.with(purpose: purpose))
            }
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
            shared.withLock { _ = $0.statements.removeValue(forKey: query.sql) }
            guard try await run(purpose: purpose, { conn throws(PostgresError) in PQtransactionStatus(conn) == PQTRANS_IDLE }) else {
                throw error
            }
            return try await run(query, purpose: purpose)
        }
    }

    private func run(_ query: PostgresQuery, purpose: String?) async throws -> PostgresRows {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<PostgresRows, any Error>) in
                // Sent, and the connection taken by this thread (or the result's collection
                // queued), under the lock: a statement arriving meanwhile waits its turn.
                let sent = shared.withLock { s -> Send in
                    guard !s.closed, !s.broken, s.outstanding == 0, let conn = pgconn else { return .busy }
                    // A cancel request still on its way could reach this statement: the queue
                    // waits for it first.
                    if s.canceller?.isSending == true { return .busy }
                    let statement = query.reusesPlan ? s.statements[query.sql] : nil
                    // Not prepared on this session yet: the queue prepares it first.
                    if query.reusesPlan, statement == nil { return .busy }
                    do throws(PostgresError) {
                        try LibPQ.send(conn, query, statement: statement)
                    } catch {
                        if PQstatus(conn) != CONNECTION_OK { s.broken = true }
                        return .failed(error)
                    }
                    s.outstanding += 1
                    if configuration.callerThreadWait > .zero, CallerThreadWaits.enter() {
                        s.callerOwns = true
                        return .callerWaits(conn)
                    }
                    s.schedule(block(purpose: purpose, cont) { conn throws(PostgresError) in try LibPQ.receive(conn) }, on: queue)
                    return .queueWaits
                }
                switch sent {
                case .callerWaits(let conn): collect(conn, purpose: purpose, cont)
                case .queueWaits: break
                case .busy: enqueue(purpose: purpose, cont) { [self] conn throws(PostgresError) in try execute(conn, query) }
                case .failed(let error): cont.resume(throwing: error.with(purpose: purpose))
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
            if let known = s.statements[query.sql] { return (known, true) }
            s.statementsNamed += 1
            return ("regent_\(s.statementsNamed)", false)
        }
        if known { return try LibPQ.exec(conn, query, statement: name) }
        try LibPQ.prepare(conn, query, as: name)
        shared.withLock { $0.statements[query.sql] = name }
        return try LibPQ.exec(conn, query, statement: name)
    }

    /// How `query` found the connection and sent its statement.
    private enum Send {
        /// Sent; this thread owns the connection and waits for the result itself.
        case callerWaits(OpaquePointer)
        /// Sent; the queue collects the result.
        case queueWaits
        /// Another statement is running or queued: this one queues behind it, unsent.
        case busy
        case failed(PostgresError)
    }

    /// Waits on this thread, briefly, for the result of the statement just sent; hands
    /// the rest of the wait to the queue if it does not come in time.
    private func collect(_ conn: OpaquePointer, purpose: String?, _ cont: CheckedContinuation<PostgresRows, any Error>) {
        let wait = min(max(configuration.callerThreadWait, .zero), ConnectionConfiguration.maxCallerThreadWait)
        let collected = LibPQ.receive(conn, within: .now + wait)
        CallerThreadWaits.leave()
        let broken = PQstatus(conn) != CONNECTION_OK
        let finish: (@Sendable () -> Void)?
        switch collected {
        case .done: finish = nil
        case .pending(let last):
            let partial = PartialResult(last)
            finish = block(purpose: purpose, cont) { conn throws(PostgresError) in try LibPQ.receive(conn, after: partial.take()) }
        }
        shared.withLock { s in
            s.callerOwns = false
            if let finish {
                queue.async(execute: finish)
            } else {
                s.endOne()
                if broken { s.broken = true }
            }
            for block in s.deferred { queue.async(execute: block) }
            s.deferred.removeAll()
        }
        if case .done(let result) = collected {
            switch result {
            case .success(let rows): cont.resume(returning: rows)
            case .failure(let error): cont.resume(throwing: error.with(purpose: purpose))
            }
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
        let (canceller, ended) = shared.withLock { s in s.closed || s.outstanding == 0 ? (nil, 0) : (s.canceller, s.ended) }
        // The request goes out later, from another thread: by then the statement may have
        // ended and the session begun another, which PostgreSQL would cancel instead.
        canceller?.request(unlessStale: { [weak self] in
            self?.shared.withLock { s in s.closed || s.outstanding == 0 || s.ended != ended } ?? true
        })
    }

    /// Tests only: holds this connection's cancel requests back (see ``Canceller``).
    func delayCancelRequestsForTesting(_ delay: Duration) {
        let canceller = shared.withLock { $0.canceller }
        let (seconds, attoseconds) = delay.components
        canceller?.testDelayMicroseconds.store(Int(seconds) * 1_000_000 + Int(attoseconds / 1_000_000_000_000), ordering: .relaxed)
    }

    /// Shuts the socket down from any thread: a statement blocked on a silent peer
    /// fails at once, and the connection is unusable afterwards.
    public func abort() {
        shared.withLock { s in
            guard !s.closed, !s.broken else { return }
            s.broken = true
            if s.socketFD >= 0 { _ = shutdown(s.socketFD, Int32(SHUT_RDWR)) }
        }
    }

    /// Closes the session (idempotent). Waits for a running statement to end.
    public func close() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let block: @Sendable () -> Void = { [self] in
                defer { shared.withLock { $0.endOne() } }
                shared.withLock { s in
                    s.closed = true
                    s.canceller = nil
                }
                if let conn = pgconn {
                    PQfinish(conn)
                    pgconn = nil
                }
                cont.resume()
            }
            shared.withLock { s in
                s.outstanding += 1
                s.schedule(block, on: queue)
            }
        }
    }

    /// Runs `body` inside BEGIN … COMMIT; any thrown error rolls back and is rethrown.
    @discardableResult
    public func withTransaction<T: Sendable>(
        isolation: IsolationLevel = .readCommitted,
        actor: isolated (any Actor)? = #isolation,
        _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await query(isolation.beginStatement, purpose: "begin transaction")
        let value: T
        do {
            value = try await body(self)
        } catch {
            // Report a failed rollback beside the body's error, never instead of it or not at
            // all: the session is then in an unknown state, and is marked broken so that no
            // pool lends it again.
            guard isUsable else { throw error }
            do {
                try await query("ROLLBACK", purpose: "roll back transaction")
            } catch let rollback {
                shared.withLock { $0.broken = true }
                throw PostgresError(
                    .connectionClosed, "transaction failed (\(error)), and its rollback failed too (\(rollback)); the session was discarded",
                    purpose: "roll back transaction")
            }
            throw error
        }
        do {
            try await query("COMMIT", purpose: "commit transaction")
        } catch {
            // A failed COMMIT leaves the outcome to the server (rolled back, or unknown if the
            // connection broke): say so, and let no pool reuse the session.
            if isInTransaction { shared.withLock { $0.broken = true } }
            throw error
        }
        return value
    }
}

/// Transaction isolation levels.
public enum IsolationLevel: String, Sendable, CaseIterable {
    case readCommitted = "READ COMMITTED"
    case repeatableRead = "REPEATABLE READ"
    case serializable = "SERIALIZABLE"

    var beginStatement: PostgresQuery {
        switch self {
        case .readCommitted: "BEGIN ISOLATION LEVEL READ COMMITTED"
        case .repeatableRead: "BEGIN ISOLATION LEVEL REPEATABLE READ"
        case .serializable: "BEGIN ISOLATION LEVEL SERIALIZABLE"
        }
    }
}

extension Error {
    func with(purpose: String?) -> any Error {
        (self as? PostgresError)?.with(purpose: purpose) ?? self
    }
}

/// Sends a connection's cancel requests (PQcancel) from a background thread, one at a time.
///
/// PQcancel opens a connection of its own to the server and waits for the server to close
/// it, with no time limit: against a server that has stopped answering (a partition, a
/// stalled proxy) it blocks for as long as that lasts. Called from a task's cancellation
/// handler it would hold the Swift runtime's lock on that task's status — and a thread of
/// the cooperative pool (one per core) — the whole time; a test once froze a whole process
/// that way. So `request(unlessStale:)` only hands the work to a thread of its own; a request
/// made while one is on its way is sent after it, by the same thread: a stalled server costs
/// at most one blocked background thread per connection, never a cooperative or a dispatch
/// one. Sent late, a request could reach the next statement instead of the one it was made
/// for (PostgreSQL cancels whatever the session runs when it arrives), so each carries a
/// check, made just before sending, that its statement is still the one running.
final class Canceller: Sendable {
    // The PGcancel is freed in deinit, when the last reference (the connection's, or a
    // request on its way) goes; PQcancel only reads it, from one thread at a time here.
    private nonisolated(unsafe) let handle: OpaquePointer
    /// A request is on its way (`inFlight`); `next`: the staleness check of a request made
    /// meanwhile, sent after it (it may be meant for a later statement than the first).
    private let state = Mutex<(inFlight: Bool, next: (@Sendable () -> Bool)?)>((false, nil))
    /// Entered while requests are on their way.
    private let sending = DispatchGroup()

    /// Holds this connection's requests back this long between their staleness check and
    /// sending (tests only: it widens the window in which a statement ends, and the next one
    /// could begin, before the request arrives).
    let testDelayMicroseconds = Atomic<Int>(0)

    init?(_ conn: OpaquePointer) {
        guard let handle = PQgetCancel(conn) else { return nil }
        self.handle = handle
    }

    deinit { PQfreeCancel(handle) }

    /// Sends a cancel request from a thread of its own, unless `stale()` says, just before,
    /// that the statement it was meant for has ended.
    func request(unlessStale stale: @escaping @Sendable () -> Bool) {
        let start = state.withLock { s -> Bool in
            s.next = stale
            if s.inFlight { return false }
            s.inFlight = true
            return true
        }
        guard start else { return }
        sending.enter()
        // A thread of its own, not a global dispatch queue: PQcancel may block for as long as
        // the network stays silent, and those queues have few threads to spare.
        Thread { [self] in
            while let stale = state.withLock({ s -> (@Sendable () -> Bool)? in
                let next = s.next
                s.next = nil
                if next == nil { s.inFlight = false }
                return next
            }) {
                if stale() { continue }
                let delay = testDelayMicroseconds.load(ordering: .relaxed)
                if delay > 0 { usleep(UInt32(delay)) }
                var buf = [CChar](repeating: 0, count: 256)
                _ = PQcancel(handle, &buf, Int32(buf.count))
            }
            sending.leave()
        }.start()
    }

    /// A request is on its way.
    var isSending: Bool { state.withLock { $0.inFlight } }

    /// Blocks until no request is on its way, or `timeout` passed (a silent network).
    func waitUntilSent(timeout: Duration) {
        let (seconds, attoseconds) = timeout.components
        _ = sending.wait(timeout: .now() + Double(seconds) + Double(attoseconds) / 1e18)
    }
}

/// How many threads wait for a result in ``PostgresConnection/query(_:purpose:)`` at once.
///
/// Those are threads of Swift's cooperative pool (one per core): with every one of them
/// waiting on the network, nothing else in the process would run — a leader's lock
/// confirmation included — until a wait ended. So at most half of them (one at least) may
/// wait; a statement that finds no room hands its wait to its connection's queue, as a
/// statement that outlasts the wait does.
enum CallerThreadWaits {
    static let limit = max(1, ProcessInfo.processInfo.activeProcessorCount / 2)
    private static let current = Atomic<Int>(0)

    static func enter() -> Bool {
        var now = current.load(ordering: .relaxed)
        while now < limit {
            let (exchanged, original) = current.compareExchange(expected: now, desired: now + 1, ordering: .acquiringAndReleasing)
            if exchanged { return true }
            now = original
        }
        return false
    }

    static func leave() { current.subtract(1, ordering: .releasing) }
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
