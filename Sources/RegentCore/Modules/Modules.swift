import Foundation
import PostgresClient
import RegentJSON

/// A module compiled into this build. Its schema has the module's name.
public struct BuiltinModule: Sendable, Hashable {
    public let name: String
    /// Whether a first boot seeds it enabled.
    public let defaultEnabled: Bool
    /// The engine module cannot be disabled.
    public let alwaysEnabled: Bool

    public static let engine = BuiltinModule(name: "engine", defaultEnabled: true, alwaysEnabled: true)
    public static let workflow = BuiltinModule(name: "workflow", defaultEnabled: true, alwaysEnabled: false)
    /// Always on: every `/v1` route authenticates with its tokens, so switching it off could
    /// only leave the API open to anyone or closed to everyone.
    public static let auth = BuiltinModule(name: "auth", defaultEnabled: true, alwaysEnabled: true)

    /// Versioned secrets sealed at rest (docs/vault.md). Its routes answer 503 `vault_sealed`
    /// on a node given no key.
    public static let vault = BuiltinModule(name: "vault", defaultEnabled: true, alwaysEnabled: false)

    /// The modules of this build.
    public static let all: [BuiltinModule] = [.engine, .workflow, .auth, .vault]
}

/// A row of `engine.modules`.
public struct ModuleState: Sendable, Hashable, Codable {
    public let name: String
    public let version: String
    public let enabled: Bool
    public let updatedAt: Date

    enum CodingKeys: String, CodingKey { case name, version, enabled, updatedAt = "updated_at" }
}

/// Reads, seeds and toggles `engine.modules`.
public struct ModuleRegistry: Sendable {
    public let builtins: [BuiltinModule]
    public let version: String

    public init(builtins: [BuiltinModule] = BuiltinModule.all, version: String = RegentVersion.current) {
        self.builtins = builtins
        self.version = version
    }

    static func seedModule(_ m: BuiltinModule, version: String) -> PostgresQuery {
        """
        INSERT INTO engine.modules (name, version, enabled) VALUES (\(m.name), \(version), \(m.defaultEnabled))
        ON CONFLICT (name) DO NOTHING
        """
    }
    static let listModules: PostgresQuery = "SELECT name, version, enabled, updated_at FROM engine.modules ORDER BY name"
    static func setModuleEnabled(_ name: String, _ enabled: Bool) -> PostgresQuery {
        """
        UPDATE engine.modules SET enabled = \(enabled), updated_at = now() WHERE name = \(name)
        RETURNING name, version, enabled, updated_at
        """
    }
    static func auditModuleChange(actor: String, action: String, name: String) -> PostgresQuery {
        """
        INSERT INTO engine.audit (actor, action, detail) VALUES (\(actor), \(action), jsonb_build_object('module', \(name)::text))
        """
    }

    /// Inserts the build's modules that the table does not have yet, with their defaults.
    /// Existing rows (an operator's choices) are left alone. Returns the number added.
    @discardableResult
    public func seed(on connection: PostgresConnection) async throws -> Int {
        var added = 0
        for module in builtins {
            added += try await connection.query(Self.seedModule(module, version: version), purpose: "modules: seed \(module.name)")
                .affectedRows
        }
        return added
    }

    public func list(on connection: PostgresConnection) async throws -> [ModuleState] {
        try await connection.query(Self.listModules, purpose: "modules: list").map(Self.decode)
    }

    /// The schemas of enabled modules that this build knows.
    public func enabledSchemas(on connection: PostgresConnection) async throws -> [String] {
        let known = Set(builtins.map(\.name))
        return try await list(on: connection).filter { $0.enabled && known.contains($0.name) }.map(\.name)
    }

    /// Enables or disables a module and records it in `engine.audit`, in one transaction.
    /// An invalid or unknown name, or disabling `engine`, is refused and changes nothing.
    public func setEnabled(_ name: String, _ enabled: Bool, actor: String, on connection: PostgresConnection) async throws
        -> ModuleState
    {
        guard SQLIdentifier.isValid(name) else {
            throw RegentError(
                .invalidInput, "invalid module name \(quoted(name)): use lowercase letters, digits and underscores (at most 63)")
        }
        if !enabled, builtins.first(where: { $0.name == name })?.alwaysEnabled == true {
            throw RegentError(
                .invalidInput,
                name == "auth"
                    ? "module auth cannot be disabled: every /v1 route of the admin API authenticates with its tokens (revoke tokens instead)"
                    : "module \(name) cannot be disabled: the engine needs it")
        }
        return try await connection.withTransaction { tx in
            let rows = try await tx.query(Self.setModuleEnabled(name, enabled), purpose: "modules: set enabled")
            guard let row = rows.first else {
                let names = try await list(on: tx).map(\.name).joined(separator: ", ")
                throw RegentError(.unknownModule, "no module named \(quoted(name)) (modules: \(names))")
            }
            let action = enabled ? "module.enabled" : "module.disabled"
            try await tx.query(Self.auditModuleChange(actor: actor, action: action, name: name), purpose: "modules: audit change")
            try await EventPublisher.publish(
                topic: try EventTopic(action), payload: try EventPayload(json: #"{"module": \#(jsonString(name)), "actor": \#(jsonString(actor))}"#),
                publisher: nil, on: tx)
            return try Self.decode(row)
        }
    }

    static func isEnabled(_ name: String) -> PostgresQuery {
        "SELECT COALESCE((SELECT enabled FROM engine.modules WHERE name = \(name)), false) AS enabled"
    }

    /// Whether the module is enabled (false when unknown).
    public func isEnabled(_ name: String, on pool: ConnectionPool) async throws -> Bool {
        try await pool.query(Self.isEnabled(name), purpose: "modules: is \(name) enabled?").single().decode("enabled", as: Bool.self)
    }

    static func decode(_ row: PostgresRow) throws -> ModuleState {
        ModuleState(
            name: try row.decode("name"), version: try row.decode("version"), enabled: try row.decode("enabled"),
            updatedAt: try row.decode("updated_at"))
    }
}

/// A JSON string literal for `text` (quotes and control characters escaped). Built by hand, not
/// through JSONSerialization: every completion item names its run and worker with it, and the
/// Foundation round trip (an array boxed as Any, cast back, encoded, decoded) was a tenth of a
/// step worker's own CPU.
public func jsonString(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.utf8.count + 2)
    JSONValue.writeString(text, to: &out)
    return out
}
