import Foundation
import PostgresClient
import Synchronization

/// Until when this process trusts its leadership: the start of the last successful lock
/// confirmation plus the lease window, shared by the elector (which moves it) and every
/// fence of the term (which reads it before each write). A leader frozen past its window
/// (SIGSTOP, a long pause) sends nothing more under its term when it thaws, whatever its
/// elector has not noticed yet.
public final class LeadershipTrust: Sendable {
    private let until: Mutex<ContinuousClock.Instant?>
    /// How long a fenced transaction may sit idle on the server before PostgreSQL ends it (so a
    /// leader frozen inside one cannot hold the leadership row against its successor).
    public let leaseWindow: Duration

    public init(leaseWindow: Duration, validUntil: ContinuousClock.Instant? = nil) {
        self.leaseWindow = leaseWindow
        self.until = Mutex(validUntil)
    }

    /// A trust that never lapses locally (tests and tools that fence by hand; the server-side
    /// check still applies).
    public static var unbounded: LeadershipTrust { LeadershipTrust(leaseWindow: .seconds(3600), validUntil: .now + .seconds(86_400 * 365)) }

    public func extend(to instant: ContinuousClock.Instant) { until.withLock { $0 = instant } }
    public func revoke() { until.withLock { $0 = nil } }
    public var validUntil: ContinuousClock.Instant? { until.withLock { $0 } }
    public func isValid(at now: ContinuousClock.Instant = .now) -> Bool { until.withLock { $0.map { now < $0 } ?? false } }
}

/// The one mechanism every leader-only write goes through.
///
/// `withTransaction` opens a transaction that first locks `engine.leadership` FOR SHARE
/// and checks that the term is still ours and that our lock session still holds the
/// advisory lock. A successor's term bump must wait for such a transaction to commit,
/// so every fenced write lands strictly inside its term; a node that lost the lock
/// (even one that does not know it yet) gets ``RegentError/Code/notLeader`` and writes
/// nothing.
public struct LeaderFence: Sendable, CustomStringConvertible {
    public let term: Term
    public let instanceID: InstanceID
    /// `pg_backend_pid()` of the session holding the advisory lock.
    public let lockBackendPID: Int32
    /// The local trust window, checked before any statement is sent.
    public let trust: LeadershipTrust
    /// When this term was recorded (database time).
    public let electedAt: Date
    /// Called when a check fails, so the elector re-confirms at once.
    let onLost: @Sendable (String) -> Void

    public init(
        term: Term, instanceID: InstanceID, lockBackendPID: Int32, trust: LeadershipTrust = .unbounded, electedAt: Date = Date(timeIntervalSince1970: 0),
        onLost: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.electedAt = electedAt
        self.term = term
        self.instanceID = instanceID
        self.lockBackendPID = lockBackendPID
        self.trust = trust
        self.onLost = onLost
    }

    /// Throws `notLeader` when the local trust window has closed: the last confirmation is
    /// older than the lease window, so a successor may already be elected.
    public func checkTrust() throws(RegentError) {
        guard trust.isValid() else {
            let reason = "the last lock confirmation is older than the lease window (\(trust.leaseWindow))"
            onLost(reason)
            throw RegentError(
                .notLeader, "leader-only write not sent: term \(term) is no longer trusted (\(reason))",
                hint: "nothing was written; the node re-confirms or steps down")
        }
    }

    public var description: String { "term \(term)" }

    /// Verifies the fence inside an open transaction on `tx`: first the local trust window,
    /// then the server (our term is current and our lock session holds the lock). The check
    /// also bounds how long the transaction may idle on the server by the lease window.
    public func check(_ tx: PostgresConnection) async throws {
        try checkTrust()
        let rows = try await tx.query(
            LeadershipQueries.fenceCheck(
                term: term, instance: instanceID, lockBackendPID: lockBackendPID,
                idleTimeoutMs: max(100, Int(trust.leaseWindow.milliseconds))),
            purpose: "fence check")
        let row = try rows.single()
        let current = try row.decodeOptional("current", as: Bool.self) ?? false
        let holds = try row.decode("holds", as: Bool.self)
        guard current, holds else {
            let now = try row.decode("term", as: Int64.self)
            let reason = !holds ? "the lock session no longer holds the leadership lock" : "the current term is \(now)"
            onLost(reason)
            throw RegentError(
                .notLeader, "leader-only write refused: this node's term \(term) is over (\(reason))",
                hint: "nothing was written; the current leader will do it")
        }
        // A freeze between the server's answer and here is caught before the duty's statements.
        try checkTrust()
    }

    /// Runs `body` in a transaction that commits only while this term is current.
    @discardableResult
    public func withTransaction<T: Sendable>(
        _ pool: ConnectionPool, actor: isolated (any Actor)? = #isolation, _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await pool.withTransaction { tx in
            try await check(tx)
            return try await body(tx)
        }
    }
}
