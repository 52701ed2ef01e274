import Foundation
import PostgresClient

/// A lane's limits (`workflow.lane_limits`, sql/workflow/0018), enforced by the claim itself:
/// at most `maxRunning` executions of the lane running at once, and claims at most `rate` per
/// second with bursts of `burst` (a token bucket). docs/flow-control.md.
public struct LaneLimit: Sendable, Hashable, Encodable {
    public let namespace: String
    public let lane: String
    public let maxRunning: Int?
    /// Claims per second.
    public let rate: Double?
    public let burst: Int?
    /// Claims the limits held back while the lane had work ready.
    public let blocked: Int64
    /// Executions of the lane running under the max-running limit right now.
    public let running: Int
    /// Executions of the lane ready to claim right now.
    public let ready: Int
    public let updatedAt: Date
    public let updatedBy: String

    enum CodingKeys: String, CodingKey {
        case namespace, lane, maxRunning = "max_running", rate = "rate_per_s", burst, blocked, running, ready, updatedAt = "updated_at", updatedBy = "updated_by"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(namespace, forKey: .namespace)
        try c.encode(lane, forKey: .lane)
        try c.encode(maxRunning, forKey: .maxRunning)
        try c.encode(rate, forKey: .rate)
        try c.encode(burst, forKey: .burst)
        try c.encode(blocked, forKey: .blocked)
        try c.encode(running, forKey: .running)
        try c.encode(ready, forKey: .ready)
        try c.encode(updatedAt, forKey: .updatedAt)
        try c.encode(updatedBy, forKey: .updatedBy)
    }

    /// A rate as operators write it: `50/s`, `600/m`, `1000/h` (or a bare number, per second).
    public static func parseRate(_ text: String) throws(RegentError) -> Double {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        let per: Double
        switch parts.count == 2 ? String(parts[1]) : "s" {
        case "s": per = 1
        case "m": per = 60
        case "h": per = 3600
        default: throw RegentError(.invalidInput, "rate \(quoted(text)): write N/s, N/m or N/h (e.g. 50/s)")
        }
        guard parts.count <= 2, let n = Double(parts[0]), n.isFinite, n > 0, n / per <= 1_000_000, n / per >= 0.0001 else {
            throw RegentError(.invalidInput, "rate \(quoted(text)): write N/s, N/m or N/h with N above 0 (e.g. 50/s), at most 1000000/s")
        }
        return n / per
    }
}

public struct LaneLimitStore: Sendable {
    public init() {}

    static let select: PostgresQuery = """
        SELECT ll.namespace, ll.lane, ll.max_running, ll.rate, ll.burst, ll.blocked, ll.updated_at, ll.updated_by,
               (SELECT count(*) FROM workflow.leases s WHERE s.namespace = ll.namespace AND s.lane = ll.lane AND s.lane_limited)::int AS running,
               (SELECT count(*) FROM workflow.ready q WHERE q.namespace = ll.namespace AND q.lane = ll.lane AND q.run_at <= now())::int AS ready
        FROM workflow.lane_limits ll
        """

    static func limit(_ row: PostgresRow) throws -> LaneLimit {
        LaneLimit(
            namespace: try row.decode("namespace"), lane: try row.decode("lane"), maxRunning: try row.decodeOptional("max_running"),
            rate: try row.decodeOptional("rate"), burst: try row.decodeOptional("burst"), blocked: try row.decode("blocked"),
            running: try row.decode("running"), ready: try row.decode("ready"), updatedAt: try row.decode("updated_at"), updatedBy: try row.decode("updated_by"))
    }

    /// Sets (replaces) a lane's limits. A rate without a burst gets a burst of max(1, rate)
    /// (one second's worth); a bucket starts full. Audited.
    public func set(
        namespace: Namespace, lane: Lane, maxRunning: Int?, rate: Double?, burst: Int?, actor: AuditActor, on conn: PostgresConnection
    ) async throws -> LaneLimit {
        if burst != nil && rate == nil { throw RegentError(.invalidInput, "a burst needs a rate") }
        guard maxRunning != nil || rate != nil else {
            throw RegentError(.invalidInput, "a lane limit needs a max running, a rate, or both (to remove a lane's limits: regent lanes clear, or DELETE /v1/lanes/{namespace}/{lane})")
        }
        if let maxRunning, !(1...1_000_000).contains(maxRunning) { throw RegentError(.invalidInput, "max running must be 1 to 1000000, got \(maxRunning)") }
        if let rate, !(rate > 0 && rate <= 1_000_000) { throw RegentError(.invalidInput, "rate must be above 0 and at most 1000000 per second") }
        if let burst, !(1...1_000_000).contains(burst) { throw RegentError(.invalidInput, "burst must be 1 to 1000000, got \(burst)") }
        let bucket = rate.map { r in burst ?? max(1, Int(r.rounded(.up))) }
        return try await conn.withTransaction { tx in
            try await tx.query(
                """
                INSERT INTO workflow.lane_limits (namespace, lane, max_running, rate, burst, tokens, refilled_at, updated_by)
                VALUES (\(namespace.value), \(lane.value), \(maxRunning), \(rate), \(bucket), \(Double(bucket ?? 0)), clock_timestamp(), \(actor.description))
                ON CONFLICT (namespace, lane) DO UPDATE SET
                    max_running = EXCLUDED.max_running, rate = EXCLUDED.rate, burst = EXCLUDED.burst,
                    tokens = LEAST(COALESCE(EXCLUDED.burst, 0), workflow.lane_limits.tokens), updated_at = now(), updated_by = EXCLUDED.updated_by
                """, purpose: "lanes: set limits")
            if maxRunning != nil {
                // Executions already running in the lane count against the limit too: marked as
                // if claimed under it (their slot is announced when they stop; the unlimited claim
                // leaves a lease's lane unset, so it is written here), executions before their
                // leases, in the lock order (docs/workers-and-leases.md). A completion in flight
                // wins the row; the execution it ends is then no longer running. Live leases only:
                // a short table, read without an index.
                try await tx.query(
                    """
                    WITH marked AS (
                        UPDATE workflow.executions e SET lane_limited = true
                        FROM workflow.leases l
                        WHERE l.namespace = \(namespace.value) AND l.lane_limited IS NOT TRUE
                          AND e.execution_id = l.execution_id AND e.lane = \(lane.value) AND e.state = 'running'
                        RETURNING e.execution_id, e.lane
                    )
                    UPDATE workflow.leases l SET lane_limited = true, lane = m.lane FROM marked m WHERE l.execution_id = m.execution_id
                    """, purpose: "lanes: count the running executions")
            }
            var detail: [String: Any] = ["namespace": namespace.value, "lane": lane.value]
            if let maxRunning { detail["max_running"] = String(maxRunning) }
            if let rate { detail["rate_per_s"] = String(rate) }
            if let bucket { detail["burst"] = String(bucket) }
            try await tx.query(AuditLog.insert(actor: actor, action: "lane.limited", detailJSON: AuditLog.detail(detail)), purpose: "lanes: audit")
            // Claims held back by the old limits may take more now.
            try await tx.query("SELECT workflow.notify_queue(\(namespace.value), ARRAY[\(lane.value)])", purpose: "lanes: wake claimers")
            return try Self.limit(try await tx.query(
                PostgresQuery(unsafeSQL: Self.select.sql + " WHERE ll.namespace = $1 AND ll.lane = $2", binds: [.text(namespace.value), .text(lane.value)]),
                purpose: "lanes: read back").single())
        }
    }

    /// Removes a lane's limits (its claims are unlimited from the next one on). Audited.
    public func clear(namespace: Namespace, lane: Lane, actor: AuditActor, on conn: PostgresConnection) async throws {
        try await conn.withTransaction { tx in
            let rows = try await tx.query(
                "DELETE FROM workflow.lane_limits WHERE namespace = \(namespace.value) AND lane = \(lane.value) RETURNING lane", purpose: "lanes: clear")
            guard !rows.isEmpty else {
                throw RegentError(.notFound, "lane \(quoted(lane.value)) of namespace \(quoted(namespace.value)) has no limits", hint: "regent lanes list shows the limited lanes")
            }
            try await tx.query(
                AuditLog.insert(actor: actor, action: "lane.unlimited", detailJSON: AuditLog.detail(["namespace": namespace.value, "lane": lane.value])),
                purpose: "lanes: audit")
            try await tx.query("SELECT workflow.notify_queue(\(namespace.value), ARRAY[\(lane.value)])", purpose: "lanes: wake claimers")
        }
    }

    /// Every limited lane, by namespace and lane.
    public func list(on conn: PostgresConnection) async throws -> [LaneLimit] {
        try await conn.query(PostgresQuery(unsafeSQL: Self.select.sql + " ORDER BY ll.namespace, ll.lane"), purpose: "lanes: list").map(Self.limit)
    }
}
