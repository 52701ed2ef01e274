import Foundation
import Logging
import PostgresClient
import ServiceLifecycle
import Synchronization

/// A node's in-memory view of the stored package versions (parsed manifests keyed by content
/// hash: immutable, so caching them is safe) and of the routes (type → hash).
///
/// At start it loads every stored version and verifies it: the archive's SHA-256 must equal
/// its key, the archive must be canonical, its manifest must validate and name the row's
/// type. A row that fails is skipped with one error naming its type and hash; the others
/// load and the node runs. Afterwards the bus keeps it current: `package.deployed`,
/// `package.routed` and `package.unloaded` (subscribed before the load, so nothing published
/// in between is missed). If its subscription ends, it subscribes again and reloads.
public final class PackageCatalog: Sendable {
    public struct Entry: Sendable, Hashable {
        public let workflowType: String
        public let contentHash: String
        public let manifest: WorkflowManifest
        /// Path and size of each file.
        public let files: [PackageFileInfo]
    }

    /// A version that failed verification.
    public struct Rejected: Sendable, Hashable {
        public let workflowType: String
        public let contentHash: String
        public let reason: String
    }

    struct State {
        var entries: [String: Entry] = [:]
        var routes: [String: String] = [:]
        var rejected: [String: Rejected] = [:]
        var loaded = false
    }

    private let state = Mutex(State())
    let logger: Logger

    public init(logger: Logger = Logger(label: "regent.packages")) { self.logger = logger }

    /// The verified version `hash`, if this node holds it.
    public func entry(_ hash: String) -> Entry? { state.withLock { $0.entries[hash] } }
    /// The version `type` is routed to, as this node last heard.
    public func routedHash(_ type: String) -> String? { state.withLock { $0.routes[type] } }
    public var routes: [String: String] { state.withLock { $0.routes } }
    public var hashes: Set<String> { state.withLock { Set($0.entries.keys) } }
    public var rejected: [Rejected] { state.withLock { Array($0.rejected.values) } }
    /// Whether the first load finished.
    public var isLoaded: Bool { state.withLock { $0.loaded } }

    /// Rebuilds the catalog from the database: every version verified, every route read.
    public func reload(pool: ConnectionPool) async throws {
        let store = PackageStore()
        let routes = try await pool.withConnection { try await store.routes(on: $0) }
        var entries: [String: Entry] = [:]
        var rejected: [String: Rejected] = [:]
        // A page of archives at a time; only each version's manifest and file list are kept.
        try await store.forEach(on: pool) { row in
            switch Self.verify(row) {
            case .success(let entry): entries[row.contentHash] = entry
            case .failure(let reason):
                rejected[row.contentHash] = Rejected(workflowType: row.workflowType, contentHash: row.contentHash, reason: reason.description)
                logger.error(
                    "stored package version failed verification and was skipped; redeploy or unload it",
                    metadata: ["workflow_type": "\(row.workflowType)", "content_hash": "\(row.contentHash)", "reason": "\(reason)"])
            }
        }
        state.withLock { s in
            s.entries = entries
            s.routes = routes
            s.rejected = rejected
            s.loaded = true
        }
        logger.info("package catalog loaded", metadata: ["versions": "\(entries.count)", "skipped": "\(rejected.count)", "routes": "\(routes.count)"])
    }

    /// Checks a stored row: hash, canonical form, manifest and type.
    public static func verify(_ row: PackageStore.Stored) -> Result<Entry, RegentError> {
        verifiedContents(row).map { contents in
            Entry(workflowType: row.workflowType, contentHash: row.contentHash, manifest: contents.manifest, files: contents.fileInfo)
        }
    }

    /// The stored row read back as a package, once verified (the archive is parsed and hashed
    /// once: when it is canonical, the package's hash is the archive's).
    public static func verifiedContents(_ row: PackageStore.Stored) -> Result<PackageContents, RegentError> {
        func tampered(_ digest: String) -> RegentError {
            RegentError(.conflict, "its archive hashes to \(digest), not to its key (tampered or damaged)")
        }
        let contents: PackageContents
        do {
            contents = try PackageContents(archive: row.archive, limits: .stored)
        } catch {
            let digest = SHA256.hex(bytes: row.archive)
            return .failure(digest != row.contentHash ? tampered(digest) : RegentError(.conflict, "its manifest or files no longer validate: \(error.message)"))
        }
        guard contents.canonicalArchive == row.archive else {
            let digest = SHA256.hex(bytes: row.archive)
            return .failure(digest != row.contentHash ? tampered(digest) : RegentError(.conflict, "its archive is not in canonical form"))
        }
        guard contents.contentHash == row.contentHash else { return .failure(tampered(contents.contentHash)) }
        guard contents.manifest.workflowType.value == row.workflowType else {
            return .failure(RegentError(.conflict, "its manifest names type \(quoted(contents.manifest.workflowType.value))"))
        }
        return .success(contents)
    }

    /// Applies one bus event; versions it names that this node lacks are read and verified.
    func apply(_ event: Event, pool: ConnectionPool) async throws {
        guard let data = event.payload.data(using: .utf8),
            let fields = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let type = fields["workflow_type"] as? String, let hash = fields["content_hash"] as? String
        else { return }
        switch event.topic {
        case "package.unloaded":
            state.withLock { s in
                s.entries[hash] = nil
                s.rejected[hash] = nil
            }
        case "package.deployed", "package.routed":
            if entry(hash) == nil, let row = try await pool.withConnection({ try await PackageStore().fetch(hash: hash, on: $0) }) {
                switch Self.verify(row) {
                case .success(let entry): state.withLock { $0.entries[hash] = entry }
                case .failure(let reason):
                    state.withLock { $0.rejected[hash] = Rejected(workflowType: type, contentHash: hash, reason: reason.description) }
                    logger.error(
                        "stored package version failed verification and was skipped; redeploy or unload it",
                        metadata: ["workflow_type": "\(type)", "content_hash": "\(hash)", "reason": "\(reason)"])
                }
            }
            // The route as it is now, not as the event says: events of one type can be
            // applied after a later change was already read.
            let current = try await pool.withConnection { try await PackageStore().routedHash(type: try WorkflowType(type), on: $0) }
            state.withLock { $0.routes[type] = current }
        default:
            break
        }
    }

    static let topics = ["package.deployed", "package.routed", "package.unloaded"]

    /// Follows the bus until cancelled: subscribes, loads, applies events; starts over
    /// (after a pause) if the subscription ends or the database fails.
    func follow(bus: EventBus, pool: ConnectionPool) async {
        var delay = Duration.milliseconds(200)
        while !Task.isCancelled {
            do {
                guard try await WorkflowSchema.has("workflow.packages", pool) else {
                    try await Task.sleep(for: .seconds(1))
                    continue
                }
                let subscription = try await bus.subscribe(topics: Self.topics)
                defer { subscription.cancel() }
                try await reload(pool: pool)
                delay = .milliseconds(200)
                for try await event in subscription { try await apply(event, pool: pool) }
                if Task.isCancelled { return }
                logger.warning("package catalog's event subscription ended; reloading")
            } catch is CancellationError {
                return
            } catch {
                if Task.isCancelled { return }
                logger.warning("package catalog could not follow the bus; retrying", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
            }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(5))
        }
    }
}

/// A file of a package: its path and size.
public struct PackageFileInfo: Sendable, Hashable, Codable {
    public let path: String
    public let size: Int
}

extension PackageLimits {
    /// Limits for re-reading stored versions: what deploy admitted under any configured limits.
    public static let stored = PackageLimits(maxTotalBytes: 1 << 30, maxFiles: 100_000, maxPathLength: pathLengthCeiling)
}

/// Runs a node's catalog follower as a service.
struct PackageCatalogService: Service {
    let catalog: PackageCatalog
    let bus: EventBus
    let pool: ConnectionPool

    func run() async throws {
        await cancelWhenGracefulShutdown { [catalog, bus, pool] in
            await catalog.follow(bus: bus, pool: pool)
        }
    }
}
