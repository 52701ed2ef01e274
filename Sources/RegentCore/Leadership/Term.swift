import PostgresClient

/// A leadership term: the number each election records in `engine.leadership`, strictly
/// increasing. Every leader-only write carries the term it was made under.
public struct Term: Sendable, Hashable, Comparable, Codable, CustomStringConvertible, ExpressibleByIntegerLiteral,
    PostgresEncodable, PostgresDecodable
{
    public let value: Int64

    public init(_ value: Int64) { self.value = value }
    public init(integerLiteral value: Int64) { self.value = value }

    /// The term the next election records.
    public var next: Term { Term(value + 1) }
    public var description: String { String(value) }
    public static func < (a: Term, b: Term) -> Bool { a.value < b.value }
    /// The term `n` elections after this one.
    public static func + (term: Term, n: Int64) -> Term { Term(term.value + n) }

    public init(from decoder: any Decoder) throws { value = try decoder.singleValueContainer().decode(Int64.self) }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(value)
    }

    public var postgresBind: PostgresBind { value.postgresBind }
    public init(postgresText text: String, typeOID: UInt32) throws(PostgresError) {
        value = try Int64(postgresText: text, typeOID: typeOID)
    }
}
