import CoreMetrics
import Foundation
import Logging
import PostgresClient

/// Deletes `engine.instances` rows whose heartbeat is older than the stale cutoff, and
/// audits each removal with the leader's term.
///
/// It trusts its own eyes only after this node has itself heartbeated continuously for
/// longer than the cutoff (after a database outage every row looks stale at once), and
/// removes at most `maxPerSweep` rows per round.
public struct StaleInstanceCleanup: LeaderDuty {
    public let name = "stale-instance-cleanup"
    let pool: ConnectionPool
    let membership: Membership
    let staleAfter: Duration
    public let interval: Duration
    let maxPerSweep: Int
    let logger: Logger
    let metrics: RegentMetrics

    public init(pool: ConnectionPool, membership: Membership, staleAfter: Duration, interval: Duration? = nil, maxPerSweep: Int = 100,
                metrics: RegentMetrics = .discarded, logger: Logger = Logger(label: "regent.duty.stale-instances")) {
        self.metrics = metrics
        self.pool = pool
        self.membership = membership
        self.staleAfter = staleAfter
        self.interval = interval ?? max(.milliseconds(200), staleAfter / 4)
        self.maxPerSweep = maxPerSweep
        self.logger = logger
    }

    static func sweep(staleAfter: Duration, except: InstanceID, limit: Int, term: Term, actor: String) -> PostgresQuery {
        """
        WITH gone AS (
            DELETE FROM engine.instances
            WHERE instance_id IN (
                SELECT instance_id FROM engine.instances
                WHERE last_heartbeat < now() - \(staleAfter)::interval AND instance_id <> \(except)
                ORDER BY last_heartbeat LIMIT \(limit))
            RETURNING instance_id, node_name, host, pid, last_heartbeat
        ), audited AS (
            INSERT INTO engine.audit (actor, action, term, instance_id, detail)
            SELECT \(actor), 'instance.swept', \(term), instance_id,
                   jsonb_build_object('node_name', node_name, 'host', host, 'pid', pid, 'last_heartbeat', last_heartbeat)
            FROM gone
            RETURNING instance_id
        ), published AS (
            SELECT engine.publish_event('instance.swept',
                jsonb_build_object('instance_id', instance_id::text, 'node_name', node_name, 'term', \(term)::bigint), \(except)::uuid) AS id
            FROM gone
        )
        SELECT g.instance_id, g.node_name, (SELECT count(*) FROM published) AS events FROM gone g
        """
    }

    /// One round: returns the node names removed.
    public func sweepOnce(fence: LeaderFence) async throws -> [String] {
        guard await membership.continuouslyHealthy(for: staleAfter) else { return [] }
        return try await fence.withTransaction(pool) { tx in
            let rows = try await tx.query(
                Self.sweep(staleAfter: staleAfter, except: fence.instanceID, limit: maxPerSweep, term: fence.term,
                           actor: AuditActor.instance(fence.instanceID).description),
                purpose: "sweep stale instances")
            return try rows.map { try $0.decode("node_name", as: String.self) }
        }
    }

    public func runOnce(fence: LeaderFence) async throws -> Bool {
        let removed = try await sweepOnce(fence: fence)
        if !removed.isEmpty {
            metrics.staleInstancesSwept.increment(by: removed.count)
            logger.notice("swept stale instances", metadata: ["nodes": "\(removed.joined(separator: ","))", "term": "\(fence.term)"])
        }
        return false
    }
}
