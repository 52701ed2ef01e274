import CivilTime
import CoreMetrics
import Foundation
import Logging
import PostgresClient

/// The slot arithmetic of one schedule, a pure function of its row and the database's clock,
/// so that any leader computes the same plan: which due slots fire, which are skipped (and
/// why), and where the schedule goes next.
public enum SlotPlanner {
    /// With `catch_up = skip`, a slot fires when at most this late; later ones are skipped.
    public static let grace: TimeInterval = 60
    /// With `catch_up = all`, at most this many missed slots fire (the latest); older ones are skipped.
    public static let maxCatchUp = 100
    /// At most this many due slots are counted one by one; past it (a schedule every second
    /// after a day without a leader), the plan jumps to the first slot after now.
    static let maxScan = 100_000

    /// When `slot` is due: the slot plus its jitter, a function of (name, slot) in
    /// [0, jitterMs] milliseconds, the same on every node.
    public static func fireAt(_ slot: Date, name: String, jitterMs: Int64) -> Date {
        guard jitterMs > 0 else { return slot }
        let digest = SHA256.digest(Array("\(name)@\(Int64((slot.timeIntervalSince1970 * 1000).rounded()))".utf8))
        let n = digest.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return slot.addingTimeInterval(Double(n % UInt64(jitterMs + 1)) / 1000)
    }

    public struct Fire: Sendable, Hashable {
        public let slot: Date
        public let dueAt: Date
    }

    public struct Skip: Sendable, Hashable {
        public let first: Date
        public let last: Date
        public let count: Int
        public let dueAt: Date
    }

    public struct Plan: Sendable, Hashable {
        public var fires: [Fire] = []
        public var skips: [Skip] = []
        public var nextSlot: Date
        public var nextFireAt: Date
    }

    /// The plan at `now` for a schedule whose next unfired slot is `nextSlot`.
    public static func plan(
        name: String, cron: CronExpression, zone: TimeZone, catchUp: CatchUp, jitterMs: Int64, nextSlot: Date, now: Date
    ) -> Plan {
        var due: [Fire] = []
        var slot: Date? = nextSlot
        while let s = slot {
            let at = fireAt(s, name: name, jitterMs: jitterMs)
            guard at <= now else { break }
            if due.count == maxScan {
                // Too many to count one by one: the rest are skipped uncounted, and the plan goes on from now.
                slot = cron.next(after: now, in: zone)
                break
            }
            due.append(Fire(slot: s, dueAt: at))
            slot = cron.next(after: s, in: zone)
        }
        // A cron that never fires again (it cannot be created, but a zone's rules may change):
        // park it a year out.
        let next = slot ?? now.addingTimeInterval(365 * 86_400)
        var plan = Plan(nextSlot: next, nextFireAt: fireAt(next, name: name, jitterMs: jitterMs))
        let firing: ArraySlice<Fire>
        switch catchUp {
        case .all: firing = due.suffix(maxCatchUp)
        case .latest: firing = due.suffix(1)
        case .skip: firing = due.filter { now.timeIntervalSince($0.dueAt) <= grace }[...]
        }
        let fired = Set(firing.map(\.slot))
        // Skipped slots, as runs of consecutive ones (one record each).
        var run: [Fire] = []
        func flush() {
            if let first = run.first, let last = run.last {
                plan.skips.append(Skip(first: first.slot, last: last.slot, count: run.count, dueAt: first.dueAt))
            }
            run = []
        }
        for f in due {
            if fired.contains(f.slot) { flush() } else { run.append(f) }
        }
        flush()
        plan.fires = Array(firing)
        return plan
    }
}

/// Fires due schedule slots: the leader's duty (issue 31). Between pages it sleeps until the
/// earliest `next_fire_at` of the schedules not paused (one index probe), or until a
/// `regent_schedules` notification rings `bell` (a schedule created or resumed), whichever comes
/// first, and at most `idleProbe`. Each page is one fenced transaction that locks its schedules
/// (SKIP LOCKED), starts the due slots' runs with the key `schedule:<name>:<slot>`, records the
/// skipped ones and moves each schedule to its next slot, all or nothing: a leader killed
/// mid-page fires nothing of it, and its successor fires the page again, once.
public struct ScheduleFiring: LeaderDuty {
    public let name = "schedules"
    let pool: ConnectionPool
    let bell: Doorbell?
    public let interval = Duration.zero
    let idleProbe: Duration
    let pageSize: Int
    let firers: Int
    let publisher: UUID?
    let metrics: RegentMetrics
    let logger: Logger

    public init(
        pool: ConnectionPool, bell: Doorbell?, idleProbe: Duration = .seconds(10), pageSize: Int = 1000, firers: Int = 2, publisher: UUID? = nil,
        metrics: RegentMetrics = .discarded, logger: Logger = Logger(label: "regent.duty.schedules")
    ) {
        self.pool = pool
        self.bell = bell
        self.idleProbe = idleProbe
        self.pageSize = pageSize
        self.firers = min(16, max(1, firers))
        self.publisher = publisher
        self.metrics = metrics
        self.logger = logger
    }

    /// Pages one firer fires in a row before the duty loops (and looks at the time again).
    static let maxPagesPerRound = 40

    static let probe: PostgresQuery = """
        SELECT ceil(extract(epoch FROM (min(next_fire_at) - clock_timestamp())) * 1000)::bigint AS ms FROM workflow.schedules WHERE NOT paused
        """

    /// Milliseconds until the earliest due slot (0: due now; nil: none, or no table yet).
    public func nextDue() async throws -> Int64? {
        do {
            let ms = try await pool.query(Self.probe, purpose: "schedules: next due").single().decodeOptional("ms", as: Int64.self)
            metrics.schedulesOverdue.record(Double(max(0, -(ms ?? 0))) / 1000)
            return ms.map { max(0, $0) }
        } catch let error as PostgresError where error.sqlState == "42P01" {
            return nil  // before sql/workflow/0017
        }
    }

    public struct Page: Sendable, Hashable {
        public var schedules = 0
        public var started = 0
        public var existing = 0
        public var failed = 0
        public var skipped = 0
        /// The worst lateness of a fired slot (its start against its due time), in seconds.
        public var worstLateness: Double = 0
    }

    /// One fenced page of due schedules: those of part `part` of `parts` (by name), so that
    /// pages fired side by side never take the same schedules. "Due" is read at the
    /// transaction's start (`now()`), the time its runs record as their start: no run can look
    /// as if it started before its slot.
    public func fireOnce(fence: LeaderFence, part: Int = 0, parts: Int = 1) async throws -> Page {
        try await fence.withTransaction(pool) { tx in
            let rows = try await tx.query(
                """
                SELECT name, cron, timezone, catch_up, jitter_ms, next_slot, now() AS now FROM workflow.schedules
                WHERE NOT paused AND next_fire_at <= now() AND (\(parts) = 1 OR abs(hashtext(name)) % \(parts) = \(part))
                ORDER BY next_fire_at LIMIT \(pageSize) FOR UPDATE SKIP LOCKED
                """, purpose: "schedules: lock a due page")
            var page = Page()
            var fires: [JSONValue] = [], moves: [JSONValue] = []
            // A page's schedules mostly share a few cron lines and zones: each read once.
            var crons: [String: CronExpression] = [:], zones: [String: TimeZone] = [:]
            func time(_ d: Date) -> JSONValue { .string(Timestamp.format(d)) }
            for row in rows {
                let name: String = try row.decode("name")
                let now: Date = try row.decode("now")
                let cron: CronExpression, zone: TimeZone, catchUp: CatchUp
                do {
                    let cronText: String = try row.decode("cron"), zoneName: String = try row.decode("timezone")
                    if let known = crons[cronText] { cron = known } else {
                        cron = try CronExpression(cronText)
                        crons[cronText] = cron
                    }
                    if let known = zones[zoneName] { zone = known } else {
                        zone = try ScheduleSpec.zone(zoneName)
                        zones[zoneName] = zone
                    }
                    catchUp = CatchUp(rawValue: try row.decode("catch_up", as: String.self)) ?? .skip
                } catch let error as RegentError {
                    // Stored before a rule changed (a zone gone from the system's database): pause it, saying why.
                    try await tx.query(
                        "UPDATE workflow.schedules SET paused = true, last_error = \(String(error.message.prefix(2000))) WHERE name = \(name)",
                        purpose: "schedules: pause an unreadable schedule")
                    logger.error("schedule paused: it cannot be read", metadata: ["schedule": "\(name)", "error": "\(error.message)"])
                    continue
                }
                let plan = SlotPlanner.plan(
                    name: name, cron: cron, zone: zone, catchUp: catchUp, jitterMs: try row.decode("jitter_ms"), nextSlot: try row.decode("next_slot"),
                    now: now)
                page.schedules += 1
                for skip in plan.skips {
                    fires.append(.object([
                        "schedule": .string(name), "slot": time(skip.first), "due_at": time(skip.dueAt), "skip": .bool(true),
                        "through": time(skip.last), "slots": .integer(Int64(skip.count)),
                    ]))
                    page.skipped += skip.count
                }
                for fire in plan.fires {
                    fires.append(.object(["schedule": .string(name), "slot": time(fire.slot), "due_at": time(fire.dueAt), "skip": .bool(false)]))
                }
                moves.append(.object(["schedule": .string(name), "next_slot": time(plan.nextSlot), "next_fire_at": time(plan.nextFireAt)]))
            }
            guard !moves.isEmpty else { return page }
            let results = try await tx.query(
                """
                SELECT schedule, outcome, error, late FROM workflow.fire_schedules(
                    \(JSONValue.array(fires).text)::jsonb, \(JSONValue.array(moves).text)::jsonb,
                    \(AuditActor.instance(fence.instanceID).description), \(fence.term)::bigint, \(publisher)::uuid)
                """, purpose: "schedules: fire a page")
            for r in results {
                switch try r.decode("outcome", as: String.self) {
                case "started": page.started += 1
                case "existing": page.existing += 1
                default:
                    page.failed += 1
                    let schedule = try r.decode("schedule", as: String.self), error = try r.decodeOptional("error", as: String.self) ?? ""
                    logger.warning("a schedule's slot could not start its run", metadata: ["schedule": "\(schedule)", "error": "\(error)"])
                }
                page.worstLateness = max(page.worstLateness, try r.decode("late", as: Double.self))
            }
            return page
        }
    }

    public func runOnce(fence: LeaderFence) async throws -> Bool {
        var next = try await nextDue()
        if next == 0 {
            // Each firer goes on through its part's full pages on its own (not in step with the
            // others, no probe between pages), up to `maxPagesPerRound` before the duty loops.
            let rounds = try await DueTimeDuty.sideBySide(firers) { part in
                var mine: [Page] = []
                repeat {
                    mine.append(try await fireOnce(fence: fence, part: part, parts: firers))
                } while mine.last?.schedules == pageSize && mine.count < Self.maxPagesPerRound
                return mine
            }
            let pages = rounds.flatMap { $0 }
            let started = pages.map(\.started).reduce(0, +), skipped = pages.map(\.skipped).reduce(0, +)
            let failed = pages.map(\.failed).reduce(0, +), existing = pages.map(\.existing).reduce(0, +)
            metrics.scheduleSlots(outcome: "started").increment(by: started)
            metrics.scheduleSlots(outcome: "existing").increment(by: existing)
            metrics.scheduleSlots(outcome: "failed").increment(by: failed)
            metrics.scheduleSlots(outcome: "skipped").increment(by: skipped)
            if let worst = pages.map(\.worstLateness).max(), started + existing + failed > 0 { metrics.scheduleLateness.record(worst) }
            if skipped > 0 { logger.notice("schedule slots skipped by their catch-up policy", metadata: ["slots": "\(skipped)", "term": "\(fence.term)"]) }
            // A firer that stopped on a full page (at maxPagesPerRound) has more: loop at once.
            if rounds.contains(where: { $0.last?.schedules == pageSize }) { return true }
            // Held by another transaction (a trigger, a pause) or nothing due after all: a moment's pause.
            next = pages.allSatisfy({ $0.schedules == 0 }) ? 20 : try await nextDue()
        }
        try await DueTimeDuty.sleep(untilDueIn: next, idleProbe: idleProbe, bell: bell)
        return true
    }
}
