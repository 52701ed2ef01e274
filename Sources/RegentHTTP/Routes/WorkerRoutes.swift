import CoreMetrics
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import PostgresClient
import Prometheus
import RegentCore
import ServiceLifecycle

/// Worker registration, heartbeats and listing.
extension AdminAPI {
    func listWorkers(_ request: Request) async throws -> Response {
        let namespace = try optionalNamespace(request)
        let limit = try limit(request)
        let after = try request.uri.queryParameters.get("after").map { text -> WorkerCursor in
            let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
            guard parts.count == 2, Namespace.isValid(parts[0]), WorkerInstanceID.isValid(parts[1]) else {
                throw APIError.badRequest("invalid_cursor", "after must be NAMESPACE/WORKER_INSTANCE_ID as given in next")
            }
            return WorkerCursor(namespace: parts[0], workerInstanceID: parts[1])
        }
        let workers = try await pool.withConnection {
            try await WorkerRegistry().list(namespace: namespace, after: after, limit: limit, on: $0)
        }
        let next = workers.count == limit ? workers.last.map { "\($0.namespace)/\($0.workerInstanceID)" } : nil
        return try json(Page(items: workers, next: next))
    }

    /// A page of a listing and the cursor of the next one (`null` on the last page).
    struct Page<Item: Encodable>: Encodable {
        let items: [Item]
        let next: String?
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(items, forKey: .items)
            try c.encode(next, forKey: .next)
        }
        enum CodingKeys: String, CodingKey { case items, next }
    }

    func registerWorker(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(
            request, context: context,
            allowed: ["namespace", "worker_instance_id", "worker_id", "lanes", "capabilities", "liveness_ttl_ms"])
        let namespace = try Namespace(try body.string("namespace"))
        let instance = try WorkerInstanceID(try body.string("worker_instance_id"))
        let worker = try WorkerID(try body.string("worker_id"))
        let lanes = try body.nameSet("lanes").map { try Lane($0) }
        let capabilities = try (body.optionalNameSet("capabilities") ?? []).map { try Capability($0) }
        let ttl = Duration.milliseconds(try body.optionalInt("liveness_ttl_ms") ?? 30_000)
        try context.checkScope(namespace: namespace, lanes: lanes, action: "register a worker")
        let outcome = try await pool.withConnection {
            try await WorkerRegistry(token: context.identity?.tokenID).register(
                namespace: namespace, workerInstanceID: instance, workerID: worker, lanes: lanes, capabilities: capabilities,
                livenessTTL: ttl, on: $0)
        }
        switch outcome {
        case .registered: return try json(["registration": "registered"], status: .created)
        case .refreshed: return try json(["registration": "refreshed"])
        }
    }

    func heartbeatWorker(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["namespace", "worker_instance_id"])
        let namespace = try Namespace(try body.string("namespace"))
        let instance = try WorkerInstanceID(try body.string("worker_instance_id"))
        let outcome = try await pool.withConnection {
            try await WorkerRegistry(token: context.identity?.tokenID).heartbeat(namespace: namespace, workerInstanceID: instance, on: $0)
        }
        switch outcome {
        case .alive(let next): return try json(["expires_at": next])
        case .notRegistered:
            throw APIError.notFound("not_registered", "worker instance \(instance) is not registered and alive in namespace \(namespace); register it again")
        }
    }

    func deregisterWorker(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["namespace", "worker_instance_id"])
        let namespace = try Namespace(try body.string("namespace"))
        let instance = try WorkerInstanceID(try body.string("worker_instance_id"))
        let outcome = try await pool.withConnection {
            try await WorkerRegistry(token: context.identity?.tokenID).deregister(namespace: namespace, workerInstanceID: instance, on: $0)
        }
        guard outcome == .marked else {
            throw APIError.notFound("not_registered", "worker instance \(instance) is not registered and alive in namespace \(namespace) (for this token)")
        }
        return try json(["registration": "deregistered"])
    }

    /// An operator's verdict (admin): the instance is marked dead now, whichever token registered
    /// it; its leases are reclaimed by the leader's next scan and its claims refused until it
    /// registers again. Audited with the token's name and the reason.
    func markWorkerDead(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["namespace", "worker_instance_id", "reason"])
        let namespace = try Namespace(try body.string("namespace"))
        let instance = try WorkerInstanceID(try body.string("worker_instance_id"))
        let reason = try DeathReason(try body.optionalString("reason") ?? "marked dead by \(context.actor)")
        let outcome = try await pool.withConnection {
            try await WorkerRegistry().markDead(namespace: namespace, workerInstanceID: instance, reason: reason, on: $0)
        }
        guard outcome == .marked else {
            throw APIError.notFound("not_registered", "worker instance \(instance) is not registered and alive in namespace \(namespace)")
        }
        try await recordAudit("worker.marked_dead", context, ["namespace": namespace.value, "worker_instance_id": instance.value, "reason": reason.text])
        return try json(["registration": "marked_dead"])
    }
}
