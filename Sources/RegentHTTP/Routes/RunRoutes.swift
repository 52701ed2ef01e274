import Foundation
import Hummingbird
import PostgresClient
import RegentCore

/// Workflow runs: start (worker role: the programs that start runs are the ones that do the
/// work, like enqueue), list, show, cancel.
extension AdminAPI {
    func startRun(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(
            request, context: context, allowed: ["workflow_type", "input", "idempotency_key", "deadline_ms", "budget", "version"], limit: RunStore.maxInputBytes + 64 * 1024)
        var start = RunStore.StartRequest(workflowType: try WorkflowType(try body.string("workflow_type")))
        start.input = try body.optionalObjectJSON("input") ?? "{}"
        start.idempotencyKey = try body.optionalString("idempotency_key")
        start.deadline = try body.optionalDeadline()
        if let budget = try body.optionalObject("budget", allowed: ["limit", "unit"]) {
            guard let limit = try budget.optionalNumber("limit") else { throw budget.wrongType("limit", "a number above 0") }
            start.budget = WorkflowManifest.Budget(limit: limit, unit: try budget.string("unit"))
        }
        if let version = try body.optionalString("version") {
            // Choosing a version (a canary) is an operator's decision, as routing is: admin only.
            if let identity = context.identity, identity.role < .admin {
                throw APIError(status: .forbidden, code: "forbidden",
                               message: "this token's role (\(identity.role.rawValue)) may not start a run on a chosen version; it needs admin (without version, the routed one is used)")
            }
            start.version = version
        }
        if let scope = context.identity?.scope {
            // A scoped token's runs put their steps in its namespace (and only in its lanes).
            start.namespace = scope.namespace
            start.allowedLanes = scope.lanes
        }
        let started = try await retryingConflicts(on: pool) {
            try await RunStore(publisher: node?.instanceID.uuid).start(start, actor: .named(context.actor), on: $0)
        }
        return try json(StartedDocument(run_id: started.runID, created: started.created, package_hash: started.packageHash), status: started.created ? .created : .ok)
    }

    struct StartedDocument: Encodable {
        let run_id: String
        let created: Bool
        let package_hash: String
    }

    func listRuns(_ request: Request) async throws -> Response {
        let q = request.uri.queryParameters
        var filter = RunStore.ListFilter()
        filter.type = try q.get("type").map { try WorkflowType($0) }
        filter.state = q.get("state").map { String($0) }
        filter.packageHash = q.get("version").map { String($0) }
        filter.idempotencyKey = q.get("idempotency_key").map { String($0) }
        filter.startedAfter = try instantParameter(request, "started_after")
        filter.startedBefore = try instantParameter(request, "started_before")
        let after = q.get("after").map { String($0) }
        let limit = try limit(request)
        // Listings are summaries; `include=input,output` adds those documents, within a byte budget per page.
        var input = false, output = false
        for part in q.getAll("include").flatMap({ $0.split(separator: ",") }) {
            switch part {
            case "input": input = true
            case "output": output = true
            default: throw APIError.badRequest("invalid_include", "include takes input and/or output (comma-separated), got \(SQLIdentifier.printable(String(part.prefix(64))))")
            }
        }
        return try json(try await pool.withConnection {
            try await RunStore().list(filter, after: after, limit: limit, includeInput: input, includeOutput: output, on: $0)
        })
    }

    /// An ISO 8601 instant query parameter (`2026-12-06T10:00:00Z`, fractions allowed), nil when absent.
    func instantParameter(_ request: Request, _ name: String) throws -> Date? {
        guard let text = request.uri.queryParameters.get(name) else { return nil }
        guard let instant = Self.parseInstant(String(text)) else {
            throw APIError.badRequest("invalid_\(name)", "\(name) must be an ISO 8601 instant with a zone (2026-12-06T10:00:00Z), got \(SQLIdentifier.printable(String(text.prefix(64))))")
        }
        return instant
    }

    func runID(_ context: RegentRequestContext) throws -> String {
        let id = try context.parameters.require("id")
        try RunStore.checkRunID(id)
        return id
    }

    func showRun(_ context: RegentRequestContext) async throws -> Response {
        let id = try runID(context)
        guard let run = try await pool.withConnection({ try await RunStore().get(id, on: $0) }) else {
            throw APIError.notFound("not_found", "no run \(id)")
        }
        return try json(run)
    }

    func cancelRun(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let id = try runID(context)
        let body = try await JSONBody.read(request, context: context, allowed: ["reason"])
        let reason = try body.string("reason")
        let outcome = try await retryingConflicts(on: pool) { conn in
            try await checkRunScope(id, context, action: "cancel runs", on: conn)
            return try await RunStore().cancel(id, reason: reason, actor: .named(context.actor), on: conn)
        }
        if outcome == .cancelled { try await recordAudit("run.cancelled", context, ["run_id": id, "reason": reason]) }
        return try json(["outcome": outcome.rawValue])
    }

    /// Resumes a failed or cancelled run (docs/runs.md, "Resuming").
    func retryRun(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let id = try runID(context)
        let body = try await JSONBody.read(request, context: context, allowed: ["steps", "budget_limit", "deadline_ms"])
        var retry = RunStore.RetryRequest()
        if let steps = try body.optionalString("steps") { retry.mode = try RunStore.RetryMode(parsing: steps) }
        if let limit = try body.optionalNumber("budget_limit") { retry.budgetLimit = limit }
        retry.deadline = try body.optionalDeadline()
        let retried = try await retryingConflicts(on: pool) { conn in
            try await checkRunScope(id, context, action: "retry runs", on: conn)
            return try await RunStore(publisher: node?.instanceID.uuid).retry(id, retry, actor: .named(context.actor), on: conn)
        }
        try await recordAudit("run.retried", context, ["run_id": id, "requeued": retried.requeued.joined(separator: ","), "reset": retried.reset.joined(separator: ",")])
        return try json(RetriedDocument(run_id: retried.runID, requeued: retried.requeued, reset: retried.reset))
    }

    /// Sends a signal to a run (docs/runs.md, "Signals"): worker role, a scoped token only to
    /// runs in its namespace. Body `{"data": any JSON, "signal_id": "…"}`, both optional.
    func signalRun(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let id = try runID(context)
        let name = try context.parameters.require("name")
        let body = try await JSONBody.read(request, context: context, allowed: ["data", "signal_id"], limit: RunStore.maxSignalBytes + 1024)
        let data = try body.optionalJSON("data") ?? "null"
        let signalID = try body.optionalString("signal_id")
        let sent = try await retryingConflicts(on: pool) { conn in
            try await checkRunScope(id, context, action: "signal runs", on: conn)
            return try await RunStore(publisher: node?.instanceID.uuid).signal(id, name: name, payloadJSON: data, signalID: signalID, actor: .named(context.actor), on: conn)
        }
        // Who sent which signal, never its data (it may hold anything).
        if !sent.duplicate { try await recordAudit("run.signalled", context, ["run_id": id, "signal": name, "signal_id": sent.signalID]) }
        return try json(
            SignalledDocument(run_id: sent.runID, name: sent.name, signal_id: sent.signalID, consumed: sent.consumedBy != nil, consumed_by: sent.consumedBy,
                              duplicate: sent.duplicate, run_state: sent.runState),
            status: sent.duplicate ? .ok : .accepted)
    }

    struct SignalledDocument: Encodable {
        let run_id: String
        let name: String
        let signal_id: String
        let consumed: Bool
        let consumed_by: String?
        let duplicate: Bool
        let run_state: String
        enum CodingKeys: String, CodingKey { case run_id, name, signal_id, consumed, consumed_by, duplicate, run_state }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(run_id, forKey: .run_id)
            try c.encode(name, forKey: .name)
            try c.encode(signal_id, forKey: .signal_id)
            try c.encode(consumed, forKey: .consumed)
            try c.encode(consumed_by, forKey: .consumed_by)  // null when kept
            try c.encode(duplicate, forKey: .duplicate)
            try c.encode(run_state, forKey: .run_state)
        }
    }

    /// A scoped token acts only on the runs whose steps are in its namespace (403 otherwise,
    /// 404 for an unknown run); an unscoped one on any.
    private func checkRunScope(_ id: String, _ context: RegentRequestContext, action: String, on conn: PostgresConnection) async throws {
        guard let scope = context.identity?.scope else { return }
        guard let row = try await conn.query("SELECT COALESCE(namespace, 'runs') AS namespace FROM workflow.runs WHERE run_id = \(id)").first else {
            throw RegentError(.notFound, "no run \(id)")
        }
        try scope.check(namespace: try Namespace(try row.decode("namespace")), action: action)
    }

    struct RetriedDocument: Encodable {
        let run_id: String
        let requeued: [String]
        let reset: [String]
    }
}
