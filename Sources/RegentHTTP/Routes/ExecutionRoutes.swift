import Foundation
import Hummingbird
import PostgresClient
import RegentCore

/// Enqueueing, cancelling, and batched completion and failure of executions.
extension AdminAPI {
    /// A batch route's body limit: a thousand items with their payloads do not fit in the
    /// default limit. Still bounded: a body is read whole before it is parsed.
    static let maxBatchBodyBytes = 8 << 20

    static let enqueueFields: Set<String> = [
        "lane", "payload", "max_attempts", "required_capabilities", "priority", "run_at", "unique_key", "retry_base_ms", "retry_max_ms",
        "concurrency_key", "concurrency_limit", "fair_key", "fair_window", "secrets",
    ]

    /// What `run_at` may be (docs/openapi.yaml says the same).
    static var runAtPattern: Regex<(Substring, Substring, Substring, Substring?, Substring, Substring?)> {
        /(19[7-9][0-9]|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])/
    }

    func enqueue(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["namespace", "executions"], limit: Self.maxBatchBodyBytes)
        let namespace = try Namespace(try body.string("namespace"))
        let requests = try body.objects("executions", allowed: Self.enqueueFields, max: LeaseStore.maxBatch).map { item in
            var r = EnqueueRequest(lane: try Lane(try item.string("lane")))
            r.payload = try item.optionalObjectJSON("payload") ?? "{}"
            r.maxAttempts = Int(try item.optionalInt("max_attempts") ?? 3)
            r.requiredCapabilities = try (item.optionalNameSet("required_capabilities") ?? []).map { try Capability($0) }
            r.priority = Int(clamping: try item.optionalInt("priority") ?? 0)
            if let text = try item.optionalString("run_at") {
                guard text.wholeMatch(of: Self.runAtPattern) != nil, let at = Self.parseInstant(text) else {
                    throw item.wrongType("run_at", "an RFC 3339 instant from 1970 to 9999 with at most microseconds, e.g. 2026-11-30T12:00:00Z")
                }
                r.runAt = at
            }
            r.uniqueKey = try item.optionalString("unique_key")
            let base = try item.optionalInt("retry_base_ms"), max = try item.optionalInt("retry_max_ms")
            if base != nil || max != nil {
                // A maximum below the base is raised to it (the schema cannot relate two fields).
                let b = base ?? Int64(RetryPolicy.default.base.milliseconds)
                guard (1...86_400_000).contains(b) else { throw item.wrongType("retry_base_ms", "1 to 86400000") }
                let m = max ?? Int64(RetryPolicy.default.maximum.milliseconds)
                guard (1...604_800_000).contains(m) else { throw item.wrongType("retry_max_ms", "1 to 604800000") }
                r.retry = try RetryPolicy(base: .milliseconds(b), maximum: .milliseconds(Swift.max(b, m)))
            }
            r.flow = try Self.flowGate(item)
            r.secrets = try VaultStore.checkGrant(try item.optionalStrings("secrets") ?? [], at: "secrets")
            return r
        }
        try context.checkScope(namespace: namespace, lanes: requests.map(\.lane), action: "enqueue")
        // A grant of vault secrets is an admin's decision: a worker token that could grant them
        // could enqueue an execution naming any secret, claim it, and read it.
        if requests.contains(where: { !$0.secrets.isEmpty }), context.identity.map({ $0.role < .admin }) ?? true {
            throw RegentError(
                .forbidden, "only an admin token may grant vault secrets to an execution (secrets); a worker token could grant itself any secret",
                hint: "name the secrets a step needs in its package manifest (deployed by an admin), or enqueue with an admin token")
        }
        let made = try await pool.withConnection { try await context.leases.enqueue(namespace: namespace, requests, on: $0) }
        return try json(["executions": made.map { EnqueuedDocument(executionID: $0.executionID.lowercasedText, created: $0.created) }])
    }

    /// `concurrency_key` (+ `concurrency_limit`, default 1) or `fair_key` (+ `fair_window`, default 10), not both.
    static func flowGate(_ item: JSONBody) throws -> FlowGate? {
        let concurrency = try item.optionalString("concurrency_key"), fair = try item.optionalString("fair_key")
        let limit = try item.optionalInt("concurrency_limit"), window = try item.optionalInt("fair_window")
        if concurrency != nil && fair != nil {
            throw APIError.badRequest("invalid_field", "an execution takes concurrency_key or fair_key, not both")
        }
        if limit != nil && concurrency == nil { throw APIError.badRequest("invalid_field", "concurrency_limit needs concurrency_key") }
        if window != nil && fair == nil { throw APIError.badRequest("invalid_field", "fair_window needs fair_key") }
        for (name, value) in [("concurrency_limit", limit), ("fair_window", window)] {
            if let value, !(1...Int64(FlowGate.maxLimit)).contains(value) { throw item.wrongType(name, "an integer from 1 to \(FlowGate.maxLimit)") }
        }
        if let concurrency { return .concurrency(key: concurrency, limit: Int(limit ?? 1)) }
        if let fair { return .fair(key: fair, window: Int(window ?? Int64(FlowGate.defaultFairWindow))) }
        return nil
    }

    struct EnqueuedDocument: Encodable {
        let executionID: String
        let created: Bool
        enum CodingKeys: String, CodingKey { case executionID = "execution_id", created }
    }

    func cancel(_ context: RegentRequestContext) async throws -> Response {
        guard let text = context.parameters.get("id"), let id = UUID(uuidString: text) else {
            throw APIError.badRequest("invalid_execution_id", "the execution id must be a UUID")
        }
        let outcome = try await retryingConflicts(on: pool) { conn in
            if let scope = context.identity?.scope {
                // A scoped token cancels only inside its scope (an execution it cannot see is not found).
                guard let row = try await conn.query(
                    "SELECT namespace::text AS namespace, lane::text AS lane FROM workflow.executions WHERE execution_id = \(id)", purpose: "cancel: scope"
                ).first else { return CancelOutcome.notFound }
                try scope.check(namespace: try Namespace(try row.decode("namespace")), lanes: [try Lane(try row.decode("lane"))], action: "cancel")
            }
            return try await LeaseStore().cancel(executionID: id, on: conn)
        }
        if outcome == .notFound { throw APIError(status: .notFound, code: "not_found", message: "no execution \(id.lowercasedText)") }
        return try json(["outcome": outcome.rawValue])
    }

    func completeBatch(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["completions"], limit: Self.maxBatchBodyBytes)
        let completions = try body.objects("completions", allowed: JSONBody.completionFields, max: LeaseStore.maxBatch).map { try $0.completion() }
        let outcome = try await retryingConflicts(on: pool) { try await context.leases.complete(completions, on: $0) }
        return try json(BatchDocument(outcome, order: completions.map(\.executionID)))
    }

    func failBatch(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["failures"], limit: Self.maxBatchBodyBytes)
        let failures = try body.objects("failures", allowed: JSONBody.failureFields, max: LeaseStore.maxBatch).map { try $0.failure() }
        let outcome = try await retryingConflicts(on: pool) { try await context.leases.fail(failures, on: $0) }
        return try json(BatchDocument(outcome, order: failures.map(\.executionID)))
    }

    /// `done`: id → new state, in request order; `stale`: ids whose epoch was not current.
    struct BatchDocument: Encodable {
        struct Item: Encodable {
            let execution_id: String
            let state: String
        }
        let done: [Item]
        let stale: [String]

        init(_ outcome: BatchOutcome, order: [UUID]) {
            var seen = Set<UUID>()
            done = order.compactMap { id in
                guard let state = outcome.done[id], seen.insert(id).inserted else { return nil }
                return Item(execution_id: id.lowercasedText, state: state)
            }
            stale = outcome.stale.map { $0.lowercasedText }
        }
    }
}

extension AdminAPI {
    /// `{"completions": [...] (0-1000), namespace, worker_instance_id, lanes, capabilities?, lease_ms?, limit?}` →
    /// `{"done", "stale", "leases"}`: one statement, one transaction.
    func completeAndClaim(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(
            request, context: context, allowed: ["completions", "namespace", "worker_instance_id", "lanes", "capabilities", "lease_ms", "limit"],
            limit: Self.maxBatchBodyBytes)
        let completions = body.fields["completions"] == nil
            ? [] : try body.objects("completions", allowed: JSONBody.completionFields, max: LeaseStore.maxBatch, min: 0).map { try $0.completion() }
        let c = try ClaimRequest(body)
        try context.checkScope(namespace: c.namespace, lanes: c.lanes, action: "claim")
        // A draining node still takes completions, but hands out no new work.
        let draining = await node?.isDraining ?? false
        if draining && !completions.isEmpty {
            let outcome = try await retryingConflicts(on: pool) { try await context.leases.complete(completions, on: $0) }
            return try json(CompleteAndClaimDocument(BatchDocument(outcome, order: completions.map(\.executionID)), leases: []))
        }
        if draining { throw Self.draining }
        let (outcome, leases) = try await retryingConflicts(on: pool) {
            try await context.leases.completeAndClaim(
                completions, namespace: c.namespace, lanes: c.lanes, workerInstanceID: c.instance, capabilities: c.capabilities, leaseDuration: c.lease,
                limit: c.limit, on: $0)
        }
        return try json(CompleteAndClaimDocument(BatchDocument(outcome, order: completions.map(\.executionID)), leases: leases.map(LeaseDocument.init)))
    }

    struct CompleteAndClaimDocument: Encodable {
        let done: [BatchDocument.Item]
        let stale: [String]
        let leases: [LeaseDocument]
        init(_ batch: BatchDocument, leases: [LeaseDocument]) {
            done = batch.done
            stale = batch.stale
            self.leases = leases
        }
    }
}
