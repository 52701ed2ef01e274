import Logging
import PostgresClient

/// Deletes events older than `retention`, or beyond the newest `keep`, in batches, fenced;
/// records the highest pruned id so a subscriber resuming below it gets a clear error.
public struct EventOutboxPruning: LeaderDuty {
    public let name = "event-outbox-pruning"
    let pool: ConnectionPool
    let retention: Duration
    let keep: Int
    public let interval: Duration
    let batch: Int
    let logger: Logger

    public init(pool: ConnectionPool, retention: Duration = .seconds(86_400), keep: Int = 1_000_000, interval: Duration = .seconds(10),
                batch: Int = 10_000, logger: Logger = Logger(label: "regent.duty.event-pruning")) {
        self.pool = pool
        self.retention = retention
        self.keep = keep
        self.interval = interval
        self.batch = batch
        self.logger = logger
    }

    /// One batch; returns how many events it removed.
    public func pruneOnce(fence: LeaderFence) async throws -> Int {
        try await fence.withTransaction(pool) { tx in
            try await tx.query(EventQueries.prune(retention: retention, keep: keep, batch: batch), purpose: "prune the event outbox")
                .single().decode("removed", as: Int.self)
        }
    }

    public func runOnce(fence: LeaderFence) async throws -> Bool {
        let removed = try await pruneOnce(fence: fence)
        if removed > 0 { logger.info("pruned events", metadata: ["removed": "\(removed)", "term": "\(fence.term)"]) }
        return removed == batch
    }
}
