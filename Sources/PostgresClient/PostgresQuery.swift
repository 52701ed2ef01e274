/// A SQL statement whose interpolated values are always sent as bound parameters.
///
/// `"SELECT * FROM engine.instances WHERE instance_id = \(id)"` becomes
/// `SELECT * FROM engine.instances WHERE instance_id = $1` with `id` bound.
/// Text can be spliced in only through `\(identifier:)` with a validated
/// ``SQLIdentifier``, so an injection cannot be written by accident.
public struct PostgresQuery: Sendable, ExpressibleByStringInterpolation, CustomStringConvertible {
    public internal(set) var sql: String
    public internal(set) var binds: [PostgresBind]
    /// Prepare once per connection and execute by name from then on: see ``prepared()``.
    public internal(set) var reusesPlan = false

    public init(unsafeSQL sql: String, binds: [PostgresBind] = []) {
        self.sql = sql
        self.binds = binds
    }

    public init(stringLiteral value: String) {
        self.sql = value
        self.binds = []
    }

    public init(stringInterpolation: StringInterpolation) {
        self.sql = stringInterpolation.sql
        self.binds = stringInterpolation.binds
    }

    public struct StringInterpolation: StringInterpolationProtocol {
        var sql = ""
        var binds: [PostgresBind] = []

        public init(literalCapacity: Int, interpolationCount: Int) {
            sql.reserveCapacity(literalCapacity + interpolationCount * 3)
        }

        public mutating func appendLiteral(_ literal: String) { sql += literal }

        public mutating func appendInterpolation(_ value: some PostgresEncodable) {
            binds.append(value.postgresBind)
            sql += "$\(binds.count)"
        }

        public mutating func appendInterpolation(_ value: (some PostgresEncodable)?) {
            binds.append(value?.postgresBind ?? .null)
            sql += "$\(binds.count)"
        }

        /// Splices a validated identifier, double-quoted.
        public mutating func appendInterpolation(identifier: SQLIdentifier) {
            sql += identifier.quoted
        }
    }

    /// The same statement, prepared on each connection the first time it runs there and
    /// executed by name afterwards: the server parses and plans it once per session instead
    /// of on every call (for an INSERT, most of the server's work). For hot statements of a
    /// fixed text; the text is the cache key, so it must not vary with the values (it
    /// cannot: they are bound). Needs a session of its own (a direct connection or a
    /// session pooler), as the rest of Regent does.
    public func prepared() -> PostgresQuery {
        var copy = self
        copy.reusesPlan = true
        return copy
    }

    public var description: String { sql }
}

/// One bound parameter: absent, text, or raw bytes (sent in binary format as bytea).
public enum PostgresBind: Sendable, Hashable {
    case null
    case text(String)
    case bytes([UInt8])
}

/// A SQL identifier (schema, table, channel name) that was validated once:
/// 1 to 63 characters, lowercase ASCII letters, digits and underscores,
/// not starting with a digit.
public struct SQLIdentifier: Sendable, Hashable, CustomStringConvertible {
    public let name: String

    public init(_ name: String) throws(PostgresError) {
        guard Self.isValid(name) else {
            throw PostgresError(
                .invalidConfiguration,
                "invalid identifier \(Self.printable(name)): use 1-63 lowercase letters, digits or underscores, starting with a letter or underscore")
        }
        self.name = name
    }

    public static func isValid(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...63).contains(bytes.count) else { return false }
        for (i, b) in bytes.enumerated() {
            let letter = (b >= 97 && b <= 122) || b == 95
            let digit = b >= 48 && b <= 57
            if i == 0 ? !letter : !(letter || digit) { return false }
        }
        return true
    }

    /// The name in double quotes, ready to splice into SQL.
    public var quoted: String { "\"\(name)\"" }
    public var description: String { name }

    /// Quotes a user-supplied string for an error message, escaping control characters.
    public static func printable(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars.prefix(80) {
            if scalar.value < 0x20 || scalar.value == 0x7f {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else if scalar == "\"" {
                out += "\\\""
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        if s.unicodeScalars.count > 80 { out += "…" }
        return out + "\""
    }
}
