import Foundation
import PostgresClient

/// Queue depth per namespace and lane: executions ready to claim, scheduled for later, the age
/// of the oldest ready one, and running (leased) ones with how many of those leases are past
/// their expiry and await the leader's scan. One statement over the ready and lease tables.
public struct QueueOverview: Sendable, Encodable {
    public struct Lane: Sendable, Encodable {
        public let namespace: String
        public let lane: String
        public let ready: Int64
        public let scheduled: Int64
        public let oldestReadyAgeMs: Int64?
        public let running: Int64
        public let expired: Int64
        enum CodingKeys: String, CodingKey {
            case namespace, lane, ready, scheduled, oldestReadyAgeMs = "oldest_ready_age_ms", running, expired
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(namespace, forKey: .namespace)
            try c.encode(lane, forKey: .lane)
            try c.encode(ready, forKey: .ready)
            try c.encode(scheduled, forKey: .scheduled)
            try c.encode(oldestReadyAgeMs, forKey: .oldestReadyAgeMs)  // null when nothing is ready
            try c.encode(running, forKey: .running)
            try c.encode(expired, forKey: .expired)
        }
    }

    public let lanes: [Lane]
    /// More lanes than the answer holds (the busiest are kept).
    public let truncated: Bool
    public let readAt: Date
    enum CodingKeys: String, CodingKey { case lanes, truncated, readAt = "read_at" }

    public static let maxLanes = 500

    static let query: PostgresQuery = """
        WITH q AS (
            SELECT namespace, lane, count(*) FILTER (WHERE run_at <= now()) AS ready,
                   count(*) FILTER (WHERE run_at > now()) AS scheduled,
                   min(run_at) FILTER (WHERE run_at <= now()) AS oldest
            FROM workflow.ready GROUP BY namespace, lane
        ), r AS (
            SELECT l.namespace, e.lane, count(*) AS running, count(*) FILTER (WHERE l.lease_expires_at <= now()) AS expired
            FROM workflow.leases l JOIN workflow.executions e USING (execution_id) GROUP BY l.namespace, e.lane
        )
        SELECT COALESCE(q.namespace, r.namespace) AS namespace, COALESCE(q.lane, r.lane) AS lane,
               COALESCE(q.ready, 0) AS ready, COALESCE(q.scheduled, 0) AS scheduled,
               (extract(epoch FROM now() - q.oldest) * 1000)::bigint AS oldest_ms,
               COALESCE(r.running, 0) AS running, COALESCE(r.expired, 0) AS expired, now() AS read_at
        FROM q FULL JOIN r ON q.namespace = r.namespace AND q.lane = r.lane
        ORDER BY COALESCE(q.ready, 0) + COALESCE(r.running, 0) DESC, 1, 2
        LIMIT \(maxLanes + 1)
        """

    public static func read(on conn: PostgresConnection) async throws -> QueueOverview {
        let rows = try await conn.query(query, purpose: "queues: overview")
        var lanes: [Lane] = []
        var readAt = Date()
        for row in rows.prefix(maxLanes) {
            readAt = try row.decode("read_at")
            lanes.append(Lane(
                namespace: try row.decode("namespace"), lane: try row.decode("lane"), ready: try row.decode("ready"),
                scheduled: try row.decode("scheduled"), oldestReadyAgeMs: try row.decodeOptional("oldest_ms"),
                running: try row.decode("running"), expired: try row.decode("expired")))
        }
        return QueueOverview(lanes: lanes, truncated: rows.count > maxLanes, readAt: readAt)
    }
}
