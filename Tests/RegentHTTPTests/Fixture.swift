import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import PostgresClient
import Prometheus
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

/// The `error` object of a JSON error answer (nil for any other body; records no issue).
func errorObject(_ response: TestResponse) -> [String: Any]? {
    ((try? JSONSerialization.jsonObject(with: Data(String(buffer: response.body).utf8))) as? [String: Any])?["error"] as? [String: Any]
}

func errorCode(_ response: TestResponse) -> String? { errorObject(response)?["code"] as? String }

func errorMessage(_ response: TestResponse) -> String? { errorObject(response)?["message"] as? String }

/// A booted database with one running node (the leader), its API, and a token of each role.
struct Fixture {
    let node: RegentNode
    let api: AdminAPI
    let tokens: [TokenRole: String]
    var database: ConnectionConfiguration { node.configuration.database }
    var admin: String { tokens[.admin]! }
    var worker: String { tokens[.worker]! }
    var reader: String { tokens[.read]! }

    static func with(
        metricsRequireToken: Bool = false, authFailureLimit: Int = 50, vaultKeyring: VaultKeyring? = nil, _ body: (Fixture) async throws -> Void
    ) async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        // The schemas are migrated before the node starts, as `regent migrate` does ahead of a
        // rollout: these tests are about the API, and a leader migrating four schemas from nothing
        // under a 1 s test lease, on two cores running every suite at once, could lose its lease
        // round after round for minutes (CI once timed out here after 120 s). The leader's own
        // module migrations are tested in MigrationTests and ProcessTests.
        _ = try await PostgresConnection.withConnection(config) {
            try await MigrationRunner(appliedBy: "test").migrate(on: $0, schemas: ["engine", "workflow", "auth", "vault"])
        }
        let registry = PrometheusCollectorRegistry()
        let node = RegentNode(configuration: fastNode(config, name: "api-node"), metrics: AdminAPI.nodeMetrics(registry: registry))
        let task = Task { try await node.run() }
        // Generous: under the parallel tests a 1 s test lease lapses often, and the node is elected again.
        #expect(await eventually(timeout: .seconds(45)) { await node.isLeader })
        let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 3))
        // Migrated above, so current at once; still checked as the node sees them (its leader finds
        // nothing to apply, and a node newer than its schemas would say so here).
        #expect(await eventually(timeout: .seconds(120)) {
            try await pool.withConnection { conn in
                try await MigrationRunner(appliedBy: "").status(on: conn, schemas: ["engine", "workflow", "auth", "vault"]).allSatisfy { $0.isCurrent }
            }
        })
        // Events published from here on come after the bus's starting point: none of them can
        // be taken for one from before it (which the bus would hand out late, by design).
        #expect(await eventually { await node.eventBus != nil })
        await node.eventBus?.waitUntilListening()
        var tokens: [TokenRole: String] = [:]
        for role in TokenRole.allCases {
            tokens[role] = try await pool.withConnection {
                try await TokenStore().create(name: "test-\(role.rawValue)", role: role, actor: "test", on: $0).1
            }
        }
        let api = AdminAPI(pool: pool, node: node, registry: registry, options: .init(staleAfter: .seconds(1), metricsRequireToken: metricsRequireToken, authFailureLimit: authFailureLimit, vaultKeyring: vaultKeyring))
        try await body(Fixture(node: node, api: api, tokens: tokens))
        await pool.shutdown()
        await node.shutdown()
        _ = try? await task.value
    }

    func app() -> some ApplicationProtocol { Application(router: api.router()) }
}

extension TestClientProtocol {
    /// One request; `json` is sent as an application/json body.
    @discardableResult
    func call(
        _ method: HTTPRequest.Method, _ uri: String, token: String?, json: String? = nil, contentType: String = "application/json"
    ) async throws -> TestResponse {
        var headers = HTTPFields()
        if let token { headers[.authorization] = "Bearer \(token)" }
        if json != nil { headers[.contentType] = contentType }
        return try await executeRequest(uri: uri, method: method, headers: headers, body: json.map { ByteBuffer(string: $0) })
    }
}

extension TestClientProtocol {
    /// `GET /v1/leader` until the answer says this node leads (at most 10 s), and that answer.
    /// The fixture's node leads, but on a loaded machine its 1 s test lease can lapse: it steps
    /// down for a moment and is elected again, and a single request could land in between.
    func leaderOnceLeading(token: String) async throws -> (TestResponse, [String: Any]) {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            let response = try await call(.get, "/v1/leader", token: token)
            let doc = try object(response.body)
            if doc["self_is_leader"] as? Bool == true || ContinuousClock.now >= deadline { return (response, doc) }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// Counts rows of a table (for "nothing changed" checks).
/// Events other than the node's own lifecycle (its elections, resignations, joins, sweeps):
/// what requests can have published. A loaded machine can make a test node step down and be
/// elected again in the middle of a test, which publishes.
func requestEvents(_ pool: ConnectionPool) async throws -> Int64 {
    try await pool.query("""
        SELECT count(*) AS n FROM engine.events
        WHERE topic NOT IN ('leader.elected', 'leader.resigned', 'instance.joined', 'instance.left', 'instance.swept', 'migration.applied')
        """).single().decode("n")
}

func count(_ pool: ConnectionPool, _ table: String) async throws -> Int64 {
    try await pool.query(PostgresQuery(unsafeSQL: "SELECT count(*) AS n FROM \(table)")).single().decode("n")
}
