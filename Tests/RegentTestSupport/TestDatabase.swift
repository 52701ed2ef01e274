import EmbeddedPostgres
import Foundation
@_exported import EmbeddedPostgres
import PostgresClient

/// The PostgreSQL server tests run against: `REGENT_TEST_DATABASE_URL` when set,
/// otherwise one private cluster started for this test process and stopped at exit.
/// Every test gets a database of its own, so tests never see each other's rows.
public actor TestDatabase {
    public static let shared = TestDatabase()

    private var server: EmbeddedPostgres?
    private var adminURL: String?
    private var counter = 0

    /// The private cluster, when the tests started one (nil with REGENT_TEST_DATABASE_URL).
    public func embedded() async throws -> EmbeddedPostgres? {
        _ = try await baseURL()
        return server
    }

    private func baseURL() async throws -> String {
        if let adminURL { return adminURL }
        if let url = ProcessInfo.processInfo.environment["REGENT_TEST_DATABASE_URL"], !url.isEmpty {
            adminURL = url
            return url
        }
        // Started off the cooperative pool; the actor is free meanwhile, so callers that
        // come while it starts wait for the same start instead of starting their own.
        let start = starting ?? Task { try await offThePool { try EmbeddedPostgres.start() } }
        starting = start
        let pg = try await start.value
        if server == nil {
            server = pg
            startedServer.withLock { $0 = pg }
            atexit { startedServer.withLock { $0 }?.destroy() }
        }
        adminURL = pg.url()
        return pg.url()
    }
    private var starting: Task<EmbeddedPostgres, any Error>?

    /// Creates a fresh, empty database named after `label` and returns its configuration.
    public func freshDatabase(_ label: String = #function) async throws -> ConnectionConfiguration {
        let base = try await baseURL()
        counter += 1
        let cleaned = label.lowercased().map { $0.isLetter || $0.isNumber ? String($0) : "_" }.joined()
        let name = "t_\(getpid())_\(counter)_" + String(cleaned.prefix(30))
        let admin = try await PostgresConnection.connect(try ConnectionConfiguration(base))
        do {
            try await admin.query("CREATE DATABASE \(identifier: try SQLIdentifier(name))", purpose: "create test database")
        } catch {
            await admin.close()
            throw error
        }
        await admin.close()
        return try ConnectionConfiguration(base).withDatabase(name)
    }

    /// A connection to a fresh database.
    public func connect(_ label: String = #function) async throws -> (PostgresConnection, ConnectionConfiguration) {
        let config = try await freshDatabase(label)
        return (try await PostgresConnection.connect(config), config)
    }

    /// A connection to a fresh database for the length of `body`, closed (awaited) after it.
    public func withConnection<T>(
        _ label: String = #function, isolation: isolated (any Actor)? = #isolation,
        _ body: (PostgresConnection, ConnectionConfiguration) async throws -> T
    ) async throws -> T {
        let config = try await freshDatabase(label)
        return try await PostgresConnection.withConnection(config) { try await body($0, config) }
    }
}

import Synchronization
private let startedServer = Mutex<EmbeddedPostgres?>(nil)

/// A private cluster for tests that must own their server (restart drills).
public enum EmbeddedPostgresForTest {
    public static func start() async throws -> EmbeddedPostgres { try await offThePool { try EmbeddedPostgres.start() } }
}

/// Runs blocking work (initdb, pg_ctl) on a thread of its own and waits for it without
/// holding a thread. Called straight from a test, it held one of the cooperative pool's
/// threads (two, on two cores) for seconds: two restart drills at once froze every other
/// test of the process, whose elections and takeovers then missed their time limits.
public func offThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
        Thread { cont.resume(with: Result { try work() }) }.start()
    }
}
