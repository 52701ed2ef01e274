import CoreMetrics
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import PostgresClient
import Prometheus
import RegentCore
import ServiceLifecycle

let lastEventID = HTTPField.Name("Last-Event-ID")!

// The handlers of the admin API routes (registered in `AdminAPI.build()`).
extension AdminAPI {
    // MARK: Query parameters

    /// An integer query parameter in `range`, nil when absent; otherwise 400 with `code`.
    func queryInt64(_ request: Request, _ name: String, range: ClosedRange<Int64>, code: String) throws -> Int64? {
        guard let text = request.uri.queryParameters.get(name) else { return nil }
        guard let v = Int64(text), range.contains(v) else {
            let expected = range.upperBound < .max ? "an integer from \(range.lowerBound) to \(range.upperBound)"
                : range.lowerBound == 0 ? "a non-negative integer" : "an integer of at least \(range.lowerBound)"
            throw APIError.badRequest(code, "\(name) must be \(expected), got \(SQLIdentifier.printable(String(text.prefix(64))))")
        }
        return v
    }

    /// `limit`, 1–1000, default 100.
    func limit(_ request: Request) throws -> Int {
        Int(try queryInt64(request, "limit", range: 1...1000, code: "invalid_limit") ?? 100)
    }

    /// An id cursor `after` (0 or more), nil when absent.
    func afterID(_ request: Request) throws -> Int64? {
        try queryInt64(request, "after", range: 0...Int64.max, code: "invalid_cursor")
    }

    func clusterStatus() async throws -> ClusterStatus {
        try await pool.withConnection { try await ClusterStatus.read(on: $0, staleAfter: staleAfter) }
    }

    func optionalNamespace(_ request: Request) throws -> Namespace? {
        try request.uri.queryParameters.get("namespace").map { try Namespace($0) }
    }

    // MARK: Metrics

    func metrics() async throws -> Response {
        // Gauges that describe the cluster or the pools are read now, so a scrape is current.
        if let status = try? await clusterStatus() {
            let stale = status.instances.filter(\.stale).count
            node?.metrics.liveInstances.record(status.instances.count - stale)
            node?.metrics.staleInstances.record(stale)
        }
        await poolGauges.http.update(pool)
        if let nodePool = await node?.connectionPool { await poolGauges.node.update(nodePool) }
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
    }

    // MARK: Leadership and modules

    func setModule(_ context: RegentRequestContext, enabled: Bool) async throws -> Response {
        let name = try context.parameters.require("name")
        guard SQLIdentifier.isValid(name) else {
            throw APIError.badRequest("invalid_module_name", "invalid module name \(SQLIdentifier.printable(String(name.prefix(64)))): use lowercase letters, digits and underscores")
        }
        if !enabled, BuiltinModule.all.first(where: { $0.name == name })?.alwaysEnabled == true {
            throw APIError.conflict(
                "module_required",
                name == "auth"
                    ? "module auth cannot be disabled: every /v1 route of the admin API authenticates with its tokens (revoke tokens instead)"
                    : "module \(name) cannot be disabled: the engine needs it")
        }
        let state = try await pool.withConnection { try await ModuleRegistry().setEnabled(name, enabled, actor: context.actor, on: $0) }
        // The leader migrates an enabled module's schema (ModuleMigrationDuty); readiness shows when it is done.
        return try json(state)
    }

    // MARK: Events

    struct EventDocument: Encodable {
        let event: Event
        enum Keys: String, CodingKey { case id, topic, payload, publisher, publishedAt = "published_at" }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(event.id, forKey: .id)
            try c.encode(event.topic, forKey: .topic)
            try c.encode(event.publisher.map { $0.uuidString.lowercased() }, forKey: .publisher)
            try c.encode(event.publishedAt, forKey: .publishedAt)
            try c.encode(AnyJSON(text: event.payload), forKey: .payload)
        }
    }

    func publishEvent(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["topic", "payload"])
        let (topic, payload) = try EventPublisher.validate(topic: try body.string("topic"), payload: try body.objectJSON("payload"))
        let id: Int64
        if let bus = await node?.eventBus {
            id = try await bus.publish(topic: topic.name, payload: payload.json)
        } else {
            id = try await pool.withConnection { try await EventPublisher.publish(topic: topic, payload: payload, publisher: nil, on: $0) }
        }
        return try json(["id": id], status: .created)
    }

    /// Server-sent events: one `id:`/`event:`/`data:` record per event, in id order, from
    /// `after` (or the `Last-Event-ID` header a reconnecting EventSource sends) or from now.
    func eventStream(_ request: Request) async throws -> Response {
        guard let bus = await node?.eventBus else {
            throw APIError(status: .serviceUnavailable, code: "no_event_bus", message: "this process runs no node, so it has no event bus")
        }
        // `after` and `Last-Event-ID` name the last event the client has: the stream starts
        // after it (0: from the oldest kept event). An unreadable Last-Event-ID is refused, not ignored.
        var resume: Int64?
        if let header = request.headers[lastEventID] {
            guard let v = Int64(header.trimmingCharacters(in: .whitespaces)), v >= 0, v < .max else {
                throw APIError.badRequest(
                    "invalid_last_event_id", "Last-Event-ID must be the id of the last event received (a non-negative integer), got \(SQLIdentifier.printable(String(header.prefix(64))))")
            }
            resume = v
        }
        let after = try queryInt64(request, "after", range: 0...(Int64.max - 1), code: "invalid_cursor") ?? resume
        let topics = try request.uri.queryParameters.getAll("topic").map { try EventTopic($0).name }
        if request.method == .head {
            return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"])
        }
        let subscription = try await bus.subscribe(topics: topics.isEmpty ? nil : topics, fromID: after.map { $0 + 1 })
        let keepAlive = options.eventStreamKeepAlive
        let body = ResponseBody { writer in
            // End the stream when the server shuts down gracefully (it waits for open responses).
            try await withGracefulShutdownHandler {
                do {
                    try await writer.write(ByteBuffer(string: ": regent event stream\n\n"))
                    while true {
                        guard let batch = try await subscription.nextBatch(idleAfter: keepAlive) else {
                            // Idle: a comment keeps proxies from closing the connection, and
                            // finds out when the client went away (the write fails).
                            try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                            continue
                        }
                        if batch.isEmpty { break }
                        var buffer = ByteBuffer()
                        for event in batch {
                            buffer.writeString("id: \(event.id)\nevent: \(event.topic)\ndata: ")
                            buffer.writeBytes(try encodeJSON(EventDocument(event: event)))
                            buffer.writeString("\n\n")
                        }
                        try await writer.write(buffer)
                    }
                } catch {
                    subscription.cancel()
                    throw error
                }
                subscription.cancel()
            } onGracefulShutdown: {
                subscription.cancel()
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }

    // MARK: Workers

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
        let outcome = try await pool.withConnection {
            try await WorkerRegistry().register(
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
            try await WorkerRegistry().heartbeat(namespace: namespace, workerInstanceID: instance, on: $0)
        }
        switch outcome {
        case .alive(let next): return try json(["expires_at": next])
        case .notRegistered:
            throw APIError.notFound("not_registered", "worker instance \(instance) is not registered and alive in namespace \(namespace); register it again")
        }
    }

    // MARK: Leases

    func claim(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(
            request, context: context, allowed: ["namespace", "worker_instance_id", "lanes", "capabilities", "lease_ms", "limit"])
        let namespace = try Namespace(try body.string("namespace"))
        let instance = try WorkerInstanceID(try body.string("worker_instance_id"))
        let lanes = try body.nameSet("lanes").map { try Lane($0) }
        let capabilities = try (body.optionalNameSet("capabilities") ?? []).map { try Capability($0) }
        let lease = Duration.milliseconds(try body.optionalInt("lease_ms") ?? 30_000)
        let limit = try body.optionalInt("limit") ?? 1
        guard (1...1000).contains(limit) else { throw APIError.badRequest("invalid_field", "field \"limit\" must be 1 to 1000") }
        if let node, await node.isDraining {
            throw APIError(status: .serviceUnavailable, code: "draining", message: "this node is shutting down and takes no claims; use another node")
        }
        let leases = try await pool.withConnection {
            try await LeaseStore().claim(
                namespace: namespace, lanes: lanes, workerInstanceID: instance, capabilities: capabilities, leaseDuration: lease,
                limit: Int(limit), on: $0)
        }
        return try json(["leases": leases.map(LeaseDocument.init)])
    }

    struct LeaseDocument: Encodable {
        let lease: Lease
        enum Keys: String, CodingKey {
            case executionID = "execution_id", lane, attemptIndex = "attempt_index", epoch = "lease_epoch", payload
            case expiresAt = "lease_expires_at"
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(lease.executionID.uuidString.lowercased(), forKey: .executionID)
            try c.encode(lease.lane, forKey: .lane)
            try c.encode(lease.attemptIndex, forKey: .attemptIndex)
            try c.encode(lease.epoch.value, forKey: .epoch)
            try c.encode(AnyJSON(text: lease.payload), forKey: .payload)
            try c.encode(lease.expiresAt, forKey: .expiresAt)
        }
    }

    func renew(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["execution_id", "lease_epoch", "lease_ms"])
        let id = try body.uuid("execution_id")
        let epoch = LeaseEpoch(try body.int("lease_epoch"))
        let lease = Duration.milliseconds(try body.optionalInt("lease_ms") ?? 30_000)
        let expires = try await pool.withConnection { try await LeaseStore().renew(executionID: id, epoch: epoch, leaseDuration: lease, on: $0) }
        return try json(["lease_expires_at": expires])
    }

    func complete(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["execution_id", "lease_epoch", "result"])
        let id = try body.uuid("execution_id")
        let epoch = LeaseEpoch(try body.int("lease_epoch"))
        let result = try body.optionalObjectJSON("result") ?? "{}"
        try await pool.withConnection { try await LeaseStore().complete(executionID: id, epoch: epoch, result: result, on: $0) }
        return try json(["state": "completed"])
    }

    func fail(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["execution_id", "lease_epoch", "error", "retryable"])
        let id = try body.uuid("execution_id")
        let epoch = LeaseEpoch(try body.int("lease_epoch"))
        let error = try body.string("error")
        let retryable = try body.optionalBool("retryable") ?? true
        let outcome = try await pool.withConnection {
            try await LeaseStore().fail(executionID: id, epoch: epoch, error: error, retryable: retryable, on: $0)
        }
        return try json(["state": outcome.rawValue])
    }

    func expiredLeases(_ request: Request) async throws -> Response {
        let namespace = try optionalNamespace(request)
        let limit = try limit(request)
        let after = try request.uri.queryParameters.get("after").map { text -> ExpiredLeaseCursor in
            let parts = text.split(separator: ",", maxSplits: 1).map(String.init)
            guard parts.count == 2, let at = Self.parseInstant(parts[0]), let id = UUID(uuidString: parts[1]) else {
                throw APIError.badRequest("invalid_cursor", "after must be EXPIRES_AT,EXECUTION_ID as given in next")
            }
            return ExpiredLeaseCursor(expiresAt: at, executionID: id)
        }
        let leases = try await pool.withConnection {
            try await LeaseStore().listExpiredLeases(namespace: namespace, after: after, limit: limit, on: $0)
        }
        let next = leases.count == limit
            ? leases.last.map { "\($0.expiresAt.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true))),\($0.executionID.uuidString.lowercased())" }
            : nil
        return try json(Page(items: leases, next: next))
    }

    /// An ISO 8601 instant with or without fractional seconds (`next` cursors carry them).
    static func parseInstant(_ text: String) -> Date? {
        if let d = try? Date(text, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true)) { return d }
        return try? Date(text, strategy: .iso8601)
    }
}
