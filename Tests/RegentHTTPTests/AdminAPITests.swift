import Foundation
import Hummingbird
import NIOCore
import HummingbirdTesting
import PostgresClient
@testable import RegentCore
@testable import RegentHTTP
import RegentTestSupport
import Testing

func parse(_ buffer: ByteBuffer) throws -> Any {
    try JSONSerialization.jsonObject(with: Data(String(buffer: buffer).utf8))
}

func object(_ buffer: ByteBuffer) throws -> [String: Any] {
    try #require(try parse(buffer) as? [String: Any])
}

@Suite("Admin HTTP API against a real server", .serialized)
struct AdminAPITests {
    /// A node configuration with short intervals, so tests see elections quickly.
    static func fastNode(_ database: ConnectionConfiguration, name: String) -> NodeConfiguration {
        var c = NodeConfiguration(database: database)
        c.nodeName = name
        c.heartbeatInterval = .milliseconds(200)
        c.staleAfter = .seconds(1)
        c.leaseWindow = .seconds(1)
        return c
    }

    /// A booted database with one running node (the leader) and its API.
    func withNode(_ body: (RegentNode, AdminAPI) async throws -> Void) async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let node = RegentNode(configuration: Self.fastNode(config, name: "api-node"))
        let task = Task { try await node.run() }
        #expect(await eventually { await node.isLeader })
        let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
        // The leader migrates the module schemas right after its election.
        #expect(await eventually {
            try await pool.withConnection { conn in
                try await MigrationRunner(appliedBy: "").status(on: conn, schemas: ["engine", "workflow", "auth"]).allSatisfy { $0.isCurrent }
            }
        })
        try await body(node, AdminAPI(pool: pool, node: node, staleAfter: .seconds(1)))
        await pool.shutdown()
        await node.shutdown()
        _ = try? await task.value
    }

    @Test func healthReadinessAndLeaderStatus() async throws {
        try await withNode { node, api in
            let app = Application(router: api.router())
            try await app.test(.router) { client in
                try await client.execute(uri: "/healthz", method: .get) { response in
                    #expect(response.status == .ok)
                    let doc = try object(response.body)
                    #expect(doc["status"] as? String == "ok")
                }
                try await client.execute(uri: "/readyz", method: .get) { response in
                    #expect(response.status == .ok)
                }
                try await client.execute(uri: "/v1/leader", method: .get) { response in
                    #expect(response.status == .ok)
                    #expect(response.headers[.contentType] == "application/json")
                    let doc = try object(response.body)
                    #expect(doc["self_is_leader"] as? Bool == true)
                    let leader = try #require(doc["leader"] as? [String: Any])
                    #expect(leader["instance_id"] as? String == node.instanceID.uuidString.lowercased())
                    #expect(leader["node_name"] as? String == "api-node")
                    #expect((doc["term"] as? Int ?? 0) >= 1)
                }
                try await client.execute(uri: "/v1/instances", method: .get) { response in
                    let list = try #require(try parse(response.body) as? [[String: Any]])
                    #expect(list.count == 1)
                }
                try await client.execute(uri: "/v1/modules", method: .get) { response in
                    let list = try #require(try parse(response.body) as? [[String: Any]])
                    #expect(Set(list.compactMap { $0["name"] as? String }) == ["engine", "workflow", "auth"])
                }
                try await client.execute(uri: "/v1/audit?limit=5", method: .get) { response in
                    let items = try #require(try object(response.body)["items"] as? [[String: Any]])
                    #expect(items.first?["action"] as? String == "leader.elected")
                }
            }
        }
    }

    @Test func readinessIsUnavailableWithTheReasonWhenASchemaIsBehind() async throws {
        try await withNode { _, api in
            try await api.pool.query("DELETE FROM engine.migrations WHERE schema_name = 'workflow' AND version = 2")
            let app = Application(router: api.router())
            try await app.test(.router) { client in
                try await client.execute(uri: "/readyz", method: .get) { response in
                    #expect(response.status == .serviceUnavailable)
                    let error = try #require(try object(response.body)["error"] as? [String: Any])
                    #expect(error["code"] as? String == "schema_not_current")
                    #expect((error["message"] as? String)?.contains("workflow at 1 of 2") == true)
                }
            }
        }
    }

    @Test func leaderStatusOverARealSocket() async throws {
        try await withNode { node, api in
            let app = Application(router: api.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
            try await app.test(.live) { client in
                try await client.execute(uri: "/v1/leader", method: .get) { response in
                    #expect(response.status == .ok)
                    let doc = try object(response.body)
                    #expect(doc["self_is_leader"] as? Bool == true)
                    #expect((doc["leader"] as? [String: Any])?["instance_id"] as? String == node.instanceID.uuidString.lowercased())
                }
            }
        }
    }

    @Test func badRequestsGetJSONErrorsAndChangeNothing() async throws {
        try await withNode { _, api in
            let app = Application(router: api.router())
            try await app.test(.router) { client in
                for uri in ["/v1/audit?limit=0", "/v1/audit?limit=abc", "/v1/audit?after=-1"] {
                    try await client.execute(uri: uri, method: .get) { response in
                        #expect(response.status == .badRequest)
                        let error = try #require(try object(response.body)["error"] as? [String: Any])
                        #expect((error["message"] as? String)?.isEmpty == false)
                    }
                }
                try await client.execute(uri: "/no/such/route", method: .get) { response in
                    #expect(response.status == .notFound)
                    let error = try #require(try object(response.body)["error"] as? [String: Any])
                    #expect(error["code"] as? String == "not_found")
                }
            }
        }
    }

    @Test func resignThroughTheAPIHandsOver() async throws {
        try await withNode { node, api in
            // A second node to take over.
            let standby = RegentNode(configuration: Self.fastNode(node.configuration.database, name: "standby"))
            let task = Task { try await standby.run() }
            #expect(await eventually { await standby.membershipService != nil })
            let app = Application(router: api.router())
            try await app.test(.router) { client in
                try await client.execute(uri: "/v1/leader/resign", method: .post) { response in
                    #expect(response.status == .accepted)
                }
            }
            #expect(await eventually { await standby.isLeader })
            // Now the first node is a follower: resigning again is a conflict naming the leader.
            try await app.test(.router) { client in
                try await client.execute(uri: "/v1/leader/resign", method: .post) { response in
                    #expect(response.status == .conflict)
                    let error = try #require(try object(response.body)["error"] as? [String: Any])
                    #expect(error["code"] as? String == "not_leader")
                    #expect((error["message"] as? String)?.contains("standby") == true)
                }
            }
            await standby.shutdown()
            _ = try? await task.value
        }
    }
}
