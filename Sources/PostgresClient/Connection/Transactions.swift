import CLibPQ

extension PostgresConnection {
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
                markBroken()
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
            if isInTransaction { markBroken() }
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
