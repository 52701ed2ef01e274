import Foundation
import Hummingbird
import PostgresClient
import RegentCore

/// Cron schedules (issue 31): admin writes, read-role lists. The leader fires them; these
/// routes only change what it will fire.
extension AdminAPI {
    static let scheduleFields: Set<String> = ["name", "workflow_type", "cron", "timezone", "input", "catch_up", "jitter_ms"]

    func createSchedule(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: Self.scheduleFields, limit: RunStore.maxInputBytes + 64 * 1024)
        let jitterMs = try body.optionalInt("jitter_ms") ?? 0
        guard (0...3_600_000).contains(jitterMs) else { throw body.wrongType("jitter_ms", "an integer from 0 to 3600000") }
        let spec = try ScheduleSpec(
            name: try body.string("name"), workflowType: try body.string("workflow_type"), cron: try body.string("cron"),
            timeZone: try body.optionalString("timezone") ?? "UTC", input: try body.optionalObjectJSON("input") ?? "{}",
            catchUp: try body.optionalString("catch_up") ?? "skip", jitter: .milliseconds(jitterMs))
        let schedule = try await retryingConflicts(on: pool) { try await ScheduleStore().create(spec, actor: .named(context.actor), on: $0) }
        return try json(schedule, status: .created)
    }

    func listSchedules(_ request: Request) async throws -> Response {
        let after = request.uri.queryParameters.get("after").map { String($0) }
        let limit = try limit(request)
        return try json(try await pool.withConnection { try await ScheduleStore().list(after: after, limit: limit, on: $0) })
    }

    func scheduleName(_ context: RegentRequestContext) throws -> ScheduleName {
        try ScheduleName(try pathParameter(context, "name"))
    }

    /// A path parameter, percent-decoded (`:` arrives as `%3A` from clients that encode it).
    func pathParameter(_ context: RegentRequestContext, _ name: String) throws -> String {
        let raw = try context.parameters.require(name)
        guard let decoded = raw.removingPercentEncoding else {
            throw APIError.badRequest("invalid_path", "path parameter \(name) is not valid percent-encoding")
        }
        return decoded
    }

    func showSchedule(_ context: RegentRequestContext) async throws -> Response {
        let name = try scheduleName(context)
        return try json(try await pool.withConnection { try await ScheduleStore().show(name, on: $0) })
    }

    func pauseSchedule(_ context: RegentRequestContext, paused: Bool) async throws -> Response {
        let name = try scheduleName(context)
        return try json(try await pool.withConnection { conn in
            paused ? try await ScheduleStore().pause(name, actor: .named(context.actor), on: conn)
                : try await ScheduleStore().resume(name, actor: .named(context.actor), on: conn)
        })
    }

    func deleteSchedule(_ context: RegentRequestContext) async throws -> Response {
        let name = try scheduleName(context)
        try await pool.withConnection { try await ScheduleStore().delete(name, actor: .named(context.actor), on: $0) }
        return try json(["deleted": name.value])
    }

    func triggerSchedule(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let name = try scheduleName(context)
        let body = try await JSONBody.read(request, context: context, allowed: ["key"], limit: 4096)
        let key = try body.optionalString("key")
        let started = try await retryingConflicts(on: pool) {
            try await ScheduleStore(publisher: node?.instanceID.uuid).trigger(name, key: key, actor: .named(context.actor), on: $0)
        }
        return try json(StartedDocument(run_id: started.runID, created: started.created, package_hash: started.packageHash), status: started.created ? .created : .ok)
    }
}

/// Lane limits (issue 31): admin writes, read lists.
extension AdminAPI {
    func listLanes() async throws -> Response {
        try json(["lanes": try await pool.withConnection { try await LaneLimitStore().list(on: $0) }])
    }

    func laneAddress(_ context: RegentRequestContext) throws -> (Namespace, Lane) {
        (try Namespace(try pathParameter(context, "namespace")), try Lane(try pathParameter(context, "lane")))
    }

    func setLane(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let (namespace, lane) = try laneAddress(context)
        let body = try await JSONBody.read(request, context: context, allowed: ["max_running", "rate_per_s", "burst"], limit: 4096)
        let maxRunning = try body.optionalInt("max_running"), rate = try body.optionalNumber("rate_per_s"), burst = try body.optionalInt("burst")
        if let maxRunning, !(1...1_000_000).contains(maxRunning) { throw body.wrongType("max_running", "an integer from 1 to 1000000") }
        if let rate, !(rate >= 0.0001 && rate <= 1_000_000) { throw body.wrongType("rate_per_s", "a number from 0.0001 to 1000000") }
        if let burst, !(1...1_000_000).contains(burst) { throw body.wrongType("burst", "an integer from 1 to 1000000") }
        let limit = try await retryingConflicts(on: pool) {
            try await LaneLimitStore().set(
                namespace: namespace, lane: lane, maxRunning: maxRunning.map(Int.init), rate: rate, burst: burst.map(Int.init), actor: .named(context.actor), on: $0)
        }
        return try json(limit)
    }

    func clearLane(_ context: RegentRequestContext) async throws -> Response {
        let (namespace, lane) = try laneAddress(context)
        try await pool.withConnection { try await LaneLimitStore().clear(namespace: namespace, lane: lane, actor: .named(context.actor), on: $0) }
        return try json(["cleared": true])
    }
}
