import Crypto
import Foundation

/// A key-encryption key (KEK): 32 random bytes that seal the vault's data keys. It lives in a
/// file or an environment variable on the nodes, never in the database; the database knows it
/// only by ``id``, an HMAC of the key that reveals nothing of it.
public struct VaultKey: Sendable {
    let key: SymmetricKey
    /// `k-` and 16 hex digits: HMAC-SHA256(key, "regent vault key id v1"), first 8 bytes.
    public let id: String

    public static let byteCount = 32

    init(bytes: some ContiguousBytes) throws(RegentError) {
        let count = bytes.withUnsafeBytes { $0.count }
        guard count == Self.byteCount else {
            throw RegentError(
                .invalidInput, "a vault key is \(Self.byteCount) random bytes, and this one has \(count)",
                hint: "make one with `regent vault init-key --out FILE`")
        }
        key = SymmetricKey(data: bytes)
        let mac = HMAC<Crypto.SHA256>.authenticationCode(for: Array("regent vault key id v1".utf8), using: key)
        id = "k-" + mac.prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    /// A new random key.
    public static func generate() -> VaultKey {
        // Safe: 32 bytes are exactly what the initializer accepts.
        try! VaultKey(bytes: SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) })
    }

    /// The key as base64 text, as `init-key` writes it and `REGENT_VAULT_KEY` holds it.
    public var base64: String { key.withUnsafeBytes { Data($0).base64EncodedString() } }

    /// A key from base64 text (`REGENT_VAULT_KEY`); `source` names where it came from in errors.
    public static func fromBase64(_ text: String, source: String) throws(RegentError) -> VaultKey {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let data = Data(base64Encoded: trimmed) else {
            throw RegentError(
                .invalidInput, "\(source) is not base64 text", hint: "it holds the 44 characters `regent vault init-key` writes")
        }
        do { return try VaultKey(bytes: data) } catch {
            throw RegentError(.invalidInput, "\(source): \(error.message)", hint: error.hint)
        }
    }

    /// A key from a file: 32 raw bytes, or their base64 text. The file must be a regular file
    /// that only its owner can read or write (mode 0600 or 0400): a key readable by others is
    /// refused, since anyone who reads it reads every secret.
    public static func load(file path: String) throws(RegentError) -> VaultKey {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw RegentError(
                .invalidInput, "cannot read vault key file \(quoted(path)): \(String(cString: strerror(errno)))",
                hint: "make one with `regent vault init-key --out \(path)`")
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw RegentError(.invalidInput, "vault key file \(quoted(path)) is not a regular file")
        }
        let mode = info.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            throw RegentError(
                .invalidInput,
                "vault key file \(quoted(path)) can be read or written by its group or others (mode \(String(mode, radix: 8))); a vault key must be private to its owner",
                hint: "chmod 600 \(path)")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RegentError(.invalidInput, "cannot read vault key file \(quoted(path))")
        }
        if data.count == byteCount {
            return try VaultKey(bytes: data)
        }
        guard data.count < 256, let text = String(data: data, encoding: .utf8) else {
            throw RegentError(
                .invalidInput, "vault key file \(quoted(path)) holds \(data.count) bytes; a vault key is 32 random bytes, raw or as base64 text",
                hint: "make one with `regent vault init-key --out FILE`")
        }
        return try fromBase64(text, source: "vault key file \(quoted(path))")
    }

    /// Writes a new key to `path` as base64 text with mode 0600. Refuses to overwrite a file.
    public static func write(_ key: VaultKey, to path: String) throws(RegentError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else {
            let reason = errno == EEXIST ? "it exists (a key file is never overwritten: the secrets sealed under it would be lost)" : String(cString: strerror(errno))
            throw RegentError(.invalidInput, "cannot create vault key file \(quoted(path)): \(reason)")
        }
        defer { close(fd) }
        let bytes = Array((key.base64 + "\n").utf8)
        let written = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count, fsync(fd) == 0 else {
            throw RegentError(.invalidInput, "cannot write vault key file \(quoted(path)): \(String(cString: strerror(errno)))")
        }
    }
}

/// The keys a process holds: the current one (what it seals with when it is the vault's active
/// key) and, during a rotation, the previous ones (opened, never sealed with).
public struct VaultKeyring: Sendable {
    public let current: VaultKey
    public let previous: [VaultKey]

    public init(current: VaultKey, previous: [VaultKey] = []) {
        self.current = current
        self.previous = previous.filter { $0.id != current.id }
    }

    public var all: [VaultKey] { [current] + previous }
    public var ids: [String] { all.map(\.id) }

    public func key(_ id: String) -> VaultKey? { all.first { $0.id == id } }

    /// The keyring from the command line's files or the environment: `--vault-key-file` (else
    /// `REGENT_VAULT_KEY`), plus `--vault-previous-key-file` (else `REGENT_VAULT_PREVIOUS_KEY`)
    /// during a rotation. Nil when no key is given (the vault is sealed on this process).
    public static func load(
        keyFile: String?, previousKeyFile: String?, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(RegentError) -> VaultKeyring? {
        let current: VaultKey?
        if let keyFile {
            current = try VaultKey.load(file: keyFile)
        } else if let text = environment["REGENT_VAULT_KEY"], !text.isEmpty {
            current = try VaultKey.fromBase64(text, source: "REGENT_VAULT_KEY")
        } else {
            current = nil
        }
        var previous: VaultKey?
        if let previousKeyFile {
            previous = try VaultKey.load(file: previousKeyFile)
        } else if let text = environment["REGENT_VAULT_PREVIOUS_KEY"], !text.isEmpty {
            previous = try VaultKey.fromBase64(text, source: "REGENT_VAULT_PREVIOUS_KEY")
        }
        guard let current else {
            if previous != nil {
                throw RegentError(
                    .invalidInput, "a previous vault key was given without a current one",
                    hint: "give --vault-key-file (or REGENT_VAULT_KEY) too; the previous key only opens what a rotation has not moved yet")
            }
            return nil
        }
        return VaultKeyring(current: current, previous: previous.map { [$0] } ?? [])
    }
}

/// AES-256-GCM seals with the path and version bound as authenticated data.
enum VaultSeal {
    static let nonceBytes = 12
    static let tagBytes = 16

    static func valueAAD(path: String, version: Int) -> [UInt8] {
        Array("regent-vault/v1/value\u{0}\(path)\u{0}\(version)".utf8)
    }

    static func dataKeyAAD(path: String, version: Int, keyID: String) -> [UInt8] {
        Array("regent-vault/v1/data-key\u{0}\(path)\u{0}\(version)\u{0}\(keyID)".utf8)
    }

    /// nonce ‖ ciphertext ‖ tag.
    static func seal(_ plaintext: some DataProtocol, key: SymmetricKey, aad: [UInt8]) throws -> [UInt8] {
        let box = try AES.GCM.seal(plaintext, using: key, nonce: AES.GCM.Nonce(), authenticating: aad)
        guard let combined = box.combined else { throw RegentError(.invalidInput, "AES-GCM produced no combined form") }
        return Array(combined)
    }

    /// The plaintext, or nil when the seal does not open under `key` and `aad` (altered, moved,
    /// or sealed under another key).
    static func open(_ sealed: [UInt8], key: SymmetricKey, aad: [UInt8]) -> [UInt8]? {
        guard sealed.count >= nonceBytes + tagBytes, let box = try? AES.GCM.SealedBox(combined: sealed),
            let plain = try? AES.GCM.open(box, using: key, authenticating: aad)
        else { return nil }
        return Array(plain)
    }
}
