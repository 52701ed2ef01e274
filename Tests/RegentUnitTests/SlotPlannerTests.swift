import Foundation
@testable import RegentCore
import Testing

/// The slot arithmetic of a schedule (issue 31): what fires, what is skipped, where it goes next.
@Suite("Schedule slot planning")
struct SlotPlannerTests {
    let utc = TimeZone(identifier: "UTC")!
    func at(_ text: String) -> Date { try! Date(text, strategy: .iso8601) }

    func plan(_ cron: String, _ catchUp: CatchUp, next: String, now: String, jitterMs: Int64 = 0, zone: TimeZone? = nil) throws -> SlotPlanner.Plan {
        SlotPlanner.plan(name: "s", cron: try CronExpression(cron), zone: zone ?? utc, catchUp: catchUp, jitterMs: jitterMs, nextSlot: at(next), now: at(now))
    }

    @Test func onTimeSlotsFireAndTheScheduleMovesToTheNextOne() throws {
        for policy in CatchUp.allCases {
            let p = try plan("*/5 * * * *", policy, next: "2026-12-07T10:05:00Z", now: "2026-12-07T10:05:01Z")
            #expect(p.fires.map(\.slot) == [at("2026-12-07T10:05:00Z")] && p.skips.isEmpty, "\(policy)")
            #expect(p.nextSlot == at("2026-12-07T10:10:00Z"))
        }
        // Not due yet: nothing fires, nothing moves.
        let early = try plan("*/5 * * * *", .all, next: "2026-12-07T10:05:00Z", now: "2026-12-07T10:04:59Z")
        #expect(early.fires.isEmpty && early.skips.isEmpty && early.nextSlot == at("2026-12-07T10:05:00Z"))
    }

    /// An outage of an hour over a schedule every five minutes: 12 slots missed.
    @Test func catchUpPoliciesAfterAnOutage() throws {
        let (next, now) = ("2026-12-07T10:05:00Z", "2026-12-07T11:00:30Z")
        let all = try plan("*/5 * * * *", .all, next: next, now: now)
        #expect(all.fires.count == 12 && all.skips.isEmpty && all.fires.first?.slot == at(next))
        let latest = try plan("*/5 * * * *", .latest, next: next, now: now)
        #expect(latest.fires.map(\.slot) == [at("2026-12-07T11:00:00Z")])
        #expect(latest.skips == [SlotPlanner.Skip(first: at(next), last: at("2026-12-07T10:55:00Z"), count: 11, dueAt: at(next))])
        // skip: only the slot within the grace (a minute) fires.
        let skip = try plan("*/5 * * * *", .skip, next: next, now: now)
        #expect(skip.fires.map(\.slot) == [at("2026-12-07T11:00:00Z")] && skip.skips.map(\.count) == [11])
        let skipAll = try plan("*/5 * * * *", .skip, next: next, now: "2026-12-07T11:03:30Z")
        #expect(skipAll.fires.isEmpty && skipAll.skips.map(\.count) == [12])
        for p in [all, latest, skip, skipAll] { #expect(p.nextSlot == at("2026-12-07T11:05:00Z")) }
        // all is bounded: the latest 100 fire, the older ones are skipped (one record).
        let day = try plan("* * * * *", .all, next: "2026-12-06T11:00:00Z", now: "2026-12-07T11:00:30Z")
        #expect(day.fires.count == SlotPlanner.maxCatchUp && day.fires.last?.slot == at("2026-12-07T11:00:00Z"))
        #expect(day.skips.map(\.count) == [1441 - SlotPlanner.maxCatchUp])
    }

    /// Jitter delays a slot by a fixed amount in [0, jitter] that every node computes alike, and
    /// never fires it early.
    @Test func jitterIsDeterministicBoundedAndNeverEarly() throws {
        var delays = Set<Double>()
        for minute in 0..<60 {
            let slot = at("2026-12-07T10:00:00Z").addingTimeInterval(Double(minute * 60))
            let fire = SlotPlanner.fireAt(slot, name: "s", jitterMs: 10_000)
            #expect(fire >= slot && fire <= slot.addingTimeInterval(10))
            #expect(fire == SlotPlanner.fireAt(slot, name: "s", jitterMs: 10_000))
            delays.insert(fire.timeIntervalSince(slot))
        }
        #expect(delays.count > 30, "spread, not one fixed delay")
        let p = try plan("* * * * *", .all, next: "2026-12-07T10:00:00Z", now: "2026-12-07T10:00:00.000Z", jitterMs: 10_000)
        let due = SlotPlanner.fireAt(at("2026-12-07T10:00:00Z"), name: "s", jitterMs: 10_000)
        #expect(p.fires.isEmpty || due == at("2026-12-07T10:00:00Z"), "not before slot + its jitter")
        let later = SlotPlanner.plan(
            name: "s", cron: try CronExpression("* * * * *"), zone: utc, catchUp: .all, jitterMs: 10_000, nextSlot: at("2026-12-07T10:00:00Z"), now: due)
        #expect(later.fires.map(\.slot) == [at("2026-12-07T10:00:00Z")] && later.nextFireAt >= later.nextSlot)
    }

    /// Across Paris's DST changes: 02:30 does not exist on 2026-03-29 (skipped, the plan moves to
    /// the next day), and on 2026-10-25 it happens twice (fired once).
    @Test func daylightSavingChangesInAScheduleZone() throws {
        let paris = TimeZone(identifier: "Europe/Paris")!
        let spring = try plan("30 2 * * *", .all, next: "2026-03-28T01:30:00Z", now: "2026-03-29T12:00:00Z", zone: paris)
        #expect(spring.fires.map(\.slot) == [at("2026-03-28T01:30:00Z")] && spring.nextSlot == at("2026-03-30T00:30:00Z"))
        let fall = try plan("30 2 * * *", .all, next: "2026-10-25T00:30:00Z", now: "2026-10-25T12:00:00Z", zone: paris)
        #expect(fall.fires.map(\.slot) == [at("2026-10-25T00:30:00Z")] && fall.nextSlot == at("2026-10-26T01:30:00Z"))
    }
}
