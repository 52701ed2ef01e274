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

/// A dedicated LISTEN connection.
///
/// It owns one `PGconn` on one thread of its own, which sleeps in `poll()` on the
/// connection's socket (no busy polling) and on a wake-up pipe for commands. Every
/// notification is yielded to ``notifications`` in arrival order. When the
/// connection breaks (server restart, `pg_terminate_backend`, a failed ping) the
/// sequence ends by throwing a ``PostgresError`` with code `connectionClosed`;
/// reconnecting, and re-reading what was missed, is the caller's job.
public final class PostgresListener: @unchecked Sendable {
    // Why @unchecked Sendable is safe: `pgconn` is touched only by the listener
    // thread (`runLoop`), after `connect` hands it over and before the thread
    // exits. Other threads talk to that thread through `state` (a Mutex) and the
    // wake-up pipe, whose file descriptors never change after init.
    public let notifications: AsyncThrowingStream<PostgresNotification, any Error>
    private let continuation: AsyncThrowingStream<PostgresNotification, any Error>.Continuation
    private nonisolated(unsafe) var pgconn: OpaquePointer?
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let state = Mutex(State())
    /// How long the connection may stay silent before the thread pings it.
    public let pingInterval: Duration
    public let backendPID: Int32

    private struct State {
        var commands: [Command] = []
        var stopping = false
        var finished = false
        var socketFD: Int32 = -1
    }

    private struct Command {
        var query: PostgresQuery
        var done: CheckedContinuation<Void, any Error>
    }

    private init(conn: OpaquePointer, pingInterval: Duration) throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw PostgresError(.connectionFailed, "cannot create the listener's wake-up pipe") }
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        wakeRead = fds[0]
        wakeWrite = fds[1]
        pgconn = conn
        backendPID = PQbackendPID(conn)
        self.pingInterval = pingInterval
        (notifications, continuation) = AsyncThrowingStream.makeStream(bufferingPolicy: .unbounded)
        state.withLock { $0.socketFD = PQsocket(conn) }
    }

    deinit {
        close(wakeRead)
        close(wakeWrite)
        if let pgconn { PQfinish(pgconn) }
    }

    /// Connects, LISTENs on `channels`, and starts the listener thread.
    public static func connect(
        _ configuration: ConnectionConfiguration, channels: [SQLIdentifier], pingInterval: Duration = .seconds(5)
    ) async throws -> PostgresListener {
        let queue = DispatchQueue(label: "regent.pg.listener.connect")
        let listener: PostgresListener = try await withCheckedThrowingContinuation { cont in
            queue.async {
                do {
                    let conn = try LibPQ.connect(configuration)
                    for channel in channels {
                        do { _ = try LibPQ.exec(conn, "LISTEN \(identifier: channel)") } catch {
                            PQfinish(conn)
                            throw error
                        }
                    }
                    cont.resume(returning: try PostgresListener(conn: conn, pingInterval: pingInterval))
                } catch {
                    cont.resume(throwing: error)
                }
            }
        }
        let thread = Thread { [listener] in listener.runLoop() }
        thread.name = "regent-listener"
        thread.start()
        return listener
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

    /// Stops the thread and closes the connection; the sequence finishes without error.
    public func stop() {
        state.withLock { $0.stopping = true }
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

    private func runLoop() {
        guard let conn = pgconn else { return }
        var lastTraffic = ContinuousClock.now
        var failure: (any Error)?
        loop: while true {
            let (commands, stopping) = state.withLock { s -> ([Command], Bool) in
                let c = s.commands
                s.commands.removeAll()
                return (c, s.stopping)
            }
            for command in commands {
                do {
                    _ = try LibPQ.exec(conn, command.query)
                    command.done.resume()
                } catch {
                    command.done.resume(throwing: error)
                }
                drain(conn)
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
            let timeoutMs = Int32(clamping: pingInterval.components.seconds * 1000 + pingInterval.components.attoseconds / 1_000_000_000_000_000)
            let ready = poll(&fds, 2, timeoutMs)
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
                drain(conn)
            } else if ready == 0, ContinuousClock.now - lastTraffic >= pingInterval {
                // A silent socket says nothing about the peer: write to it so a dead one shows.
                do {
                    _ = try LibPQ.exec(conn, "SELECT 1")
                    lastTraffic = .now
                    drain(conn)
                } catch {
                    failure = PostgresError(.connectionClosed, "listener ping failed: \(error)")
                    break loop
                }
            }
        }
        let leftover = state.withLock { s -> [Command] in
            s.finished = true
            s.socketFD = -1
            let c = s.commands
            s.commands.removeAll()
            return c
        }
        for command in leftover { command.done.resume(throwing: PostgresError(.connectionClosed, "listener is closed")) }
        PQfinish(conn)
        pgconn = nil
        if let failure { continuation.finish(throwing: failure) } else { continuation.finish() }
    }

    private func drain(_ conn: OpaquePointer) {
        while let n = PQnotifies(conn) {
            let note = PostgresNotification(
                channel: String(cString: n.pointee.relname),
                payload: String(cString: n.pointee.extra),
                senderPID: n.pointee.be_pid)
            PQfreemem(n)
            continuation.yield(note)
        }
    }
}
