import Foundation

/// A standard five-field cron expression (`minute hour day-of-month month day-of-week`) with the
/// usual extensions: lists (`1,15`), ranges (`9-17`), steps (`*/5`, `10-50/10`), month and day
/// names (`jan`, `mon-fri`), `7` for Sunday, and the macros `@yearly` (`@annually`), `@monthly`,
/// `@weekly`, `@daily` (`@midnight`) and `@hourly`. As in Vixie cron, when both day fields are
/// restricted a day matches either of them. A sixth, leading field is read as seconds
/// (`*/10 * * * * *`: every ten seconds), the extension Quartz, Spring and most cron libraries
/// accept; with five fields a slot is at second 0.
///
/// The first piece of issue 31's schedules: slots are computed in a time zone's wall clock, and
/// across a daylight-saving change a wall-clock time that does not exist that day is skipped,
/// and one that happens twice fires once (at its first occurrence).
public struct CronExpression: Sendable, Hashable, CustomStringConvertible {
    public let seconds: Set<Int>
    public let minutes: Set<Int>
    public let hours: Set<Int>
    public let daysOfMonth: Set<Int>
    public let months: Set<Int>
    /// 0 = Sunday … 6 = Saturday.
    public let daysOfWeek: Set<Int>
    let domRestricted: Bool
    let dowRestricted: Bool
    public let description: String

    static let macros = [
        "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
    ]
    static let monthNames = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    static let dayNames = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

    public init(_ text: String) throws(RegentError) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard trimmed.utf8.count <= 200, !trimmed.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
            throw RegentError(.invalidInput, "a cron expression is at most 200 characters without control characters")
        }
        let expanded = Self.macros[trimmed.lowercased()] ?? trimmed
        let fields = expanded.split(separator: " ", omittingEmptySubsequences: true).map { String($0).lowercased() }
        guard fields.count == 5 || fields.count == 6 else {
            throw RegentError(
                .invalidInput, "cron expression \(quoted(trimmed)) has \(fields.count) fields; it needs 5: minute hour day-of-month month day-of-week (6 with a leading second; or @hourly, @daily, @weekly, @monthly, @yearly)")
        }
        let o = fields.count - 5
        seconds = o == 1 ? try Self.field(fields[0], name: "second", range: 0...59, names: []) : [0]
        minutes = try Self.field(fields[o], name: "minute", range: 0...59, names: [])
        hours = try Self.field(fields[o + 1], name: "hour", range: 0...23, names: [])
        daysOfMonth = try Self.field(fields[o + 2], name: "day-of-month", range: 1...31, names: [])
        months = try Self.field(fields[o + 3], name: "month", range: 1...12, names: Self.monthNames, namesStart: 1)
        // 7 is Sunday too.
        daysOfWeek = Set(try Self.field(fields[o + 4], name: "day-of-week", range: 0...7, names: Self.dayNames).map { $0 % 7 })
        domRestricted = !fields[o + 2].hasPrefix("*")
        dowRestricted = !fields[o + 4].hasPrefix("*")
        description = trimmed
    }

    /// The same schedule under another written form (a macro and its expansion compare equal this way).
    func withDescription(_ text: String) -> CronExpression {
        CronExpression(seconds: seconds, minutes: minutes, hours: hours, daysOfMonth: daysOfMonth, months: months, daysOfWeek: daysOfWeek,
                       domRestricted: domRestricted, dowRestricted: dowRestricted, description: text)
    }

    init(seconds: Set<Int>, minutes: Set<Int>, hours: Set<Int>, daysOfMonth: Set<Int>, months: Set<Int>, daysOfWeek: Set<Int>, domRestricted: Bool, dowRestricted: Bool, description: String) {
        self.seconds = seconds
        self.minutes = minutes
        self.hours = hours
        self.daysOfMonth = daysOfMonth
        self.months = months
        self.daysOfWeek = daysOfWeek
        self.domRestricted = domRestricted
        self.dowRestricted = dowRestricted
        self.description = description
    }

    static func field(_ text: String, name: String, range: ClosedRange<Int>, names: [String], namesStart: Int = 0) throws(RegentError) -> Set<Int> {
        func value(_ s: Substring) throws(RegentError) -> Int {
            if let n = Int(s), range.contains(n) { return n }
            if let i = names.firstIndex(of: String(s)) { return i + namesStart }
            throw RegentError(
                .invalidInput, "cron \(name) \(quoted(String(s))) is not a value from \(range.lowerBound) to \(range.upperBound)\(names.isEmpty ? "" : " or a name (\(names.first!)…)")")
        }
        var out = Set<Int>()
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard !part.isEmpty else { throw RegentError(.invalidInput, "cron \(name) \(quoted(text)) has an empty list item") }
            let pieces = part.split(separator: "/", omittingEmptySubsequences: false)
            guard pieces.count <= 2 else { throw RegentError(.invalidInput, "cron \(name) \(quoted(String(part))) has more than one /") }
            var step = 1
            if pieces.count == 2 {
                guard let s = Int(pieces[1]), s >= 1, s <= range.upperBound else {
                    throw RegentError(.invalidInput, "cron \(name) step \(quoted(String(pieces[1]))) must be from 1 to \(range.upperBound)")
                }
                step = s
            }
            let lo: Int, hi: Int
            if pieces[0] == "*" {
                (lo, hi) = (range.lowerBound, range.upperBound)
            } else if let dash = pieces[0].firstIndex(of: "-") {
                lo = try value(pieces[0][..<dash])
                hi = try value(pieces[0][pieces[0].index(after: dash)...])
                guard lo <= hi else { throw RegentError(.invalidInput, "cron \(name) range \(quoted(String(pieces[0]))) runs backwards") }
            } else {
                lo = try value(pieces[0])
                // `5/15` means from 5 to the end, every 15.
                hi = pieces.count == 2 ? range.upperBound : lo
            }
            out.formUnion(stride(from: lo, through: hi, by: step))
        }
        return out
    }

    func dayMatches(day: Int, weekday: Int) -> Bool {
        let dom = daysOfMonth.contains(day), dow = daysOfWeek.contains(weekday)
        if domRestricted && dowRestricted { return dom || dow }
        return dom && dow
    }

    /// The first slot strictly after `instant`, in `zone`'s wall clock; nil when none comes within
    /// five years (`0 0 30 2 *`: February 30th).
    public func next(after instant: Date, in zone: TimeZone) -> Date? {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = zone
        let start = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: instant)
        guard var day = calendar.date(from: DateComponents(year: start.year, month: start.month, day: start.day)) else { return nil }
        let sortedHours = hours.sorted(), sortedMinutes = minutes.sorted(), sortedSeconds = seconds.sorted()
        let (startHour, startMinute, startSecond) = (start.hour ?? 0, start.minute ?? 0, start.second ?? 0)
        for dayIndex in 0..<(366 * 5) {
            let d = calendar.dateComponents([.year, .month, .day, .weekday], from: day)
            if let y = d.year, let m = d.month, let dd = d.day, let wd = d.weekday, months.contains(m), dayMatches(day: dd, weekday: wd - 1) {
                for hour in sortedHours {
                    if dayIndex == 0, hour < startHour { continue }
                    for minute in sortedMinutes {
                        if dayIndex == 0, hour == startHour, minute < startMinute { continue }
                        for second in sortedSeconds {
                            // Candidates at or before `instant`'s second are not after it (a
                            // repeated hour is caught by the comparison below).
                            if dayIndex == 0, hour == startHour, minute == startMinute, second <= startSecond { continue }
                            guard let candidate = calendar.date(from: DateComponents(year: y, month: m, day: dd, hour: hour, minute: minute, second: second))
                            else { continue }
                            // A wall-clock time the day skips (spring forward) comes back as another time: skip it.
                            let back = calendar.dateComponents([.day, .hour, .minute], from: candidate)
                            guard back.day == dd, back.hour == hour, back.minute == minute else { continue }
                            // A repeated wall-clock time (fall back) resolves to its first occurrence: once.
                            if candidate > instant { return candidate }
                        }
                    }
                }
            }
            guard let nextDay = calendar.date(byAdding: .day, value: 1, to: day) else { return nil }
            day = nextDay
        }
        return nil
    }
}
