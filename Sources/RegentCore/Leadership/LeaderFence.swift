import Foundation
import PostgresClient

/// The one mechanism every leader-only write goes through.
///
/// `withTransaction` opens a transaction that first locks `engine.leadership` FOR SHARE
/// and checks that the term is still ours and that our lock session still holds the
/// advisory lock. A successor's term bump must wait for such a transaction to commit,
/// so every fenced write lands strictly inside its term; a node that lost the lock
/// (even one that does not know it yet) gets ``RegentError/Code/notLeader`` and writes
/// nothing.
public struct LeaderFence: Sendable, CustomStringConvertible {
    public let term: Int64
    public let instanceID: UUID
    /// `pg_backend_pid()` of the session holding the advisory lock.
    public let lockBackendPID: Int32
    /// Called when a check fails, so the elector re-confirms at once.
    let onLost: @Sendable (String) -> Void

    public init(term: Int64, instanceID: UUID, lockBackendPID: Int32, onLost: @escaping @Sendable (String) -> Void = { _ in }) {
        self.term = term
        self.instanceID = instanceID
        self.lockBackendPID = lockBackendPID
        self.onLost = onLost
    }

    public var description: String { "term \(term)" }

    /// Verifies the fence inside an open transaction on `tx`.
    public func check(_ tx: PostgresConnection) async throws {
        let rows = try await tx.query(
            LeadershipQueries.fenceCheck(term: term, instance: instanceID, lockBackendPID: lockBackendPID),
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
