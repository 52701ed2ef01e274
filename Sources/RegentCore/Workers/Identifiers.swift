/// What kind of name an ``Identifier`` is (for error messages).
public protocol IdentifierKind: Sendable {
    static var label: String { get }
}

/// A validated name from the worker and lease API: 1-128 letters, digits or `_ . : -`.
/// Validated once, at the edge; a value of this type is always safe to store.
public struct Identifier<Kind: IdentifierKind>: Sendable, Hashable, Comparable, CustomStringConvertible, Codable {
    public let value: String

    public init(_ value: String) throws(RegentError) {
        guard Self.isValid(value) else {
            throw RegentError(
                .invalidInput, "invalid \(Kind.label) \(quoted(value)): use 1-128 letters, digits or _ . : -")
        }
        self.value = value
    }

    public static func isValid(_ value: String) -> Bool {
        (1...128).contains(value.utf8.count)
            && value.utf8.allSatisfy { b in
                (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b == 95 || b == 46 || b == 58 || b == 45
            }
    }

    public var description: String { value }
    public static func < (a: Self, b: Self) -> Bool { a.value < b.value }

    public init(from decoder: any Decoder) throws {
        let raw = try decoder.singleValueContainer().decode(String.self)
        do { try self.init(raw) } catch { throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.message)) }
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(value)
    }
}

public enum NamespaceKind: IdentifierKind { public static let label = "namespace" }
public enum WorkerInstanceKind: IdentifierKind { public static let label = "worker instance id" }
public enum WorkerKind: IdentifierKind { public static let label = "worker id" }
public enum LaneKind: IdentifierKind { public static let label = "lane" }
public enum CapabilityKind: IdentifierKind { public static let label = "capability" }

public typealias Namespace = Identifier<NamespaceKind>
public typealias WorkerInstanceID = Identifier<WorkerInstanceKind>
public typealias WorkerID = Identifier<WorkerKind>
public typealias Lane = Identifier<LaneKind>
public typealias Capability = Identifier<CapabilityKind>

/// A worker's fence: the epoch of the lease it holds.
public struct LeaseEpoch: Sendable, Hashable, Codable, CustomStringConvertible {
    public let value: Int64
    public init(_ value: Int64) { self.value = value }
    public var description: String { String(value) }
}

/// A reason given when marking a worker dead: at most 256 bytes, no control characters.
public struct DeathReason: Sendable, Hashable {
    public let text: String
    public init(_ text: String) throws(RegentError) {
        guard text.utf8.count <= 256 else {
            throw RegentError(.invalidInput, "reason is \(text.utf8.count) bytes; at most 256 are allowed")
        }
        guard !text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f || (0x80...0x9f).contains($0.value) }) else {
            throw RegentError(.invalidInput, "reason contains control characters: \(quoted(text))")
        }
        self.text = text
    }
}
