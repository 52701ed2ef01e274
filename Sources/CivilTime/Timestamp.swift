import Foundation

/// Timestamps as text without a formatter: PostgreSQL's ISO output (`DateStyle = ISO`) and the
/// RFC 3339 instants the admin API writes. Shared by the libpq client and the worker SDK.
public enum Timestamp {
    /// `YYYY-MM-DD HH:MM:SS.ffffff+00`, the form PostgreSQL reads back exactly.
    public static func format(_ date: Date) -> String {
        let micros = (date.timeIntervalSince1970 * 1_000_000).rounded()
        let totalSeconds = Int64((micros / 1_000_000).rounded(.down))
        let frac = Int64(micros) - totalSeconds * 1_000_000
        let (y, m, d) = civil(fromDays: Int(floorDiv(totalSeconds, 86_400)))
        let secs = Int(totalSeconds - floorDiv(totalSeconds, 86_400) * 86_400)
        func pad(_ v: Int, _ n: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, n - s.count)) + s }
        return "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2)) \(pad(secs / 3600, 2)):\(pad(secs / 60 % 60, 2)):\(pad(secs % 60, 2)).\(pad(Int(frac), 6))+00"
    }

    /// Parses `YYYY-MM-DD[ T]HH:MM:SS[.ffffff][Z|±HH[:MM[:SS]]]` (fraction digits past the
    /// sixth are read and dropped; no zone is UTC unless `requireZone`, as RFC 3339 wants);
    /// nil for anything else, including an impossible date.
    public static func parse(_ text: String, requireZone: Bool = false) -> Date? {
        let b = Array(text.utf8)
        guard b.count >= 19, b[4] == 45, b[7] == 45, b[10] == 32 || b[10] == 84 || b[10] == 116, b[13] == 58, b[16] == 58 else { return nil }
        func num(_ from: Int, _ len: Int) -> Int? {
            guard from + len <= b.count else { return nil }
            var v = 0
            for i in from..<(from + len) {
                guard b[i] >= 48, b[i] <= 57 else { return nil }
                v = v * 10 + Int(b[i] - 48)
            }
            return v
        }
        guard let y = num(0, 4), let mo = num(5, 2), let d = num(8, 2), let h = num(11, 2), let mi = num(14, 2),
            let s = num(17, 2), (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, s < 61
        else { return nil }
        var i = 19
        var micros = 0
        if i < b.count, b[i] == 46 {
            i += 1
            var digits = 0
            let first = i
            while i < b.count, b[i] >= 48, b[i] <= 57 {
                if digits < 6 { micros = micros * 10 + Int(b[i] - 48); digits += 1 }
                i += 1
            }
            guard i > first else { return nil }
            while digits < 6 { micros *= 10; digits += 1 }
        }
        var offset = 0
        if requireZone, i == b.count { return nil }
        if i < b.count, b[i] == 90 || b[i] == 122 {
            guard i + 1 == b.count else { return nil }
        } else if i < b.count {
            guard b[i] == 43 || b[i] == 45 else { return nil }
            let sign = b[i] == 45 ? -1 : 1
            guard let oh = num(i + 1, 2) else { return nil }
            var off = oh * 3600
            var j = i + 3
            if j < b.count, b[j] == 58, let om = num(j + 1, 2) { off += om * 60; j += 3 }
            if j < b.count, b[j] == 58, let os = num(j + 1, 2) { off += os; j += 3 }
            guard j == b.count else { return nil }
            offset = sign * off
        }
        let days = days(fromCivil: y, mo, d)
        let seconds = Int64(days) * 86_400 + Int64(h * 3600 + mi * 60 + s) - Int64(offset)
        return Date(timeIntervalSince1970: Double(seconds) + Double(micros) / 1_000_000)
    }

    static func floorDiv(_ a: Int64, _ b: Int64) -> Int64 { a >= 0 ? a / b : -((-a + b - 1) / b) }

    // Howard Hinnant's civil-calendar algorithms.
    static func days(fromCivil y0: Int, _ m: Int, _ d: Int) -> Int {
        let y = m <= 2 ? y0 - 1 : y0
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civil(fromDays z0: Int) -> (Int, Int, Int) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (m <= 2 ? y + 1 : y, m, d)
    }
}
