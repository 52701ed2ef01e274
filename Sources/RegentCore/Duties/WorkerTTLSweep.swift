import Foundation
import Logging
import PostgresClient

/// Deletes workers whose liveness lapsed (heartbeat + TTL in the past), logging a
/// `ttl_swept` worker event for each and publishing `workers.swept`, fenced. Waits while
/// the workflow module's tables do not exist (module disabled or not migrated yet).
///
/// Lapses are measured only over reachable database: a worker is swept only once its
/// `expires_at` passed **and** a full TTL of its own has gone by since `reachableSince`
/// (the later of: the leader's heartbeats succeeding without a gap, and its election). After
/// an outage or a failover every worker thus gets one whole TTL to heartbeat again.
public struct WorkerTTLSweep: LeaderDuty {
    public let name = "worker-ttl-sweep"
    let pool: ConnectionPool
    public let interval: Duration
    let batch: Int
    let logger: Logger
    let reachableSince: @Sendable () async -> Date?

    /// `reachableSince` is database time since when this node has reached the database without
    /// a gap (nil: not now, so nothing is swept).
    public init(
        pool: ConnectionPool, interval: Duration = .seconds(1), batch: Int = 1000,
        reachableSince: @escaping @Sendable () async -> Date? = { Date(timeIntervalSince1970: 0) },
        logger: Logger = Logger(label: "regent.duty.worker-sweep")
    ) {
        self.pool = pool
        self.reachableSince = reachableSince
        self.interval = interval
        self.batch = batch
        self.logger = logger
    }

    static func sweep(batch: Int, leader: InstanceID, term: Term, since: Date) -> PostgresQuery {
        """
        WITH gone AS (
            DELETE FROM workflow.workers
            WHERE (namespace, worker_instance_id) IN (
                SELECT namespace, worker_instance_id FROM workflow.workers
                WHERE expires_at < now() AND now() >= \(since)::timestamptz + liveness_ttl_ms * interval '1 millisecond'
                ORDER BY expires_at LIMIT \(batch) FOR UPDATE SKIP LOCKED)
            RETURNING namespace, worker_instance_id, worker_id
        ), logged AS (
            INSERT INTO workflow.worker_events (namespace, worker_instance_id, kind, detail)
            SELECT namespace, worker_instance_id, 'ttl_swept', jsonb_build_object('worker_id', worker_id, 'term', \(term)::bigint) FROM gone
            RETURNING 1
        ), published AS (
            SELECT engine.publish_event('workers.swept',
                       jsonb_build_object('count', count(*), 'term', \(term)::bigint,
                                          'workers', jsonb_agg(jsonb_build_object('namespace', namespace, 'worker_instance_id', worker_instance_id))),
                       \(leader)::uuid) AS id
            FROM gone HAVING count(*) > 0
        )
        SELECT (SELECT count(*) FROM gone) AS swept, (SELECT count(*) FROM logged) AS logged, (SELECT count(*) FROM published) AS events
        """
    }

    /// One round; returns how many workers it removed (0 while the tables do not exist).
    public func sweepOnce(fence: LeaderFence) async throws -> Int {
        guard let healthy = await reachableSince() else { return 0 }
        guard try await WorkflowSchema.isPresent(pool) else { return 0 }
        let since = max(healthy, fence.electedAt)
        return try await fence.withTransaction(pool) { tx in
            try await tx.query(Self.sweep(batch: batch, leader: fence.instanceID, term: fence.term, since: since), purpose: "sweep lapsed workers")
                .single().decode("swept", as: Int.self)
        }
    }

    public func runOnce(fence: LeaderFence) async throws -> Bool {
        let swept = try await sweepOnce(fence: fence)
        if swept > 0 { logger.notice("swept lapsed workers", metadata: ["count": "\(swept)", "term": "\(fence.term)"]) }
        return swept == batch
    }
}
