import ArgumentParser
import Foundation
import PostgresClient
import RegentCore

/// What a deployed package may hold: shared by `serve` (its HTTP deploys) and `packages deploy`.
struct PackageLimitOptions: ParsableArguments {
    @Option(help: "Most bytes a package's files may hold once inflated (e.g. 16MiB, 512KiB, or bytes).") var packageMaxBytes = "16MiB"
    @Option(help: "Most files a package may hold.") var packageMaxFiles = PackageLimits.default.maxFiles
    @Option(help: "Longest path in a package, in bytes (16-255).") var packageMaxPath = PackageLimits.default.maxPathLength

    func limits() throws -> PackageLimits {
        let limits = PackageLimits(maxTotalBytes: try Self.parseBytes(packageMaxBytes), maxFiles: packageMaxFiles, maxPathLength: packageMaxPath)
        try validated { try limits.validate() }
        return limits
    }

    static func parseBytes(_ text: String) throws -> Int {
        let units: [(String, Int)] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("", 1)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            if let n = Int(text.dropLast(suffix.count)), n > 0, n <= (1 << 40) / scale { return n * scale }
            break
        }
        throw ValidationError("invalid --package-max-bytes \(text.debugDescription): a positive number of bytes, KiB, MiB or GiB (e.g. 16MiB)")
    }
}

struct PackagesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "packages", abstract: "Deploy, list, route (roll back), unload, show and fetch workflow packages.",
        subcommands: [Deploy.self, List.self, Route.self, Unload.self, Show.self, Fetch.self])

    static func hash(_ text: String) throws -> String {
        try validated { try PackageStore.checkHash(text) }
        return text
    }

    struct Deploy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Deploy a package (a directory, .tar or .tar.gz with workflow.json) and route its type to it; prints its content hash.",
            discussion: """
                Deploying a version that is already stored stores nothing new but still routes the type \
                to it (a re-deploy of a rolled-back version takes effect). Prints the 64-digit content \
                hash on the first line, then what changed.
                """)
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @OptionGroup var packageLimits: PackageLimitOptions
        @Argument(help: "The package: a directory, a .tar or a .tar.gz.") var path: String
        @Option(help: "Recorded in the audit log as the actor.") var actor = "cli:\(ProcessInfo.processInfo.userName)"
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try log.bootstrap()
            let contents = try PackageContents(path: path, limits: try packageLimits.limits())
            let deployed = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await PackageStore().deploy(contents, actor: .named(actor), on: conn)
            }
            if json { return try printJSON(deployed) }
            print(deployed.contentHash)
            print("\(deployed.workflowType): \(deployed.freshlyStored ? "stored" : "already stored"), "
                + (deployed.routeChanged ? "route moved" + (deployed.previousHash.map { " from \($0)" } ?? " (first version)") : "route unchanged")
                + "; \(contents.manifest.steps.count) steps, \(contents.files.count) files, \(contents.totalBytes) bytes")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stored versions, by type then deploy time; * marks the routed one.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Option(help: "Only this workflow type.") var type: String?
        @Option(help: "Versions per page (1-1000).") var limit = 100
        @Option(help: "Continue after this cursor (printed after a full page).") var after: String?
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if let type { _ = try validated { try WorkflowType(type) } }
            guard (1...1000).contains(limit) else { throw ValidationError("--limit must be 1 to 1000, got \(limit)") }
        }

        func run() async throws {
            try log.bootstrap()
            let page = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await PackageStore().list(type: try type.map { try WorkflowType($0) }, after: after, limit: limit, on: conn)
            }
            if json { return try printJSON(page) }
            print(table(["", "type", "hash", "deployed", "by", "steps", "files", "bytes"], page.versions.map { v in
                [v.routed ? "*" : "", v.workflowType, v.contentHash, ISO8601DateFormatter().string(from: v.deployedAt), v.deployedBy,
                 "\(v.stepCount)", "\(v.fileCount)", "\(v.sizeBytes)"]
            }))
            if let next = page.nextCursor { print("more: --after \(next)") }
        }
    }

    struct Route: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Point a type at a stored version (rollback or roll-forward); new runs use it, running ones keep theirs.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "Workflow type.") var type: String
        @Argument(help: "Content hash of a stored version of that type.") var hash: String
        @Option(help: "Recorded in the audit log as the actor.") var actor = "cli:\(ProcessInfo.processInfo.userName)"

        func validate() throws {
            _ = try validated { try WorkflowType(type) }
            _ = try PackagesCommand.hash(hash)
        }

        func run() async throws {
            try log.bootstrap()
            let routed = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await PackageStore().route(type: try WorkflowType(type), to: hash, actor: .named(actor), on: conn)
            }
            print(routed.routeChanged ? "\(type) → \(hash) (was \(routed.previousHash ?? "none"))" : "\(type) already routed to \(hash)")
        }
    }

    struct Unload: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a stored version: refused while it is routed or an unfinished run is pinned to it.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "Workflow type.") var type: String
        @Argument(help: "Content hash of the version.") var hash: String
        @Option(help: "Recorded in the audit log as the actor.") var actor = "cli:\(ProcessInfo.processInfo.userName)"

        func validate() throws {
            _ = try validated { try WorkflowType(type) }
            _ = try PackagesCommand.hash(hash)
        }

        func run() async throws {
            try log.bootstrap()
            try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await PackageStore().unload(type: try WorkflowType(type), hash: hash, actor: .named(actor), on: conn)
            }
            print("unloaded \(type) \(hash)")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A version's manifest and files (the routed version when no hash is given).")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "Workflow type.") var type: String
        @Argument(help: "Content hash (default: the routed version).") var hash: String?
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            _ = try validated { try WorkflowType(type) }
            if let hash { _ = try PackagesCommand.hash(hash) }
        }

        func run() async throws {
            try log.bootstrap()
            let workflowType = try WorkflowType(type)
            let stored = try await PostgresConnection.withConnection(try database.configuration()) { conn -> PackageStore.Stored in
                let store = PackageStore()
                var chosen = hash
                if chosen == nil { chosen = try await store.routedHash(type: workflowType, on: conn) }
                guard let hash = chosen else {
                    throw RegentError(.notFound, "type \(type) has no routed version", hint: "regent packages list --type \(type) shows the stored ones")
                }
                guard let row = try await store.fetch(hash: hash, on: conn), row.workflowType == type else {
                    throw RegentError(.notFound, "type \(type) has no stored version \(hash)")
                }
                return row
            }
            let entry = try PackageCatalog.verify(stored).get()
            if json {
                print("{\"workflow_type\":\(jsonQuoted(stored.workflowType)),\"content_hash\":\"\(stored.contentHash)\",\"routed\":\(stored.routed),"
                    + "\"manifest\":\(stored.manifestJSON),\"files\":[" + entry.files.map { "{\"path\":\(jsonQuoted($0.path)),\"size\":\($0.size)}" }
                    .joined(separator: ",") + "]}")
                return
            }
            let m = entry.manifest
            print("\(stored.workflowType) \(stored.contentHash)\(stored.routed ? " (routed)" : "")")
            if let d = m.description { print(d) }
            if let b = m.budget { print("budget: \(b.limit.rounded() == b.limit ? String(Int64(b.limit)) : String(b.limit)) \(b.unit)") }
            print(table(["step", "kind", "lane or wait", "after", "capabilities", "attempts", "timeout", "backoff"], m.steps.map { s in
                guard let lane = s.lane else { return [s.name, s.kind.label, waitText(s.kind), s.after.joined(separator: ","), "", "", "", ""] }
                return [s.name, "worker", lane.value, s.after.joined(separator: ","), s.capabilities.map(\.value).joined(separator: ","), "\(s.maxAttempts)",
                        compact(s.timeout), "\(compact(s.backoff.base))..\(compact(s.backoff.maximum))"]
            }))
            print(table(["file", "bytes"], entry.files.map { [$0.path, "\($0.size)"] }))
        }
    }

    struct Fetch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Download a stored version's canonical archive (a .tar whose SHA-256 is its hash), or one file of it.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "Content hash.") var hash: String
        @Option(help: "Write here instead of standard output.") var out: String?
        @Option(help: "Only this file of the package (e.g. workflow.json).") var file: String?

        func validate() throws { _ = try PackagesCommand.hash(hash) }

        func run() async throws {
            try log.bootstrap()
            guard let stored = try await PostgresConnection.withConnection(try database.configuration(), { try await PackageStore().fetch(hash: hash, on: $0) })
            else { throw RegentError(.notFound, "no stored version \(hash)") }
            let contents = try PackageCatalog.verifiedContents(stored).get()
            var bytes = stored.archive
            if let file {
                guard let f = contents.file(file) else {
                    throw RegentError(.notFound, "version \(hash) holds no file \(file.debugDescription)")
                }
                bytes = f.bytes
            }
            if let out {
                try Data(bytes).write(to: URL(fileURLWithPath: out))
            } else {
                FileHandle.standardOutput.write(Data(bytes))
            }
        }
    }
}

/// `250ms`, `30s`, `5m`, `2h`, `1.5s`: the shortest exact form.
func compact(_ d: Duration) -> String {
    let ms = Int64(d.milliseconds.rounded())
    for (unit, size) in [("h", Int64(3_600_000)), ("m", 60_000), ("s", 1000)] where ms >= size && ms % size == 0 { return "\(ms / size)\(unit)" }
    return ms >= 1000 ? "\(Double(ms) / 1000)s" : "\(ms)ms"
}

func jsonQuoted(_ s: String) -> String {
    String(decoding: try! JSONEncoder().encode(s), as: UTF8.self)
}

/// What a timer, signal or child step waits for, as the manifest says it.
func waitText(_ kind: WorkflowManifest.Kind) -> String {
    switch kind {
    case .worker: ""
    case .timer(.sleep(let d)): "sleep \(compact(d))"
    case .timer(.until(let path)): "until \(path)"
    case .signal(let name, let timeout, let continueOnTimeout):
        "signal \(name)" + (timeout.map { " (\(compact($0)), then \(continueOnTimeout ? "continue" : "fail"))" } ?? "")
    case .child(let type, let input): "child \(type)" + (input.map { " on \($0)" } ?? "")
    }
}
