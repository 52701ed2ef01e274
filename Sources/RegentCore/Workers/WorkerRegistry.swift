import Foundation
import PostgresClient

/// One registered worker.
public struct WorkerRecord: Sendable, Hashable, Codable {
    public let namespace: String
    public let workerInstanceID: String
    public let workerID: String
    public let lanes: [String]
    public let capabilities: [String]
    public let livenessTTLMs: Int64
    public let lastHeartbeat: Date
    public let expiresAt: Date
    public let dead: Bool
    public let deadReason: String?

    enum CodingKeys: String, CodingKey {
        case namespace, workerInstanceID = "worker_instance_id", workerID = "worker_id", lanes, capabilities
        case livenessTTLMs = "liveness_ttl_ms", lastHeartbeat = "last_heartbeat", expiresAt = "expires_at", dead
        case deadReason = "dead_reason"
    }
}

/// A `(namespace, worker_instance_id)` position in a worker listing.
public struct WorkerCursor: Sendable, Hashable, Codable {
    public let namespace: String
    public let workerInstanceID: String
    public init(namespace: String, workerInstanceID: String) {
        self.namespace = namespace
        self.workerInstanceID = workerInstanceID
    }
}

/// The worker registry (`workflow.workers`). Every change writes `workflow.worker_events`
/// in the same transaction. Times are the database's.
public struct WorkerRegistry: Sendable {
    public enum Registration: Sendable, Equatable { case registered, refreshed }
    public enum HeartbeatOutcome: Sendable, Equatable { case alive(nextExpiry: Date), notRegistered }
    public enum MarkDeadOutcome: Sendable, Equatable { case marked, notRegistered }

    /// The API token (its id) registering and heartbeating: an instance is bound to the token
    /// that first registered it (nil: a database client, bound to no token).
    public var token: String?

    public init(token: String? = nil) { self.token = token }

    package static func upsert(
        _ ns: Namespace, _ instance: WorkerInstanceID, _ worker: WorkerID, lanes: [String], capabilities: [String], ttl: Duration, token: String? = nil
    ) -> PostgresQuery {
        // A database client (no token) writes no token column: it also registers against a
        // workflow schema older than 0012 (an upgrade in progress).
        guard let token else {
            return """
                INSERT INTO workflow.workers (namespace, worker_instance_id, worker_id, lanes, capabilities, liveness_ttl_ms, expires_at)
                VALUES (\(ns.value), \(instance.value), \(worker.value), \(lanes)::text[], \(capabilities)::text[], \(Int64(ttl.milliseconds)),
                        now() + \(ttl)::interval)
                ON CONFLICT (namespace, worker_instance_id) DO UPDATE
                SET lanes = EXCLUDED.lanes, capabilities = EXCLUDED.capabilities, liveness_ttl_ms = EXCLUDED.liveness_ttl_ms,
                    last_heartbeat = now(), expires_at = EXCLUDED.expires_at, dead = false, dead_reason = NULL
                WHERE workflow.workers.worker_id = EXCLUDED.worker_id
                RETURNING (xmax = 0) AS inserted
                """
        }
        return """
        INSERT INTO workflow.workers (namespace, worker_instance_id, worker_id, lanes, capabilities, liveness_ttl_ms, expires_at, token_id)
        VALUES (\(ns.value), \(instance.value), \(worker.value), \(lanes)::text[], \(capabilities)::text[], \(Int64(ttl.milliseconds)),
                now() + \(ttl)::interval, \(token)::text)
        ON CONFLICT (namespace, worker_instance_id) DO UPDATE
        SET lanes = EXCLUDED.lanes, capabilities = EXCLUDED.capabilities, liveness_ttl_ms = EXCLUDED.liveness_ttl_ms,
            last_heartbeat = now(), expires_at = EXCLUDED.expires_at, dead = false, dead_reason = NULL
        WHERE workflow.workers.worker_id = EXCLUDED.worker_id AND workflow.workers.token_id IS NOT DISTINCT FROM EXCLUDED.token_id
        RETURNING (xmax = 0) AS inserted
        """
    }
    static func boundWorker(_ ns: Namespace, _ instance: WorkerInstanceID) -> PostgresQuery {
        "SELECT worker_id FROM workflow.workers WHERE namespace = \(ns.value) AND worker_instance_id = \(instance.value)"
    }
    static func logEvent(_ ns: Namespace, _ instance: WorkerInstanceID, _ kind: String, detail: String = "{}") -> PostgresQuery {
        """
        INSERT INTO workflow.worker_events (namespace, worker_instance_id, kind, detail)
        VALUES (\(ns.value), \(instance.value), \(kind), \(detail)::jsonb)
        """
    }
    static func heartbeat(_ ns: Namespace, _ instance: WorkerInstanceID, token: String? = nil) -> PostgresQuery {
        guard let token else {
            return """
                UPDATE workflow.workers SET last_heartbeat = now(), expires_at = now() + liveness_ttl_ms * interval '1 millisecond'
                WHERE namespace = \(ns.value) AND worker_instance_id = \(instance.value) AND NOT dead
                RETURNING expires_at
                """
        }
        return """
        UPDATE workflow.workers SET last_heartbeat = now(), expires_at = now() + liveness_ttl_ms * interval '1 millisecond'
        WHERE namespace = \(ns.value) AND worker_instance_id = \(instance.value) AND NOT dead
          AND token_id = \(token)
        RETURNING expires_at
        """
    }
    static func markDead(_ ns: Namespace, _ instance: WorkerInstanceID, _ reason: DeathReason, token: String? = nil) -> PostgresQuery {
        """
        UPDATE workflow.workers SET dead = true, dead_reason = \(reason.text)
        WHERE namespace = \(ns.value) AND worker_instance_id = \(instance.value) AND NOT dead
          AND (\(token)::text IS NULL OR token_id = \(token)::text)
        RETURNING worker_id
        """
    }
    /// A dead worker's leases expire now, so the leader's next scan reclaims them instead of
    /// waiting out their time. Its own transaction, after the mark committed (the worker row is
    /// no longer held), taking only lease rows and those in execution id order, the order batch
    /// completions take them in: it waits at most for a completion in flight, never in a cycle.
    static func expireLeases(_ ns: Namespace, _ instance: WorkerInstanceID) -> PostgresQuery {
        """
        UPDATE workflow.leases l SET lease_expires_at = now()
        FROM (SELECT execution_id FROM workflow.leases
              WHERE namespace = \(ns.value) AND worker_instance_id = \(instance.value) AND lease_expires_at > now()
              ORDER BY execution_id FOR UPDATE) x
        WHERE l.execution_id = x.execution_id
        """
    }
    static func list(namespace: Namespace?, after: WorkerCursor?, limit: Int) -> PostgresQuery {
        """
        SELECT namespace, worker_instance_id, worker_id, lanes, capabilities, liveness_ttl_ms, last_heartbeat, expires_at,
               dead, dead_reason
        FROM workflow.workers
        WHERE (\(namespace?.value)::text IS NULL OR namespace = \(namespace?.value)::text)
          AND (\(after?.namespace)::text IS NULL OR (namespace, worker_instance_id) > (\(after?.namespace)::text, \(after?.workerInstanceID)::text))
        ORDER BY namespace, worker_instance_id
        LIMIT \(limit)
        """
    }

    /// Registers a worker instance, or refreshes it when it is already registered with the
    /// same worker id. An instance id bound to another worker id is refused, changing nothing.
    public func register(
        namespace: Namespace, workerInstanceID: WorkerInstanceID, workerID: WorkerID, lanes: [Lane], capabilities: [Capability],
        livenessTTL: Duration, on conn: PostgresConnection
    ) async throws -> Registration {
        guard livenessTTL >= .milliseconds(100), livenessTTL <= .seconds(86_400) else {
            throw RegentError(.invalidInput, "liveness TTL \(livenessTTL) must be between 100ms and 24h")
        }
        guard !lanes.isEmpty else { throw RegentError(.invalidInput, "a worker needs at least one lane") }
        return try await conn.withTransaction { tx in
            let rows = try await tx.query(
                Self.upsert(
                    namespace, workerInstanceID, workerID, lanes: lanes.map(\.value).sorted(), capabilities: capabilities.map(\.value).sorted(),
                    ttl: livenessTTL, token: token),
                purpose: "workers: register")
            guard let row = rows.first else {
                let boundRow = try await tx.query(Self.boundWorker(namespace, workerInstanceID)).first
                let bound = try boundRow?.decode("worker_id", as: String.self) ?? "?"
                if bound == workerID.value {
                    throw RegentError(
                        .instanceBound,
                        "worker instance \(workerInstanceID) in namespace \(namespace) was registered with another token",
                        hint: "register a new instance id with this token; an instance stays bound to the token that registered it")
                }
                throw RegentError(
                    .instanceBound,
                    "worker instance \(workerInstanceID) in namespace \(namespace) is bound to worker \(bound), not \(workerID); use a new instance id")
            }
            let inserted = try row.decode("inserted", as: Bool.self)
            try await tx.query(Self.logEvent(namespace, workerInstanceID, inserted ? "registered" : "refreshed",
                                             detail: #"{"worker_id": \#(jsonString(workerID.value))}"#), purpose: "workers: log registration")
            return inserted ? .registered : .refreshed
        }
    }

    /// Extends the worker's liveness by its TTL, only while it has not lapsed (database time).
    public func heartbeat(namespace: Namespace, workerInstanceID: WorkerInstanceID, on conn: PostgresConnection) async throws -> HeartbeatOutcome {
        let rows = try await conn.query(Self.heartbeat(namespace, workerInstanceID, token: token), purpose: "workers: heartbeat")
        guard let row = rows.first else { return .notRegistered }
        return .alive(nextExpiry: try row.decode("expires_at"))
    }

    public func markDead(namespace: Namespace, workerInstanceID: WorkerInstanceID, reason: DeathReason, on conn: PostgresConnection) async throws
        -> MarkDeadOutcome
    {
        try await mark(namespace, workerInstanceID, dead: reason, token: nil, on: conn)
    }

    /// A worker leaving on purpose (graceful shutdown): it is marked dead at once, so the
    /// leases it still holds are reclaimed by the next scan instead of at their expiry, and a
    /// claim under its instance id is refused until it registers again. Only the token that
    /// registered an instance may deregister it.
    public func deregister(namespace: Namespace, workerInstanceID: WorkerInstanceID, on conn: PostgresConnection) async throws -> MarkDeadOutcome {
        try await mark(namespace, workerInstanceID, dead: try DeathReason("deregistered"), token: token, on: conn)
    }

    /// Marks the instance dead (only if `token` registered it, when given) and logs why, in one
    /// transaction; then expires its leases, in a statement of its own (see ``expireLeases``).
    private func mark(_ namespace: Namespace, _ instance: WorkerInstanceID, dead reason: DeathReason, token: String?, on conn: PostgresConnection)
        async throws -> MarkDeadOutcome
    {
        let outcome = try await conn.withTransaction { tx in
            guard try await !tx.query(Self.markDead(namespace, instance, reason, token: token), purpose: "workers: mark dead").isEmpty else {
                return MarkDeadOutcome.notRegistered
            }
            try await tx.query(
                Self.logEvent(namespace, instance, "marked_dead", detail: #"{"reason": \#(jsonString(reason.text))}"#), purpose: "workers: log death")
            return .marked
        }
        if outcome == .marked { try await conn.query(Self.expireLeases(namespace, instance), purpose: "workers: expire a dead worker's leases") }
        return outcome
    }

    /// Workers in `(namespace, worker_instance_id)` order; across all namespaces when `namespace` is nil.
    public func list(namespace: Namespace?, after: WorkerCursor?, limit: Int, on conn: PostgresConnection) async throws -> [WorkerRecord] {
        guard (1...1000).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to 1000, got \(limit)") }
        if let after {
            guard Namespace.isValid(after.namespace), WorkerInstanceID.isValid(after.workerInstanceID) else {
                throw RegentError(.invalidInput, "invalid cursor: namespace and worker instance id must be valid names")
            }
        }
        return try await conn.query(Self.list(namespace: namespace, after: after, limit: limit), purpose: "workers: list").map { row in
            WorkerRecord(
                namespace: try row.decode("namespace"), workerInstanceID: try row.decode("worker_instance_id"),
                workerID: try row.decode("worker_id"), lanes: try row.decode("lanes"), capabilities: try row.decode("capabilities"),
                livenessTTLMs: try row.decode("liveness_ttl_ms"), lastHeartbeat: try row.decode("last_heartbeat"),
                expiresAt: try row.decode("expires_at"), dead: try row.decode("dead"), deadReason: try row.decodeOptional("dead_reason"))
        }
    }
}
