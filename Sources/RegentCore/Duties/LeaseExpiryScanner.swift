import CoreMetrics
import Foundation
import Logging
import PostgresClient

/// Reclaims expired leases, page by page, fenced: each expired attempt is marked
/// `expired`, its execution's epoch is bumped (the old worker's fence goes stale) and the
/// execution is queued again, or dead-lettered once it used `max_attempts`. Each decision
/// is recorded with the leader's term and a `leases.reclaimed` event is published per page.
///
/// The query walks a partial index of live leases in expiry order, so a page costs what
/// its expired rows cost, however many unexpired leases exist. A lease is reclaimed only
/// when `lease_expires_at <= now()` (database time) **and** a full lease duration of its own
/// has gone by since `reachableSince` (the later of: the leader's heartbeats succeeding
/// without a gap, and its election): after an outage or a failover every worker gets one
/// whole lease duration of reachable database to renew.
public struct LeaseExpiryScanner: LeaderDuty {
    public let name = "lease-expiry-scanner"
    let pool: ConnectionPool
    public let interval: Duration
    let pageSize: Int
    let logger: Logger
    let metrics: RegentMetrics
    let reachableSince: @Sendable () async -> Date?

    /// `reachableSince` is database time since when this node has reached the database without
    /// a gap (nil: not now, so nothing is reclaimed).
    public init(pool: ConnectionPool, interval: Duration = .milliseconds(500), pageSize: Int = 1000,
                reachableSince: @escaping @Sendable () async -> Date? = { Date(timeIntervalSince1970: 0) },
                metrics: RegentMetrics = .discarded, logger: Logger = Logger(label: "regent.duty.lease-scanner")) {
        self.reachableSince = reachableSince
        self.metrics = metrics
        self.pool = pool
        self.interval = interval
        self.pageSize = pageSize
        self.logger = logger
    }

    /// One page of expired leases, oldest first. Leases and their executions are taken
    /// together with SKIP LOCKED, so the scanner never waits on a worker's completion (and
    /// cannot deadlock with one); a requeued execution goes back into `ready` and its lane is
    /// announced to waiting claims.
    static func reclaim(pageSize: Int, leader: InstanceID, term: Term, since: Date) -> PostgresQuery {
        """
        WITH expired AS (
            SELECT l.execution_id, l.attempt_index FROM workflow.leases l JOIN workflow.executions e USING (execution_id)
            WHERE l.lease_expires_at <= now() AND now() >= \(since)::timestamptz + l.lease_ms * interval '1 millisecond'
              -- Lock order (sql/workflow 0012): a step's run row comes first; taken without waiting
              -- like the rest, so the scanner never waits and a held run is left for the next page.
              AND (e.step_id IS NULL OR EXISTS (
                  SELECT 1 FROM workflow.runs r WHERE r.run_id = COALESCE(e.run_id, e.payload ->> 'run_id') FOR UPDATE OF r SKIP LOCKED))
            ORDER BY l.lease_expires_at, l.execution_id
            LIMIT \(pageSize) FOR UPDATE OF l, e SKIP LOCKED
        ), unleased AS (
            DELETE FROM workflow.leases l USING expired x WHERE l.execution_id = x.execution_id
            RETURNING l.execution_id, l.attempt_index
        ), ended AS (
            UPDATE workflow.attempts a SET state = 'expired', ended_at = now()
            FROM unleased u WHERE a.execution_id = u.execution_id AND a.attempt_index = u.attempt_index
            RETURNING a.execution_id, a.attempt_index
        ), decided AS (
            UPDATE workflow.executions e
            SET lease_epoch = e.lease_epoch + 1, updated_at = now(),
                state = CASE WHEN e.attempts >= e.max_attempts THEN 'dead_lettered' ELSE 'queued' END,
                finished_at = CASE WHEN e.attempts >= e.max_attempts THEN now() END,
                last_error = 'lease expired'
            FROM ended WHERE e.execution_id = ended.execution_id AND e.state = 'running'
            RETURNING e.execution_id, e.state, e.namespace, e.lane, e.priority, e.run_at, e.required_capabilities, e.unique_key
        ), requeued AS (
            INSERT INTO workflow.ready (namespace, lane, priority, run_at, execution_id, required_capabilities)
            SELECT namespace, lane, priority, run_at, execution_id, required_capabilities FROM decided WHERE state = 'queued'
            RETURNING namespace, lane
        ), unkeyed AS (
            DELETE FROM workflow.unique_keys k USING decided d
            WHERE d.state = 'dead_lettered' AND d.unique_key IS NOT NULL
              AND k.namespace = d.namespace AND k.unique_key = d.unique_key AND k.execution_id = d.execution_id
        ), recorded AS (
            INSERT INTO workflow.lease_decisions (execution_id, attempt_index, decision, term)
            SELECT d.execution_id, n.attempt_index, CASE WHEN d.state = 'dead_lettered' THEN 'dead_lettered' ELSE 'requeued' END, \(term)::bigint
            FROM decided d JOIN ended n USING (execution_id)
            RETURNING decision
        ), counts AS (
            SELECT count(*) FILTER (WHERE decision = 'requeued') AS requeued,
                   count(*) FILTER (WHERE decision = 'dead_lettered') AS dead_lettered,
                   (SELECT count(*) FROM ended) AS expired
            FROM recorded
        ), published AS (
            SELECT engine.publish_event('leases.reclaimed',
                       jsonb_build_object('requeued', requeued, 'dead_lettered', dead_lettered, 'term', \(term)::bigint), \(leader)::uuid)
            FROM counts WHERE expired > 0
        ), notified AS (
            SELECT workflow.notify_queue(namespace, array_agg(lane::text)) FROM requeued GROUP BY namespace
        )
        SELECT requeued, dead_lettered, expired, (SELECT count(*) FROM published) AS events, (SELECT count(*) FROM notified) AS notified
        FROM counts
        """
    }

    public struct Page: Sendable, Equatable {
        public let expired: Int
        public let requeued: Int
        public let deadLettered: Int
    }

    /// One page; all zero while the tables do not exist.
    public func reclaimOnce(fence: LeaderFence) async throws -> Page {
        guard let healthy = await reachableSince(), try await WorkflowSchema.isPresent(pool) else {
            return Page(expired: 0, requeued: 0, deadLettered: 0)
        }
        let since = max(healthy, fence.electedAt)
        return try await fence.withTransaction(pool) { tx in
            let row = try await tx.query(
                Self.reclaim(pageSize: pageSize, leader: fence.instanceID, term: fence.term, since: since), purpose: "reclaim expired leases").single()
            return Page(expired: try row.decode("expired"), requeued: try row.decode("requeued"), deadLettered: try row.decode("dead_lettered"))
        }
    }

    public func runOnce(fence: LeaderFence) async throws -> Bool {
        let page = try await reclaimOnce(fence: fence)
        if page.expired > 0 {
            metrics.leasesReclaimed.increment(by: page.expired)
            logger.info("reclaimed expired leases", metadata: [
                "requeued": "\(page.requeued)", "dead_lettered": "\(page.deadLettered)", "term": "\(fence.term)",
            ])
        }
        // A full page means more are waiting: go on at once.
        return page.expired == pageSize
    }
}
