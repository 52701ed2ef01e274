import Foundation
import Hummingbird
import Logging
import PostgresClient
import RegentCore

/// The admin HTTP API of a node (read routes, health, readiness and the resign drill).
///
/// Every answer is JSON; errors are `{"error": {"code": "...", "message": "..."}}` with the
/// right status. Leader status is read from the database, so every node answers the same.
/// Not yet here (issue 6): token auth, metrics, worker endpoints, SSE, the OpenAPI document.
public struct AdminAPI: Sendable {
    public let pool: ConnectionPool
    public let node: RegentNode?
    public let staleAfter: Duration

    public init(pool: ConnectionPool, node: RegentNode?, staleAfter: Duration = .seconds(10)) {
        self.pool = pool
        self.node = node
        self.staleAfter = staleAfter
    }

    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: JSONErrorMiddleware())
        router.get("/healthz") { _, _ in try json(["status": "ok"]) }
        router.get("/readyz") { _, _ in try await readiness() }
        router.get("/v1/leader") { _, _ in try await leader() }
        router.get("/v1/instances") { _, _ in
            try json(try await pool.withConnection { try await ClusterStatus.read(on: $0, staleAfter: staleAfter) }.instances)
        }
        router.get("/v1/modules") { _, _ in
            try json(try await pool.withConnection { try await ModuleRegistry().list(on: $0) })
        }
        router.get("/v1/audit") { request, _ in try await audit(request) }
        router.post("/v1/leader/resign") { _, _ in try await resign() }
        return router
    }

    /// Serves the API on `host:port` until the calling task is cancelled.
    public func serve(host: String, port: Int) async throws {
        try await application(host: host, port: port).runService(gracefulShutdownSignals: [])
    }

    /// An application serving the API on `host:port`.
    public func application(host: String, port: Int, logger: Logger = Logger(label: "regent.http")) -> some ApplicationProtocol {
        Application(router: router(), configuration: .init(address: .hostname(host, port: port), serverName: "regent"), logger: logger)
    }

    func readiness() async throws -> Response {
        do {
            let schemas = try await pool.withConnection { conn -> [SchemaStatus] in
                let enabled = try await ModuleRegistry().enabledSchemas(on: conn)
                return try await MigrationRunner(appliedBy: "").status(on: conn, schemas: enabled)
            }
            let behind = schemas.filter { !$0.isCurrent }
            guard behind.isEmpty else {
                let list = behind.map { "\($0.schema) at \($0.appliedVersion) of \($0.knownVersion)" }.joined(separator: ", ")
                return try errorResponse(.serviceUnavailable, code: "schema_not_current", message: "schemas not current: \(list)")
            }
            return try json(["ready": true])
        } catch {
            return try errorResponse(.serviceUnavailable, code: "database_unreachable", message: "database not reachable: \(error)")
        }
    }

    struct LeaderDocument: Encodable {
        let status: ClusterStatus
        let selfIsLeader: Bool
        func encode(to encoder: any Encoder) throws {
            try status.encode(to: encoder)
            var c = encoder.container(keyedBy: Key.self)
            try c.encode(selfIsLeader, forKey: .selfIsLeader)
        }
        enum Key: String, CodingKey { case selfIsLeader = "self_is_leader" }
    }

    func leader() async throws -> Response {
        let status = try await pool.withConnection { try await ClusterStatus.read(on: $0, staleAfter: staleAfter) }
        let me = node?.instanceID
        return try json(LeaderDocument(status: status, selfIsLeader: me != nil && status.leader?.instanceID == me))
    }

    struct AuditRow: Encodable {
        let id: Int64
        let at: Date
        let actor: String
        let action: String
        let term: Int64?
        let instanceID: UUID?
        let detail: AnyJSON
        enum CodingKeys: String, CodingKey { case id, at, actor, action, term, instanceID = "instance_id", detail }
    }

    static func auditPage(after: Int64, limit: Int) -> PostgresQuery {
        """
        SELECT id, at, actor, action, term, instance_id, detail::text AS detail FROM engine.audit
        WHERE id > \(after) ORDER BY id LIMIT \(limit)
        """
    }

    func audit(_ request: Request) async throws -> Response {
        let params = request.uri.queryParameters
        let after = try params.get("after").map { text -> Int64 in
            guard let v = Int64(text), v >= 0 else { throw APIError.badRequest("invalid_cursor", "after must be a non-negative integer, got \(SQLIdentifier.printable(String(text)))") }
            return v
        } ?? 0
        let limit = try params.get("limit").map { text -> Int in
            guard let v = Int(text), (1...1000).contains(v) else { throw APIError.badRequest("invalid_limit", "limit must be 1 to 1000, got \(SQLIdentifier.printable(String(text)))") }
            return v
        } ?? 100
        let rows = try await pool.query(Self.auditPage(after: after, limit: limit), purpose: "http: audit page").map { row in
            AuditRow(
                id: try row.decode("id"), at: try row.decode("at"), actor: try row.decode("actor"), action: try row.decode("action"),
                term: try row.decodeOptional("term"), instanceID: try row.decodeOptional("instance_id"),
                detail: AnyJSON(text: try row.decode("detail")))
        }
        return try json(["items": rows])
    }

    func resign() async throws -> Response {
        guard let node else { throw APIError.conflict("not_a_node", "this process runs no node") }
        if await node.resign() { return try json(["resigning": true], status: .accepted) }
        let status = try await pool.withConnection { try await ClusterStatus.read(on: $0, staleAfter: staleAfter) }
        let leaderName = status.leader?.nodeName ?? "none"
        throw APIError.conflict("not_leader", "this node is not the leader; the leader is \(leaderName): send the request there")
    }
}

/// A JSON value kept as its text, encoded as itself (not as a string).
struct AnyJSON: Encodable {
    let text: String
    func encode(to encoder: any Encoder) throws {
        let value = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
        try value.encode(to: encoder)
    }
}

/// Any JSON document, decodable and encodable.
enum JSONValue: Codable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let v = try? c.decode(Bool.self) { self = .bool(v) }
        else if let v = try? c.decode(Double.self) { self = .number(v) }
        else if let v = try? c.decode(String.self) { self = .string(v) }
        else if let v = try? c.decode([JSONValue].self) { self = .array(v) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let v): try c.encode(v)
        case .number(let v): try c.encode(v)
        case .string(let v): try c.encode(v)
        case .array(let v): try c.encode(v)
        case .object(let v): try c.encode(v)
        }
    }
}

/// An API error with its status, machine code and message.
struct APIError: Error {
    let status: HTTPResponse.Status
    let code: String
    let message: String
    static func badRequest(_ code: String, _ message: String) -> APIError { APIError(status: .badRequest, code: code, message: message) }
    static func conflict(_ code: String, _ message: String) -> APIError { APIError(status: .conflict, code: code, message: message) }
}

/// Turns every error into the JSON error document; no internal detail leaks for 5xx.
struct JSONErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            return try errorResponse(error.status, code: error.code, message: error.message)
        } catch let error as RegentError where error.code == .invalidInput {
            return try errorResponse(.badRequest, code: "invalid_input", message: error.description)
        } catch let error as HTTPError {
            let code = error.status == .notFound ? "not_found" : "http_\(error.status.code)"
            let message = error.status == .notFound ? "no route \(request.method) \(request.uri.path)" : (error.body ?? error.status.reasonPhrase)
            return try errorResponse(error.status, code: code, message: message)
        } catch {
            context.logger.error("request failed", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
            return try errorResponse(.internalServerError, code: "internal", message: "internal error; see the node's log")
        }
    }
}

let jsonEncoder: JSONEncoder = {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    e.dateEncodingStrategy = .iso8601
    return e
}()

func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) throws -> Response {
    let data = try jsonEncoder.encode(value)
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

func errorResponse(_ status: HTTPResponse.Status, code: String, message: String) throws -> Response {
    try json(["error": ["code": code, "message": message]], status: status)
}
