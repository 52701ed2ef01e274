/// One migration file compiled into the binary: `sql/<schema>/NNNN_<name>.sql`.
public struct Migration: Sendable, Hashable, CustomStringConvertible {
    public let schema: String
    public let version: Int
    public let name: String
    public let sql: String
    /// SHA-256 of the file's text, recorded when it is applied.
    public let checksum: String
    /// What it does to binaries that know only the versions before it: its first line says
    /// `-- regent:expand`, `-- regent:contract` or `-- regent:breaking`; a file without one
    /// (every file written before compatibility levels existed) is breaking.
    public let kind: MigrationKind
    /// Function files (of its schema) applied inside its transaction, before its statements: a
    /// line `-- regent:functions NAME …`. For a migration that changes what a trigger hands its
    /// function: the new trigger and the new body then commit together, where the files applied
    /// after the migrations would leave a moment with the new schema and the old body.
    public let functions: [String]

    public init(schema: String, version: Int, name: String, sql: String) {
        self.schema = schema
        self.version = version
        self.name = name
        self.sql = sql
        self.checksum = SHA256.hex(sql)
        self.kind = MigrationKind(header: sql)
        self.functions = sql.split(separator: "\n").flatMap { line -> [String] in
            let words = line.split(separator: " ", omittingEmptySubsequences: true)
            guard words.count > 2, words[0] == "--", words[1] == "regent:functions" else { return [] }
            return words.dropFirst(2).map(String.init)
        }
    }

    public var description: String { "\(schema) \(zeroPadded4(version))_\(name)" }
}

/// Expand, contract or breaking (docs/operations.md, "Rolling upgrades").
public enum MigrationKind: String, Sendable, Hashable, Codable {
    /// Adds only: new tables, nullable (or defaulted) columns, new functions beside old ones,
    /// function bodies that keep their signature and behaviour. Binaries that know only the
    /// earlier versions keep working against the schema after it. Applied by booting nodes.
    case expand
    /// Removes what only earlier binaries use, once none runs: after it, a binary must know at
    /// least this version (the floor), while the binary that ships it runs without it.
    /// Applied only when asked (`regent migrate --contract`), except on a schema being
    /// created from nothing.
    case contract
    /// Needed by the binary that ships it and fatal to earlier ones: applied by booting nodes,
    /// and it raises the floor at once, so a rollout must replace every node at once (stop
    /// them all, then start the new ones). Every file written before compatibility levels
    /// existed is one; new ones should be an expand now and a contract later instead.
    case breaking

    /// Whether binaries that know only the versions before it are refused once it is applied.
    public var raisesFloor: Bool { self != .expand }

    /// The kind a file's first line declares; breaking when it declares none.
    init(header sql: String) {
        let words = sql.prefix { $0 != "\n" }.split(separator: " ", omittingEmptySubsequences: true)
        guard words.first == "--", let declared = words.dropFirst().first, declared.hasPrefix("regent:") else {
            self = .breaking
            return
        }
        self = MigrationKind(rawValue: String(declared.dropFirst("regent:".count))) ?? .breaking
    }
}

/// The live definition of one SQL function (its overloads too): `sql/<schema>/functions/<name>.sql`,
/// `CREATE OR REPLACE` statements applied after the schema's migrations (docs/operations.md,
/// "Where SQL functions live").
public struct FunctionFile: Sendable, Hashable, CustomStringConvertible {
    public let schema: String
    public let name: String
    public let sql: String

    public init(schema: String, name: String, sql: String) {
        self.schema = schema
        self.name = name
        self.sql = sql
    }

    public var description: String { "\(schema) functions/\(name).sql" }
}

/// A row of `engine.migrations`.
public struct AppliedMigration: Sendable, Hashable {
    public let schema: String
    public let version: Int
    public let name: String
    public let checksum: String
    public let appliedBy: String
    /// Rows written before engine 0006 (which records kinds) count as breaking.
    public var kind: MigrationKind = .breaking
    /// How long the file took to apply (recorded from engine 0007 on).
    public var durationMs: Double?
}

/// Every migration this binary knows, by schema.
public struct MigrationCatalog: Sendable {
    public let migrations: [Migration]
    /// The function files, by schema then name.
    public let functionFiles: [FunctionFile]

    public init(_ migrations: [Migration], functionFiles: [FunctionFile] = []) {
        self.migrations = migrations.sorted { ($0.schema, $0.version) < ($1.schema, $1.version) }
        self.functionFiles = functionFiles.sorted { ($0.schema, $0.name) < ($1.schema, $1.name) }
    }

    /// The files under `sql/`, embedded at build time.
    public static let builtIn = MigrationCatalog(
        EmbeddedMigrations.files.map { Migration(schema: $0.schema, version: $0.version, name: $0.name, sql: $0.sql) },
        functionFiles: EmbeddedMigrations.functions.map { FunctionFile(schema: $0.schema, name: $0.name, sql: $0.sql) })

    public func functionFiles(for schema: String) -> [FunctionFile] { functionFiles.filter { $0.schema == schema } }

    /// One checksum over a schema's function files (names and texts, in name order): what
    /// `engine.function_files` records once they are applied. nil when the schema has none.
    public func functionsChecksum(of schema: String) -> String? {
        let files = functionFiles(for: schema)
        guard !files.isEmpty else { return nil }
        return SHA256.hex(files.map { "\($0.name)\n\($0.sql)" }.joined(separator: "\n\u{0}\n"))
    }

    public var schemas: [String] { Array(Set(migrations.map(\.schema))).sorted() }

    public func migrations(for schema: String) -> [Migration] { migrations.filter { $0.schema == schema } }

    /// The newest version of `schema` this binary knows (0 when it knows none).
    public func latestVersion(of schema: String) -> Int { migrations(for: schema).last?.version ?? 0 }
}

/// "Migrate `schema` up to `version` and no further", parsed from `SCHEMA:VERSION`.
public struct MigrationTarget: Sendable, Hashable, CustomStringConvertible {
    public let schema: String
    public let version: Int

    public init(schema: String, version: Int) {
        self.schema = schema
        self.version = version
    }

    public init(parsing text: String, catalog: MigrationCatalog = .builtIn) throws(RegentError) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let version = Int(parts[1]), version >= 1 else {
            throw RegentError(.invalidInput, "invalid migration target \(quoted(text)): expected SCHEMA:VERSION, e.g. engine:1")
        }
        let schema = String(parts[0])
        guard catalog.schemas.contains(schema) else {
            throw RegentError(
                .invalidInput,
                "invalid migration target \(quoted(text)): unknown schema \(quoted(schema)) (known: \(catalog.schemas.joined(separator: ", ")))")
        }
        let latest = catalog.latestVersion(of: schema)
        guard version <= latest else {
            throw RegentError(
                .invalidInput, "invalid migration target \(quoted(text)): \(schema) has versions 1...\(latest) in this binary")
        }
        self.init(schema: schema, version: version)
    }

    public var description: String { "\(schema):\(version)" }
}

/// `7` → `"0007"`, as in migration file names.
func zeroPadded4(_ value: Int) -> String {
    let digits = String(value)
    return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
}
