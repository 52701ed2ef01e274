import Foundation
import Logging
import PostgresClient

/// Indexes on hot tables, built online: `sql/<schema>/indexes/<name>.sql` holds one
/// `CREATE INDEX CONCURRENTLY IF NOT EXISTS` statement. A migration's CREATE INDEX holds a SHARE
/// lock on its table for the whole build (on a million runs, seconds in which no run starts or
/// finishes); a concurrent build blocks no reads or writes. It cannot run inside a transaction,
/// so it is not a migration: the leader builds each missing one after the schema's migrations
/// (`ModuleMigrationDuty`), and rebuilds one a crashed build left invalid. Until it exists the
/// queries that want it still answer, through the indexes they had before.
public enum OnlineIndexes {
    public struct Index: Sendable, Hashable {
        public let schema: String
        public let name: String
        public let table: String
        let sql: String
        var qualified: String { "\(schema).\(name)" }
    }

    public static let all: [Index] = EmbeddedMigrations.indexes.map { Index(schema: $0.schema, name: $0.name, table: $0.table, sql: $0.sql) }

    /// The indexes of `schemas` whose table exists and which are missing or invalid.
    static func pending(schemas: [String], on conn: PostgresConnection) async throws -> [(index: Index, invalid: Bool)] {
        let wanted = all.filter { schemas.contains($0.schema) }
        guard !wanted.isEmpty else { return [] }
        let rows = try await conn.query(
            """
            SELECT w.name, (SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(w.name)) AS valid
            FROM unnest(\(wanted.map(\.qualified))::text[], \(wanted.map { "\($0.schema).\($0.table)" })::text[]) AS w(name, tab)
            WHERE to_regclass(w.tab) IS NOT NULL
            """, purpose: "online indexes: which are missing")
        var pending: [(Index, Bool)] = []
        for row in rows {
            let name = try row.decode("name", as: String.self)
            let valid = try row.decodeOptional("valid", as: Bool.self)
            guard valid != true, let index = wanted.first(where: { $0.qualified == name }) else { continue }
            pending.append((index, valid == false))
        }
        return pending
    }

    /// Builds what is missing (one at a time, outside any transaction); returns the names built.
    /// Identifiers come from the files compiled in, checked by the build (lowercase identifiers).
    @discardableResult
    public static func ensure(schemas: [String], on conn: PostgresConnection, logger: Logger? = nil) async throws -> [String] {
        var built: [String] = []
        for (index, invalid) in try await pending(schemas: schemas, on: conn) {
            // A leader stepping down cancels its duties: a build is long, so stop between them (a
            // cancel that arrives between two statements would otherwise be lost on an idle session).
            try Task.checkCancellation()
            if invalid {
                // A build that died (a crash, a deposed leader's session ended) leaves an invalid index behind.
                try await conn.query(PostgresQuery(unsafeSQL: "DROP INDEX CONCURRENTLY IF EXISTS \(index.qualified)"), purpose: "online indexes: drop an invalid one")
            }
            try Task.checkCancellation()
            logger?.notice("building an index online", metadata: ["index": "\(index.qualified)", "table": "\(index.schema).\(index.table)"])
            let started = ContinuousClock.now
            try await conn.query(PostgresQuery(unsafeSQL: index.sql), purpose: "online indexes: build \(index.name)")
            logger?.notice("index built", metadata: ["index": "\(index.qualified)", "ms": "\(Int(started.duration(to: .now).milliseconds))"])
            built.append(index.qualified)
        }
        return built
    }
}
