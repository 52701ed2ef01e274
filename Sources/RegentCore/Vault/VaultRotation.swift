import Foundation
import PostgresClient

/// Moves the vault to a new key-encryption key: registers it as the active key (the old one
/// becomes `retiring`), then re-seals every data key still under another key, a page per
/// transaction, and retires the old key when none is left. Values are never decrypted: only
/// the 32-byte data keys are opened and sealed again. Safe while nodes serve (a page locks
/// only its rows; nodes holding both keys open either), and resumable: running it again with
/// the same keys goes on where it stopped (docs/vault.md, "Rotating the key").
public struct VaultRotation: Sendable {
    public struct Progress: Sendable, Codable {
        public let newKeyID: String
        public let resealed: Int
        public let pages: Int
        public let remaining: Int
        public let finished: Bool
        enum CodingKeys: String, CodingKey { case newKeyID = "new_key_id", resealed, pages, remaining, finished }
    }

    public let keyring: VaultKeyring
    public let newKey: VaultKey
    public let pageSize: Int

    public init(keyring: VaultKeyring, newKey: VaultKey, pageSize: Int = 200) throws(RegentError) {
        guard (1...10_000).contains(pageSize) else { throw RegentError(.invalidInput, "page size must be 1 to 10000") }
        self.keyring = keyring
        self.newKey = newKey
        self.pageSize = pageSize
    }

    /// Registers the new key as active (idempotent), then re-seals pages until none is left or
    /// `maxPages` were done (an interrupted rotation, as the tests make one).
    public func run(actor: AuditActor, maxPages: Int? = nil, on conn: PostgresConnection) async throws -> Progress {
        try await begin(actor: actor, on: conn)
        var resealed = 0
        var pages = 0
        while maxPages.map({ pages < $0 }) ?? true {
            let n = try await resealPage(on: conn)
            if n == 0 { break }
            resealed += n
            pages += 1
        }
        let remaining = try await Self.remaining(excluding: newKey.id, on: conn)
        if remaining == 0 { try await finish(actor: actor, on: conn) }
        return Progress(newKeyID: newKey.id, resealed: resealed, pages: pages, remaining: remaining, finished: remaining == 0)
    }

    static func remaining(excluding id: String, on conn: PostgresConnection) async throws -> Int {
        try await conn.query(
            "SELECT count(*)::int AS n FROM vault.kv_versions WHERE key_id <> \(id) AND sealed_key IS NOT NULL", purpose: "vault: versions left to re-seal"
        ).single().decode("n")
    }

    func begin(actor: AuditActor, on conn: PostgresConnection) async throws {
        try await conn.withTransaction { tx in
            try await tx.query("LOCK TABLE vault.keys IN SHARE ROW EXCLUSIVE MODE", purpose: "vault: rotation lock")
            let rows = try await VaultStore.keyRows(tx)
            if let row = rows.first(where: { $0.id == newKey.id }) {
                guard row.state == "active" else {
                    throw RegentError(
                        .invalidInput, "vault key \(newKey.id) is \(row.state): a rotation goes to a key the vault has not used before",
                        hint: "make one with `regent vault init-key --out FILE`")
                }
                return  // resuming: the new key is already active
            }
            if let active = rows.first(where: { $0.state == "active" }) {
                guard keyring.key(active.id) != nil else {
                    throw RegentError(
                        .vaultSealed, "the vault's active key is \(active.id), and the keys given (\(keyring.ids.joined(separator: ", "))) do not include it",
                        hint: "pass the key the vault uses now as --vault-key-file and the new one as --new-key-file")
                }
                try await tx.query(
                    "UPDATE vault.keys SET state = 'retiring' WHERE key_id = \(active.id)", purpose: "vault: the old key retires")
            }
            try await tx.query(
                "INSERT INTO vault.keys (key_id, state, added_by) VALUES (\(newKey.id), 'active', \(actor.description))", purpose: "vault: the new key")
            try await VaultStore.audit(
                "vault.key_rotation_started", path: "", version: nil, actor: actor,
                extra: ["new_key_id": newKey.id, "old_key_ids": rows.filter { $0.state != "retired" }.map(\.id)], on: tx)
        }
    }

    /// Re-seals one page of data keys under the new key; how many it moved (0: none left).
    func resealPage(on conn: PostgresConnection) async throws -> Int {
        try await conn.withTransaction { tx in
            let rows = try await tx.query(
                """
                SELECT path, version, key_id, sealed_key FROM vault.kv_versions
                WHERE key_id <> \(newKey.id) AND sealed_key IS NOT NULL
                ORDER BY key_id, path, version LIMIT \(pageSize)
                FOR UPDATE
                """, purpose: "vault: a page to re-seal")
            guard !rows.isEmpty else { return 0 }
            var paths: [String] = [], versions: [String] = [], oldIDs: [String] = [], sealed: [String] = []
            for row in rows {
                let path: String = try row.decode("path")
                let version: Int = try row.decode("version")
                let oldID: String = try row.decode("key_id")
                let bytes = try row.decode("sealed_key", as: PostgresBytes.self).bytes
                guard let old = keyring.key(oldID) else {
                    throw RegentError(
                        .vaultSealed, "version \(version) of secret \(path) is sealed under vault key \(oldID), which was not given",
                        hint: "pass every key still in use (`regent vault status`) as --vault-key-file or --vault-previous-key-file")
                }
                guard let dataKey = VaultSeal.open(bytes, key: old.key, aad: VaultSeal.dataKeyAAD(path: path, version: version, keyID: oldID)) else {
                    throw RegentError(
                        .secretCorrupt, "version \(version) of secret \(path) does not open under its own path and version; the rotation stops before it",
                        hint: "destroy that version (`regent vault destroy \(path) --version \(version)`) or restore it from a backup, then run the rotation again")
                }
                let resealed = try VaultSeal.seal(dataKey, key: newKey.key, aad: VaultSeal.dataKeyAAD(path: path, version: version, keyID: newKey.id))
                paths.append(path)
                versions.append(String(version))
                oldIDs.append(oldID)
                sealed.append(resealed.map { String(format: "%02x", $0) }.joined())
            }
            let moved = try await tx.query(
                """
                UPDATE vault.kv_versions v SET key_id = \(newKey.id), sealed_key = decode(u.hex, 'hex')
                FROM unnest(\(paths)::text[], \(versions)::int[], \(oldIDs)::text[], \(sealed)::text[]) AS u(path, version, old_id, hex)
                WHERE v.path = u.path AND v.version = u.version AND v.key_id = u.old_id
                """, purpose: "vault: re-seal a page").affectedRows
            return moved
        }
    }

    func finish(actor: AuditActor, on conn: PostgresConnection) async throws {
        try await conn.withTransaction { tx in
            let retired = try await tx.query(
                "UPDATE vault.keys SET state = 'retired', retired_at = now() WHERE state = 'retiring' RETURNING key_id", purpose: "vault: retire old keys"
            ).map { try $0.decode("key_id", as: String.self) }
            guard !retired.isEmpty else { return }
            try await VaultStore.audit(
                "vault.key_rotation_finished", path: "", version: nil, actor: actor, extra: ["new_key_id": newKey.id, "retired_key_ids": retired], on: tx)
        }
    }
}
