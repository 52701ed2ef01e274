import CivilTime
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
    public var postgresBind: PostgresBind { .text(lowercasedText) }
    public init(postgresText text: String, typeOID: UInt32) throws(PostgresError) {
        guard let v = UUID(canonicalText: text) ?? UUID(uuidString: text) else { throw decodingError(UUID.self, text) }
        self = v
    }

    /// The canonical lowercase form (8-4-4-4-12 hex digits), as PostgreSQL writes a uuid. Written
    /// by hand: Foundation's `uuidString` and a `lowercased()` after it were a few per cent of a
    /// step worker's CPU (every claim and completion carries execution ids).
    public var lowercasedText: String {
        withUnsafeBytes(of: uuid) { raw in
            String(unsafeUninitializedCapacity: 36) { out in
                let digits: StaticString = "0123456789abcdef"
                var n = 0
                for (i, byte) in raw.enumerated() {
                    if i == 4 || i == 6 || i == 8 || i == 10 { out[n] = UInt8(ascii: "-"); n += 1 }
                    out[n] = digits.utf8Start[Int(byte >> 4)]
                    out[n + 1] = digits.utf8Start[Int(byte & 0x0F)]
                    n += 2
                }
                return n
            }
        }
    }

    /// Parses the canonical 36-character form (hex digits in either case, dashes at 8, 13, 18 and
    /// 23); nil for anything else.
    public init?(canonicalText text: String) {
        var bytes: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        let ok = withUnsafeMutableBytes(of: &bytes) { out -> Bool in
            var count = 0
            var high: UInt8? = nil
            var n = 0
            for c in text.utf8 {
                defer { count += 1 }
                if count == 8 || count == 13 || count == 18 || count == 23 {
                    guard c == UInt8(ascii: "-") else { return false }
                    continue
                }
                let v: UInt8
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): v = c - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): v = c - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): v = c - UInt8(ascii: "A") + 10
                default: return false
                }
                guard n < 16 else { return false }
                if let h = high {
                    out[n] = h << 4 | v
                    n += 1
                    high = nil
                } else {
                    high = v
                }
            }
            return count == 36 && n == 16 && high == nil
        }
        guard ok else { return nil }
        self.init(uuid: bytes)
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

/// Text forms of timestamps (`DateStyle = ISO`): CivilTime's, shared with the worker SDK
/// (which reads the API's RFC 3339 instants with the same parser and links no libpq).
package typealias PostgresTimestamp = Timestamp

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
