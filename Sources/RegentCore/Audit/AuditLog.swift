import Foundation
import PostgresClient

/// Who did something, as written in `engine.audit.actor`.
public enum AuditActor: Sendable, Hashable, CustomStringConvertible {
    /// A node (process start), e.g. the leader's duties.
    case instance(InstanceID)
    /// A request authenticated with the named token.
    case token(String)
    /// An unauthenticated request from this client address.
    case http(address: String)
    /// Anything else that names itself (an operator's CLI run, a drill, a test).
    case named(String)

    public var description: String {
        switch self {
        case .instance(let id): "instance:\(id.uuid.lowercasedText)"
        case .token(let name): "token:\(name)"
        case .http(let address): "http:\(address)"
        case .named(let name): name
        }
    }
}

/// `engine.audit`: the named statements that read it and write single rows to it. Writes that
/// must land in the same statement as a change (an election, a sweep) keep their INSERT in
/// that statement, in the core, next to the change.
public enum AuditLog {
    public struct Row: Sendable {
        public let id: Int64
        public let at: Date
        public let actor: String
        public let action: String
        public let term: Term?
        public let instanceID: InstanceID?
        /// The `detail` jsonb as PostgreSQL writes it.
        public let detailJSON: String
    }

    static func page(after: Int64, limit: Int) -> PostgresQuery {
        """
        SELECT id, at, actor, action, term, instance_id, detail::text AS detail FROM engine.audit
        WHERE id > \(after) ORDER BY id LIMIT \(limit)
        """
    }

    static func page(before: Int64, after: Int64, limit: Int) -> PostgresQuery {
        """
        SELECT id, at, actor, action, term, instance_id, detail::text AS detail FROM engine.audit
        WHERE id < \(before) AND id > \(after) ORDER BY id DESC LIMIT \(limit)
        """
    }

    static func insert(actor: AuditActor, action: String, detailJSON: String) -> PostgresQuery {
        "INSERT INTO engine.audit (actor, action, detail) VALUES (\(actor.description), \(action), \(detailJSON)::jsonb)"
    }

    /// An audit row's (or event's) detail: strings, booleans, integers, numbers and string lists as
    /// themselves, anything else (a nil) as null.
    static func detail(_ fields: [String: Any]) -> String {
        var object: [String: JSONValue] = [:]
        for (k, v) in fields {
            switch v {
            case let s as String: object[k] = .string(s)
            case let b as Bool: object[k] = .bool(b)
            case let i as Int: object[k] = .integer(Int64(i))
            case let i as Int64: object[k] = .integer(i)
            case let d as Double: object[k] = .number(d)
            case let a as [String]: object[k] = .array(a.map { .string($0) })
            default: object[k] = .null
            }
        }
        return JSONValue.object(object).text
    }

    /// The rows after id `after`, oldest first.
    public static func page(after: Int64, limit: Int, on pool: ConnectionPool) async throws -> [Row] {
        try await pool.query(page(after: after, limit: limit), purpose: "audit: page").map { row in
            Row(
                id: try row.decode("id"), at: try row.decode("at"), actor: try row.decode("actor"), action: try row.decode("action"),
                term: try row.decodeOptional("term"), instanceID: try row.decodeOptional("instance_id"), detailJSON: try row.decode("detail"))
        }
    }

    /// The rows before id `before` (and after id `after`), newest first.
    public static func page(before: Int64, after: Int64 = 0, limit: Int, on pool: ConnectionPool) async throws -> [Row] {
        try await pool.query(page(before: before, after: after, limit: limit), purpose: "audit: page back").map { row in
            Row(
                id: try row.decode("id"), at: try row.decode("at"), actor: try row.decode("actor"), action: try row.decode("action"),
                term: try row.decodeOptional("term"), instanceID: try row.decodeOptional("instance_id"), detailJSON: try row.decode("detail"))
        }
    }

    /// Writes one row; `detail` is a flat object of strings.
    public static func record(_ action: String, actor: AuditActor, detail: [String: String], on pool: ConnectionPool) async throws {
        let json = String(decoding: try JSONSerialization.data(withJSONObject: detail, options: [.sortedKeys]), as: UTF8.self)
        try await pool.query(insert(actor: actor, action: action, detailJSON: json), purpose: "audit: \(action)")
    }
}
