import Foundation
@testable import RegentCore
import Testing

/// Cron expressions for schedules (issue 31): parsing, refusals that name what is wrong, and
/// the next slot in a time zone's wall clock across daylight-saving changes.
@Suite struct CronTests {
    let utc = TimeZone(identifier: "UTC")!
    let paris = TimeZone(identifier: "Europe/Paris")!
    let newYork = TimeZone(identifier: "America/New_York")!

    func instant(_ text: String) -> Date { try! Date(text, strategy: .iso8601) }
    func iso(_ date: Date?) -> String? { date.map { ISO8601DateFormatter().string(from: $0) } }

    /// The next `count` slots after `start`.
    func slots(_ cron: String, after start: String, in zone: TimeZone, count: Int) throws -> [String] {
        let c = try CronExpression(cron)
        var at = instant(start), out: [String] = []
        for _ in 0..<count {
            guard let n = c.next(after: at, in: zone) else { break }
            out.append(iso(n)!)
            at = n
        }
        return out
    }

    @Test func fieldsListsRangesStepsNamesAndMacros() throws {
        let c = try CronExpression("*/15 9-17 * JAN,jul mon-fri")
        #expect(c.minutes == [0, 15, 30, 45] && c.hours == Set(9...17) && c.months == [1, 7] && c.daysOfWeek == Set(1...5))
        #expect(try CronExpression("5/20 * * * *").minutes == [5, 25, 45])
        #expect(try CronExpression("0 0 * * 7").daysOfWeek == [0])
        #expect(try CronExpression("@hourly") == CronExpression("0 * * * *").withDescription("@hourly"))
        #expect(try slots("@daily", after: "2026-12-06T10:00:00Z", in: utc, count: 2) == ["2026-12-07T00:00:00Z", "2026-12-08T00:00:00Z"])
        #expect(try slots("*/5 * * * *", after: "2026-12-06T10:02:00Z", in: utc, count: 3) == ["2026-12-06T10:05:00Z", "2026-12-06T10:10:00Z", "2026-12-06T10:15:00Z"])
        // A slot equal to the instant is not after it.
        #expect(try slots("0 12 * * *", after: "2026-12-06T12:00:00Z", in: utc, count: 1) == ["2026-12-07T12:00:00Z"])
        // Both day fields restricted: either matches (the 13th, and every Friday).
        #expect(try slots("0 0 13 * fri", after: "2026-11-01T00:00:00Z", in: utc, count: 3) == [
            "2026-11-06T00:00:00Z", "2026-11-13T00:00:00Z", "2026-11-20T00:00:00Z",
        ])
        #expect(try slots("0 0 29 2 *", after: "2026-12-06T00:00:00Z", in: utc, count: 1) == ["2028-02-29T00:00:00Z"])
        #expect(try CronExpression("0 0 30 2 *").next(after: instant("2026-12-06T00:00:00Z"), in: utc) == nil)
    }

    /// Six fields: the first is the second; five fields fire at second 0.
    @Test func aLeadingSecondsField() throws {
        #expect(try CronExpression("* * * * *").seconds == [0])
        #expect(try CronExpression("*/20 * * * * *").seconds == [0, 20, 40])
        #expect(try slots("*/20 * * * * *", after: "2026-12-06T10:00:50Z", in: utc, count: 3) == [
            "2026-12-06T10:01:00Z", "2026-12-06T10:01:20Z", "2026-12-06T10:01:40Z",
        ])
        // A fraction of a second past a slot: the next whole second.
        #expect(iso(try CronExpression("* * * * * *").next(after: instant("2026-12-06T23:59:59Z").addingTimeInterval(0.4), in: utc)) == "2026-12-07T00:00:00Z")
        #expect(try slots("30 0 12 * * *", after: "2026-12-06T12:00:30Z", in: utc, count: 1) == ["2026-12-07T12:00:30Z"])
        #expect(throws: RegentError.self) { try CronExpression("60 * * * * *") }
    }

    @Test func badExpressionsAreRefusedNamingWhatIsWrong() {
        for (text, says) in [
            ("* * * *", "4 fields"), ("60 * * * *", "minute \"60\""), ("* 24 * * *", "hour \"24\""), ("* * 0 * *", "day-of-month \"0\""),
            ("* * * 13 *", "month \"13\""), ("* * * * 8", "day-of-week \"8\""), ("*/0 * * * *", "step \"0\""), ("5-1 * * * *", "runs backwards"),
            ("1,,2 * * * *", "empty list item"), ("* * * foo *", "month \"foo\""), ("@sometimes", "1 fields"), ("* * * * *\u{7}", "control"),
        ] {
            do {
                _ = try CronExpression(text)
                Issue.record("\(text) was accepted")
            } catch {
                #expect(error.description.contains(says), "\(text): \(error.description)")
            }
        }
    }

    /// Europe/Paris springs forward on 2026-03-29 at 02:00 (to 03:00) and falls back on
    /// 2026-10-25 at 03:00 (to 02:00): the missing 02:30 is skipped, the repeated 02:30 fires once.
    @Test func aSlotThatDoesNotExistIsSkippedAndARepeatedOneFiresOnce() throws {
        #expect(try slots("30 2 * * *", after: "2026-03-27T12:00:00Z", in: paris, count: 3) == [
            "2026-03-28T01:30:00Z",  // 02:30 CET
            "2026-03-30T00:30:00Z",  // 02:30 CEST: the 29th has no 02:30
            "2026-03-31T00:30:00Z",
        ])
        #expect(try slots("30 2 * * *", after: "2026-10-24T12:00:00Z", in: paris, count: 2) == [
            "2026-10-25T00:30:00Z",  // the first 02:30 (CEST), not the second (01:30Z, CET)
            "2026-10-26T01:30:00Z",
        ])
        // Hourly across the fall-back: the repeated hour fires once.
        #expect(try slots("0 * * * *", after: "2026-10-24T23:30:00Z", in: paris, count: 3) == [
            "2026-10-25T00:00:00Z",  // 02:00 CEST
            "2026-10-25T02:00:00Z",  // 03:00 CET (02:00 CET, the repeat, is not a second slot)
            "2026-10-25T03:00:00Z",
        ])
        // Asked during the repeated hour's second pass, the next slot is the next hour.
        #expect(try slots("15 * * * *", after: "2026-10-25T01:20:00Z", in: paris, count: 1) == ["2026-10-25T02:15:00Z"])
        // New York: 2026-03-08 02:00 → 03:00; a daily 02:30 skips that day.
        #expect(try slots("30 2 * * *", after: "2026-03-07T12:00:00Z", in: newYork, count: 2) == ["2026-03-09T06:30:00Z", "2026-03-10T06:30:00Z"])
    }
}
