import Foundation
import PostgresClient
import RegentCore

/// Nodes in this process, each with its own connections, against a fresh database.
public struct Cluster {
    public init(config: ConnectionConfiguration) { self.config = config }

    public let config: ConnectionConfiguration
    public var nodes: [RegentNode] = []
    public var tasks: [Task<Void, any Error>] = []

    public static func nodeConfig(_ db: ConnectionConfiguration, name: String) -> NodeConfiguration { fastNode(db, name: name) }

    public mutating func start(_ name: String, database: ConnectionConfiguration? = nil) -> RegentNode {
        let node = RegentNode(configuration: Self.nodeConfig(database ?? config, name: name))
        nodes.append(node)
        tasks.append(Task { try await node.run() })
        return node
    }

    public func leaders() async -> [RegentNode] {
        var out: [RegentNode] = []
        for n in nodes where await n.isLeader { out.append(n) }
        return out
    }

    public func status() async throws -> ClusterStatus {
        return try await PostgresConnection.withConnection(config) { conn in
            return try await ClusterStatus.read(on: conn, staleAfter: .seconds(1))
        }
    }

    public func stopAll() async {
        for n in nodes { await n.shutdown() }
        for t in tasks { _ = try? await t.value }
    }
}
