import CoreMetrics
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import PostgresClient
import Prometheus
import RegentCore
import ServiceLifecycle

/// Claims, renewals, completion, failure and expired leases.
extension AdminAPI {
    func claim(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(
            request, context: context, allowed: ["namespace", "worker_instance_id", "lanes", "capabilities", "lease_ms", "limit", "wait_ms"])
        let c = try ClaimRequest(body)
        try context.checkScope(namespace: c.namespace, lanes: c.lanes, action: "claim")
        let wait = try body.optionalInt("wait_ms") ?? 0
        guard (0...30_000).contains(wait) else { throw APIError.badRequest("invalid_field", "field \"wait_ms\" must be 0 to 30000") }
        if let node, await node.isDraining { throw Self.draining }
        let leases: [Lease]
        if wait > 0 {
            // A long poll: no connection is held while it waits (see QueueWaker).
            leases = try await context.leases.claim(
                namespace: c.namespace, lanes: c.lanes, workerInstanceID: c.instance, capabilities: c.capabilities, leaseDuration: c.lease,
                limit: c.limit, wait: .milliseconds(wait), waker: await node?.queueWaker, pool: pool)
        } else {
            leases = try await pool.withConnection {
                try await context.leases.claim(
                    namespace: c.namespace, lanes: c.lanes, workerInstanceID: c.instance, capabilities: c.capabilities, leaseDuration: c.lease,
                    limit: c.limit, on: $0)
            }
        }
        return try json(["leases": leases.map(LeaseDocument.init)])
    }

    static let draining = APIError(
        status: .serviceUnavailable, code: "draining", message: "this node is shutting down and takes no claims; use another node")

    /// The claim fields of a body (`/v1/leases/claim`, `/v1/leases/complete-and-claim`).
    struct ClaimRequest {
        let namespace: Namespace
        let instance: WorkerInstanceID
        let lanes: [Lane]
        let capabilities: [Capability]
        /// nil: a step's execution is leased for its step's timeout, a plain one for 30 s.
        let lease: Duration?
        let limit: Int

        init(_ body: JSONBody) throws {
            namespace = try Namespace(try body.string("namespace"))
            instance = try WorkerInstanceID(try body.string("worker_instance_id"))
            lanes = try body.nameSet("lanes").map { try Lane($0) }
            capabilities = try (body.optionalNameSet("capabilities") ?? []).map { try Capability($0) }
            lease = try body.optionalInt("lease_ms").map { Duration.milliseconds($0) }
            let limit = try body.optionalInt("limit") ?? 1
            guard (1...1000).contains(limit) else { throw APIError.badRequest("invalid_field", "field \"limit\" must be 1 to 1000") }
            self.limit = Int(limit)
        }
    }

    struct LeaseDocument: Encodable {
        let lease: Lease
        enum Keys: String, CodingKey {
            case executionID = "execution_id", lane, attemptIndex = "attempt_index", epoch = "lease_epoch", payload
            case expiresAt = "lease_expires_at", runID = "run_id", step, packageHash = "package_hash"
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Keys.self)
            if let step = lease.step {
                try c.encode(step.runID, forKey: .runID)
                try c.encode(step.name, forKey: .step)
                try c.encode(step.packageHash, forKey: .packageHash)
            }
            try c.encode(lease.executionID.lowercasedText, forKey: .executionID)
            try c.encode(lease.lane, forKey: .lane)
            try c.encode(lease.attemptIndex, forKey: .attemptIndex)
            try c.encode(lease.epoch.value, forKey: .epoch)
            try c.encode(AnyJSON(text: lease.payload), forKey: .payload)
            try c.encode(lease.expiresAt, forKey: .expiresAt)
        }
    }

    func renew(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["execution_id", "lease_epoch", "lease_ms", "worker_instance_id"])
        let id = try body.uuid("execution_id")
        let epoch = LeaseEpoch(try body.int("lease_epoch"))
        // Without lease_ms: the step's own timeout, or the lease's length as last granted.
        let lease = try body.optionalInt("lease_ms").map { Duration.milliseconds($0) }
        let worker = try body.optionalString("worker_instance_id").map { try WorkerInstanceID($0) }
        let expires = try await pool.withConnection {
            try await context.leases.renew(executionID: id, epoch: epoch, leaseDuration: lease, worker: worker, on: $0)
        }
        return try json(["lease_expires_at": expires])
    }

    func complete(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let c = try await JSONBody.read(request, context: context, allowed: JSONBody.completionFields).completion()
        let outcome = try await retryingConflicts(on: pool) {
            try await context.leases.complete(executionID: c.executionID, epoch: c.epoch, result: c.result, cost: c.cost, worker: c.worker, on: $0)
        }
        return try json(["state": outcome.rawValue])
    }

    func fail(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: JSONBody.failureFields)
        let f = try body.failure()
        let outcome = try await retryingConflicts(on: pool) {
            try await context.leases.fail(executionID: f.executionID, epoch: f.epoch, error: f.error, retryable: f.retryable, worker: f.worker, on: $0)
        }
        return try json(["state": outcome.rawValue])
    }

    func expiredLeases(_ request: Request) async throws -> Response {
        let namespace = try optionalNamespace(request)
        let limit = try limit(request)
        let after = try leaseCursor(request)
        let leases = try await pool.withConnection {
            try await LeaseStore().listExpiredLeases(namespace: namespace, after: after, limit: limit, on: $0)
        }
        let next = leases.count == limit ? leases.last.map { Self.leaseCursorText($0.expiresAt, $0.executionID.lowercasedText) } : nil
        return try json(Page(items: leases, next: next))
    }

    /// `GET /v1/leases`: every current lease, soonest expiry first (the console's countdowns).
    func currentLeases(_ request: Request) async throws -> Response {
        let namespace = try optionalNamespace(request)
        let limit = try limit(request)
        let after = try leaseCursor(request)
        let leases = try await pool.withConnection {
            try await LeaseStore().listCurrentLeases(namespace: namespace, after: after, limit: limit, on: $0)
        }
        let next = leases.count == limit ? leases.last.map { Self.leaseCursorText($0.expiresAt, $0.executionID) } : nil
        return try json(Page(items: leases, next: next))
    }

    /// `GET /v1/leases/decisions?before=ID`: the leader's reclaim decisions, newest first.
    func leaseDecisions(_ request: Request) async throws -> Response {
        let before = try queryInt64(request, "before", range: 1...Int64.max, code: "invalid_cursor")
        let limit = try limit(request)
        let items = try await pool.withConnection { try await LeaseStore().listDecisions(before: before, limit: limit, on: $0) }
        return try json(Page(items: items, next: items.count == limit ? items.last.map { String($0.id) } : nil))
    }

    /// A lease listing's `next`: EXPIRES_AT,EXECUTION_ID, what ``leaseCursor(_:)`` reads back.
    static func leaseCursorText(_ expiresAt: Date, _ executionID: String) -> String {
        "\(expiresAt.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true))),\(executionID)"
    }

    /// The `after` cursor of the lease listings: EXPIRES_AT,EXECUTION_ID as given in `next`.
    func leaseCursor(_ request: Request) throws -> ExpiredLeaseCursor? {
        try request.uri.queryParameters.get("after").map { text -> ExpiredLeaseCursor in
            let parts = text.split(separator: ",", maxSplits: 1).map(String.init)
            guard parts.count == 2, let at = Self.parseInstant(parts[0]), let id = UUID(uuidString: parts[1]) else {
                throw APIError.badRequest("invalid_cursor", "after must be EXPIRES_AT,EXECUTION_ID as given in next")
            }
            return ExpiredLeaseCursor(expiresAt: at, executionID: id)
        }
    }

    /// An ISO 8601 instant with or without fractional seconds (`next` cursors carry them).
    static func parseInstant(_ text: String) -> Date? {
        if let d = try? Date(text, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true)) { return d }
        return try? Date(text, strategy: .iso8601)
    }
}
