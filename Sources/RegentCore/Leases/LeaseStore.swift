import Foundation
import PostgresClient

/// A lease on one execution, held by one worker instance until `expiresAt` (database time).
public struct Lease: Sendable, Hashable, Codable {
    public let executionID: UUID
    public let lane: String
    public let attemptIndex: Int
    public let epoch: LeaseEpoch
    public let payload: String
    public let expiresAt: Date

    enum CodingKeys: String, CodingKey {
        case executionID = "execution_id", lane, attemptIndex = "attempt_index", epoch = "lease_epoch", payload
        case expiresAt = "lease_expires_at"
    }
}

/// An expired lease, as operators list them.
public struct ExpiredLease: Sendable, Hashable, Codable {
    public let executionID: UUID
    public let namespace: String
    public let lane: String
    public let attemptIndex: Int
    public let epoch: Int64
    public let workerInstanceID: String
    public let expiresAt: Date

    enum CodingKeys: String, CodingKey {
        case executionID = "execution_id", namespace, lane, attemptIndex = "attempt_index", epoch = "lease_epoch"
        case workerInstanceID = "worker_instance_id", expiresAt = "lease_expires_at"
    }
}

/// A stable `(expires_at, execution_id)` position in the expired-lease listing.
public struct ExpiredLeaseCursor: Sendable, Hashable, Codable {
    public let expiresAt: Date
    public let executionID: UUID
    public init(expiresAt: Date, executionID: UUID) {
        self.expiresAt = expiresAt
        self.executionID = executionID
    }
}

/// An execution's summary row.
public struct ExecutionRecord: Sendable, Hashable, Codable {
    public let executionID: UUID
    public let namespace: String
    public let lane: String
    public let state: String
    public let attempts: Int
    public let maxAttempts: Int
    public let epoch: Int64
    public let createdAt: Date

    enum CodingKeys: String, CodingKey {
        case executionID = "execution_id", namespace, lane, state, attempts, maxAttempts = "max_attempts", epoch = "lease_epoch"
        case createdAt = "created_at"
    }
}

/// Executions, attempts and leases (`workflow.executions`, `workflow.attempts`).
///
/// Promises: a queued execution is claimed by at most one worker (`FOR UPDATE SKIP
/// LOCKED`); renew, complete and fail succeed only with the execution's current lease
/// epoch, so a worker whose lease was reclaimed changes nothing (``staleLease``).
public struct LeaseStore: Sendable {
    public init() {}

    /// Thrown when the presented epoch is not the execution's current one (or it is not running).
    public static func staleLease(_ id: UUID, _ epoch: LeaseEpoch) -> RegentError {
        RegentError(
            .staleLease, "lease epoch \(epoch) of execution \(id.uuidString.lowercased()) is no longer current",
            hint: "the lease expired and was reclaimed, or the execution finished; drop this work")
    }

    package static func enqueue(_ ns: Namespace, _ lane: Lane, payload: String, maxAttempts: Int, required: [String]) -> PostgresQuery {
        """
        INSERT INTO workflow.executions (namespace, lane, payload, max_attempts, required_capabilities)
        VALUES (\(ns.value), \(lane.value), \(payload)::jsonb, \(maxAttempts), \(required)::text[])
        RETURNING execution_id
        """
    }
    package static func workerAlive(_ ns: Namespace, _ w: WorkerInstanceID) -> PostgresQuery {
        """
        SELECT 1 FROM workflow.workers
        WHERE namespace = \(ns.value) AND worker_instance_id = \(w.value) AND NOT dead AND expires_at > now()
        """
    }
    package static func claim(_ ns: Namespace, lanes: [String], worker: WorkerInstanceID, capabilities: [String], lease: Duration, limit: Int)
        -> PostgresQuery
    {
        """
        WITH picked AS (
            SELECT execution_id FROM workflow.executions
            WHERE namespace = \(ns.value) AND lane = ANY(\(lanes)::text[]) AND state = 'queued'
              AND required_capabilities <@ \(capabilities)::text[]
            ORDER BY created_at, execution_id
            LIMIT \(limit)
            FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE workflow.executions e
            SET state = 'running', attempts = e.attempts + 1, lease_epoch = e.lease_epoch + 1, updated_at = now()
            FROM picked WHERE e.execution_id = picked.execution_id
            RETURNING e.execution_id, e.lane, e.attempts, e.lease_epoch, e.payload
        ), attempt AS (
            INSERT INTO workflow.attempts (execution_id, attempt_index, lease_epoch, worker_instance_id, state, lease_expires_at, lease_ms)
            SELECT execution_id, attempts, lease_epoch, \(worker.value), 'leased', now() + \(lease)::interval, \(Int64(lease.milliseconds)) FROM claimed
            RETURNING execution_id, lease_expires_at
        )
        SELECT c.execution_id, c.lane, c.attempts AS attempt_index, c.lease_epoch, c.payload::text AS payload, a.lease_expires_at
        FROM claimed c JOIN attempt a USING (execution_id)
        ORDER BY c.execution_id
        """
    }
    static func renew(_ id: UUID, _ epoch: LeaseEpoch, _ lease: Duration) -> PostgresQuery {
        """
        UPDATE workflow.attempts a SET lease_expires_at = now() + \(lease)::interval, lease_ms = \(Int64(lease.milliseconds))
        FROM workflow.executions e
        WHERE a.execution_id = \(id) AND a.lease_epoch = \(epoch.value) AND a.state = 'leased'
          AND e.execution_id = a.execution_id AND e.lease_epoch = \(epoch.value) AND e.state = 'running'
        RETURNING a.lease_expires_at
        """
    }
    package static func finishExecution(_ id: UUID, _ epoch: LeaseEpoch, state: String, result: String?, error: String?) -> PostgresQuery {
        """
        UPDATE workflow.executions SET state = \(state), result = \(result)::jsonb, last_error = \(error), updated_at = now()
        WHERE execution_id = \(id) AND lease_epoch = \(epoch.value) AND state = 'running'
        RETURNING attempts
        """
    }
    static func failExecution(_ id: UUID, _ epoch: LeaseEpoch, retryable: Bool, error: String) -> PostgresQuery {
        """
        UPDATE workflow.executions
        SET state = CASE WHEN \(retryable) AND attempts < max_attempts THEN 'queued'
                         WHEN \(retryable) THEN 'dead_lettered' ELSE 'failed' END,
            last_error = \(error), updated_at = now()
        WHERE execution_id = \(id) AND lease_epoch = \(epoch.value) AND state = 'running'
        RETURNING state
        """
    }
    package static func endAttempt(_ id: UUID, _ epoch: LeaseEpoch, state: String) -> PostgresQuery {
        """
        UPDATE workflow.attempts SET state = \(state), ended_at = now()
        WHERE execution_id = \(id) AND lease_epoch = \(epoch.value) AND state = 'leased'
        """
    }
    static func listExpired(asOf: Date?, namespace: Namespace?, after: ExpiredLeaseCursor?, limit: Int) -> PostgresQuery {
        """
        SELECT a.execution_id, e.namespace, e.lane, a.attempt_index, a.lease_epoch, a.worker_instance_id, a.lease_expires_at
        FROM workflow.attempts a JOIN workflow.executions e USING (execution_id)
        WHERE a.state = 'leased' AND a.lease_expires_at <= coalesce(\(asOf)::timestamptz, now())
          AND (\(namespace?.value)::text IS NULL OR e.namespace = \(namespace?.value)::text)
          AND (\(after?.expiresAt)::timestamptz IS NULL
               OR (a.lease_expires_at, a.execution_id) > (\(after?.expiresAt)::timestamptz, \(after?.executionID)::uuid))
        ORDER BY a.lease_expires_at, a.execution_id
        LIMIT \(limit)
        """
    }
    static func listExecutions(_ ns: Namespace?, state: String?, limit: Int) -> PostgresQuery {
        """
        SELECT execution_id, namespace, lane, state, attempts, max_attempts, lease_epoch, created_at FROM workflow.executions
        WHERE (\(ns?.value)::text IS NULL OR namespace = \(ns?.value)::text) AND (\(state)::text IS NULL OR state = \(state)::text)
        ORDER BY created_at DESC, execution_id LIMIT \(limit)
        """
    }

    /// Creates a queued execution; returns its id.
    public func enqueue(
        namespace: Namespace, lane: Lane, payload: String, maxAttempts: Int, requiredCapabilities: [Capability] = [], on conn: PostgresConnection
    ) async throws -> UUID {
        guard (1...1000).contains(maxAttempts) else { throw RegentError(.invalidInput, "max attempts must be 1 to 1000, got \(maxAttempts)") }
        let payload = try EventPayload(json: payload)
        return try await conn.query(
            Self.enqueue(namespace, lane, payload: payload.json, maxAttempts: maxAttempts, required: requiredCapabilities.map(\.value)),
            purpose: "executions: enqueue"
        ).single().decode("execution_id")
    }

    /// Claims up to `limit` runnable executions of `lanes` whose required capabilities the
    /// worker has; each gets a new attempt and lease epoch. The worker must be registered and alive.
    public func claim(
        namespace: Namespace, lanes: [Lane], workerInstanceID: WorkerInstanceID, capabilities: [Capability], leaseDuration: Duration,
        limit: Int, on conn: PostgresConnection
    ) async throws -> [Lease] {
        guard (1...1000).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to 1000, got \(limit)") }
        guard leaseDuration >= .milliseconds(100), leaseDuration <= .seconds(86_400) else {
            throw RegentError(.invalidInput, "lease duration \(leaseDuration) must be between 100ms and 24h")
        }
        guard !lanes.isEmpty else { throw RegentError(.invalidInput, "claim needs at least one lane") }
        return try await conn.withTransaction { tx in
            guard try await !tx.query(Self.workerAlive(namespace, workerInstanceID), purpose: "claim: worker alive?").isEmpty else {
                throw RegentError(
                    .notRegistered, "worker instance \(workerInstanceID) is not registered and alive in namespace \(namespace)",
                    hint: "register it (or heartbeat before its TTL lapses) before claiming")
            }
            return try await tx.query(
                Self.claim(namespace, lanes: lanes.map(\.value), worker: workerInstanceID, capabilities: capabilities.map(\.value),
                           lease: leaseDuration, limit: limit),
                purpose: "claim executions"
            ).map { row in
                Lease(
                    executionID: try row.decode("execution_id"), lane: try row.decode("lane"), attemptIndex: try row.decode("attempt_index"),
                    epoch: LeaseEpoch(try row.decode("lease_epoch")), payload: try row.decode("payload"),
                    expiresAt: try row.decode("lease_expires_at"))
            }
        }
    }

    /// Extends a live lease; returns the new expiry.
    public func renew(executionID: UUID, epoch: LeaseEpoch, leaseDuration: Duration, on conn: PostgresConnection) async throws -> Date {
        guard leaseDuration >= .milliseconds(100), leaseDuration <= .seconds(86_400) else {
            throw RegentError(.invalidInput, "lease duration \(leaseDuration) must be between 100ms and 24h")
        }
        guard let row = try await conn.query(Self.renew(executionID, epoch, leaseDuration), purpose: "renew lease").first else {
            throw Self.staleLease(executionID, epoch)
        }
        return try row.decode("lease_expires_at")
    }

    /// Completes the execution with `result` (a JSON object).
    public func complete(executionID: UUID, epoch: LeaseEpoch, result: String = "{}", on conn: PostgresConnection) async throws {
        let result = try EventPayload(json: result)
        try await conn.withTransaction { tx in
            guard try await !tx.query(
                Self.finishExecution(executionID, epoch, state: "completed", result: result.json, error: nil), purpose: "complete execution"
            ).isEmpty else { throw Self.staleLease(executionID, epoch) }
            try await tx.query(Self.endAttempt(executionID, epoch, state: "completed"), purpose: "end attempt")
        }
    }

    public enum FailOutcome: String, Sendable, Equatable { case requeued = "queued", deadLettered = "dead_lettered", failed }

    /// Fails the attempt: retryable with attempts left → queued again; retryable without →
    /// dead-lettered; not retryable → failed.
    public func fail(executionID: UUID, epoch: LeaseEpoch, error: String, retryable: Bool, on conn: PostgresConnection) async throws
        -> FailOutcome
    {
        guard error.utf8.count <= 4096 else { throw RegentError(.invalidInput, "error text is \(error.utf8.count) bytes; at most 4096") }
        return try await conn.withTransaction { tx in
            guard let row = try await tx.query(
                Self.failExecution(executionID, epoch, retryable: retryable, error: error), purpose: "fail execution"
            ).first else { throw Self.staleLease(executionID, epoch) }
            try await tx.query(Self.endAttempt(executionID, epoch, state: "failed"), purpose: "end attempt")
            return FailOutcome(rawValue: try row.decode("state", as: String.self)) ?? .failed
        }
    }

    /// Leases past their expiry (as of `asOf`, default now), oldest first, paged by a stable cursor.
    public func listExpiredLeases(
        asOf: Date? = nil, namespace: Namespace? = nil, after: ExpiredLeaseCursor? = nil, limit: Int = 100, on conn: PostgresConnection
    ) async throws -> [ExpiredLease] {
        guard (1...1000).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to 1000, got \(limit)") }
        return try await conn.query(Self.listExpired(asOf: asOf, namespace: namespace, after: after, limit: limit), purpose: "list expired leases")
            .map { row in
                ExpiredLease(
                    executionID: try row.decode("execution_id"), namespace: try row.decode("namespace"), lane: try row.decode("lane"),
                    attemptIndex: try row.decode("attempt_index"), epoch: try row.decode("lease_epoch"),
                    workerInstanceID: try row.decode("worker_instance_id"), expiresAt: try row.decode("lease_expires_at"))
            }
    }

    public func listExecutions(namespace: Namespace?, state: String?, limit: Int, on conn: PostgresConnection) async throws -> [ExecutionRecord] {
        let states = ["queued", "running", "completed", "failed", "dead_lettered"]
        if let state, !states.contains(state) {
            throw RegentError(.invalidInput, "invalid state \(quoted(state)): use one of \(states.joined(separator: ", "))")
        }
        guard (1...1000).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to 1000, got \(limit)") }
        return try await conn.query(Self.listExecutions(namespace, state: state, limit: limit), purpose: "list executions").map { row in
            ExecutionRecord(
                executionID: try row.decode("execution_id"), namespace: try row.decode("namespace"), lane: try row.decode("lane"),
                state: try row.decode("state"), attempts: try row.decode("attempts"), maxAttempts: try row.decode("max_attempts"),
                epoch: try row.decode("lease_epoch"), createdAt: try row.decode("created_at"))
        }
    }
}
