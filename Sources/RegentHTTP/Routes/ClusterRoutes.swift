import Foundation
import Hummingbird
import PostgresClient
import RegentCore

/// What the console reads to draw the cluster: the token's own identity, the cluster with its
/// recent terms (one shared read per second whatever the number of viewers), the schemas and
/// the workers view's snapshot.
extension AdminAPI {
    struct WhoAmI: Encodable {
        let tokenID: String
        let name: String
        let role: String
        let namespace: String?
        let lanes: [String]?
        /// The node answering (its instance id and name), so a client knows where it is connected.
        let instanceID: String?
        let nodeName: String?
        enum CodingKeys: String, CodingKey {
            case tokenID = "token_id", name, role, namespace, lanes, instanceID = "instance_id", nodeName = "node_name"
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(tokenID, forKey: .tokenID)
            try c.encode(name, forKey: .name)
            try c.encode(role, forKey: .role)
            try c.encode(namespace, forKey: .namespace)  // nulls: an unscoped token, a process without a node
            try c.encode(lanes, forKey: .lanes)
            try c.encode(instanceID, forKey: .instanceID)
            try c.encode(nodeName, forKey: .nodeName)
        }
    }

    func whoami(_ context: RegentRequestContext) throws -> Response {
        guard let identity = context.identity else { throw APIError.unauthorized }
        return try json(WhoAmI(
            tokenID: identity.tokenID, name: identity.name, role: identity.role.rawValue,
            namespace: identity.scope?.namespace.value, lanes: identity.scope?.lanes?.map(\.value),
            instanceID: node.map { $0.instanceID.uuid.lowercasedText }, nodeName: node?.configuration.nodeName))
    }

    /// `GET /v1/cluster`: the leader document, every instance and the recent terms.
    struct ClusterDocument: Sendable, Encodable {
        let status: ClusterStatus
        let history: LeadershipHistory
        let selfInstanceID: String?
        let readAt: Date
        enum Keys: String, CodingKey { case terms, selfInstanceID = "self_instance_id", readAt = "read_at", maxAgeMs = "max_age_ms" }
        func encode(to encoder: any Encoder) throws {
            try status.encode(to: encoder)
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(history.terms, forKey: .terms)
            try c.encode(selfInstanceID, forKey: .selfInstanceID)
            try c.encode(readAt, forKey: .readAt)
            try c.encode(Int(AdminAPI.sharedReadMaxAge.milliseconds), forKey: .maxAgeMs)
        }
    }

    /// How old a shared read (cluster, queues) may be when served.
    static let sharedReadMaxAge: Duration = .seconds(1)

    static func readCluster(pool: ConnectionPool, staleAfter: Duration, node: RegentNode?) async throws -> ClusterDocument {
        try await pool.withConnection { conn in
            let status = try await ClusterStatus.read(on: conn, staleAfter: staleAfter)
            let history = try await LeadershipHistory.read(limit: 50, on: conn)
            return ClusterDocument(
                status: status, history: history, selfInstanceID: node.map { $0.instanceID.uuid.lowercasedText }, readAt: Date())
        }
    }

    func cluster() async throws -> Response {
        try json(try await sharedCluster.value())
    }

    func queues() async throws -> Response {
        try json(try await sharedQueues.value())
    }

    /// `GET /v1/migrations`: each enabled module's schema, what is applied, what this node's
    /// binary knows, the compatibility floor and a held contract migration.
    struct SchemaDocument: Encodable {
        let schema: String
        let appliedVersion: Int
        let knownVersion: Int
        let floor: Int
        let heldContract: Int?
        let current: Bool
        enum CodingKeys: String, CodingKey {
            case schema, appliedVersion = "applied_version", knownVersion = "known_version", floor, heldContract = "held_contract", current
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(schema, forKey: .schema)
            try c.encode(appliedVersion, forKey: .appliedVersion)
            try c.encode(knownVersion, forKey: .knownVersion)
            try c.encode(floor, forKey: .floor)
            try c.encode(heldContract, forKey: .heldContract)  // null: none held
            try c.encode(current, forKey: .current)
        }
    }

    func migrations() async throws -> Response {
        return try json(["schemas": try await schemaStatuses().map {
            SchemaDocument(schema: $0.schema, appliedVersion: $0.appliedVersion, knownVersion: $0.knownVersion, floor: $0.floor,
                           heldContract: $0.heldContract, current: $0.isCurrent)
        }])
    }

    /// The workers view's snapshot: the first 500 workers, the 200 soonest-expiring leases and
    /// the last 50 reclaim decisions, in one read shared by every stream that asks.
    struct WorkersSnapshot: Sendable, Encodable {
        let workers: [WorkerRecord]
        let leases: [CurrentLease]
        let decisions: [LeaseDecision]
        static func read(on conn: PostgresConnection) async throws -> WorkersSnapshot {
            WorkersSnapshot(
                workers: try await WorkerRegistry().list(namespace: nil, after: nil, limit: 500, on: conn),
                leases: try await LeaseStore().listCurrentLeases(limit: 200, on: conn),
                decisions: try await LeaseStore().listDecisions(limit: 50, on: conn))
        }
    }
}
