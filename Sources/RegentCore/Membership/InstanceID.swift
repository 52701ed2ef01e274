import Foundation
import PostgresClient

/// One process start of a node: the key of its `engine.instances` row, new at every start.
public struct InstanceID: Sendable, Hashable, Codable, CustomStringConvertible, PostgresEncodable, PostgresDecodable {
    public let uuid: UUID

    public init(_ uuid: UUID = UUID()) { self.uuid = uuid }

    /// The form UUIDs print in (upper case), as logs always showed it.
    public var description: String { uuid.uuidString }
    public var uuidString: String { uuid.uuidString }

    public init(from decoder: any Decoder) throws { uuid = try decoder.singleValueContainer().decode(UUID.self) }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(uuid)
    }

    public var postgresBind: PostgresBind { uuid.postgresBind }
    public init(postgresText text: String, typeOID: UInt32) throws(PostgresError) {
        uuid = try UUID(postgresText: text, typeOID: typeOID)
    }
}
