import Logging
import PostgresClient

/// Deletes what the queue no longer needs, in pages, fenced: finished executions (completed,
/// failed, dead-lettered, cancelled) that finished more than `retention` ago, with their
/// attempts; and worker events and lease decisions older than that. Unfinished executions
/// are never touched, however old, nor the executions of workflow steps (they hold the
/// steps' outputs; run retention deletes them with their run).
public struct QueueRetention: LeaderDuty {
    public let name = "queue-retention"
    let pool: ConnectionPool
    let retention: Duration
    public let interval: Duration
    let pageSize: Int
    let logger: Logger

    public init(
        pool: ConnectionPool, retention: Duration = .seconds(7 * 86_400), interval: Duration = .seconds(30), pageSize: Int = 1000,
        logger: Logger = Logger(label: "regent.duty.queue-retention")
    ) {
        self.pool = pool
        self.retention = retention
        self.interval = interval
        self.pageSize = pageSize
        self.logger = logger
    }

    /// One page of each; walks `executions` by `created_at` (an index the hot path never
    /// updates), so the oldest finished rows go first. SKIP LOCKED: two rounds that overlap
    /// (a slow one and the next) take different rows instead of deadlocking.
    static func prune(retention: Duration, pageSize: Int) -> PostgresQuery {
        """
        WITH executions AS (
            DELETE FROM workflow.executions WHERE execution_id IN (
                SELECT x.execution_id FROM workflow.executions x
                WHERE x.created_at < now() - \(retention)::interval
                  AND x.state IN ('completed', 'failed', 'dead_lettered', 'cancelled')
                  AND COALESCE(x.finished_at, x.updated_at) < now() - \(retention)::interval
                  -- A step's execution belongs to its run (it holds the step's output, stored
                  -- once since sql/workflow 0012): run retention deletes it with the run.
                  AND x.step_id IS NULL
                ORDER BY x.created_at LIMIT \(pageSize) FOR UPDATE SKIP LOCKED)
            RETURNING 1
        ), events AS (
            DELETE FROM workflow.worker_events WHERE id IN (
                SELECT id FROM workflow.worker_events WHERE at < now() - \(retention)::interval ORDER BY at LIMIT \(pageSize)
                FOR UPDATE SKIP LOCKED)
            RETURNING 1
        ), decisions AS (
            DELETE FROM workflow.lease_decisions WHERE id IN (
                SELECT id FROM workflow.lease_decisions WHERE at < now() - \(retention)::interval ORDER BY at LIMIT \(pageSize)
                FOR UPDATE SKIP LOCKED)
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM executions) AS executions, (SELECT count(*) FROM events) AS worker_events,
               (SELECT count(*) FROM decisions) AS lease_decisions
        """
    }

    public struct Page: Sendable, Equatable {
        public let executions: Int
        public let workerEvents: Int
        public let leaseDecisions: Int
    }

    /// One page; all zero until the workflow schema has the run tables that tell which
    /// executions still belong to an unfinished run (`run_steps`, migration 0006, so the queue's
    /// tables of 0002–0004 too): a module turned off, or a leader upgraded ahead of its
    /// migration duty, waits.
    public func pruneOnce(fence: LeaderFence) async throws -> Page {
        guard try await WorkflowSchema.has("workflow.run_steps", pool) else { return Page(executions: 0, workerEvents: 0, leaseDecisions: 0) }
        let prunesGrants = try await WorkflowSchema.has("vault.execution_grants", pool)
        return try await fence.withTransaction(pool) { tx in
            let row = try await tx.query(Self.prune(retention: retention, pageSize: pageSize), purpose: "queue retention").single()
            // The vault's grants to executions that retention removed (or that never committed).
            if prunesGrants {
                try await tx.query(
                    """
                    DELETE FROM vault.execution_grants WHERE execution_id = ANY (ARRAY(
                        SELECT g.execution_id FROM vault.execution_grants g
                        WHERE g.created_at < now() - \(retention)::interval
                          AND NOT EXISTS (SELECT 1 FROM workflow.executions e WHERE e.execution_id = g.execution_id)
                        ORDER BY g.created_at LIMIT \(pageSize)))
                    """, purpose: "vault: grants of pruned executions")
            }
            return Page(executions: try row.decode("executions"), workerEvents: try row.decode("worker_events"), leaseDecisions: try row.decode("lease_decisions"))
        }
    }

    public func runOnce(fence: LeaderFence) async throws -> Bool {
        let page = try await pruneOnce(fence: fence)
        if page != Page(executions: 0, workerEvents: 0, leaseDecisions: 0) {
            logger.info("pruned finished queue rows", metadata: [
                "executions": "\(page.executions)", "worker_events": "\(page.workerEvents)", "lease_decisions": "\(page.leaseDecisions)",
                "term": "\(fence.term)",
            ])
        }
        return max(page.executions, page.workerEvents, page.leaseDecisions) == pageSize
    }
}
