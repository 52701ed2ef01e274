import Foundation
import Logging
import ServiceLifecycle

/// A small pool of ``PostgresConnection``s with a maximum size.
///
/// A checkout waits for a free connection up to `checkoutTimeout`, then fails with
/// ``PostgresError/Code/poolExhausted``. A connection that sat idle longer than
/// `healthCheckAfterIdle` is probed with `SELECT 1` before it is handed out; one
/// found broken is replaced. Connections are opened lazily.
public actor ConnectionPool {
    public struct Options: Sendable {
        public var maxConnections: Int = 8
        public var checkoutTimeout: Duration = .seconds(5)
        public var healthCheckAfterIdle: Duration = .seconds(10)
        /// Idle connections beyond `minIdle` are closed once idle this long (nil: kept), so an
        /// idle process holds few backends and a burst's connections go away after it.
        public var idleTimeout: Duration?
        public var minIdle: Int = 0
        public init(
            maxConnections: Int = 8, checkoutTimeout: Duration = .seconds(5), healthCheckAfterIdle: Duration = .seconds(10),
            idleTimeout: Duration? = nil, minIdle: Int = 0
        ) {
            self.maxConnections = maxConnections
            self.checkoutTimeout = checkoutTimeout
            self.healthCheckAfterIdle = healthCheckAfterIdle
            self.idleTimeout = idleTimeout
            self.minIdle = minIdle
        }
    }

    public let configuration: ConnectionConfiguration
    public nonisolated let options: Options
    private let logger: Logger
    private var idle: [(connection: PostgresConnection, since: ContinuousClock.Instant)] = []
    private var open = 0
    private var waiters: [(id: Int, continuation: CheckedContinuation<PostgresConnection?, any Error>)] = []
    private var nextWaiterID = 0
    private var closed = false

    public init(configuration: ConnectionConfiguration, options: Options = Options(), logger: Logger = Logger(label: "regent.pool")) {
        precondition(options.maxConnections > 0, "a pool needs at least one connection")
        self.configuration = configuration
        self.options = options
        self.logger = logger
    }

    /// Connections currently open, idle and in use (for metrics).
    public var statistics: (open: Int, idle: Int, waiting: Int) { (open, idle.count, waiters.count) }

    /// Lends a connection to `body` and takes it back afterwards, even when `body` throws.
    /// The body runs in the caller's isolation, so it need not be Sendable.
    public nonisolated(nonsending) func withConnection<T: Sendable>(
        _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        let connection = try await checkout()
        do {
            let value = try await body(connection)
            await checkin(connection)
            return value
        } catch {
            await checkin(connection)
            throw error
        }
    }

    /// Runs one statement on a pooled connection.
    @discardableResult
    public nonisolated func query(_ query: PostgresQuery, purpose: String? = nil) async throws -> PostgresRows {
        try await withConnection { try await $0.query(query, purpose: purpose) }
    }

    /// Runs `body` in a transaction on a pooled connection.
    @discardableResult
    public nonisolated(nonsending) func withTransaction<T: Sendable>(
        isolation: IsolationLevel = .readCommitted,
        _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await withConnection { try await $0.withTransaction(isolation: isolation, body) }
    }

    public func checkout() async throws -> PostgresConnection {
        reapIdle()
        while true {
            guard !closed else { throw PostgresError(.poolClosed, "connection pool is shut down") }
            if let (connection, since) = idle.popLast() {
                if await isHealthy(connection, idleSince: since) { return connection }
                open -= 1
                continue
            }
            if open < options.maxConnections {
                open += 1
                do {
                    return try await PostgresConnection.connect(configuration)
                } catch {
                    open -= 1
                    throw error
                }
            }
            if let handed = try await waitForConnection() { return handed }
        }
    }

    public func checkin(_ connection: PostgresConnection) {
        let inTransaction = connection.isUsable && connection.isInTransaction
        if inTransaction {
            logger.warning("a connection came back inside a transaction; closing it instead of lending it again")
        }
        guard connection.isUsable, !closed, !inTransaction else {
            open -= 1
            connection.closeWithoutWaiting()
            // A slot freed up: wake one waiter so it can open a fresh connection.
            if !waiters.isEmpty { waiters.removeFirst().continuation.resume(returning: nil) }
            return
        }
        if !waiters.isEmpty {
            waiters.removeFirst().continuation.resume(returning: connection)
        } else {
            idle.append((connection, .now))
            reapIdle()
        }
    }

    /// Closes the idle connections (oldest first: `idle` is used as a stack, so the oldest
    /// are the coldest) that sat longer than `idleTimeout`, keeping `minIdle`.
    private func reapIdle() {
        guard let timeout = options.idleTimeout else { return }
        let now = ContinuousClock.now
        while idle.count > options.minIdle, let oldest = idle.first, now - oldest.since >= timeout {
            idle.removeFirst()
            open -= 1
            oldest.connection.closeWithoutWaiting()
        }
    }

    private func isHealthy(_ connection: PostgresConnection, idleSince: ContinuousClock.Instant) async -> Bool {
        guard connection.isUsable else { return false }
        guard ContinuousClock.now - idleSince >= options.healthCheckAfterIdle else { return true }
        do {
            try await connection.query("SELECT 1", purpose: "pool health check")
            return true
        } catch {
            logger.warning("pooled connection failed its health check; replacing it", metadata: ["error": "\(error)"])
            await connection.close()
            return false
        }
    }

    /// Waits for a connection handed back by `checkin` (non-nil) or a freed slot (nil).
    private func waitForConnection() async throws -> PostgresConnection? {
        let id = nextWaiterID
        nextWaiterID += 1
        let timeout = options.checkoutTimeout
        let max = options.maxConnections
        // The checkout timeout is a child task: leaving the scope (a connection or a slot came)
        // cancels and awaits it.
        async let _ = expire(id, after: timeout, max: max)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                waiters.append((id, continuation))
            }
        } onCancel: {
            // A cancellation handler cannot suspend: one hop onto the pool removes the waiter.
            Task { await self.cancelWaiter(id) }
        }
    }

    private nonisolated func expire(_ id: Int, after timeout: Duration, max: Int) async {
        do { try await Task.sleep(for: timeout) } catch { return }
        await expireWaiter(id, timeout: timeout, max: max)
    }

    private func expireWaiter(_ id: Int, timeout: Duration, max: Int) {
        guard let index = waiters.firstIndex(where: { $0.id == id }) else { return }
        waiters.remove(at: index).continuation.resume(
            throwing: PostgresError(
                .poolExhausted,
                "no database connection became free within \(timeout) (all \(max) in use)",
                hint: "raise the pool size or look for long-running work holding connections"))
    }

    private func cancelWaiter(_ id: Int) {
        guard let index = waiters.firstIndex(where: { $0.id == id }) else { return }
        waiters.remove(at: index).continuation.resume(throwing: PostgresError(.cancelled, "checkout cancelled"))
    }

    /// Opens connections until `count` are idle (capped by the pool size), so a burst of
    /// checkouts later (a new leader starting its duties) does not wait for backends to fork.
    public func prewarm(_ count: Int) async throws {
        var opened: [PostgresConnection] = []
        while idle.count + opened.count < count, open < options.maxConnections, !closed {
            open += 1
            do {
                opened.append(try await PostgresConnection.connect(configuration))
            } catch {
                open -= 1
                for connection in opened { checkin(connection) }
                throw error
            }
        }
        for connection in opened { checkin(connection) }
    }

    /// Closes idle connections and refuses new checkouts; connections in use close on check-in.
    public func shutdown() async {
        closed = true
        for waiter in waiters { waiter.continuation.resume(throwing: PostgresError(.poolClosed, "connection pool is shut down")) }
        waiters.removeAll()
        let toClose = idle.map(\.connection)
        idle.removeAll()
        open -= toClose.count
        for connection in toClose { await connection.close() }
    }
}

/// A pool runs as a swift-service-lifecycle `Service` (as postgres-nio's `PostgresClient`
/// does): it serves until graceful shutdown or cancellation, then closes its connections.
/// In a group, list it before the services that use it: it is then shut down after them.
extension ConnectionPool: Service {
    public func run() async {
        try? await gracefulShutdown()
        await shutdown()
    }
}
