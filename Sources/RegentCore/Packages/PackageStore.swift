import Foundation
import PostgresClient

/// Workflow package versions and routes in PostgreSQL (`workflow.packages`,
/// `workflow.package_routes`).
///
/// Every change runs in one transaction with its audit row and its bus event, so either all
/// of them happen or none. Lock protocol (see docs/packages.md): a run start and a deploy or
/// route to an existing version take `FOR KEY SHARE` on the version's row; an unload takes
/// `FOR UPDATE NOWAIT` on it, then checks routes and unfinished runs. So a start racing an
/// unload either holds the row first (the unload is refused, naming the start) or waits for
/// the unload and finds the version gone; and no version is deleted while a route or an
/// unfinished run names it.
public struct PackageStore: Sendable {
    public struct Deployed: Sendable, Hashable, Encodable {
        public let workflowType: WorkflowType
        public let contentHash: String
        /// False when this version was already stored (nothing new was written).
        public let freshlyStored: Bool
        /// False when the type's route already pointed at this version.
        public let routeChanged: Bool
        public let previousHash: String?

        enum CodingKeys: String, CodingKey {
            case workflowType = "workflow_type", contentHash = "content_hash", freshlyStored = "freshly_stored", routeChanged = "route_changed"
            case previousHash = "previous_hash"
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(workflowType, forKey: .workflowType)
            try c.encode(contentHash, forKey: .contentHash)
            try c.encode(freshlyStored, forKey: .freshlyStored)
            try c.encode(routeChanged, forKey: .routeChanged)
            try c.encode(previousHash, forKey: .previousHash)  // null, not absent
        }
    }

    public struct Routed: Sendable, Hashable {
        public let routeChanged: Bool
        public let previousHash: String?
    }

    public struct Version: Sendable, Hashable, Encodable {
        public let workflowType: String
        public let contentHash: String
        public let deployedAt: Date
        public let deployedBy: String
        public let sizeBytes: Int64
        public let fileCount: Int
        public let stepCount: Int
        public let routed: Bool
        /// Unfinished runs pinned to this version (an unload is refused while there are any).
        public var runningRuns: Int64 = 0

        enum CodingKeys: String, CodingKey {
            case workflowType = "workflow_type", contentHash = "content_hash", deployedAt = "deployed_at", deployedBy = "deployed_by"
            case sizeBytes = "size_bytes", fileCount = "file_count", stepCount = "step_count", routed, runningRuns = "running_runs"
        }
    }

    public struct Page: Sendable, Encodable {
        public let versions: [Version]
        /// Pass as `after` for the next page; nil on the last one.
        public let nextCursor: String?

        enum CodingKeys: String, CodingKey { case versions = "packages", nextCursor = "next_cursor" }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(versions, forKey: .versions)
            try c.encode(nextCursor, forKey: .nextCursor)
        }
    }

    public struct Stored: Sendable {
        public let workflowType: String
        public let contentHash: String
        public let archive: [UInt8]
        public let manifestJSON: String
        public let routed: Bool
    }

    let publisher: UUID?

    /// `publisher`: recorded on the events (a node's instance id; nil for the CLI).
    public init(publisher: UUID? = nil) { self.publisher = publisher }

    // MARK: Deploy and route

    /// Stores `package` (unless that version is stored already) and routes its type to it,
    /// in one transaction.
    public func deploy(_ package: PackageContents, actor: AuditActor, on conn: PostgresConnection) async throws -> Deployed {
        let type = package.manifest.workflowType
        let hash = package.contentHash
        return try await conn.withTransaction { conn in
            let fresh = try await conn.query(
                """
                INSERT INTO workflow.packages (content_hash, workflow_type, manifest, archive, size_bytes, file_count, step_count, deployed_by)
                VALUES (\(hash), \(type.value), \(package.manifest.normalizedJSON)::jsonb, \(PostgresBytes(package.canonicalArchive)),
                        \(Int64(package.totalBytes)), \(package.files.count), \(package.manifest.steps.count), \(actor.description))
                ON CONFLICT (content_hash) DO NOTHING
                RETURNING content_hash
                """, purpose: "packages: store").count == 1
            if !fresh {
                guard let storedType = try await Self.lockVersion(hash, on: conn) else {
                    throw RegentError(.conflict, "version \(hash) was unloaded while this deploy ran", hint: "deploy it again")
                }
                guard storedType == type.value else {
                    throw RegentError(.conflict, "version \(hash) is stored for type \(quoted(storedType)), not \(quoted(type.value))")
                }
            }
            let route = try await Self.point(type: type.value, at: hash, actor: actor, on: conn)
            let detail = AuditLog.detail([
                "workflow_type": type.value, "content_hash": hash, "freshly_stored": fresh, "route_changed": route.routeChanged,
                "previous_hash": route.previousHash as Any,
            ])
            try await conn.query(AuditLog.insert(actor: actor, action: "package.deploy", detailJSON: detail), purpose: "packages: audit")
            try await EventPublisher.publish(topic: try EventTopic("package.deployed"), payload: try EventPayload(trusted: detail), publisher: publisher, on: conn)
            if route.routeChanged {
                try await EventPublisher.publish(topic: try EventTopic("package.routed"), payload: try EventPayload(trusted: detail), publisher: publisher, on: conn)
            }
            return Deployed(workflowType: type, contentHash: hash, freshlyStored: fresh, routeChanged: route.routeChanged, previousHash: route.previousHash)
        }
    }

    /// Points `type` at the stored version `hash` (rollback or roll-forward); idempotent.
    /// An unknown version is refused with the versions stored for the type.
    public func route(type: WorkflowType, to hash: String, actor: AuditActor, on conn: PostgresConnection) async throws -> Routed {
        try Self.checkHash(hash)
        return try await conn.withTransaction { conn in
            guard let storedType = try await Self.lockVersion(hash, on: conn), storedType == type.value else {
                let known = try await conn.query(
                    "SELECT content_hash FROM workflow.packages WHERE workflow_type = \(type.value) ORDER BY deployed_at, content_hash",
                    purpose: "packages: versions of a type"
                ).map { try $0.decode("content_hash", as: String.self) }
                throw RegentError(
                    .notFound, "type \(quoted(type.value)) has no stored version \(hash)",
                    hint: known.isEmpty ? "nothing is stored for it; deploy a package first" : "stored versions: \(known.joined(separator: ", "))")
            }
            let route = try await Self.point(type: type.value, at: hash, actor: actor, on: conn)
            if route.routeChanged {
                let detail = AuditLog.detail(["workflow_type": type.value, "content_hash": hash, "previous_hash": route.previousHash as Any])
                try await conn.query(AuditLog.insert(actor: actor, action: "package.route", detailJSON: detail), purpose: "packages: audit")
                try await EventPublisher.publish(topic: try EventTopic("package.routed"), payload: try EventPayload(trusted: detail), publisher: publisher, on: conn)
            }
            return route
        }
    }

    /// Takes the version's row FOR KEY SHARE (an unload then waits, or is refused); its type, nil when not stored.
    static func lockVersion(_ hash: String, on conn: PostgresConnection) async throws -> String? {
        try await conn.query("SELECT workflow_type FROM workflow.packages WHERE content_hash = \(hash) FOR KEY SHARE", purpose: "packages: lock version")
            .first?.decode("workflow_type")
    }

    /// Sets the route row (inserting it for a new type); reports what it was.
    static func point(type: String, at hash: String, actor: AuditActor, on conn: PostgresConnection) async throws -> Routed {
        let inserted = try await conn.query(
            """
            INSERT INTO workflow.package_routes (workflow_type, content_hash, routed_by) VALUES (\(type), \(hash), \(actor.description))
            ON CONFLICT (workflow_type) DO NOTHING RETURNING workflow_type
            """, purpose: "packages: create route")
        if inserted.count == 1 { return Routed(routeChanged: true, previousHash: nil) }
        let previous: String = try await conn.query(
            "SELECT content_hash FROM workflow.package_routes WHERE workflow_type = \(type) FOR UPDATE", purpose: "packages: lock route"
        ).single().decode("content_hash")
        guard previous != hash else { return Routed(routeChanged: false, previousHash: previous) }
        try await conn.query(
            """
            UPDATE workflow.package_routes SET content_hash = \(hash), routed_at = clock_timestamp(), routed_by = \(actor.description)
            WHERE workflow_type = \(type)
            """, purpose: "packages: move route")
        return Routed(routeChanged: true, previousHash: previous)
    }

    // MARK: Unload

    /// Deletes the stored version `hash` of `type`. Refused while it is routed, while an
    /// unfinished run is pinned to it, and while a run start (or a deploy or route naming it)
    /// is in flight; each refusal names what holds it.
    public func unload(type: WorkflowType, hash: String, actor: AuditActor, on conn: PostgresConnection) async throws {
        try Self.checkHash(hash)
        try await conn.withTransaction { conn in
            let rows: PostgresRows
            do {
                rows = try await conn.query(
                    "SELECT workflow_type FROM workflow.packages WHERE content_hash = \(hash) FOR UPDATE NOWAIT", purpose: "packages: lock for unload")
            } catch let error as PostgresError where error.sqlState == "55P03" {
                throw RegentError(
                    .conflict, "version \(hash) is held by a run start (or a deploy or route naming it) in flight",
                    hint: "retry in a moment; if a run started, it pins the version until it finishes")
            }
            guard let storedType: String = try rows.first?.decode("workflow_type"), storedType == type.value else {
                throw RegentError(.notFound, "type \(quoted(type.value)) has no stored version \(hash)")
            }
            let routed = try await conn.query(
                "SELECT workflow_type FROM workflow.package_routes WHERE content_hash = \(hash)", purpose: "packages: routes of a version")
            if !routed.isEmpty {
                throw RegentError(
                    .conflict, "version \(hash) is the routed version of \(quoted(type.value)): the active version cannot be unloaded",
                    hint: "route the type to another version first (regent packages route)")
            }
            // Unfinished runs on the version, and child runs recorded on it by a parent (the
            // version chosen when the parent's step became ready) that have not started or not
            // finished: each pins it. Children name their parent run.
            let pins = try await conn.query(
                """
                SELECT label, count(*) OVER () AS total FROM (
                    SELECT r.run_id || COALESCE(' (child of ' || r.parent_run_id || ')', '') AS label, r.started_at AS at, r.run_id AS id
                    FROM workflow.runs r WHERE r.package_hash = \(hash) AND r.state = 'running'
                    UNION ALL
                    SELECT r.run_id || ' (queued for its concurrency key)', r.started_at, r.run_id
                    FROM workflow.run_waiting w JOIN workflow.runs r ON r.run_id = w.run_id WHERE r.package_hash = \(hash)
                    UNION ALL
                    SELECT 'a child recorded by run ' || s.run_id || ' (step ' || s.name || ') and not started', s.waiting_since, s.child_run_id
                    FROM workflow.run_steps s
                    WHERE s.child_hash = \(hash) AND s.state = 'waiting'
                      AND NOT EXISTS (SELECT 1 FROM workflow.runs c WHERE c.run_id = s.child_run_id)
                ) AS p ORDER BY at, id LIMIT 5
                """, purpose: "packages: pins of a version")
            if let first = pins.first {
                let total: Int64 = try first.decode("total")
                let labels = try pins.map { try $0.decode("label", as: String.self) }
                throw RegentError(
                    .conflict, "version \(hash) is pinned by \(total) unfinished run\(total == 1 ? "" : "s"): \(labels.joined(separator: ", "))\(total > 5 ? ", …" : "")",
                    hint: "unload it after they finish (or cancel them)")
            }
            try await conn.query("DELETE FROM workflow.packages WHERE content_hash = \(hash)", purpose: "packages: delete version")
            let detail = AuditLog.detail(["workflow_type": type.value, "content_hash": hash])
            try await conn.query(AuditLog.insert(actor: actor, action: "package.unload", detailJSON: detail), purpose: "packages: audit")
            try await EventPublisher.publish(topic: try EventTopic("package.unloaded"), payload: try EventPayload(trusted: detail), publisher: publisher, on: conn)
        }
    }

    // MARK: Reading

    /// Stored versions sorted by type, then deploy time; `limit` per page (1-1000).
    public func list(type: WorkflowType? = nil, after cursor: String? = nil, limit: Int = 100, on conn: PostgresConnection) async throws -> Page {
        guard (1...1000).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to 1000, got \(limit)") }
        let position = try cursor.map { c throws(RegentError) in try Self.parseCursor(c) }
        let rows = try await conn.query(
            """
            SELECT p.workflow_type, p.content_hash, p.deployed_at, p.deployed_by, p.size_bytes, p.file_count, p.step_count,
                   (r.workflow_type IS NOT NULL) AS routed, (extract(epoch FROM p.deployed_at) * 1000000)::bigint AS deployed_us,
                   (SELECT count(*) FROM workflow.runs x WHERE x.package_hash = p.content_hash AND x.state = 'running')
                   + (SELECT count(*) FROM workflow.run_waiting w JOIN workflow.runs x ON x.run_id = w.run_id WHERE x.package_hash = p.content_hash)
                     AS running_runs
            FROM workflow.packages p
            LEFT JOIN workflow.package_routes r ON r.workflow_type = p.workflow_type AND r.content_hash = p.content_hash
            WHERE (\(type?.value)::text IS NULL OR p.workflow_type = \(type?.value))
              AND (\(position?.type)::text IS NULL
                   OR (p.workflow_type, p.deployed_at, p.content_hash) > (\(position?.type), to_timestamp(\(position?.micros)::float8 / 1000000), \(position?.hash)))
            ORDER BY p.workflow_type, p.deployed_at, p.content_hash
            LIMIT \(limit + 1)
            """, purpose: "packages: list")
        var versions: [Version] = []
        var last: (String, Int64, String)?
        for row in rows.prefix(limit) {
            var v = Version(
                workflowType: try row.decode("workflow_type"), contentHash: try row.decode("content_hash"), deployedAt: try row.decode("deployed_at"),
                deployedBy: try row.decode("deployed_by"), sizeBytes: try row.decode("size_bytes"), fileCount: try row.decode("file_count"),
                stepCount: try row.decode("step_count"), routed: try row.decode("routed"))
            v.runningRuns = try row.decode("running_runs")
            versions.append(v)
            last = (v.workflowType, try row.decode("deployed_us"), v.contentHash)
        }
        let next = rows.count > limit ? last.map { "\($0.1).\($0.2).\($0.0)" } : nil
        return Page(versions: versions, nextCursor: next)
    }

    static func parseCursor(_ cursor: String) throws(RegentError) -> (micros: Int64, hash: String, type: String) {
        let parts = cursor.split(separator: ".", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, let micros = Int64(parts[0]), isHash(String(parts[1])), WorkflowType.isValid(String(parts[2])) else {
            throw RegentError(.invalidInput, "invalid cursor \(quoted(String(cursor.prefix(200)))): pass the next_cursor of the previous page")
        }
        return (micros, String(parts[1]), String(parts[2]))
    }

    /// The routed version of `type`, if it has one.
    public func routedHash(type: WorkflowType, on conn: PostgresConnection) async throws -> String? {
        try await conn.query("SELECT content_hash FROM workflow.package_routes WHERE workflow_type = \(type.value)", purpose: "packages: route of a type")
            .first?.decode("content_hash")
    }

    /// Every route: type → hash.
    public func routes(on conn: PostgresConnection) async throws -> [String: String] {
        var out: [String: String] = [:]
        for row in try await conn.query("SELECT workflow_type, content_hash FROM workflow.package_routes", purpose: "packages: routes") {
            out[try row.decode("workflow_type")] = try row.decode("content_hash")
        }
        return out
    }

    /// One stored version, archive included; nil when it is not stored.
    public func fetch(hash: String, on conn: PostgresConnection) async throws -> Stored? {
        try Self.checkHash(hash)
        guard let row = try await conn.query(
            """
            SELECT p.workflow_type, p.content_hash, p.archive, p.manifest::text AS manifest,
                   EXISTS (SELECT 1 FROM workflow.package_routes r WHERE r.content_hash = p.content_hash) AS routed
            FROM workflow.packages p WHERE p.content_hash = \(hash)
            """, purpose: "packages: fetch"
        ).first else { return nil }
        return try Self.stored(row)
    }

    /// Hands every stored version to `body`, `pageSize` at a time: at most one page of archives
    /// is held at once (a node's catalog verifies each and keeps only its manifest and file list).
    public func forEach(pageSize: Int = 20, on pool: ConnectionPool, _ body: (Stored) throws -> Void) async throws {
        var after = ""
        while true {
            let rows = try await pool.query(
                """
                SELECT p.workflow_type, p.content_hash, p.archive, p.manifest::text AS manifest,
                       EXISTS (SELECT 1 FROM workflow.package_routes r WHERE r.content_hash = p.content_hash) AS routed
                FROM workflow.packages p WHERE p.content_hash > \(after) ORDER BY p.content_hash LIMIT \(pageSize)
                """, purpose: "packages: load all")
            var last: String?
            for row in rows {
                let stored = try Self.stored(row)
                last = stored.contentHash
                try body(stored)
            }
            guard rows.count == pageSize, let last else { return }
            after = last
        }
    }

    static func stored(_ row: PostgresRow) throws -> Stored {
        Stored(
            workflowType: try row.decode("workflow_type"), contentHash: try row.decode("content_hash"),
            archive: try row.decode("archive", as: PostgresBytes.self).bytes, manifestJSON: try row.decode("manifest"), routed: try row.decode("routed"))
    }

    // MARK: Helpers

    static func isHash(_ text: String) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    public static func checkHash(_ text: String) throws(RegentError) {
        guard isHash(text) else {
            throw RegentError(.invalidInput, "invalid content hash \(quoted(String(text.prefix(80)))): 64 lowercase hex digits (regent packages list shows them)")
        }
    }
}
