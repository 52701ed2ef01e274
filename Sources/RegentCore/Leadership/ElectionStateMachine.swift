/// The leadership decisions of one node, free of I/O: given what the database said and
/// what time it is, what should the node do? The driver (``LeaderElector``) performs the
/// actions; unit tests drive this with a controlled clock.
///
/// Promises:
/// - leadership is trusted only until `validUntil`, which is anchored to when the last
///   successful confirmation *started* plus the lease window (concede on doubt);
/// - a failed or late confirmation, or a lost connection, ends leadership at once;
/// - reconnect attempts back off exponentially up to `maxBackoff`.
public struct ElectionStateMachine<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    public enum State: Sendable, Equatable {
        case disconnected(failures: Int)
        case following
        case leading(term: Term, validUntil: Instant)
        case stopped
    }

    public enum Action: Sendable, Equatable {
        /// Open the lock connection, after waiting this long.
        case connect(after: Duration)
        /// Block on the advisory lock.
        case waitForLock
        /// Increment the term on the lock session.
        case recordTerm
        /// Become leader: start the leader duties.
        case startDuties(term: Term)
        /// Stop acting as leader (duties off) and drop the lock connection.
        case demote(reason: String)
        /// Confirm the lock; the confirmation must finish by `deadline`.
        case confirm(deadline: Instant)
        /// Release the lock gracefully (resign) and stop.
        case resignAndStop
        case stop
    }

    public let leaseWindow: Duration
    public let confirmInterval: Duration
    public let baseBackoff: Duration
    public let maxBackoff: Duration
    public private(set) var state: State = .disconnected(failures: 0)

    public init(leaseWindow: Duration, confirmInterval: Duration, baseBackoff: Duration = .milliseconds(100), maxBackoff: Duration = .seconds(5)) {
        precondition(confirmInterval < leaseWindow, "the lock must be confirmed more often than the lease window")
        self.leaseWindow = leaseWindow
        self.confirmInterval = confirmInterval
        self.baseBackoff = baseBackoff
        self.maxBackoff = maxBackoff
    }

    /// True only while leading and inside the trust window.
    public func isLeader(at now: Instant) -> Bool {
        if case .leading(_, let validUntil) = state { return now < validUntil }
        return false
    }

    /// Until when leadership is trusted (nil unless leading).
    public var validUntil: Instant? {
        if case .leading(_, let validUntil) = state { return validUntil }
        return nil
    }

    public var term: Term? {
        if case .leading(let term, _) = state { return term }
        return nil
    }

    public mutating func start() -> Action {
        state = .disconnected(failures: 0)
        return .connect(after: .zero)
    }

    public mutating func connected() -> Action {
        guard state != .stopped else { return .stop }
        state = .following
        return .waitForLock
    }

    public mutating func connectFailed() -> Action {
        guard case .disconnected(let failures) = state else { return state == .stopped ? .stop : .connect(after: baseBackoff) }
        state = .disconnected(failures: failures + 1)
        return .connect(after: backoff(failures: failures + 1))
    }

    func backoff(failures: Int) -> Duration {
        var delay = baseBackoff
        for _ in 1..<max(1, failures) {
            delay = delay * 2
            if delay >= maxBackoff { return maxBackoff }
        }
        return min(delay, maxBackoff)
    }

    public mutating func lockAcquired() -> Action {
        guard state == .following else { return .stop }
        return .recordTerm
    }

    /// The term was recorded by a transaction that started at `startedAt`.
    public mutating func termRecorded(_ term: Term, startedAt: Instant) -> Action {
        guard state == .following else { return .stop }
        state = .leading(term: term, validUntil: startedAt.advanced(by: leaseWindow))
        return .startDuties(term: term)
    }

    /// When to start the next confirmation, given the last one started at `lastStart`.
    public func nextConfirmation(after lastStart: Instant) -> Instant { lastStart.advanced(by: confirmInterval) }

    /// A confirmation starts now: it must finish before leadership would lapse.
    public func confirmationStarting() -> Action? {
        guard case .leading(_, let validUntil) = state else { return nil }
        return .confirm(deadline: validUntil)
    }

    public mutating func confirmationSucceeded(startedAt: Instant, now: Instant) -> Action? {
        guard case .leading(let term, let validUntil) = state else { return nil }
        // A confirmation that came back after the window closed proves nothing about the gap.
        guard now < validUntil else { return loseLeadership("lock confirmation came back after the lease window closed") }
        state = .leading(term: term, validUntil: startedAt.advanced(by: leaseWindow))
        return nil
    }

    public mutating func confirmationFailed(_ reason: String) -> Action {
        loseLeadership("lock confirmation failed: \(reason)")
    }

    /// Called on every wake-up: a leader whose window lapsed demotes itself.
    public mutating func tick(now: Instant) -> Action? {
        if case .leading(_, let validUntil) = state, now >= validUntil {
            return loseLeadership("could not confirm the lock within the lease window (\(leaseWindow))")
        }
        return nil
    }

    public mutating func connectionLost(_ reason: String) -> Action {
        if case .leading = state { return loseLeadership("lock connection lost: \(reason)") }
        guard state != .stopped else { return .stop }
        state = .disconnected(failures: 0)
        return .connect(after: baseBackoff)
    }

    private mutating func loseLeadership(_ reason: String) -> Action {
        state = .disconnected(failures: 0)
        return .demote(reason: reason)
    }

    public mutating func shutdownRequested() -> Action {
        let wasLeading: Bool
        if case .leading = state { wasLeading = true } else { wasLeading = false }
        state = .stopped
        return wasLeading ? .resignAndStop : .stop
    }
}
