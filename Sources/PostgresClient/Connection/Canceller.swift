import CLibPQ
import Foundation
import Synchronization

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
