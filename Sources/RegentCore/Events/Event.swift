import Foundation
import PostgresClient

/// One event of the bus: a row of `engine.events`.
public struct Event: Sendable, Hashable, Codable {
    public let id: Int64
    public let topic: String
    /// The payload, a JSON object, as text.
    public let payload: String
    public let publisher: UUID?
    public let publishedAt: Date?

    public init(id: Int64, topic: String, payload: String, publisher: UUID?, publishedAt: Date?) {
        self.id = id
        self.topic = topic
        self.payload = payload
        self.publisher = publisher
        self.publishedAt = publishedAt
    }

    enum CodingKeys: String, CodingKey {
        case id, topic, payload, publisher, publishedAt = "published_at"
    }
}

/// A validated topic name: 1-200 characters of letters, digits and `_ . : / -`.
public struct EventTopic: Sendable, Hashable, CustomStringConvertible {
    public let name: String
    public init(_ name: String) throws(RegentError) {
        let ok = (1...200).contains(name.utf8.count)
            && name.unicodeScalars.allSatisfy { s in
                (s.value >= 0x30 && s.value <= 0x39) || (s.value >= 0x41 && s.value <= 0x5a) || (s.value >= 0x61 && s.value <= 0x7a)
                    || "_.:/-".unicodeScalars.contains(s)
            }
        guard ok else {
            throw RegentError(
                .invalidInput, "invalid topic \(quoted(name)): use 1-200 letters, digits or _ . : / - (no spaces or control characters)")
        }
        self.name = name
    }
    public var description: String { name }
}

/// A validated event payload: a JSON object of at most ``maxBytes``.
public struct EventPayload: Sendable, Hashable {
    public static let maxBytes = 1 << 20
    public let json: String

    public init(json: String) throws(RegentError) {
        let data = Data(json.utf8)
        guard data.count <= Self.maxBytes else {
            throw RegentError(.invalidInput, "event payload is \(data.count) bytes; the limit is \(Self.maxBytes) bytes")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]), object is [String: Any] else {
            throw RegentError(.invalidInput, "event payload must be a JSON object, e.g. {\"key\": \"value\"}")
        }
        self.json = json
    }

    /// For payloads this process built itself (engine events, benchmarks): only the size
    /// and the leading brace are checked here; the outbox's CHECK constraint still refuses
    /// anything but a JSON object, and the publishing transaction fails whole.
    public init(trusted json: String) throws(RegentError) {
        guard json.utf8.count <= Self.maxBytes, json.utf8.first == UInt8(ascii: "{") else {
            throw RegentError(.invalidInput, "event payload must be a JSON object of at most \(Self.maxBytes) bytes")
        }
        self.json = json
    }
}

