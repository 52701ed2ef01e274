import ArgumentParser
import Foundation
import PostgresClient
import RegentCore

/// `--vault-key-file` / `--vault-previous-key-file` (else `REGENT_VAULT_KEY` /
/// `REGENT_VAULT_PREVIOUS_KEY`): the vault's key-encryption keys, as `regent serve` and every
/// `regent vault` command take them.
struct VaultKeyOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "The vault's key-encryption key: a file of 32 random bytes (raw or base64), mode 0600 (else REGENT_VAULT_KEY, base64).",
        valueName: "path"))
    var vaultKeyFile: String?
    @Option(help: ArgumentHelp(
        "During a key rotation, the previous key (opens what the rotation has not moved yet; else REGENT_VAULT_PREVIOUS_KEY).",
        valueName: "path"))
    var vaultPreviousKeyFile: String?

    func keyring() throws -> VaultKeyring? {
        try validated { try VaultKeyring.load(keyFile: vaultKeyFile, previousKeyFile: vaultPreviousKeyFile) }
    }

    func requiredKeyring() throws -> VaultKeyring {
        guard let keyring = try keyring() else {
            throw ValidationError("this command needs the vault key: --vault-key-file FILE or REGENT_VAULT_KEY (docs/vault.md)")
        }
        return keyring
    }
}

struct VaultCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vault", abstract: "Versioned secrets sealed at rest (docs/vault.md).",
        subcommands: [
            InitKey.self, Status.self, Put.self, Get.self, List.self, Metadata.self, ChangeVersions<DeleteKind>.self, ChangeVersions<UndeleteKind>.self,
            ChangeVersions<DestroyKind>.self, Remove.self, RotateKey.self,
        ])

    struct PathArgument: ParsableArguments {
        @Argument(help: "The secret's path, e.g. payments/stripe-key.") var path: String
        func value() throws -> SecretPath { try validated { try SecretPath(path) } }
        func validate() throws { _ = try value() }
    }

    struct InitKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "init-key", abstract: "Write a new random vault key to a file (base64, mode 0600); never overwrites one.")
        @Option(help: ArgumentHelp("Where to write the key.", valueName: "path")) var out: String

        func run() async throws {
            let key = VaultKey.generate()
            try validated { try VaultKey.write(key, to: out) }
            print("wrote vault key \(key.id) to \(out) (mode 0600); keep a copy somewhere safe: without it no secret sealed under it can be read")
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The vault's keys, what each seals, and whether the given key can write.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var keys: VaultKeyOptions
        @OptionGroup var log: LogOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try log.bootstrap()
            let store = VaultStore(keyring: try keys.keyring())
            let status = try await PostgresConnection.withConnection(try database.configuration()) { try await store.status(on: $0) }
            if json { return try printJSON(status) }
            print("secrets: \(status.secrets)")
            print(table(["key", "state", "versions sealed", "held here"], status.keys.map { [$0.keyID, $0.state, String($0.versions), $0.heldHere ? "yes" : "no"] }))
            print(status.canWrite ? "this key can write" : "sealed: \(status.sealedReason ?? "?")")
        }
    }

    struct Put: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Store a new version of a secret, read from standard input or --from-file (never from a flag: it would land in shell history).")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var keys: VaultKeyOptions
        @OptionGroup var log: LogOptions
        @OptionGroup var path: PathArgument
        @Option(help: ArgumentHelp("Read the value from this file instead of standard input.", valueName: "path")) var fromFile: String?
        @Option(help: "Keep at most this many versions (1-100; default: the secret's setting, 10 for a new one).") var maxVersions: Int?
        @Option(help: "The version expires after this long (e.g. 30d).") var expiresIn: String?
        @Flag(help: "Keep a trailing newline (by default one trailing \\n is dropped, as `echo` adds it).") var keepNewline = false
        @Option(help: "Recorded as who wrote it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if let maxVersions, !(1...100).contains(maxVersions) { throw ValidationError("--max-versions must be 1 to 100, got \(maxVersions)") }
            if let expiresIn { _ = try parseDuration(expiresIn, flag: "--expires-in", maximum: .seconds(10 * 365 * 86_400)) }
        }

        func run() async throws {
            try log.bootstrap()
            let keyring = try keys.requiredKeyring()
            var value = try readValue()
            defer { value.withUnsafeMutableBytes { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) } }
            let expires = try expiresIn.map { try parseDuration($0, flag: "--expires-in") }
            let written = try await PostgresConnection.withConnection(try database.configuration()) { [value] conn in
                try await VaultStore(keyring: keyring).put(try path.value(), value: value, maxVersions: maxVersions, expiresIn: expires, actor: .named(actor), on: conn)
            }
            if json { return try printJSON(written) }
            print("\(written.path): version \(written.version)")
        }

        func readValue() throws -> [UInt8] {
            var bytes: [UInt8]
            if let fromFile {
                guard let data = FileManager.default.contents(atPath: fromFile) else { throw ValidationError("cannot read --from-file \(fromFile)") }
                bytes = Array(data)
            } else {
                bytes = Array(FileHandle.standardInput.readDataToEndOfFile())
            }
            if !keepNewline, bytes.last == 10 { bytes.removeLast() }
            guard bytes.count <= VaultStore.maxValueBytes else {
                throw ValidationError("the value has \(bytes.count) bytes; at most \(VaultStore.maxValueBytes) are allowed")
            }
            return bytes
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a secret's value alone (the current version, or --version N); the read is audited.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var keys: VaultKeyOptions
        @OptionGroup var log: LogOptions
        @OptionGroup var path: PathArgument
        @Option(help: "The version to read (default: the current one).") var version: Int?
        @Option(help: "Why it is read (recorded in the audit row).") var purpose: String?
        @Option(help: "Recorded as who read it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"

        func validate() throws {
            if let version, version < 1 { throw ValidationError("--version must be 1 or more") }
        }

        func run() async throws {
            try log.bootstrap()
            let keyring = try keys.requiredKeyring()
            let secret = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await VaultStore(keyring: keyring).get(try path.value(), version: version, purpose: purpose, actor: .named(actor), on: conn)
            }
            FileHandle.standardOutput.write(Data(secret.value))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Secret paths under a prefix (never values).")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var keys: VaultKeyOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "A path or a prefix ending in / (default: all).") var prefix = ""
        @Option(help: "Paths per page (1-1000).") var limit = 100
        @Option(help: "Continue after this path (printed after a full page).") var after: String?
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            guard (1...1000).contains(limit) else { throw ValidationError("--limit must be 1 to 1000, got \(limit)") }
            try validated { try SecretPath.checkPrefix(prefix) }
        }

        func run() async throws {
            try log.bootstrap()
            let page = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await VaultStore(keyring: nil).list(prefix: prefix, after: after, limit: limit, on: conn)
            }
            if json { return try printJSON(page) }
            let f = ISO8601DateFormatter()
            print(table(["path", "version", "updated"], page.map { [$0.path, String($0.currentVersion), f.string(from: $0.updatedAt)] }))
            if page.count == limit, let last = page.last { print("more: --after \(last.path)") }
        }
    }

    struct Metadata: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A secret's versions: who wrote each, when, its key, and whether it was deleted or destroyed.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var keys: VaultKeyOptions
        @OptionGroup var log: LogOptions
        @OptionGroup var path: PathArgument
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try log.bootstrap()
            let meta = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await VaultStore(keyring: nil).metadata(try path.value(), on: conn)
            }
            if json { return try printJSON(meta) }
            let f = ISO8601DateFormatter()
            print("\(meta.path): current version \(meta.currentVersion), keeps \(meta.maxVersions)")
            print(table(["version", "created", "by", "bytes", "key", "state"], meta.versions.map { v in
                let state = v.destroyedAt != nil ? "destroyed" : v.deletedAt != nil ? "deleted" : v.expiresAt.map { $0 <= Date() ? "expired" : "expires \(f.string(from: $0))" } ?? "live"
                return [String(v.version), f.string(from: v.createdAt), v.createdBy, String(v.sizeBytes), v.keyID, state]
            }))
        }
    }

    struct VersionsOptions: ParsableArguments {
        @Option(name: .customLong("version"), help: "A version (repeat for several; default: the current one).") var versions: [Int] = []
        @Option(help: "Recorded as who did it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"
        @Flag(help: "Print JSON.") var json = false
        func validate() throws {
            guard versions.allSatisfy({ $0 >= 1 }), versions.count <= 100 else { throw ValidationError("--version takes numbers of 1 or more (at most 100)") }
        }
    }

    static func change(_ change: VaultStore.VersionChange, _ path: PathArgument, _ versions: VersionsOptions, _ database: DatabaseOptions) async throws {
        let meta = try await PostgresConnection.withConnection(try database.configuration()) { conn in
            try await VaultStore(keyring: nil).change(change, try path.value(), versions: versions.versions, actor: .named(versions.actor), on: conn)
        }
        if versions.json { return try printJSON(meta) }
        print("\(meta.path): \(change.rawValue) done; current version \(meta.currentVersion)")
    }

    /// What `delete`, `undelete` and `destroy` do to versions (one command type each).
    protocol VersionChangeKind { static var change: VaultStore.VersionChange { get }; static var abstract: String { get } }
    enum DeleteKind: VersionChangeKind {
        static var change: VaultStore.VersionChange { .delete }
        static var abstract: String { "Soft-delete versions of a secret (reads refuse them; `undelete` brings them back)." }
    }
    enum UndeleteKind: VersionChangeKind {
        static var change: VaultStore.VersionChange { .undelete }
        static var abstract: String { "Bring back soft-deleted versions of a secret." }
    }
    enum DestroyKind: VersionChangeKind {
        static var change: VaultStore.VersionChange { .destroy }
        static var abstract: String { "Erase versions of a secret for good (their ciphertext and data key are overwritten)." }
    }

    struct ChangeVersions<Kind: VersionChangeKind>: AsyncParsableCommand {
        static var configuration: CommandConfiguration { CommandConfiguration(commandName: Kind.change.rawValue, abstract: Kind.abstract) }
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var keys: VaultKeyOptions
        @OptionGroup var log: LogOptions
        @OptionGroup var path: PathArgument
        @OptionGroup var versions: VersionsOptions
        func run() async throws {
            try log.bootstrap()
            try await VaultCommand.change(Kind.change, path, versions, database)
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a secret with all its versions (its audit rows stay).")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var keys: VaultKeyOptions
        @OptionGroup var log: LogOptions
        @OptionGroup var path: PathArgument
        @Option(help: "Recorded as who did it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"
        func run() async throws {
            try log.bootstrap()
            try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await VaultStore(keyring: nil).remove(try path.value(), actor: .named(actor), on: conn)
            }
            print("removed \(path.path)")
        }
    }

    struct RotateKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-key",
            abstract: "Move the vault to a new key: re-seal every data key under it, page by page; resumable, safe while nodes serve.",
            discussion: """
                Give the key the vault uses now as --vault-key-file and the new one as --new-key-file. Before running it, \
                restart the nodes with --vault-key-file NEW --vault-previous-key-file OLD, so that every node opens both \
                (docs/vault.md, "Rotating the key"). Interrupted, it is run again with the same keys and goes on.
                """)
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var keys: VaultKeyOptions
        @OptionGroup var log: LogOptions
        @Option(help: ArgumentHelp("The new key (from `regent vault init-key`).", valueName: "path")) var newKeyFile: String
        @Option(help: "Versions re-sealed per transaction (1-10000).") var pageSize = 200
        @Option(help: "Recorded as who rotated.") var actor = "cli:\(ProcessInfo.processInfo.userName)"
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            guard (1...10_000).contains(pageSize) else { throw ValidationError("--page-size must be 1 to 10000, got \(pageSize)") }
        }

        func run() async throws {
            try log.bootstrap()
            let keyring = try keys.requiredKeyring()
            let newKey = try validated { try VaultKey.load(file: newKeyFile) }
            let rotation = try validated { try VaultRotation(keyring: keyring, newKey: newKey, pageSize: pageSize) }
            let progress = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await rotation.run(actor: .named(actor), on: conn)
            }
            if json { return try printJSON(progress) }
            print("re-sealed \(progress.resealed) data keys under \(progress.newKeyID) in \(progress.pages) pages; \(progress.finished ? "the old key is retired" : "\(progress.remaining) left: run it again")")
        }
    }
}
