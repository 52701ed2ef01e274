import CLibPQ
import Foundation
import Synchronization

/// A notification received through LISTEN.
public struct PostgresNotification: Sendable, Hashable {
    public var channel: String
    public var payload: String
    /// Server process id of the session that sent it.
    public var senderPID: Int32
}

/// The listener's connection, lent to a ``PostgresListenerHandler`` for the length of one
/// callback, on the listener thread. Not `Sendable` on purpose: it must not leave the call.
public struct ListenerSession {
    let exec: (PostgresQuery) throws(PostgresError) -> PostgresRows
    /// The server pid of the LISTEN session.
    public let backendPID: Int32

    /// Runs one statement on the listener's own connection. Notifications that arrive
    /// meanwhile are kept and handed over after the callback returns, in arrival order.
    /// A statement the server does not answer within the listener's `answerTimeout`, or
    /// one cut short by ``PostgresListener/stop()``, fails with `connectionClosed`, and the
    /// listener ends with that error.
    public func query(_ query: PostgresQuery) throws(PostgresError) -> PostgresRows {
        try exec(query)
    }
}

/// Receives a listener's traffic on the listener thread itself, with no hop to another
/// thread or task: the fastest way from the socket to the code that acts on it. Callbacks
/// run one at a time, in order; they must not block on anything but the session they get.
/// Throwing from one ends the listener with that error (as a lost connection would).
public protocol PostgresListenerHandler: Sendable {
    /// After LISTEN, before the first notification: the place to catch up on what was missed.
    func listenerConnected(_ session: ListenerSession) throws
    func received(_ notification: PostgresNotification, session: ListenerSession) throws
    /// Called at least every `tickInterval` while the listener runs (nil: never).
    var tickInterval: Duration? { get }
    func tick(_ session: ListenerSession) throws
}

extension PostgresListenerHandler {
    public func listenerConnected(_ session: ListenerSession) throws {}
    public var tickInterval: Duration? { nil }
    public func tick(_ session: ListenerSession) throws {}
}

/// A dedicated LISTEN connection.
///
/// It owns one `PGconn` on one thread of its own, which sleeps in `poll()` on the
/// connection's socket (no busy polling) and on a wake-up pipe for commands. Started with
/// ``connect(_:channels:pingInterval:)``, every notification is yielded to
/// ``notifications`` in arrival order; started with a ``PostgresListenerHandler``, the
/// handler gets them on the listener thread. When the connection breaks (server restart,
/// `pg_terminate_backend`, a failed ping) the listener ends with a ``PostgresError`` with
/// code `connectionClosed`; reconnecting, and re-reading what was missed, is the caller's job.
public final class PostgresListener: @unchecked Sendable {
    // Why @unchecked Sendable is safe: `pgconn` is touched only by the listener
    // thread (`runLoop`), after `start` hands it over and before the thread exits, or by
    // `deinit` when no thread ever started. Other threads talk to that thread through
    // `state` (a Mutex) and the wake-up pipe, whose file descriptors never change after init.
    /// Every notification, when started by ``connect(_:channels:pingInterval:)``; with a
    /// handler of your own it only ends (with the listener's error, if any).
    public let notifications: AsyncThrowingStream<PostgresNotification, any Error>
    private let continuation: AsyncThrowingStream<PostgresNotification, any Error>.Continuation
    private nonisolated(unsafe) var pgconn: OpaquePointer?
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let state = Mutex(State())
    private let wakeUpCount = Atomic<Int>(0)
    /// Times the listener thread has come out of `poll()`: about one per notification
    /// burst, command, ping and tick (a diagnostic, and the proof that it does not spin).
    public var wakeUps: Int { wakeUpCount.load(ordering: .relaxed) }
    /// How long the connection may stay silent before the thread pings it.
    public let pingInterval: Duration
    /// How long a statement on the listener's connection (LISTEN, the ping, a handler's
    /// query) may go unanswered before the connection is taken for lost: a server behind a
    /// partition never answers, and TCP alone would not say so for minutes.
    public let answerTimeout: Duration
    public let backendPID: Int32

    private struct State {
        var commands: [Command] = []
        var stopping = false
        var started = false
        var finished = false
        var outcome: Result<Void, PostgresError>?
        var closeWaiters: [CheckedContinuation<Void, any Error>] = []
        var socketFD: Int32 = -1
    }

    private struct Command {
        var query: PostgresQuery
        var done: CheckedContinuation<Void, any Error>
    }

    private init(session: LibPQ.Session, pingInterval: Duration, answerTimeout: Duration) throws {
        let conn = session.conn
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw PostgresError(.connectionFailed, "cannot create the listener's wake-up pipe") }
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        wakeRead = fds[0]
        wakeWrite = fds[1]
        pgconn = conn
        backendPID = session.serverPID
        self.pingInterval = pingInterval
        self.answerTimeout = answerTimeout
        (notifications, continuation) = AsyncThrowingStream.makeStream(bufferingPolicy: .unbounded)
        state.withLock { $0.socketFD = PQsocket(conn) }
    }

    deinit {
        close(wakeRead)
        close(wakeWrite)
        if let pgconn { PQfinish(pgconn) }
    }

    /// Connects, LISTENs on `channels`, and starts the listener thread, which yields every
    /// notification to ``notifications``.
    public static func connect(
        _ configuration: ConnectionConfiguration, channels: [SQLIdentifier], pingInterval: Duration = .seconds(5),
        answerTimeout: Duration = .seconds(10)
    ) async throws -> PostgresListener {
        let listener = try await open(configuration, channels: channels, pingInterval: pingInterval, answerTimeout: answerTimeout)
        listener.start(StreamHandler(continuation: listener.continuation))
        return listener
    }

    /// Connects and LISTENs on `channels`; nothing is read until ``start(_:)``.
    public static func open(
        _ configuration: ConnectionConfiguration, channels: [SQLIdentifier], pingInterval: Duration = .seconds(5),
        answerTimeout: Duration = .seconds(10)
    ) async throws -> PostgresListener {
        let queue = DispatchQueue(label: "regent.pg.listener.connect")
        return try await withCheckedThrowingContinuation { cont in
            queue.async {
                do {
                    let session = try LibPQ.connect(configuration)
                    let conn = session.conn
                    // LISTEN is per session: through a transaction-mode pooler it would be lost.
                    do { try LibPQ.verifySessionPinned(session, config: configuration) } catch {
                        PQfinish(conn)
                        throw error
                    }
                    for channel in channels {
                        do { _ = try Self.exec(conn, "LISTEN \(identifier: channel)", answerTimeout: answerTimeout) } catch {
                            PQfinish(conn)
                            throw error
                        }
                    }
                    cont.resume(returning: try PostgresListener(session: session, pingInterval: pingInterval, answerTimeout: answerTimeout))
                } catch {
                    cont.resume(throwing: error)
                }
            }
        }
    }

    /// Starts the listener thread with `handler` (once; later calls do nothing).
    public func start(_ handler: some PostgresListenerHandler) {
        let first = state.withLock { s -> Bool in
            guard !s.started, !s.stopping else { return false }
            s.started = true
            return true
        }
        guard first else { return }
        let thread = Thread { [self] in runLoop(handler) }
        thread.name = "regent-listener"
        thread.start()
    }

    /// Returns when the listener has ended: normally after ``stop()``, or throwing the
    /// `connectionClosed` error (or the handler's error) that ended it.
    public func waitUntilClosed() async throws {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Void, any Error>) in
            let outcome = state.withLock { s -> Result<Void, PostgresError>? in
                if s.outcome == nil { s.closeWaiters.append(cont) }
                return s.outcome
            }
            if let outcome { cont.resume(with: outcome.mapError { $0 as any Error }) }
        }
    }

    /// Starts listening on another channel; returns once the server confirmed.
    public func listen(_ channel: SQLIdentifier) async throws {
        try await send("LISTEN \(identifier: channel)")
    }

    public func unlisten(_ channel: SQLIdentifier) async throws {
        try await send("UNLISTEN \(identifier: channel)")
    }

    private func send(_ query: PostgresQuery) async throws {
        try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, any Error>) in
            let accepted = state.withLock { s -> Bool in
                guard !s.finished, !s.stopping else { return false }
                s.commands.append(Command(query: query, done: done))
                return true
            }
            if accepted { wake() } else { done.resume(throwing: PostgresError(.connectionClosed, "listener is closed")) }
        }
    }

    /// Stops the thread and closes the connection; the listener ends without error.
    public func stop() {
        let neverStarted = state.withLock { s -> Bool in
            s.stopping = true
            return !s.started
        }
        if neverStarted { finish(nil) }
        wake()
    }

    /// Shuts the socket down from any thread, as a network failure would (for tests and self-demotion).
    public func abort() {
        state.withLock { s in
            if s.socketFD >= 0, !s.finished { _ = shutdown(s.socketFD, Int32(SHUT_RDWR)) }
        }
    }

    private func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    private func runLoop(_ handler: some PostgresListenerHandler) {
        guard let conn = pgconn else { return }
        let interrupt = LibPQ.Interrupt(fd: wakeRead) { [self] in state.withLock { $0.stopping } }
        let exec = { [answerTimeout] (query: PostgresQuery) throws(PostgresError) -> PostgresRows in
            try Self.exec(conn, query, answerTimeout: answerTimeout, interrupt: interrupt)
        }
        let session = ListenerSession(exec: exec, backendPID: backendPID)
        let tickInterval = handler.tickInterval
        var lastTraffic = ContinuousClock.now
        var lastTick = ContinuousClock.now
        var failure: PostgresError?
        do {
            try handler.listenerConnected(session)
            try drain(conn, handler, session)
        } catch {
            failure = Self.ending(error)
        }
        loop: while failure == nil {
            let (commands, stopping) = state.withLock { s -> ([Command], Bool) in
                let c = s.commands
                s.commands.removeAll()
                return (c, s.stopping)
            }
            do {
                for command in commands {
                    do {
                        _ = try exec(command.query)
                        command.done.resume()
                    } catch {
                        command.done.resume(throwing: error)
                    }
                    try drain(conn, handler, session)
                }
                if stopping { break loop }
                if PQstatus(conn) != CONNECTION_OK {
                    failure = PostgresError(.connectionClosed, "listener connection lost: \(LibPQ.errorMessage(conn))")
                    break loop
                }
                var fds = [
                    pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0),
                    pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0),
                ]
                var timeout = pingInterval
                if let tickInterval { timeout = min(timeout, tickInterval - lastTick.duration(to: .now)) }
                let ready = poll(&fds, 2, LibPQ.pollMilliseconds(timeout))
                wakeUpCount.add(1, ordering: .relaxed)
                if ready < 0 {
                    if errno == EINTR { continue }
                    failure = PostgresError(.connectionClosed, "poll failed on the listener socket (errno \(errno))")
                    break loop
                }
                if fds[1].revents != 0 {
                    var buf = [UInt8](repeating: 0, count: 64)
                    while read(wakeRead, &buf, buf.count) > 0 {}
                }
                if fds[0].revents != 0 {
                    lastTraffic = .now
                    if PQconsumeInput(conn) == 0 {
                        failure = PostgresError(.connectionClosed, "listener connection lost: \(LibPQ.errorMessage(conn))")
                        break loop
                    }
                    try drain(conn, handler, session)
                } else if ready == 0, ContinuousClock.now - lastTraffic >= pingInterval {
                    // A silent socket says nothing about the peer: write to it so a dead one shows.
                    do {
                        _ = try exec("SELECT 1")
                    } catch {
                        failure = PostgresError(.connectionClosed, "listener ping failed: \(error)")
                        break loop
                    }
                    lastTraffic = .now
                    try drain(conn, handler, session)
                }
                if let tickInterval, lastTick.duration(to: .now) >= tickInterval {
                    lastTick = .now
                    try handler.tick(session)
                    try drain(conn, handler, session)
                }
            } catch {
                failure = Self.ending(error)
            }
        }
        PQfinish(conn)
        pgconn = nil
        // Asked to stop: whatever the stop cut short, the listener ends as asked, cleanly.
        finish(state.withLock { $0.stopping } ? nil : failure)
    }

    /// Runs one statement, waiting for its answer at most `answerTimeout` (and, with an
    /// `interrupt`, only until a stop is requested); a statement left unanswered leaves the
    /// connection in an unknown state, so it counts as lost.
    private static func exec(
        _ conn: OpaquePointer, _ query: PostgresQuery, answerTimeout: Duration, interrupt: LibPQ.Interrupt? = nil
    ) throws(PostgresError) -> PostgresRows {
        try LibPQ.send(conn, query)
        switch LibPQ.receive(conn, within: .now + answerTimeout, interrupt: interrupt) {
        case .done(let result):
            return try result.get()
        case .pending(let last):
            if let last { PQclear(last) }
            if let interrupt, interrupt.stop() { throw PostgresError(.connectionClosed, "listener stopped during a statement") }
            throw PostgresError(.connectionClosed, "no answer from the server within \(answerTimeout); the listener connection is taken for lost")
        }
    }

    /// The error a handler's failure ends the listener with.
    private static func ending(_ error: any Error) -> PostgresError {
        if let error = error as? PostgresError, error.code == .connectionClosed { return error }
        return PostgresError(.connectionClosed, "listener ended: \(error)")
    }

    private func finish(_ failure: PostgresError?) {
        let (leftover, waiters) = state.withLock { s -> ([Command], [CheckedContinuation<Void, any Error>]) in
            s.finished = true
            s.socketFD = -1
            s.outcome = failure.map { .failure($0) } ?? .success(())
            defer {
                s.commands.removeAll()
                s.closeWaiters.removeAll()
            }
            return (s.commands, s.closeWaiters)
        }
        for command in leftover { command.done.resume(throwing: PostgresError(.connectionClosed, "listener is closed")) }
        for waiter in waiters {
            if let failure { waiter.resume(throwing: failure) } else { waiter.resume() }
        }
        if let failure { continuation.finish(throwing: failure) } else { continuation.finish() }
    }

    private func drain(_ conn: OpaquePointer, _ handler: some PostgresListenerHandler, _ session: ListenerSession) throws {
        while let n = PQnotifies(conn) {
            let note = PostgresNotification(
                channel: String(cString: n.pointee.relname),
                payload: String(cString: n.pointee.extra),
                senderPID: n.pointee.be_pid)
            PQfreemem(n)
            try handler.received(note, session: session)
        }
    }
}

/// Hands every notification to the listener's `notifications` sequence.
private struct StreamHandler: PostgresListenerHandler {
    let continuation: AsyncThrowingStream<PostgresNotification, any Error>.Continuation
    func received(_ notification: PostgresNotification, session: ListenerSession) throws {
        continuation.yield(notification)
    }
}
