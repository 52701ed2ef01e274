import Foundation
import PostgresClient

/// What a token may do. Roles are ordered: admin can do what worker can, worker what read can.
public enum TokenRole: String, Sendable, Codable, CaseIterable, Comparable {
    /// GET routes: status, instances, modules, audit, workers, leases, the event stream.
    case read
    /// Read, plus the worker endpoints and publishing events.
    case worker
    /// Everything: module enable/disable, leader resign.
    case admin

    var rank: Int {
        switch self {
        case .read: 0
        case .worker: 1
        case .admin: 2
        }
    }

    public static func < (a: Self, b: Self) -> Bool { a.rank < b.rank }

    public init(parsing text: String) throws(RegentError) {
        guard let role = TokenRole(rawValue: text) else {
            throw RegentError(.invalidInput, "invalid role \(quoted(text)): use admin, worker or read")
        }
        self = role
    }
}

/// A token as listed (never with its secret).
public struct TokenRecord: Sendable, Hashable, Codable {
    public let tokenID: String
    public let name: String
    public let role: TokenRole
    public let createdAt: Date
    public let createdBy: String
    public let lastUsedAt: Date?
    public let revokedAt: Date?
    public var scope: TokenScope? = nil

    enum CodingKeys: String, CodingKey {
        case tokenID = "token_id", name, role, createdAt = "created_at", createdBy = "created_by"
        case lastUsedAt = "last_used_at", revokedAt = "revoked_at", scope
    }
}

/// Where a scoped worker token may act: one namespace, and optionally only some of its lanes.
/// It registers, claims, enqueues, cancels and starts runs only there (runs it starts put their
/// steps in its namespace); reads are not scoped.
public struct TokenScope: Sendable, Hashable, Codable {
    public let namespace: Namespace
    /// nil: every lane of the namespace.
    public let lanes: [Lane]?

    public init(namespace: Namespace, lanes: [Lane]? = nil) throws(RegentError) {
        if let lanes, lanes.isEmpty || lanes.count > 100 {
            throw RegentError(.invalidInput, "a token's scope names 1 to 100 lanes, got \(lanes.count)")
        }
        self.namespace = namespace
        self.lanes = lanes.map { Array(Set($0)).sorted { $0.value < $1.value } }
    }

    /// Refuses (``RegentError/Code/forbidden``) `namespace` and `lanes` outside the scope, naming what is outside.
    public func check(namespace other: Namespace, lanes used: [Lane] = [], action: String) throws(RegentError) {
        guard other == namespace else {
            throw RegentError(
                .forbidden, "this token is scoped to namespace \(namespace) and may not \(action) in namespace \(other)",
                hint: "use a token scoped to \(other), or an unscoped worker token")
        }
        if let lanes, let outside = used.first(where: { !lanes.contains($0) }) {
            throw RegentError(
                .forbidden, "this token is scoped to lanes \(lanes.map(\.value).joined(separator: ", ")) of \(namespace) and may not \(action) in lane \(outside)",
                hint: "use a token whose scope covers that lane")
        }
    }

    enum CodingKeys: String, CodingKey { case namespace, lanes }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(namespace.value, forKey: .namespace)
        try c.encode(lanes?.map(\.value), forKey: .lanes)
    }
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        namespace = try Namespace(try c.decode(String.self, forKey: .namespace))
        lanes = try c.decodeIfPresent([String].self, forKey: .lanes)?.map { try Lane($0) }
    }
}

/// Who a valid bearer token belongs to.
public struct TokenIdentity: Sendable, Hashable {
    public let tokenID: String
    public let name: String
    public let role: TokenRole
    /// nil: unscoped.
    public var scope: TokenScope? = nil
}

/// API tokens in `auth.tokens`: `rgt_<16 hex id>_<64 hex secret>`. The secret has 256 bits
/// from the system's CSPRNG; only its SHA-256 is stored, and checking compares digests in
/// constant time. Creating and revoking are audited in `engine.audit`.
public struct TokenStore: Sendable {
    public init() {}

    static let prefix = "rgt_"

    /// A token name: 1–63 of letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    public static func validateName(_ name: String) throws(RegentError) {
        let ok = !name.isEmpty && name.utf8.count <= 63 && name.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x5F || c == 0x2D
        } && name.utf8.first.map { $0 != 0x2E && $0 != 0x5F && $0 != 0x2D } == true
        guard ok else {
            throw RegentError(
                .invalidInput, "invalid token name \(quoted(name)): use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        }
    }

    /// Splits a presented token into its id and secret; nil when it is not shaped like one.
    static func parse(_ token: String) -> (id: String, secret: String)? {
        guard token.hasPrefix(prefix) else { return nil }
        let rest = token.utf8.dropFirst(prefix.utf8.count)
        guard rest.count == 16 + 1 + 64, rest.allSatisfy({ isLowerHex($0) || $0 == UInt8(ascii: "_") }) else { return nil }
        let parts = String(decoding: rest, as: UTF8.self).split(separator: "_", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0].utf8.count == 16, parts[1].utf8.count == 64 else { return nil }
        return (String(parts[0]), String(parts[1]))
    }

    static func isLowerHex(_ c: UInt8) -> Bool { (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) }

    static func randomHex(bytes: Int) -> String {
        var rng = SystemRandomNumberGenerator()  // getrandom(2) on Linux: a CSPRNG
        return (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: .min ... .max, using: &rng)) }.joined()
    }

    /// Compares two strings in time that depends only on their lengths.
    public static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var diff: UInt8 = 0
        for i in 0..<x.count { diff |= x[i] ^ y[i] }
        return diff == 0
    }

    // MARK: Statements

    static func insertToken(id: String, name: String, role: TokenRole, secretSHA256: String, actor: String, scope: TokenScope?) -> PostgresQuery {
        """
        INSERT INTO auth.tokens (token_id, name, role, secret_sha256, created_by, scope_namespace, scope_lanes)
        VALUES (\(id), \(name), \(role.rawValue), \(secretSHA256), \(actor), \(scope?.namespace.value)::text, \(scope?.lanes?.map(\.value))::text[])
        RETURNING token_id, name, role, created_at, created_by, last_used_at, revoked_at, scope_namespace, scope_lanes
        """
    }
    /// A token's audit row (`role` only on creation), in the transaction of the change.
    static func audit(_ action: String, actor: String, tokenID: String, name: String, role: TokenRole?) -> PostgresQuery {
        """
        INSERT INTO engine.audit (actor, action, detail)
        VALUES (\(actor), \(action), jsonb_strip_nulls(jsonb_build_object('token_id', \(tokenID)::text, 'name', \(name)::text, 'role', \(role?.rawValue)::text)))
        """
    }
    static func listTokens(includeRevoked: Bool) -> PostgresQuery {
        """
        SELECT token_id, name, role, created_at, created_by, last_used_at, revoked_at, scope_namespace, scope_lanes FROM auth.tokens
        WHERE \(includeRevoked) OR revoked_at IS NULL ORDER BY created_at, token_id
        """
    }
    static func revokeToken(_ nameOrID: String) -> PostgresQuery {
        """
        UPDATE auth.tokens SET revoked_at = now() WHERE revoked_at IS NULL AND (name = \(nameOrID) OR token_id = \(nameOrID))
        RETURNING token_id, name
        """
    }
    /// The token's row, and `last_used_at` set when `presented` is its secret's hash and the
    /// last mark is over a minute old (hot paths stay free of writes). The UPDATE runs though
    /// nothing reads its result: PostgreSQL runs a data-modifying WITH exactly once.
    static func lookUpAndMarkUsed(_ id: String, _ presented: String) -> PostgresQuery {
        let query: PostgresQuery = """
            WITH t AS (
                SELECT token_id, name, role, secret_sha256, scope_namespace, scope_lanes, last_used_at
                FROM auth.tokens WHERE token_id = \(id) AND revoked_at IS NULL
            ), used AS (
                UPDATE auth.tokens u SET last_used_at = now() FROM t
                WHERE u.token_id = t.token_id AND t.secret_sha256 = \(presented)
                  AND (t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute')
                RETURNING u.token_id
            )
            SELECT t.name, t.role, t.secret_sha256, t.scope_namespace, t.scope_lanes FROM t
            """
        return query.prepared()
    }

    /// Creates a token; returns its record and the token text, which exists nowhere else.
    public func create(name: String, role: TokenRole, scope: TokenScope? = nil, actor: String, on conn: PostgresConnection) async throws
        -> (TokenRecord, String)
    {
        try Self.validateName(name)
        if scope != nil, role != .worker {
            throw RegentError(.invalidInput, "only worker tokens can be scoped; \(role.rawValue) tokens act on every namespace")
        }
        let id = Self.randomHex(bytes: 8)
        let secret = Self.randomHex(bytes: 32)
        let row: PostgresRow
        do {
            row = try await conn.withTransaction { tx in
                let row = try await tx.query(
                    Self.insertToken(id: id, name: name, role: role, secretSHA256: SHA256.hex(secret), actor: actor, scope: scope), purpose: "tokens: create"
                ).single()
                try await tx.query(Self.audit("token.created", actor: actor, tokenID: id, name: name, role: role), purpose: "tokens: audit creation")
                return row
            }
        } catch let error as PostgresError where error.sqlState == "23505" {
            throw RegentError(.invalidInput, "a live token named \(quoted(name)) already exists", hint: "revoke it first or pick another name")
        }
        return (try Self.decode(row), "\(Self.prefix)\(id)_\(secret)")
    }

    public func list(includeRevoked: Bool = false, on conn: PostgresConnection) async throws -> [TokenRecord] {
        try await conn.query(Self.listTokens(includeRevoked: includeRevoked), purpose: "tokens: list").map(Self.decode)
    }

    /// Revokes the live token with this name or token id; false when there is none.
    public func revoke(_ nameOrID: String, actor: String, on conn: PostgresConnection) async throws -> Bool {
        try await conn.withTransaction { tx in
            let rows = try await tx.query(Self.revokeToken(nameOrID), purpose: "tokens: revoke")
            for row in rows {
                try await tx.query(
                    Self.audit("token.revoked", actor: actor, tokenID: try row.decode("token_id"), name: try row.decode("name"), role: nil),
                    purpose: "tokens: audit revocation")
            }
            return !rows.isEmpty
        }
    }

    /// The identity of a presented token, or nil when it is malformed, unknown, revoked or
    /// wrong. Marks it used (at most once a minute, to keep hot paths free of writes).
    public func authenticate(_ token: String, on conn: PostgresConnection) async throws -> TokenIdentity? {
        guard let (id, secret) = Self.parse(token) else { return nil }
        let presented = SHA256.hex(secret)
        // One statement per request: the look-up, and the at-most-once-a-minute mark of use
        // (only for the right secret).
        let rows = try await conn.query(Self.lookUpAndMarkUsed(id, presented), purpose: "tokens: look up")
        guard let row = rows.first else { return nil }
        guard Self.constantTimeEqual(presented, try row.decode("secret_sha256", as: String.self)),
              let role = TokenRole(rawValue: try row.decode("role", as: String.self))
        else { return nil }
        return TokenIdentity(tokenID: id, name: try row.decode("name"), role: role, scope: try Self.scope(row))
    }

    static func decode(_ row: PostgresRow) throws -> TokenRecord {
        TokenRecord(
            tokenID: try row.decode("token_id"), name: try row.decode("name"),
            role: try TokenRole(parsing: try row.decode("role", as: String.self)),
            createdAt: try row.decode("created_at"), createdBy: try row.decode("created_by"),
            lastUsedAt: try row.decodeOptional("last_used_at"), revokedAt: try row.decodeOptional("revoked_at"), scope: try scope(row))
    }

    static func scope(_ row: PostgresRow) throws -> TokenScope? {
        guard let ns = try row.decodeOptional("scope_namespace", as: String.self) else { return nil }
        return try TokenScope(namespace: try Namespace(ns), lanes: try row.decodeOptional("scope_lanes", as: [String].self)?.map { try Lane($0) })
    }
}
