import Crypto
import Foundation
import PostgresClient

/// A secret's address: 1-8 segments joined by `/`, each 1-128 of letters, digits, `_ . -`
/// starting with a letter or digit (so no empty, `.` or `..` segment); 255 bytes at most.
/// `payments/stripe-key`.
public struct SecretPath: Sendable, Hashable, CustomStringConvertible, Comparable {
    public let value: String
    public var description: String { value }
    public static func < (a: SecretPath, b: SecretPath) -> Bool { a.value < b.value }

    public init(_ text: String) throws(RegentError) {
        guard Self.isValid(text) else {
            throw RegentError(
                .invalidInput,
                "invalid secret path \(quoted(String(text.prefix(300)))): use 1-8 segments joined by /, each 1-128 letters, digits, _ . or - starting with a letter or digit (255 bytes at most), e.g. payments/stripe-key")
        }
        value = text
    }

    public static func isValid(_ text: String) -> Bool {
        guard (1...255).contains(text.utf8.count) else { return false }
        let segments = text.split(separator: "/", omittingEmptySubsequences: false)
        guard segments.count <= 8 else { return false }
        return segments.allSatisfy(isSegment)
    }

    static func isSegment(_ s: Substring) -> Bool {
        guard let first = s.utf8.first, s.utf8.count <= 128, isAlnum(first) else { return false }
        return s.utf8.allSatisfy { isAlnum($0) || $0 == 95 || $0 == 46 || $0 == 45 }
    }

    static func isAlnum(_ c: UInt8) -> Bool { (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) }

    /// A listing prefix: a path, or a path followed by `/`, or empty (everything).
    public static func checkPrefix(_ prefix: String) throws(RegentError) {
        guard !prefix.isEmpty else { return }
        guard prefix.utf8.count <= 255 else { throw RegentError(.invalidInput, "a secret prefix has at most 255 bytes") }
        let trimmed = prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix
        guard isValid(trimmed) else {
            throw RegentError(.invalidInput, "invalid secret prefix \(quoted(String(prefix.prefix(300)))): give a path or a path followed by /, e.g. payments/")
        }
    }
}

/// One version of a secret, opened.
public struct SecretValue: Sendable {
    public let path: String
    public let version: Int
    /// The plaintext. Held by the caller only as long as it needs it.
    public let value: [UInt8]
    public let createdAt: Date
    public let createdBy: String
    public let expiresAt: Date?
}

/// What a write made.
public struct SecretWritten: Sendable, Codable {
    public let path: String
    public let version: Int
    public let createdAt: Date
    public let expiresAt: Date?
    enum CodingKeys: String, CodingKey { case path, version, createdAt = "created_at", expiresAt = "expires_at" }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(path, forKey: .path)
        try c.encode(version, forKey: .version)
        try c.encode(createdAt, forKey: .createdAt)
        try c.encode(expiresAt, forKey: .expiresAt)
    }
}

/// A version's metadata: never its value.
public struct SecretVersionInfo: Sendable, Codable {
    public let version: Int
    public let keyID: String
    public let sizeBytes: Int
    public let createdAt: Date
    public let createdBy: String
    public let expiresAt: Date?
    public let deletedAt: Date?
    public let deletedBy: String?
    public let destroyedAt: Date?
    public let destroyedBy: String?
    enum CodingKeys: String, CodingKey {
        case version, keyID = "key_id", sizeBytes = "size_bytes", createdAt = "created_at", createdBy = "created_by", expiresAt = "expires_at"
        case deletedAt = "deleted_at", deletedBy = "deleted_by", destroyedAt = "destroyed_at", destroyedBy = "destroyed_by"
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(version, forKey: .version)
        try c.encode(keyID, forKey: .keyID)
        try c.encode(sizeBytes, forKey: .sizeBytes)
        try c.encode(createdAt, forKey: .createdAt)
        try c.encode(createdBy, forKey: .createdBy)
        try c.encode(expiresAt, forKey: .expiresAt)
        try c.encode(deletedAt, forKey: .deletedAt)
        try c.encode(deletedBy, forKey: .deletedBy)
        try c.encode(destroyedAt, forKey: .destroyedAt)
        try c.encode(destroyedBy, forKey: .destroyedBy)
    }
}

/// A secret's metadata and its kept versions, newest first.
public struct SecretMetadata: Sendable, Codable {
    public let path: String
    public let currentVersion: Int
    public let maxVersions: Int
    public let createdAt: Date
    public let createdBy: String
    public let updatedAt: Date
    public let updatedBy: String
    public let versions: [SecretVersionInfo]
    enum CodingKeys: String, CodingKey {
        case path, currentVersion = "current_version", maxVersions = "max_versions", createdAt = "created_at", createdBy = "created_by"
        case updatedAt = "updated_at", updatedBy = "updated_by", versions
    }
}

/// A listing row: a path and its newest version (no value, no version list).
public struct SecretSummary: Sendable, Codable {
    public let path: String
    public let currentVersion: Int
    public let updatedAt: Date
    enum CodingKeys: String, CodingKey { case path, currentVersion = "current_version", updatedAt = "updated_at" }
}

/// The vault's keys and what each seals.
public struct VaultStatus: Sendable, Codable {
    public struct Key: Sendable, Codable {
        public let keyID: String
        public let state: String
        public let addedAt: Date
        public let retiredAt: Date?
        public let versions: Int
        public let heldHere: Bool
        enum CodingKeys: String, CodingKey {
            case keyID = "key_id", state, addedAt = "added_at", retiredAt = "retired_at", versions, heldHere = "held_here"
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(keyID, forKey: .keyID)
            try c.encode(state, forKey: .state)
            try c.encode(addedAt, forKey: .addedAt)
            try c.encode(retiredAt, forKey: .retiredAt)
            try c.encode(versions, forKey: .versions)
            try c.encode(heldHere, forKey: .heldHere)
        }
    }
    /// Whether this process can seal new versions (it holds the active key, or the vault has none yet).
    public let canWrite: Bool
    /// Why not, when it cannot.
    public let sealedReason: String?
    /// The ids of the keys this process holds.
    public let heldKeys: [String]
    public let keys: [Key]
    public let secrets: Int
    enum CodingKeys: String, CodingKey { case canWrite = "can_write", sealedReason = "sealed_reason", heldKeys = "held_keys", keys, secrets }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(canWrite, forKey: .canWrite)
        try c.encode(sealedReason, forKey: .sealedReason)
        try c.encode(heldKeys, forKey: .heldKeys)
        try c.encode(keys, forKey: .keys)
        try c.encode(secrets, forKey: .secrets)
    }
}

/// The vault (`vault.*`, sql/vault): versioned secrets sealed with per-version data keys
/// under the key-encryption key of ``VaultKeyring``. Every value read and every write is in
/// `engine.audit` (path, version, purpose; never the value). Values never reach a log, an
/// error, an event or a metric: errors name paths and versions only.
public struct VaultStore: Sendable {
    /// The largest value a version may hold.
    public static let maxValueBytes = 64 * 1024
    public static let defaultMaxVersions = 10
    public static let maxGrantedPaths = 32

    public let keyring: VaultKeyring?
    public init(keyring: VaultKeyring?) { self.keyring = keyring }

    /// The keyring, or 503 `vault_sealed` naming how to give one.
    func requireKeys() throws(RegentError) -> VaultKeyring {
        guard let keyring else {
            throw RegentError(
                .vaultSealed, "the vault is sealed on this process: it was given no vault key",
                hint: "start it with --vault-key-file FILE or REGENT_VAULT_KEY (docs/vault.md)")
        }
        return keyring
    }

    static func audit(_ action: String, path: String, version: Int?, actor: AuditActor, extra: [String: Any] = [:], on conn: PostgresConnection) async throws {
        var detail = extra
        detail["path"] = path
        if let version { detail["version"] = version }
        try await conn.query(AuditLog.insert(actor: actor, action: action, detailJSON: AuditLog.detail(detail)), purpose: "vault: audit")
    }

    static func checkPurpose(_ purpose: String?) throws(RegentError) {
        guard let purpose else { return }
        guard (1...200).contains(purpose.unicodeScalars.count), !purpose.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw RegentError(.invalidInput, "purpose must be 1-200 characters without control characters")
        }
    }

    // MARK: keys

    struct KeyRow { let id: String; let state: String }

    static func keyRows(_ conn: PostgresConnection) async throws -> [KeyRow] {
        try await conn.query("SELECT key_id, state FROM vault.keys ORDER BY added_at, key_id", purpose: "vault: keys").map {
            KeyRow(id: try $0.decode("key_id"), state: try $0.decode("state"))
        }
    }

    /// Why this keyring cannot seal against `rows`, or nil when it can (it holds the active key,
    /// or there is none yet and its current key will become it).
    static func sealRefusal(_ keyring: VaultKeyring, _ rows: [KeyRow]) -> String? {
        guard !rows.isEmpty else { return nil }
        guard let active = rows.first(where: { $0.state == "active" }) else {
            return "the vault has no active key (\(rows.map(\.id).joined(separator: ", ")) are retired)"
        }
        if keyring.key(active.id) != nil { return nil }
        let known = Set(rows.map(\.id))
        if keyring.ids.allSatisfy({ !known.contains($0) }) {
            return "this process holds vault key \(keyring.ids.joined(separator: " and ")), which is not one of the vault's keys (\(rows.map(\.id).joined(separator: ", "))): a wrong key file?"
        }
        return "the vault's active key is \(active.id) and this process holds only \(keyring.ids.joined(separator: " and ")); give it the active key (a rotation moved the vault to it)"
    }

    /// The key new versions are sealed under, registering this keyring's current key as the
    /// first active key of an empty vault (under a table lock, so two first writes agree).
    func sealingKey(_ keyring: VaultKeyring, actor: AuditActor, on tx: PostgresConnection) async throws -> VaultKey {
        var rows = try await Self.keyRows(tx)
        if rows.isEmpty {
            try await tx.query("LOCK TABLE vault.keys IN SHARE ROW EXCLUSIVE MODE", purpose: "vault: first key")
            rows = try await Self.keyRows(tx)
            if rows.isEmpty {
                try await tx.query(
                    "INSERT INTO vault.keys (key_id, state, added_by) VALUES (\(keyring.current.id), 'active', \(actor.description))",
                    purpose: "vault: register the first key")
                try await Self.audit("vault.key_registered", path: "", version: nil, actor: actor, extra: ["key_id": keyring.current.id], on: tx)
                return keyring.current
            }
        }
        // A share lock on the active key's row: a rotation's switch (an UPDATE of that row)
        // waits for this write, so no version lands under a key a finished rotation retired.
        let locked = try await tx.query(
            "SELECT key_id FROM vault.keys WHERE state = 'active' FOR SHARE", purpose: "vault: hold the active key"
        ).map { try $0.decode("key_id", as: String.self) }
        rows = try await Self.keyRows(tx)
        if let refusal = Self.sealRefusal(keyring, rows) {
            throw RegentError(.vaultSealed, "the vault cannot seal on this process: \(refusal)", hint: "see `regent vault status` and docs/vault.md")
        }
        guard let activeID = locked.first, let key = keyring.key(activeID) else {
            throw RegentError(.vaultSealed, "the vault's active key changed during this write; retry it")
        }
        return key
    }

    // MARK: writes

    /// Stores `value` as the next version of `path`. `maxVersions` (1-100) replaces the
    /// secret's setting; versions beyond it (oldest first) are removed.
    public func put(
        _ path: SecretPath, value: [UInt8], maxVersions: Int? = nil, expiresIn: Duration? = nil, actor: AuditActor, on conn: PostgresConnection
    ) async throws -> SecretWritten {
        let keyring = try requireKeys()
        guard value.count <= Self.maxValueBytes else {
            throw RegentError(.invalidInput, "the value of \(path) has \(value.count) bytes; at most \(Self.maxValueBytes) are allowed")
        }
        if let maxVersions, !(1...100).contains(maxVersions) {
            throw RegentError(.invalidInput, "max_versions must be 1 to 100, got \(maxVersions)")
        }
        if let expiresIn, expiresIn < .seconds(1) || expiresIn > .seconds(10 * 365 * 86_400) {
            throw RegentError(.invalidInput, "expires_in must be from 1s to 10 years")
        }
        return try await conn.withTransaction { tx in
            let kek = try await sealingKey(keyring, actor: actor, on: tx)
            let meta = try await tx.query(
                """
                INSERT INTO vault.kv_meta AS m (path, current_version, max_versions, created_by, updated_by)
                VALUES (\(path.value), 1, \(maxVersions ?? Self.defaultMaxVersions), \(actor.description), \(actor.description))
                ON CONFLICT (path) DO UPDATE SET current_version = m.current_version + 1, max_versions = COALESCE(\(maxVersions), m.max_versions),
                    updated_at = now(), updated_by = EXCLUDED.updated_by
                RETURNING current_version, max_versions
                """, purpose: "vault: next version").single()
            let version: Int = try meta.decode("current_version")
            let keep: Int = try meta.decode("max_versions")
            // A fresh data key per version, sealed under the KEK; the value under the data key.
            let dataKey = SymmetricKey(size: .bits256)
            let sealedValue = try VaultSeal.seal(value, key: dataKey, aad: VaultSeal.valueAAD(path: path.value, version: version))
            let sealedKey = try dataKey.withUnsafeBytes { raw in
                try VaultSeal.seal(raw, key: kek.key, aad: VaultSeal.dataKeyAAD(path: path.value, version: version, keyID: kek.id))
            }
            let expiresMs = expiresIn.map { Int64($0.milliseconds) }
            let row = try await tx.query(
                """
                INSERT INTO vault.kv_versions (path, version, key_id, sealed_key, sealed_value, size_bytes, created_by, expires_at)
                VALUES (\(path.value), \(version), \(kek.id), \(PostgresBytes(sealedKey)), \(PostgresBytes(sealedValue)), \(value.count),
                        \(actor.description), now() + \(expiresMs) * interval '1 millisecond')
                RETURNING created_at, expires_at
                """, purpose: "vault: store version").single()
            try await tx.query(
                "DELETE FROM vault.kv_versions WHERE path = \(path.value) AND version <= \(version - keep)", purpose: "vault: prune old versions")
            try await Self.audit("vault.secret_written", path: path.value, version: version, actor: actor, extra: ["key_id": kek.id], on: tx)
            return SecretWritten(path: path.value, version: version, createdAt: try row.decode("created_at"), expiresAt: try row.decodeOptional("expires_at"))
        }
    }

    public enum VersionChange: String, Sendable {
        case delete, undelete, destroy
    }

    /// Soft-deletes, undeletes or destroys `versions` of `path` (empty: the current version).
    /// Destroying clears the sealed value and data key for good; the row stays, marked.
    public func change(
        _ change: VersionChange, _ path: SecretPath, versions: [Int], actor: AuditActor, on conn: PostgresConnection
    ) async throws -> SecretMetadata {
        guard versions.count <= 100, versions.allSatisfy({ $0 >= 1 }) else {
            throw RegentError(.invalidInput, "versions must be at most 100 numbers of 1 or more")
        }
        return try await conn.withTransaction { tx in
            guard let meta = try await tx.query(
                "SELECT current_version FROM vault.kv_meta WHERE path = \(path.value) FOR UPDATE", purpose: "vault: lock secret").first
            else { throw Self.noSecret(path) }
            let current: Int = try meta.decode("current_version")
            let targets = versions.isEmpty ? [current] : Array(Set(versions)).sorted()
            let kept = try await tx.query(
                "SELECT version FROM vault.kv_versions WHERE path = \(path.value) AND version = ANY(\(targets.map(String.init))::int[])",
                purpose: "vault: versions kept"
            ).map { try $0.decode("version", as: Int.self) }
            if let missing = targets.first(where: { !kept.contains($0) }) {
                throw RegentError(.notFound, "secret \(path) has no version \(missing) (kept versions are listed by `regent vault metadata \(path)`)")
            }
            let list = targets.map(String.init)
            let sql: PostgresQuery
            switch change {
            case .delete:
                sql = """
                    UPDATE vault.kv_versions SET deleted_at = now(), deleted_by = \(actor.description)
                    WHERE path = \(path.value) AND version = ANY(\(list)::int[]) AND deleted_at IS NULL
                    """
            case .undelete:
                sql = """
                    UPDATE vault.kv_versions SET deleted_at = NULL, deleted_by = NULL
                    WHERE path = \(path.value) AND version = ANY(\(list)::int[]) AND destroyed_at IS NULL
                    """
            case .destroy:
                sql = """
                    UPDATE vault.kv_versions SET sealed_key = NULL, sealed_value = NULL, destroyed_at = now(), destroyed_by = \(actor.description)
                    WHERE path = \(path.value) AND version = ANY(\(list)::int[]) AND destroyed_at IS NULL
                    """
            }
            try await tx.query(sql, purpose: "vault: \(change.rawValue) versions")
            try await tx.query("UPDATE vault.kv_meta SET updated_at = now(), updated_by = \(actor.description) WHERE path = \(path.value)", purpose: "vault: touch")
            let action = ["delete": "vault.versions_deleted", "undelete": "vault.versions_undeleted", "destroy": "vault.versions_destroyed"][change.rawValue]!
            try await Self.audit(action, path: path.value, version: nil, actor: actor, extra: ["versions": list], on: tx)
            return try await metadata(path, on: tx)
        }
    }

    /// Removes a secret and every version (its audit rows stay).
    public func remove(_ path: SecretPath, actor: AuditActor, on conn: PostgresConnection) async throws {
        try await conn.withTransaction { tx in
            let gone = try await tx.query("DELETE FROM vault.kv_meta WHERE path = \(path.value)", purpose: "vault: remove secret").affectedRows
            guard gone == 1 else { throw Self.noSecret(path) }
            try await Self.audit("vault.secret_removed", path: path.value, version: nil, actor: actor, on: tx)
        }
    }

    static func noSecret(_ path: SecretPath) -> RegentError {
        RegentError(.notFound, "no secret at \(path)", hint: "list them with `regent vault list`")
    }

    // MARK: reads

    static func versionInfo(_ row: PostgresRow) throws -> SecretVersionInfo {
        SecretVersionInfo(
            version: try row.decode("version"), keyID: try row.decode("key_id"), sizeBytes: try row.decode("size_bytes"),
            createdAt: try row.decode("created_at"), createdBy: try row.decode("created_by"), expiresAt: try row.decodeOptional("expires_at"),
            deletedAt: try row.decodeOptional("deleted_at"), deletedBy: try row.decodeOptional("deleted_by"),
            destroyedAt: try row.decodeOptional("destroyed_at"), destroyedBy: try row.decodeOptional("destroyed_by"))
    }

    /// A secret's metadata and kept versions (never a value; no key needed).
    public func metadata(_ path: SecretPath, on conn: PostgresConnection) async throws -> SecretMetadata {
        guard let meta = try await conn.query(
            "SELECT current_version, max_versions, created_at, created_by, updated_at, updated_by FROM vault.kv_meta WHERE path = \(path.value)",
            purpose: "vault: metadata"
        ).first else { throw Self.noSecret(path) }
        let versions = try await conn.query(
            """
            SELECT version, key_id, size_bytes, created_at, created_by, expires_at, deleted_at, deleted_by, destroyed_at, destroyed_by
            FROM vault.kv_versions WHERE path = \(path.value) ORDER BY version DESC
            """,
            purpose: "vault: versions"
        ).map(Self.versionInfo)
        return SecretMetadata(
            path: path.value, currentVersion: try meta.decode("current_version"), maxVersions: try meta.decode("max_versions"),
            createdAt: try meta.decode("created_at"), createdBy: try meta.decode("created_by"), updatedAt: try meta.decode("updated_at"),
            updatedBy: try meta.decode("updated_by"), versions: versions)
    }

    public static let maxListLimit = 1000

    /// Paths under `prefix` (a path or `dir/`; empty: all), after `after`, in path order.
    public func list(prefix: String, after: String?, limit: Int, on conn: PostgresConnection) async throws -> [SecretSummary] {
        try SecretPath.checkPrefix(prefix)
        guard (1...Self.maxListLimit).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to \(Self.maxListLimit)") }
        // A prefix of letters, digits and `_ . - /` has no LIKE wildcard but `_`: escape it.
        let pattern = prefix.replacingOccurrences(of: "_", with: "\\_") + "%"
        return try await conn.query(
            """
            SELECT path, current_version, updated_at FROM vault.kv_meta
            WHERE path LIKE \(pattern) AND path > \(after ?? "")
            ORDER BY path LIMIT \(limit)
            """, purpose: "vault: list"
        ).map { SecretSummary(path: try $0.decode("path"), currentVersion: try $0.decode("current_version"), updatedAt: try $0.decode("updated_at")) }
    }

    struct SealedRow {
        let info: SecretVersionInfo
        let sealedKey: [UInt8]?
        let sealedValue: [UInt8]?
        let expired: Bool
    }

    static func sealedRow(_ path: SecretPath, version: Int?, on conn: PostgresConnection) async throws -> SealedRow {
        let rows = try await conn.query(
            """
            SELECT version, key_id, size_bytes, created_at, created_by, expires_at, deleted_at, deleted_by, destroyed_at, destroyed_by, sealed_key, sealed_value, expires_at <= now() AS expired
            FROM vault.kv_versions v
            WHERE v.path = \(path.value)
              AND v.version = COALESCE(\(version)::int, (SELECT current_version FROM vault.kv_meta m WHERE m.path = \(path.value)))
            """,
            purpose: "vault: read version")
        guard let row = rows.first else {
            if let version { throw RegentError(.notFound, "secret \(path) has no version \(version)", hint: "see `regent vault metadata \(path)`") }
            throw noSecret(path)
        }
        return SealedRow(
            info: try versionInfo(row), sealedKey: try row.decodeOptional("sealed_key", as: PostgresBytes.self)?.bytes,
            sealedValue: try row.decodeOptional("sealed_value", as: PostgresBytes.self)?.bytes, expired: try row.decodeOptional("expired", as: Bool.self) ?? false)
    }

    /// Opens a stored version: refuses deleted, destroyed and expired ones (404, saying which),
    /// a key this process does not hold (503 sealed), and a seal that does not open under its
    /// own path and version (409 corrupt).
    func open(_ path: SecretPath, _ row: SealedRow, keyring: VaultKeyring) throws(RegentError) -> SecretValue {
        let v = row.info.version
        if let at = row.info.destroyedAt {
            throw RegentError(.notFound, "version \(v) of secret \(path) was destroyed at \(at) by \(row.info.destroyedBy ?? "?")")
        }
        if let at = row.info.deletedAt {
            throw RegentError(
                .notFound, "version \(v) of secret \(path) was deleted at \(at) by \(row.info.deletedBy ?? "?")",
                hint: "`regent vault undelete \(path) --version \(v)` brings it back")
        }
        if row.expired {
            throw RegentError(.notFound, "version \(v) of secret \(path) expired at \(row.info.expiresAt.map { "\($0)" } ?? "?")")
        }
        guard let kek = keyring.key(row.info.keyID) else {
            throw RegentError(
                .vaultSealed, "version \(v) of secret \(path) is sealed under vault key \(row.info.keyID), which this process does not hold (it holds \(keyring.ids.joined(separator: " and ")))",
                hint: "give it that key (--vault-key-file, or --vault-previous-key-file during a rotation)")
        }
        guard let sealedKey = row.sealedKey, let sealedValue = row.sealedValue,
            let dataKeyBytes = VaultSeal.open(sealedKey, key: kek.key, aad: VaultSeal.dataKeyAAD(path: path.value, version: v, keyID: kek.id))
        else {
            throw Self.corrupt(path, v)
        }
        let dataKey = SymmetricKey(data: dataKeyBytes)
        guard let value = VaultSeal.open(sealedValue, key: dataKey, aad: VaultSeal.valueAAD(path: path.value, version: v)) else {
            throw Self.corrupt(path, v)
        }
        return SecretValue(path: path.value, version: v, value: value, createdAt: row.info.createdAt, createdBy: row.info.createdBy, expiresAt: row.info.expiresAt)
    }

    static func corrupt(_ path: SecretPath, _ version: Int) -> RegentError {
        RegentError(
            .secretCorrupt, "version \(version) of secret \(path) does not open under its own path and version: its stored ciphertext was altered or copied from another secret",
            hint: "restore the vault tables from a backup, or put a new version and destroy this one")
    }

    /// Reads a version's value (nil: the current one), audited with `purpose`. A refused read
    /// (sealed, corrupt) is audited too, as `vault.read_failed`.
    public func get(_ path: SecretPath, version: Int? = nil, purpose: String? = nil, actor: AuditActor, on conn: PostgresConnection) async throws
        -> SecretValue
    {
        try Self.checkPurpose(purpose)
        let keyring = try requireKeys()
        if let version, version < 1 { throw RegentError(.invalidInput, "version must be 1 or more") }
        let row = try await Self.sealedRow(path, version: version, on: conn)
        return try await openAudited(path, row, keyring: keyring, actor: actor, detail: ["purpose": purpose as Any], on: conn)
    }

    /// Opens `row` and audits the read (`vault.secret_read`, with `detail`), or audits the
    /// refusal (`vault.read_failed`, with the reason) when it is sealed or corrupt.
    func openAudited(
        _ path: SecretPath, _ row: SealedRow, keyring: VaultKeyring, actor: AuditActor, detail: [String: Any], on conn: PostgresConnection
    ) async throws -> SecretValue {
        do {
            let value = try open(path, row, keyring: keyring)
            try await Self.audit("vault.secret_read", path: path.value, version: value.version, actor: actor, extra: detail, on: conn)
            return value
        } catch let error as RegentError where error.code == .secretCorrupt || error.code == .vaultSealed {
            var failed = detail.filter { $0.key == "purpose" }
            failed["reason"] = "\(error.code)"
            try await Self.audit("vault.read_failed", path: path.value, version: row.info.version, actor: actor, extra: failed, on: conn)
            throw error
        }
    }

    // MARK: scoped reads by workers

    /// Grants an execution enqueued on its own the secrets it names (in the enqueue's transaction).
    public static func grant(_ paths: [SecretPath], to executionIDs: [UUID], on tx: PostgresConnection) async throws {
        guard !paths.isEmpty, !executionIDs.isEmpty else { return }
        try await tx.query(
            """
            INSERT INTO vault.execution_grants (execution_id, paths)
            SELECT id, \(paths.map(\.value))::text[] FROM unnest(\(executionIDs.map { $0.lowercasedText })::uuid[]) AS id
            ON CONFLICT (execution_id) DO NOTHING
            """, purpose: "vault: grant secrets to executions")
    }

    /// Checks a list of paths an execution or a manifest step names.
    public static func checkGrant(_ paths: [String], at: String) throws(RegentError) -> [SecretPath] {
        guard paths.count <= maxGrantedPaths else { throw RegentError(.invalidInput, "\(at) names \(paths.count) secrets; at most \(maxGrantedPaths)") }
        var out: [SecretPath] = []
        for p in paths {
            do { out.append(try SecretPath(p)) } catch { throw RegentError(.invalidInput, "\(at): \(error.message)") }
        }
        guard Set(out).count == out.count else { throw RegentError(.invalidInput, "\(at) names a secret twice") }
        return out
    }

    static func leaseScope(_ executionID: UUID) -> PostgresQuery {
        // What the lease's holder may read: the execution's own grant, and its run step's
        // manifest `secrets` (the step of the run version it belongs to).
        """
        SELECT l.lease_epoch, l.worker_instance_id, l.token_id, l.lease_expires_at > now() AS live,
               COALESCE(g.paths, '{}'::text[]) || COALESCE((
                   SELECT array_agg(s.value) FROM workflow.run_steps rs
                   JOIN workflow.runs r ON r.run_id = rs.run_id
                   JOIN workflow.packages p ON p.content_hash = r.package_hash
                   CROSS JOIN LATERAL jsonb_array_elements(p.manifest -> 'steps') AS st(step)
                   CROSS JOIN LATERAL jsonb_array_elements_text(COALESCE(st.step -> 'secrets', '[]'::jsonb)) AS s(value)
                   WHERE rs.execution_id = l.execution_id AND st.step ->> 'name' = rs.name), '{}'::text[]) AS allowed
        FROM workflow.leases l
        LEFT JOIN vault.execution_grants g ON g.execution_id = l.execution_id
        WHERE l.execution_id = \(executionID)
        """
    }

    /// A worker's read of a secret its leased step was granted: only while the lease (this
    /// execution, this epoch, claimed by this worker instance with this token) is current,
    /// and only a path the execution or its manifest step names. Anything else is 403 and
    /// audited as `vault.read_denied`.
    public func leaseRead(
        _ path: SecretPath, executionID: UUID, epoch: LeaseEpoch, worker: WorkerInstanceID, token: String?, actor: AuditActor,
        on conn: PostgresConnection
    ) async throws -> SecretValue {
        let keyring = try requireKeys()
        let idText = executionID.lowercasedText
        let scope = try await conn.query(Self.leaseScope(executionID), purpose: "vault: lease scope").first
        var denial: String?
        if let scope {
            let held: Int64 = try scope.decode("lease_epoch")
            let holder: String = try scope.decode("worker_instance_id")
            let holderToken = try scope.decodeOptional("token_id", as: String.self)
            let allowed: [String] = try scope.decode("allowed")
            if held != epoch.value {
                denial = "lease epoch \(epoch) of execution \(idText) is not current (it is \(held))"
            } else if try !scope.decode("live", as: Bool.self) {
                denial = "the lease of execution \(idText) has expired"
            } else if holder != worker.value || (token != nil && holderToken != token) {
                denial = "the lease of execution \(idText) is held by another worker instance or token"
            } else if !allowed.contains(path.value) {
                denial = "execution \(idText) was not granted secret \(path) (it may read: \(allowed.isEmpty ? "none" : allowed.sorted().joined(separator: ", ")))"
            }
        } else {
            denial = "execution \(idText) has no current lease"
        }
        if let denial {
            try await Self.audit(
                "vault.read_denied", path: path.value, version: nil, actor: actor,
                extra: ["execution_id": idText, "lease_epoch": epoch.value, "worker_instance_id": worker.value, "reason": denial], on: conn)
            throw RegentError(.forbidden, denial, hint: "a step reads the secrets its manifest step (secrets) or its enqueue (secrets) names, while it holds the lease")
        }
        let row = try await Self.sealedRow(path, version: nil, on: conn)
        return try await openAudited(
            path, row, keyring: keyring, actor: actor,
            detail: ["purpose": "execution \(idText) epoch \(epoch.value)", "execution_id": idText, "worker_instance_id": worker.value], on: conn)
    }

    // MARK: status

    public func status(on conn: PostgresConnection) async throws -> VaultStatus {
        let rows = try await conn.query(
            """
            SELECT k.key_id, k.state, k.added_at, k.retired_at,
                   (SELECT count(*) FROM vault.kv_versions v WHERE v.key_id = k.key_id AND v.sealed_key IS NOT NULL)::int AS versions
            FROM vault.keys k ORDER BY k.added_at, k.key_id
            """, purpose: "vault: keys and counts")
        let held = Set(keyring?.ids ?? [])
        let keys = try rows.map {
            VaultStatus.Key(
                keyID: try $0.decode("key_id"), state: try $0.decode("state"), addedAt: try $0.decode("added_at"), retiredAt: try $0.decodeOptional("retired_at"),
                versions: try $0.decode("versions"), heldHere: held.contains(try $0.decode("key_id", as: String.self)))
        }
        let secrets = try await conn.query("SELECT count(*)::int AS n FROM vault.kv_meta", purpose: "vault: count").single().decode("n", as: Int.self)
        let reason: String?
        if let keyring {
            reason = Self.sealRefusal(keyring, keys.map { KeyRow(id: $0.keyID, state: $0.state) })
        } else {
            reason = "this process was given no vault key (--vault-key-file or REGENT_VAULT_KEY)"
        }
        return VaultStatus(canWrite: reason == nil, sealedReason: reason, heldKeys: keyring?.ids ?? [], keys: keys, secrets: secrets)
    }
}
