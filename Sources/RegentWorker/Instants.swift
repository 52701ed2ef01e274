import Foundation

extension Lease {
    /// An RFC 3339 instant as the API writes them (`2026-12-06T19:26:12.851662Z`, or with an
    /// offset), parsed without a formatter; nil for anything else.
    static func fastInstant(_ text: String) -> Date? {
        let u = Array(text.utf8)
        func digits(_ from: Int, _ count: Int) -> Int? {
            guard from + count <= u.count else { return nil }
            var v = 0
            for k in from..<(from + count) {
                guard (48...57).contains(u[k]) else { return nil }
                v = v * 10 + Int(u[k] - 48)
            }
            return v
        }
        guard u.count >= 20, let year = digits(0, 4), u[4] == 45, let month = digits(5, 2), u[7] == 45, let day = digits(8, 2),
            u[10] == 84 || u[10] == 116 || u[10] == 32, let hour = digits(11, 2), u[13] == 58, let minute = digits(14, 2), u[16] == 58,
            let second = digits(17, 2), (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var k = 19
        var fraction = 0.0
        if k < u.count, u[k] == 46 {
            k += 1
            var scale = 0.1
            let begin = k
            while k < u.count, (48...57).contains(u[k]) {
                fraction += Double(u[k] - 48) * scale
                scale /= 10
                k += 1
            }
            guard k > begin else { return nil }
        }
        var offset = 0
        guard k < u.count else { return nil }
        if u[k] == 90 || u[k] == 122 {
            k += 1
        } else if u[k] == 43 || u[k] == 45, let oh = digits(k + 1, 2), k + 3 < u.count, u[k + 3] == 58, let om = digits(k + 4, 2) {
            offset = (oh * 3600 + om * 60) * (u[k] == 43 ? 1 : -1)
            k += 6
        } else {
            return nil
        }
        guard k == u.count else { return nil }
        // Days from the civil date (Howard Hinnant's algorithm).
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        let seconds = Double(days * 86_400 + hour * 3600 + minute * 60 + second - offset) + fraction
        return Date(timeIntervalSince1970: seconds)
    }
}
