import Foundation

/// A strict, linear-time JSON reader for request bodies (RFC 8259, UTF-8 only).
///
/// One pass over the bytes with an explicit nesting limit: no speculative decoding, no
/// coding paths, so a body costs what its bytes cost (a 1 KB array nested 500 deep is
/// refused after 33 bytes). Refused, each with a code and the path of the offending value:
/// nesting deeper than `maxDepth` (`json_too_deep`), a byte-order mark or invalid UTF-8
/// (`invalid_encoding`), a key given twice in one object (`duplicate_key`), and the NUL
/// character anywhere in a string or key (`invalid_character`: PostgreSQL text and jsonb
/// cannot hold it, and truncating silently is worse than refusing).
public struct StrictJSON {
    public struct Failure: Error, Equatable, CustomStringConvertible {
        public let code: String
        public let message: String
        public var description: String { message }
    }

    public static let defaultMaxDepth = 32

    private let bytes: [UInt8]
    private var i = 0
    private let maxDepth: Int

    private init(_ bytes: [UInt8], maxDepth: Int) {
        self.bytes = bytes
        self.maxDepth = maxDepth
    }

    /// Parses one JSON document.
    public static func parse(_ bytes: [UInt8], maxDepth: Int = defaultMaxDepth) throws(Failure) -> JSONValue {
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) || bytes.starts(with: [0xFE, 0xFF]) || bytes.starts(with: [0xFF, 0xFE]) {
            throw Failure(code: "invalid_encoding", message: "the body starts with a byte-order mark: send UTF-8 JSON without one")
        }
        if bytes.count >= 2, bytes[0] == 0 || bytes[1] == 0 {
            throw Failure(code: "invalid_encoding", message: "the body is not UTF-8 (UTF-16 or UTF-32?): send UTF-8 JSON")
        }
        var reader = StrictJSON(bytes, maxDepth: maxDepth)
        reader.skipSpace()
        let value = try reader.value(depth: 1, path: "$")
        reader.skipSpace()
        guard reader.i == bytes.count else { throw reader.malformed("unexpected text after the JSON value") }
        return value
    }

    private func malformed(_ what: String) -> Failure {
        Failure(code: "malformed_json", message: "the body is not valid JSON: \(what) at byte \(i)")
    }

    private mutating func skipSpace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
    }

    private mutating func value(depth: Int, path: String) throws(Failure) -> JSONValue {
        guard i < bytes.count else { throw malformed("unexpected end") }
        switch bytes[i] {
        case UInt8(ascii: "{"): return try object(depth: depth, path: path)
        case UInt8(ascii: "["): return try array(depth: depth, path: path)
        case UInt8(ascii: "\""): return .string(try string(path: path))
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw malformed("unexpected character")
        }
    }

    private mutating func enter(_ depth: Int, _ path: String) throws(Failure) {
        guard depth <= maxDepth else {
            throw Failure(code: "json_too_deep", message: "the body nests deeper than \(maxDepth) levels (at \(Self.printable(path)))")
        }
        i += 1
        skipSpace()
    }

    private mutating func object(depth: Int, path: String) throws(Failure) -> JSONValue {
        try enter(depth, path)
        var fields: [String: JSONValue] = [:]
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") {
            i += 1
            return .object(fields)
        }
        while true {
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw malformed("expected a string key") }
            let key = try string(path: path + ".<key>")
            let childPath = path == "$" ? key : path + "." + key
            guard fields[key] == nil else {
                throw Failure(code: "duplicate_key", message: "the key \(Self.printable(key)) appears twice in one object (at \(Self.printable(path)))")
            }
            skipSpace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw malformed("expected ':'") }
            i += 1
            skipSpace()
            fields[key] = try value(depth: depth + 1, path: childPath)
            skipSpace()
            guard i < bytes.count else { throw malformed("unexpected end in an object") }
            if bytes[i] == UInt8(ascii: ",") {
                i += 1
                skipSpace()
                continue
            }
            guard bytes[i] == UInt8(ascii: "}") else { throw malformed("expected ',' or '}'") }
            i += 1
            return .object(fields)
        }
    }

    private mutating func array(depth: Int, path: String) throws(Failure) -> JSONValue {
        try enter(depth, path)
        var items: [JSONValue] = []
        if i < bytes.count, bytes[i] == UInt8(ascii: "]") {
            i += 1
            return .array(items)
        }
        while true {
            items.append(try value(depth: depth + 1, path: "\(path)[\(items.count)]"))
            skipSpace()
            guard i < bytes.count else { throw malformed("unexpected end in an array") }
            if bytes[i] == UInt8(ascii: ",") {
                i += 1
                skipSpace()
                continue
            }
            guard bytes[i] == UInt8(ascii: "]") else { throw malformed("expected ',' or ']'") }
            i += 1
            return .array(items)
        }
    }

    private mutating func literal(_ word: String) throws(Failure) {
        let expected = Array(word.utf8)
        guard i + expected.count <= bytes.count, bytes[i..<(i + expected.count)].elementsEqual(expected) else {
            throw malformed("unexpected word")
        }
        i += expected.count
    }

    private mutating func number() throws(Failure) -> JSONValue {
        let start = i
        var integral = true
        if bytes[i] == UInt8(ascii: "-") { i += 1 }
        guard i < bytes.count, Self.isDigit(bytes[i]) else { throw malformed("a number needs digits") }
        if bytes[i] == UInt8(ascii: "0") {
            i += 1
        } else {
            while i < bytes.count, Self.isDigit(bytes[i]) { i += 1 }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            integral = false
            i += 1
            guard i < bytes.count, Self.isDigit(bytes[i]) else { throw malformed("a fraction needs digits") }
            while i < bytes.count, Self.isDigit(bytes[i]) { i += 1 }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            integral = false
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard i < bytes.count, Self.isDigit(bytes[i]) else { throw malformed("an exponent needs digits") }
            while i < bytes.count, Self.isDigit(bytes[i]) { i += 1 }
        }
        let text = String(decoding: bytes[start..<i], as: UTF8.self)
        if integral, let v = Int64(text) { return .integer(v) }
        guard let d = Double(text), d.isFinite else { throw malformed("a number out of range") }
        return .number(d)
    }

    private static func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

    private mutating func string(path: String) throws(Failure) -> String {
        i += 1  // the opening quote
        var out: [UInt8] = []
        var runStart = i
        while true {
            guard i < bytes.count else { throw malformed("unterminated string") }
            let b = bytes[i]
            if b == UInt8(ascii: "\"") {
                out.append(contentsOf: bytes[runStart..<i])
                i += 1
                break
            }
            if b < 0x20 { throw malformed("a raw control character in a string") }
            if b != UInt8(ascii: "\\") {
                i += 1
                continue
            }
            out.append(contentsOf: bytes[runStart..<i])
            i += 1
            guard i < bytes.count else { throw malformed("unterminated escape") }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800...0xDBFF).contains(scalar) {
                    guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                        throw malformed("a lone surrogate in a \\u escape")
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw malformed("a lone surrogate in a \\u escape") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    throw malformed("a lone surrogate in a \\u escape")
                }
                if scalar == 0 {
                    throw Failure(
                        code: "invalid_character",
                        message: "\(Self.printable(path)) contains the NUL character (\\u0000), which PostgreSQL cannot store; remove it")
                }
                out.append(contentsOf: Array(String(Character(Unicode.Scalar(scalar)!)).utf8))
            default: throw malformed("an unknown escape")
            }
            runStart = i
        }
        guard let s = String(validating: out, as: UTF8.self) else {
            throw Failure(code: "invalid_encoding", message: "\(Self.printable(path)) is not valid UTF-8: send UTF-8 JSON")
        }
        return s
    }

    private mutating func hex4() throws(Failure) -> UInt32 {
        guard i + 4 <= bytes.count else { throw malformed("a short \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[i]
            let d: UInt32
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(b - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(b - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(b - UInt8(ascii: "A") + 10)
            default: throw malformed("a bad \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    /// A path or key for a message: control characters shown as `?`, at most 64 characters.
    static func printable(_ text: String) -> String {
        "\"" + String(text.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? "?" : Character($0) }.prefix(64)) + "\""
    }
}

extension JSONValue {
    /// Compact JSON text, written in one pass (keys sorted, so equal values give equal text).
    public var text: String {
        var out = ""
        write(to: &out)
        return out
    }

    public func write(to out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let v): out += v ? "true" : "false"
        case .integer(let v): out += String(v)
        case .number(let v): out += "\(v)"
        case .string(let s): JSONValue.writeString(s, to: &out)
        case .array(let items):
            out += "["
            for (n, item) in items.enumerated() {
                if n > 0 { out += "," }
                item.write(to: &out)
            }
            out += "]"
        case .object(let fields):
            out += "{"
            for (n, key) in fields.keys.sorted().enumerated() {
                if n > 0 { out += "," }
                JSONValue.writeString(key, to: &out)
                out += ":"
                fields[key]!.write(to: &out)
            }
            out += "}"
        }
    }

    /// Appends `s` as a JSON string literal: quotes, backslashes and control characters (and
    /// DEL) escaped, everything else as is. No Foundation: a string with nothing to escape (an
    /// identifier, a run id) is one scan of its bytes and one append.
    public static func writeString(_ s: String, to out: inout String) {
        out += "\""
        if !s.utf8.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C || $0 == 0x7F }) {
            out += s
            out += "\""
            return
        }
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}

/// Reads a request body as the API does (for `regent bench json`): true when it is accepted.
public func readRequestBodyForBenchmark(_ bytes: [UInt8]) -> Bool { (try? StrictJSON.parse(bytes)) != nil }

/// Any JSON document; integers stay integers. Read by ``StrictJSON``, written by its `text`.
public enum JSONValue: Hashable, Sendable {
    case null, bool(Bool), integer(Int64), number(Double), string(String), array([JSONValue]), object([String: JSONValue])
}
