import Foundation

/// A Swift value that can be bound as a query parameter.
public protocol PostgresEncodable: Sendable {
    var postgresBind: PostgresBind { get }
}

/// A Swift value that can be read from a result column (text format).
public protocol PostgresDecodable: Sendable {
    /// Builds the value from the column's text form; `typeOID` is the column's type.
    init(postgresText text: String, typeOID: UInt32) throws(PostgresError)
}

func decodingError(_ type: Any.Type, _ text: String) -> PostgresError {
    PostgresError(.decoding, "cannot decode \(SQLIdentifier.printable(text)) as \(type)")
}

extension String: PostgresEncodable, PostgresDecodable {
    public var postgresBind: PostgresBind { .text(self) }
    public init(postgresText text: String, typeOID: UInt32) { self = text }
}

/// Numbers travel as their decimal text, and are read back from it (a value the type cannot
/// hold is a decoding error naming the type).
public protocol PostgresDecimalText: PostgresEncodable, PostgresDecodable, LosslessStringConvertible {}

extension PostgresDecimalText {
    public var postgresBind: PostgresBind { .text(description) }
    public init(postgresText text: String, typeOID: UInt32) throws(PostgresError) {
        guard let v = Self(text) else { throw decodingError(Self.self, text) }
        self = v
    }
}

extension Int: PostgresDecimalText {}
extension Int64: PostgresDecimalText {}
extension Int32: PostgresDecimalText {}
extension Double: PostgresDecimalText {}

extension Bool: PostgresEncodable, PostgresDecodable {
    public var postgresBind: PostgresBind { .text(self ? "true" : "false") }
    public init(postgresText text: String, typeOID: UInt32) throws(PostgresError) {
        switch text {
        case "t", "true": self = true
        case "f", "false": self = false
        default: throw decodingError(Bool.self, text)
        }
    }
}

extension UUID: PostgresEncodable, PostgresDecodable {
    public var postgresBind: PostgresBind { .text(uuidString.lowercased()) }
    public init(postgresText text: String, typeOID: UInt32) throws(PostgresError) {
        guard let v = UUID(uuidString: text) else { throw decodingError(UUID.self, text) }
        self = v
    }
}

extension Date: PostgresEncodable, PostgresDecodable {
    public var postgresBind: PostgresBind { .text(PostgresTimestamp.format(self)) }
    public init(postgresText text: String, typeOID: UInt32) throws(PostgresError) {
        guard let v = PostgresTimestamp.parse(text) else { throw decodingError(Date.self, text) }
        self = v
    }
}

extension Duration: PostgresEncodable {
    /// Bound as an interval in whole microseconds, e.g. `'250000 microseconds'`.
    public var postgresBind: PostgresBind {
        let (s, atto) = components
        let micros = s * 1_000_000 + atto / 1_000_000_000_000
        return .text("\(micros) microseconds")
    }
}

extension Array: PostgresEncodable where Element == String {
    /// Bound as a text array literal; use `$n::text[]` in SQL.
    public var postgresBind: PostgresBind { .text(PostgresArray.format(self)) }
}

extension Array: PostgresDecodable where Element == String {
    public init(postgresText text: String, typeOID: UInt32) throws(PostgresError) {
        guard let v = PostgresArray.parse(text) else { throw decodingError([String].self, text) }
        self = v
    }
}

/// Raw bytes, bound in binary format and read from bytea.
public struct PostgresBytes: PostgresEncodable, PostgresDecodable, Hashable {
    public var bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public var postgresBind: PostgresBind { .bytes(bytes) }
    public init(postgresText text: String, typeOID: UInt32) throws(PostgresError) {
        guard text.hasPrefix("\\x"), text.utf8.count % 2 == 0 else { throw decodingError(PostgresBytes.self, text) }
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count / 2 - 1)
        var high: UInt8?
        for c in text.utf8.dropFirst(2) {
            let v: UInt8
            switch c {
            case 48...57: v = c - 48
            case 97...102: v = c - 87
            case 65...70: v = c - 55
            default: throw decodingError(PostgresBytes.self, text)
            }
            if let h = high { out.append(h << 4 | v); high = nil } else { high = v }
        }
        self.bytes = out
    }
}

/// A JSON document kept as its text, bound as text (cast with `$n::jsonb`) and read from json/jsonb.
public struct PostgresJSON: PostgresEncodable, PostgresDecodable, Hashable {
    public var text: String
    public init(_ text: String) { self.text = text }
    public var postgresBind: PostgresBind { .text(text) }
    public init(postgresText text: String, typeOID: UInt32) { self.text = text }

    /// Decodes the document into a `Decodable` type.
    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(text.utf8))
    }
}

/// Text forms of timestamps (`DateStyle = ISO`).
package enum PostgresTimestamp {
    package static func format(_ date: Date) -> String {
        let micros = (date.timeIntervalSince1970 * 1_000_000).rounded()
        let totalSeconds = Int64((micros / 1_000_000).rounded(.down))
        let frac = Int64(micros) - totalSeconds * 1_000_000
        let (y, m, d) = civil(fromDays: Int(floorDiv(totalSeconds, 86_400)))
        let secs = Int(totalSeconds - floorDiv(totalSeconds, 86_400) * 86_400)
        func pad(_ v: Int, _ n: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, n - s.count)) + s }
        return "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2)) \(pad(secs / 3600, 2)):\(pad(secs / 60 % 60, 2)):\(pad(secs % 60, 2)).\(pad(Int(frac), 6))+00"
    }

    /// Parses `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]]`.
    static func parse(_ text: String) -> Date? {
        let b = Array(text.utf8)
        guard b.count >= 19, b[4] == 45, b[7] == 45, b[10] == 32 || b[10] == 84, b[13] == 58, b[16] == 58 else { return nil }
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
            let s = num(17, 2)
        else { return nil }
        var i = 19
        var micros = 0
        if i < b.count, b[i] == 46 {
            i += 1
            var digits = 0
            while i < b.count, b[i] >= 48, b[i] <= 57 {
                if digits < 6 { micros = micros * 10 + Int(b[i] - 48); digits += 1 }
                i += 1
            }
            while digits < 6 { micros *= 10; digits += 1 }
        }
        var offset = 0
        if i < b.count {
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

/// Text forms of one-dimensional text arrays.
enum PostgresArray {
    static func format(_ values: [String]) -> String {
        var out = "{"
        for (i, v) in values.enumerated() {
            if i > 0 { out += "," }
            out += "\""
            for ch in v.unicodeScalars {
                if ch == "\"" || ch == "\\" { out += "\\" }
                out.unicodeScalars.append(ch)
            }
            out += "\""
        }
        return out + "}"
    }

    /// Parses `{a,"b c",NULL}`; NULL elements are refused (nil result).
    static func parse(_ text: String) -> [String]? {
        let s = Array(text.unicodeScalars)
        guard s.first == "{", s.last == "}" else { return nil }
        var out: [String] = []
        var i = 1
        if s.count == 2 { return [] }
        while i < s.count - 1 {
            var item = String.UnicodeScalarView()
            if s[i] == "\"" {
                i += 1
                while i < s.count - 1, s[i] != "\"" {
                    if s[i] == "\\" { i += 1 }
                    item.append(s[i])
                    i += 1
                }
                guard i < s.count - 1 else { return nil }
                i += 1  // closing quote
                out.append(String(item))
            } else {
                while i < s.count - 1, s[i] != "," {
                    item.append(s[i])
                    i += 1
                }
                let str = String(item)
                if str == "NULL" { return nil }
                out.append(str)
            }
            if i < s.count - 1 {
                guard s[i] == "," else { return nil }
                i += 1
            }
        }
        return out
    }
}
