import Foundation
import Hummingbird
import NIOCore
import PostgresClient
import RegentCore

/// The vault (issue 32, docs/vault.md). Roles: `read` sees paths, metadata and key status,
/// never a value; `admin` writes and reads values (each read audited with its purpose); a
/// `worker` reads only the secrets its current lease's step was granted. A node without a
/// key answers 503 `vault_sealed` for what needs one. Answers holding a value are `no-store`.
extension AdminAPI {
    var vaultStore: VaultStore { VaultStore(keyring: options.vaultKeyring) }

    func secretPath(_ request: Request) throws -> SecretPath {
        guard let raw = request.uri.queryParameters.get("path") else {
            throw APIError.badRequest("invalid_input", "the query parameter path is required (e.g. ?path=payments/stripe-key)")
        }
        return try SecretPath(String(raw))
    }

    func vaultStatus() async throws -> Response {
        try json(try await pool.withConnection { try await vaultStore.status(on: $0) })
    }

    func listSecrets(_ request: Request) async throws -> Response {
        let prefix = request.uri.queryParameters.get("prefix").map { String($0) } ?? ""
        let after = request.uri.queryParameters.get("after").map { String($0) }
        if let after, !SecretPath.isValid(after) {
            throw APIError.badRequest("invalid_cursor", "after must be a secret path (the last path of the previous page)")
        }
        let limit = try limit(request)
        let page = try await pool.withConnection { try await vaultStore.list(prefix: prefix, after: after, limit: limit, on: $0) }
        return try json(SecretListDocument(secrets: page, nextAfter: page.count == limit ? page.last?.path : nil))
    }

    static let putSecretFields: Set<String> = ["value", "value_base64", "max_versions", "expires_in_s"]
    static let maxTextCharacters = 16_384
    static let maxBase64Characters = 87_380

    func putSecret(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let path = try secretPath(request)
        // The whole request budget: a value of 16384 characters sent as JSON escapes takes up to 196,608 bytes.
        let body = try await JSONBody.read(request, context: context, allowed: Self.putSecretFields, limit: AdminAPI.maxBodyBytes)
        let text = try body.optionalString("value"), encoded = try body.optionalString("value_base64")
        var value: [UInt8]
        switch (text, encoded) {
        case (let text?, nil):
            // At most 16384 characters: at most 65536 bytes whatever they are (docs/openapi.yaml says the same).
            guard text.unicodeScalars.count <= Self.maxTextCharacters else {
                throw body.wrongType("value", "text of at most \(Self.maxTextCharacters) characters (value_base64 takes up to 65535 bytes)")
            }
            value = Array(text.utf8)
        case (nil, let encoded?):
            guard encoded.utf8.count <= Self.maxBase64Characters, let data = Data(base64Encoded: encoded) else {
                throw body.wrongType("value_base64", "base64 text of at most \(Self.maxBase64Characters) characters")
            }
            value = Array(data)
        default:
            throw APIError.badRequest("invalid_field", "give the secret as value (text) or value_base64 (bytes), exactly one of them")
        }
        defer { value.withUnsafeMutableBytes { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) } }
        let maxVersions = try body.optionalInt("max_versions")
        if let maxVersions, !(1...100).contains(maxVersions) { throw body.wrongType("max_versions", "an integer from 1 to 100") }
        let expires = try body.optionalInt("expires_in_s")
        if let expires, !(1...315_360_000).contains(expires) { throw body.wrongType("expires_in_s", "an integer from 1 to 315360000") }
        let written = try await retryingConflicts(on: pool) { [value] in
            try await vaultStore.put(
                path, value: value, maxVersions: maxVersions.map(Int.init), expiresIn: expires.map { .seconds($0) }, actor: .named(context.actor), on: $0)
        }
        return try json(written, status: .created)
    }

    func getSecret(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let path = try secretPath(request)
        let version = try queryInt64(request, "version", range: 1...Int64(Int32.max), code: "invalid_version").map(Int.init)
        let purpose = request.uri.queryParameters.get("purpose").map { String($0) }
        let secret = try await pool.withConnection {
            try await vaultStore.get(path, version: version, purpose: purpose, actor: .named(context.actor), on: $0)
        }
        return try secretResponse(secret)
    }

    func leaseReadSecret(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["execution_id", "lease_epoch", "worker_instance_id", "path"], limit: 4096)
        let id = try body.uuid("execution_id")
        let epoch = LeaseEpoch(try body.int("lease_epoch"))
        let worker = try WorkerInstanceID(try body.string("worker_instance_id"))
        let path = try SecretPath(try body.string("path"))
        let secret = try await pool.withConnection {
            try await vaultStore.leaseRead(
                path, executionID: id, epoch: epoch, worker: worker, token: context.identity?.tokenID, actor: .named(context.actor), on: $0)
        }
        return try secretResponse(secret)
    }

    func secretResponse(_ secret: SecretValue) throws -> Response {
        var response = try json(SecretDocument(secret))
        response.headers[.cacheControl] = "no-store"
        return response
    }

    func secretMetadata(_ request: Request) async throws -> Response {
        let path = try secretPath(request)
        return try json(try await pool.withConnection { try await vaultStore.metadata(path, on: $0) })
    }

    func changeSecretVersions(_ request: Request, _ context: RegentRequestContext, _ change: VaultStore.VersionChange) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["path", "versions"], limit: 16 * 1024)
        let path = try SecretPath(try body.string("path"))
        var versions: [Int] = []
        if let raw = body.fields["versions"] {
            guard case .array(let items) = raw, items.count <= 100 else { throw body.wrongType("versions", "an array of at most 100 version numbers") }
            for item in items {
                // JSON has one number type: 12.0 is the version 12 (as JSON Schema says).
                let n: Int64?
                switch item {
                case .integer(let v): n = v
                case .number(let d) where d.rounded() == d && abs(d) < 9.2e18: n = Int64(d)
                default: n = nil
                }
                guard let n, (1...Int64(Int32.max)).contains(n) else {
                    throw body.wrongType("versions", "an array of version numbers from 1 to 2147483647")
                }
                versions.append(Int(n))
            }
        }
        let meta = try await retryingConflicts(on: pool) {
            try await vaultStore.change(change, path, versions: versions, actor: .named(context.actor), on: $0)
        }
        return try json(meta)
    }

    func removeSecret(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let path = try secretPath(request)
        try await pool.withConnection { try await vaultStore.remove(path, actor: .named(context.actor), on: $0) }
        return try json(["removed": path.value])
    }
}

struct SecretListDocument: Encodable {
    let secrets: [SecretSummary]
    let nextAfter: String?
    enum CodingKeys: String, CodingKey { case secrets, nextAfter = "next_after" }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(secrets, forKey: .secrets)
        try c.encode(nextAfter, forKey: .nextAfter)
    }
}

/// A value, as text when it is UTF-8 and as base64 otherwise (exactly one of the two).
struct SecretDocument: Encodable {
    let path: String
    let version: Int
    let value: String?
    let valueBase64: String?
    let createdAt: Date
    let createdBy: String
    let expiresAt: Date?

    init(_ s: SecretValue) {
        path = s.path
        version = s.version
        if let text = String(validating: s.value, as: UTF8.self) {
            value = text
            valueBase64 = nil
        } else {
            value = nil
            valueBase64 = Data(s.value).base64EncodedString()
        }
        createdAt = s.createdAt
        createdBy = s.createdBy
        expiresAt = s.expiresAt
    }

    enum CodingKeys: String, CodingKey {
        case path, version, value, valueBase64 = "value_base64", createdAt = "created_at", createdBy = "created_by", expiresAt = "expires_at"
    }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(path, forKey: .path)
        try c.encode(version, forKey: .version)
        if let value { try c.encode(value, forKey: .value) } else { try c.encode(valueBase64, forKey: .valueBase64) }
        try c.encode(createdAt, forKey: .createdAt)
        try c.encode(createdBy, forKey: .createdBy)
        try c.encode(expiresAt, forKey: .expiresAt)
    }
}
