import Foundation
import PostgresClient

public enum ScheduleKind: IdentifierKind { public static let label = "schedule name" }
/// A schedule's name: 1-128 letters, digits or `_ . : -`.
public typealias ScheduleName = Identifier<ScheduleKind>

/// What a schedule does with slots it missed (an outage, a long leaderless time, a paused
/// leader): docs/flow-control.md.
public enum CatchUp: String, Sendable, Codable, CaseIterable {
    /// Fire a missed slot only if it is at most ``SlotPlanner/grace`` late; skip the others.
    case skip
    /// Fire only the latest missed slot.
    case latest
    /// Fire every missed slot, the latest ``SlotPlanner/maxCatchUp`` at most.
    case all
}

/// A schedule as it is created: validated at the edge, every field named in its refusal.
public struct ScheduleSpec: Sendable {
    public var name: ScheduleName
    public var workflowType: WorkflowType
    public var cron: CronExpression
    public var timeZone: TimeZone
    /// The zone's name as given (Foundation may name `UTC` `GMT`).
    public var timeZoneName: String
    /// A JSON object, the input of every run it starts.
    public var input: String
    public var catchUp: CatchUp
    public var jitter: Duration

    public static let maxJitter = Duration.seconds(3600)

    public init(
        name: String, workflowType: String, cron: String, timeZone: String = "UTC", input: String = "{}", catchUp: String = "skip",
        jitter: Duration = .zero
    ) throws(RegentError) {
        self.name = try ScheduleName(name)
        self.workflowType = try WorkflowType(workflowType)
        self.cron = try CronExpression(cron)
        self.timeZone = try Self.zone(timeZone)
        self.timeZoneName = timeZone
        guard let c = CatchUp(rawValue: catchUp) else {
            throw RegentError(.invalidInput, "catch-up \(quoted(catchUp)) is not one of skip, latest, all")
        }
        self.catchUp = c
        guard jitter >= .zero, jitter <= Self.maxJitter else { throw RegentError(.invalidInput, "jitter must be from 0 to 1h") }
        self.jitter = jitter
        self.input = input
        try RunStore.StartRequest(workflowType: self.workflowType, input: input).check()
        // A cron that never fires (February 30th) would sit in the table for nothing.
        guard self.cron.next(after: Date(), in: self.timeZone) != nil else {
            throw RegentError(.invalidInput, "cron expression \(quoted(cron)) never fires (no slot within five years)")
        }
    }

    /// An IANA time zone name (`Europe/Paris`, `UTC`); abbreviations and offsets are refused,
    /// since they do not follow daylight-saving changes.
    public static func zone(_ name: String) throws(RegentError) -> TimeZone {
        guard (1...64).contains(name.utf8.count), name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }), name == "UTC" || name.contains("/"),
            let zone = TimeZone(identifier: name)
        else {
            throw RegentError(.invalidInput, "time zone \(quoted(String(name.prefix(80)))) is not an IANA zone name such as Europe/Paris, America/New_York or UTC")
        }
        return zone
    }
}

/// A stored schedule, as `schedules show` and `GET /v1/schedules/{name}` present it.
public struct Schedule: Sendable, Encodable {
    public let name: String
    public let workflowType: String
    public let cron: String
    public let timezone: String
    public let input: String
    public let catchUp: String
    public let jitterMs: Int64
    public let paused: Bool
    public let nextSlot: Date
    public let nextFireAt: Date
    public let lastSlot: Date?
    public let lastRunID: String?
    public let lastFiredAt: Date?
    public let lastError: String?
    public let fired: Int64
    public let skipped: Int64
    public let createdAt: Date
    public let createdBy: String
    public let updatedAt: Date
    public let updatedBy: String

    enum CodingKeys: String, CodingKey {
        case name, workflowType = "workflow_type", cron, timezone, input, catchUp = "catch_up", jitterMs = "jitter_ms", paused
        case nextSlot = "next_slot", nextFireAt = "next_fire_at", lastSlot = "last_slot", lastRunID = "last_run_id"
        case lastFiredAt = "last_fired_at", lastError = "last_error", fired, skipped, createdAt = "created_at", createdBy = "created_by"
        case updatedAt = "updated_at", updatedBy = "updated_by"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(workflowType, forKey: .workflowType)
        try c.encode(cron, forKey: .cron)
        try c.encode(timezone, forKey: .timezone)
        try c.encode(RawJSON(input), forKey: .input)
        try c.encode(catchUp, forKey: .catchUp)
        try c.encode(jitterMs, forKey: .jitterMs)
        try c.encode(paused, forKey: .paused)
        try c.encode(nextSlot, forKey: .nextSlot)
        try c.encode(nextFireAt, forKey: .nextFireAt)
        try c.encode(lastSlot, forKey: .lastSlot)
        try c.encode(lastRunID, forKey: .lastRunID)
        try c.encode(lastFiredAt, forKey: .lastFiredAt)
        try c.encode(lastError, forKey: .lastError)
        try c.encode(fired, forKey: .fired)
        try c.encode(skipped, forKey: .skipped)
        try c.encode(createdAt, forKey: .createdAt)
        try c.encode(createdBy, forKey: .createdBy)
        try c.encode(updatedAt, forKey: .updatedAt)
        try c.encode(updatedBy, forKey: .updatedBy)
    }

    init(row: PostgresRow) throws {
        name = try row.decode("name")
        workflowType = try row.decode("workflow_type")
        cron = try row.decode("cron")
        timezone = try row.decode("timezone")
        input = try row.decode("input")
        catchUp = try row.decode("catch_up")
        jitterMs = try row.decode("jitter_ms")
        paused = try row.decode("paused")
        nextSlot = try row.decode("next_slot")
        nextFireAt = try row.decode("next_fire_at")
        lastSlot = try row.decodeOptional("last_slot")
        lastRunID = try row.decodeOptional("last_run_id")
        lastFiredAt = try row.decodeOptional("last_fired_at")
        lastError = try row.decodeOptional("last_error")
        fired = try row.decode("fired")
        skipped = try row.decode("skipped")
        createdAt = try row.decode("created_at")
        createdBy = try row.decode("created_by")
        updatedAt = try row.decode("updated_at")
        updatedBy = try row.decode("updated_by")
    }

    static let columns = """
        name, workflow_type, cron, timezone, input::text AS input, catch_up, jitter_ms, paused, next_slot, next_fire_at, last_slot,
        last_run_id, last_fired_at, last_error, fired, skipped, created_at, created_by, updated_at, updated_by
        """

    /// `SELECT <every column> FROM workflow.schedules <tail>` (the column list is constant text).
    static func selecting(_ tail: PostgresQuery) -> PostgresQuery {
        PostgresQuery(unsafeSQL: "SELECT \(columns) FROM workflow.schedules " + tail.sql, binds: tail.binds)
    }

    /// `<statement> RETURNING <every column>`.
    static func returning(_ statement: PostgresQuery) -> PostgresQuery {
        PostgresQuery(unsafeSQL: statement.sql + " RETURNING \(columns)", binds: statement.binds)
    }
}

/// A schedule with what became of its newest slots (`schedules show`, `GET /v1/schedules/{name}`).
public struct ScheduleDocument: Sendable, Encodable {
    public let schedule: Schedule
    public let recentFires: [ScheduleFire]
    public init(schedule: Schedule, recentFires: [ScheduleFire]) {
        self.schedule = schedule
        self.recentFires = recentFires
    }
    public func encode(to encoder: any Encoder) throws {
        try schedule.encode(to: encoder)
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(recentFires, forKey: .recentFires)
    }
    enum Key: String, CodingKey { case recentFires = "recent_fires" }
}

/// What became of one slot (or one run of skipped slots).
public struct ScheduleFire: Sendable, Encodable {
    public let slot: Date
    public let throughSlot: Date?
    public let slots: Int
    public let outcome: String
    public let runID: String?
    public let error: String?
    public let term: Int64?
    public let dueAt: Date?
    public let firedAt: Date

    enum CodingKeys: String, CodingKey {
        case slot, throughSlot = "through_slot", slots, outcome, runID = "run_id", error, term, dueAt = "due_at", firedAt = "fired_at"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(slot, forKey: .slot)
        try c.encode(throughSlot, forKey: .throughSlot)
        try c.encode(slots, forKey: .slots)
        try c.encode(outcome, forKey: .outcome)
        try c.encode(runID, forKey: .runID)
        try c.encode(error, forKey: .error)
        try c.encode(term, forKey: .term)
        try c.encode(dueAt, forKey: .dueAt)
        try c.encode(firedAt, forKey: .firedAt)
    }
}

/// Schedules (`workflow.schedules`, sql/workflow/0017): created, paused, resumed, deleted and
/// triggered by an admin; fired only by the leader (``ScheduleFiring``). Every write is audited
/// and rings the leader's doorbell (`regent_schedules`), so a new earliest slot is not slept past.
public struct ScheduleStore: Sendable {
    /// Every schedule change notifies this channel; the leader's firing duty listens.
    public static let channel = "regent_schedules"
    public static let maxSchedules = 100_000

    let publisher: UUID?
    public init(publisher: UUID? = nil) { self.publisher = publisher }

    static func notify(_ conn: PostgresConnection) async throws {
        try await conn.query("SELECT pg_notify(\(Self.channel), '')", purpose: "schedules: ring the leader")
    }

    static func audit(_ action: String, _ name: ScheduleName, actor: AuditActor, extra: [String: Any] = [:], on conn: PostgresConnection) async throws {
        var detail = extra
        detail["schedule"] = name.value
        try await conn.query(AuditLog.insert(actor: actor, action: action, detailJSON: AuditLog.detail(detail)), purpose: "schedules: audit")
    }

    /// The database's clock: slots are computed from it, never from a node's.
    static func now(_ conn: PostgresConnection) async throws -> Date {
        try await conn.query("SELECT clock_timestamp() AS now", purpose: "schedules: the database's clock").single().decode("now")
    }

    /// Creates a schedule whose first slot is the first after now. A name in use is refused (409).
    public func create(_ spec: ScheduleSpec, actor: AuditActor, on conn: PostgresConnection) async throws -> Schedule {
        try await conn.withTransaction { tx in
            let now = try await Self.now(tx)
            guard let slot = spec.cron.next(after: now, in: spec.timeZone) else {
                throw RegentError(.invalidInput, "cron expression \(quoted(spec.cron.description)) never fires (no slot within five years)")
            }
            let count = try await tx.query("SELECT count(*) AS n FROM workflow.schedules", purpose: "schedules: count").single().decode("n", as: Int.self)
            guard count < Self.maxSchedules else {
                throw RegentError(.conflict, "there are \(count) schedules; at most \(Self.maxSchedules) are allowed", hint: "delete schedules no longer needed")
            }
            let jitterMs = Int64(spec.jitter.milliseconds)
            let rows = try await tx.query(Schedule.returning(
                """
                INSERT INTO workflow.schedules (name, workflow_type, cron, timezone, input, catch_up, jitter_ms, next_slot, next_fire_at, created_by, updated_by)
                VALUES (\(spec.name.value), \(spec.workflowType.value), \(spec.cron.description), \(spec.timeZoneName), \(spec.input)::jsonb,
                        \(spec.catchUp.rawValue), \(jitterMs), \(slot), \(SlotPlanner.fireAt(slot, name: spec.name.value, jitterMs: jitterMs)),
                        \(actor.description), \(actor.description))
                ON CONFLICT (name) DO NOTHING
                """), purpose: "schedules: create")
            guard let row = rows.first else {
                throw RegentError(.conflict, "schedule \(quoted(spec.name.value)) already exists", hint: "delete it first, or pick another name")
            }
            try await Self.audit("schedule.created", spec.name, actor: actor, extra: [
                "workflow_type": spec.workflowType.value, "cron": spec.cron.description, "timezone": spec.timeZoneName,
                "catch_up": spec.catchUp.rawValue,
            ], on: tx)
            try await Self.notify(tx)
            return try Schedule(row: row)
        }
    }

    public struct Page: Sendable, Encodable {
        public let schedules: [Schedule]
        public let nextCursor: String?
        enum CodingKeys: String, CodingKey { case schedules, nextCursor = "next_cursor" }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(schedules, forKey: .schedules)
            try c.encode(nextCursor, forKey: .nextCursor)
        }
    }

    /// Schedules by name, after `after` (a name), at most `limit`.
    public func list(after: String?, limit: Int, on conn: PostgresConnection) async throws -> Page {
        guard (1...1000).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to 1000, got \(limit)") }
        if let after, !ScheduleName.isValid(after) { throw RegentError(.invalidInput, "cursor \(quoted(String(after.prefix(80)))) is not a schedule name") }
        let rows = try await conn.query(
            Schedule.selecting("WHERE \(after)::text IS NULL OR name > \(after) ORDER BY name LIMIT \(limit + 1)"), purpose: "schedules: list")
        let schedules = try rows.prefix(limit).map { try Schedule(row: $0) }
        return Page(schedules: schedules, nextCursor: rows.count > limit ? schedules.last?.name : nil)
    }

    public func get(_ name: ScheduleName, on conn: PostgresConnection) async throws -> Schedule {
        let rows = try await conn.query(Schedule.selecting("WHERE name = \(name.value)"), purpose: "schedules: show")
        guard let row = rows.first else { throw Self.notFound(name) }
        return try Schedule(row: row)
    }

    /// The schedule and its newest fires, read together.
    public func show(_ name: ScheduleName, on conn: PostgresConnection) async throws -> ScheduleDocument {
        ScheduleDocument(schedule: try await get(name, on: conn), recentFires: try await fires(name, on: conn))
    }

    /// The newest `limit` records of what became of its slots.
    public func fires(_ name: ScheduleName, limit: Int = 20, on conn: PostgresConnection) async throws -> [ScheduleFire] {
        let rows = try await conn.query(
            """
            SELECT slot, through_slot, slots, outcome, run_id, error, term, due_at, fired_at FROM workflow.schedule_fires
            WHERE schedule = \(name.value) ORDER BY slot DESC, id DESC LIMIT \(limit)
            """, purpose: "schedules: recent fires")
        return try rows.map { r in
            ScheduleFire(
                slot: try r.decode("slot"), throughSlot: try r.decodeOptional("through_slot"), slots: try r.decode("slots"),
                outcome: try r.decode("outcome"), runID: try r.decodeOptional("run_id"), error: try r.decodeOptional("error"),
                term: try r.decodeOptional("term"), dueAt: try r.decodeOptional("due_at"), firedAt: try r.decode("fired_at"))
        }
    }

    static func notFound(_ name: ScheduleName) -> RegentError {
        RegentError(.notFound, "schedule \(quoted(name.value)) does not exist", hint: "regent schedules list shows the schedules")
    }

    /// Pauses: no slot fires until it is resumed. Pausing a paused schedule changes nothing.
    public func pause(_ name: ScheduleName, actor: AuditActor, on conn: PostgresConnection) async throws -> Schedule {
        try await conn.withTransaction { tx in
            let rows = try await tx.query(Schedule.returning(
                "UPDATE workflow.schedules SET paused = true, updated_at = now(), updated_by = \(actor.description) WHERE name = \(name.value)"),
                purpose: "schedules: pause")
            guard let row = rows.first else { throw Self.notFound(name) }
            try await Self.audit("schedule.paused", name, actor: actor, on: tx)
            return try Schedule(row: row)
        }
    }

    /// Resumes from now: the slots that passed while it was paused are not fired (a pause is a
    /// decision, not an outage); the next slot is the first after now.
    public func resume(_ name: ScheduleName, actor: AuditActor, on conn: PostgresConnection) async throws -> Schedule {
        try await conn.withTransaction { tx in
            let rows = try await tx.query(
                "SELECT cron, timezone, paused, jitter_ms FROM workflow.schedules WHERE name = \(name.value) FOR UPDATE", purpose: "schedules: lock")
            guard let row = rows.first else { throw Self.notFound(name) }
            if try row.decode("paused", as: Bool.self) {
                let cron = try CronExpression(try row.decode("cron", as: String.self))
                let zone = try ScheduleSpec.zone(try row.decode("timezone", as: String.self))
                let jitterMs = try row.decode("jitter_ms", as: Int64.self)
                guard let slot = cron.next(after: try await Self.now(tx), in: zone) else {
                    throw RegentError(.invalidInput, "cron expression \(quoted(cron.description)) never fires again")
                }
                try await tx.query(
                    """
                    UPDATE workflow.schedules SET paused = false, next_slot = \(slot), next_fire_at = \(SlotPlanner.fireAt(slot, name: name.value, jitterMs: jitterMs)),
                           updated_at = now(), updated_by = \(actor.description)
                    WHERE name = \(name.value)
                    """, purpose: "schedules: resume")
                try await Self.audit("schedule.resumed", name, actor: actor, on: tx)
                try await Self.notify(tx)
            }
            return try await get(name, on: tx)
        }
    }

    /// Deletes it (its history of fires stays until retention). Runs it started are not touched.
    public func delete(_ name: ScheduleName, actor: AuditActor, on conn: PostgresConnection) async throws {
        try await conn.withTransaction { tx in
            let rows = try await tx.query("DELETE FROM workflow.schedules WHERE name = \(name.value) RETURNING name", purpose: "schedules: delete")
            guard !rows.isEmpty else { throw Self.notFound(name) }
            try await Self.audit("schedule.deleted", name, actor: actor, on: tx)
        }
    }

    /// Starts a run of the schedule now, outside its slots (its next slot is unchanged), with the
    /// idempotency key `schedule:<name>:trigger:<key>`: a retried trigger with the same key starts
    /// nothing new. Without a key, each trigger is a new run.
    public func trigger(_ name: ScheduleName, key: String? = nil, actor: AuditActor, on conn: PostgresConnection) async throws -> RunStore.Started {
        if let key, !(1...64).contains(key.utf8.count) || !ScheduleName.isValid(key) {
            throw RegentError(.invalidInput, "trigger key \(quoted(String(key.prefix(80)))): use 1-64 letters, digits or _ . : -")
        }
        return try await conn.withTransaction { tx in
            let schedule = try await get(name, on: tx)
            let started = try await RunStore(publisher: publisher).start(
                .init(workflowType: try WorkflowType(schedule.workflowType), input: schedule.input,
                      idempotencyKey: "schedule:\(name.value):trigger:\(key ?? UUID().lowercasedText)"),
                actor: actor, on: tx)
            try await tx.query(
                """
                INSERT INTO workflow.schedule_fires (schedule, slot, outcome, run_id) VALUES (\(name.value), clock_timestamp(), 'triggered', \(started.runID))
                """, purpose: "schedules: record the trigger")
            try await Self.audit("schedule.triggered", name, actor: actor, extra: ["run_id": started.runID], on: tx)
            return started
        }
    }
}
