import Logging
import PostgresClient
import ServiceLifecycle
import Synchronization

/// Wakes claims that wait for work: one LISTEN session per process on `regent_queue`, where
/// every enqueue statement announces its namespace and the lanes that got work. A waiting
/// claim registers a ticket for its namespace and lanes *before* it claims, so work
/// announced between an empty claim and the wait is not missed.
///
/// Either it runs as a `Service` with a LISTEN session of its own (reconnecting with backoff
/// until graceful shutdown or cancellation), or a node's event bus carries `regent_queue` on
/// its own LISTEN session and hands the announcements over (no extra backend per node). While
/// no session listens, and whenever one (re)connects, every ticket is woken: the waiters claim
/// again rather than sleep through work announced meanwhile.
public final class QueueWaker: Service, Sendable {
    let configuration: ConnectionConfiguration
    let logger: Logger
    private let state = Mutex(State())

    private struct State {
        var tickets: [Int: Ticket] = [:]
        var nextID = 0
        var connected = false
    }

    private struct Ticket {
        let namespace: String
        let lanes: Set<String>
        var woken = false
        var waiter: (id: Int, continuation: CheckedContinuation<Bool, Never>)?
    }

    /// A registered interest in work.
    public struct Registration: Sendable, Hashable { let id: Int }

    public init(configuration: ConnectionConfiguration, logger: Logger = Logger(label: "regent.queue-waker")) {
        self.configuration = configuration
        self.logger = logger
    }

    /// True while the LISTEN session is up (waits are woken by announcements, not only by time).
    public var isListening: Bool { state.withLock { $0.connected } }

    public func register(namespace: String, lanes: Set<String>) -> Registration {
        state.withLock { s in
            s.nextID += 1
            // Not listening: nothing would announce work, so the first wait returns at once.
            s.tickets[s.nextID] = Ticket(namespace: namespace, lanes: lanes, woken: !s.connected)
            return Registration(id: s.nextID)
        }
    }

    public func unregister(_ registration: Registration) {
        let waiter = state.withLock { $0.tickets.removeValue(forKey: registration.id)?.waiter }
        waiter?.continuation.resume(returning: false)
    }

    /// Waits until work is announced for the registration's lanes (true; also when it was
    /// announced since the last wait), or `deadline` (false).
    public func wait(_ registration: Registration, until deadline: ContinuousClock.Instant) async -> Bool {
        let now = state.withLock { s -> Bool? in
            guard let ticket = s.tickets[registration.id] else { return false }
            if ticket.woken {
                s.tickets[registration.id]!.woken = false
                return true
            }
            return nil
        }
        if let now { return now }
        // The timer is a child task: leaving the scope cancels and awaits it.
        async let _ = expire(registration, at: deadline)
        return await withCheckedContinuation { (cont: CheckedContinuation<Bool, Never>) in
            let immediate = state.withLock { s -> Bool? in
                guard s.tickets[registration.id] != nil else { return false }
                if s.tickets[registration.id]!.woken {
                    s.tickets[registration.id]!.woken = false
                    return true
                }
                s.tickets[registration.id]!.waiter = (registration.id, cont)
                return nil
            }
            if let immediate { cont.resume(returning: immediate) }
        }
    }

    private func expire(_ registration: Registration, at deadline: ContinuousClock.Instant) async {
        do { try await Task.sleep(until: deadline, clock: .continuous) } catch { return }
        let waiter = state.withLock { s -> CheckedContinuation<Bool, Never>? in
            defer { s.tickets[registration.id]?.waiter = nil }
            return s.tickets[registration.id]?.waiter?.continuation
        }
        waiter?.resume(returning: false)
    }

    /// A session that carries `regent_queue` is listening (again).
    func listening() {
        state.withLock { $0.connected = true }
        wake { _ in true }
    }

    /// That session is gone.
    func notListening() {
        state.withLock { $0.connected = false }
        wake { _ in true }
    }

    /// An announcement: `<namespace> <lane> <lane> …` or `<namespace> *`.
    func announced(_ payload: String) {
        let parts = payload.split(separator: " ").map(String.init)
        guard let namespace = parts.first else { return }
        let lanes = Set(parts.dropFirst())
        wake { $0.namespace == namespace && (lanes.contains("*") || !$0.lanes.isDisjoint(with: lanes)) }
    }

    private func wake(where matches: (Ticket) -> Bool) {
        let woken = state.withLock { s -> [CheckedContinuation<Bool, Never>] in
            var out: [CheckedContinuation<Bool, Never>] = []
            for (id, ticket) in s.tickets where matches(ticket) {
                if let waiter = ticket.waiter {
                    out.append(waiter.continuation)
                    s.tickets[id]!.waiter = nil
                } else {
                    s.tickets[id]!.woken = true
                }
            }
            return out
        }
        for continuation in woken { continuation.resume(returning: true) }
    }

    public func run() async {
        try? await cancelWhenGracefulShutdown { [self] in await self.listen() }
        notListening()
    }

    private func listen() async {
        var delay = Duration.milliseconds(50)
        while !Task.isCancelled {
            do {
                let listener = try await PostgresListener.connect(configuration, channels: [try SQLIdentifier(LeaseQueries.channel)])
                // Whatever was announced while no session listened is unknown: every waiter looks again.
                listening()
                delay = .milliseconds(50)
                do {
                    try await withTaskCancellationHandler {
                        for try await notification in listener.notifications { announced(notification.payload) }
                    } onCancel: {
                        listener.stop()
                    }
                } catch {
                    listener.stop()
                    throw error
                }
                listener.stop()
                if Task.isCancelled { return }
            } catch {
                notListening()
                if Task.isCancelled { return }
                logger.warning("queue listener lost; reconnecting", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
    }
}
