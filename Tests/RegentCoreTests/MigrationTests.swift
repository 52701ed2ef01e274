import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Testing

@Suite("Migrations against a real server")
struct MigrationTests {
    let allSchemas = MigrationCatalog.builtIn.schemas

    func count(_ conn: PostgresConnection) async throws -> Int {
        try await conn.query("SELECT count(*) AS n FROM engine.migrations").single().decode("n", as: Int.self)
    }

    @Test func freshDatabaseGetsEveryFileOnceAndRecordsChecksums() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            let runner = MigrationRunner(appliedBy: "test")
            let ran = try await runner.migrate(on: conn, schemas: allSchemas)
            #expect(ran.count == MigrationCatalog.builtIn.migrations.count)
            #expect(ran.first?.schema == "engine")
            #expect(try await count(conn) == ran.count)
            let applied = try await runner.applied(on: conn)
            for file in MigrationCatalog.builtIn.migrations {
                let row = applied.first { $0.schema == file.schema && $0.version == file.version }
                #expect(row?.checksum == file.checksum)
                #expect(row?.appliedBy == "test")
            }
            // The engine tables exist and the leadership row was seeded at term 0.
            let term = try await conn.query("SELECT term FROM engine.leadership WHERE id = 1").single().decode("term", as: Int64.self)
            #expect(term == 0)
            let status = try await runner.status(on: conn, schemas: allSchemas)
            #expect(status.allSatisfy { $0.isCurrent })
        }
    }

    @Test func secondRunAppliesNothing() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            let runner = MigrationRunner(appliedBy: "test")
            try await runner.migrate(on: conn, schemas: allSchemas)
            let before = try await count(conn)
            #expect(try await runner.plan(on: conn, schemas: allSchemas).isEmpty)
            #expect(try await runner.migrate(on: conn, schemas: allSchemas).isEmpty)
            #expect(try await count(conn) == before)
        }
    }

    @Test func planChangesNothing() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            let plan = try await MigrationRunner(appliedBy: "test").plan(on: conn, schemas: allSchemas)
            #expect(plan.count == MigrationCatalog.builtIn.migrations.count)
            let present = try await conn.query("SELECT to_regclass('engine.migrations') IS NOT NULL AS p").single()
            #expect(try present.decode("p", as: Bool.self) == false)
        }
    }

    @Test func concurrentRunnersApplyEachFileExactlyOnce() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let results = try await withThrowingTaskGroup(of: Int.self) { group in
            for i in 0..<6 {
                group.addTask {
                    let conn = try await PostgresConnection.connect(config)
                    let ran = try await MigrationRunner(appliedBy: "runner-\(i)").migrate(on: conn, schemas: allSchemas)
                    await conn.close()
                    return ran.count
                }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(results.reduce(0, +) == MigrationCatalog.builtIn.migrations.count)
        #expect(results.filter { $0 > 0 }.count >= 1)
        let conn = try await PostgresConnection.connect(config)
        #expect(try await count(conn) == MigrationCatalog.builtIn.migrations.count)
        await conn.close()
    }

    @Test func tamperedChecksumIsRefused() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            let runner = MigrationRunner(appliedBy: "test")
            try await runner.migrate(on: conn, schemas: ["engine"])
            try await conn.query("UPDATE engine.migrations SET checksum = \("0000") WHERE schema_name = \("engine") AND version = \(1)")
            do {
                try await runner.migrate(on: conn, schemas: allSchemas)
                Issue.record("a changed checksum must be refused")
            } catch let error as RegentError {
                #expect(error.code == .migrationChecksumMismatch)
                #expect(error.message.contains("engine 0001_engine"))
            }
            // Nothing of the other schemas ran.
            #expect(try await count(conn) == MigrationCatalog.builtIn.migrations(for: "engine").count)
        }
    }

    @Test func newerDatabaseIsRefused() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            let runner = MigrationRunner(appliedBy: "test")
            try await runner.migrate(on: conn, schemas: allSchemas)
            try await conn.query(
                "INSERT INTO engine.migrations (schema_name, version, name, checksum, applied_by) VALUES (\("engine"), \(999), \("future"), \("x"), \("newer"))")
            do {
                try await runner.migrate(on: conn, schemas: allSchemas)
                Issue.record("a database newer than the binary must be refused")
            } catch let error as RegentError {
                #expect(error.code == .databaseNewerThanBinary)
                #expect(error.message.contains("engine is at version 999"))
                #expect(error.message.contains("only up to \(MigrationCatalog.builtIn.latestVersion(of: "engine"))"))
            }
        }
    }

    @Test func targetVersionStopsThereAndRefusesGoingBack() async throws {
        let catalog = MigrationCatalog([
            Migration(schema: "engine", version: 1, name: "engine", sql: MigrationCatalog.builtIn.migrations(for: "engine")[0].sql),
            Migration(schema: "demo", version: 1, name: "one", sql: "CREATE SCHEMA IF NOT EXISTS demo; CREATE TABLE demo.a (x int);"),
            Migration(schema: "demo", version: 2, name: "two", sql: "-- regent:expand\nCREATE TABLE demo.b (x int);"),
            Migration(schema: "demo", version: 3, name: "three", sql: "-- regent:expand\nCREATE TABLE demo.c (x int);"),
        ])
        try await TestDatabase.shared.withConnection { conn, _ in
            let runner = MigrationRunner(catalog: catalog, appliedBy: "test")
            let target = try MigrationTarget(parsing: "demo:2", catalog: catalog)
            let ran = try await runner.migrate(on: conn, schemas: ["engine", "demo"], target: target)
            #expect(ran.map(\.description) == ["engine 0001_engine", "demo 0001_one", "demo 0002_two"])
            let c = try await conn.query("SELECT to_regclass('demo.c') IS NULL AS missing").single()
            #expect(try c.decode("missing", as: Bool.self))
            await expectCode(.invalidInput) {
                try await runner.migrate(on: conn, schemas: ["demo"], target: MigrationTarget(schema: "demo", version: 1))
            }
            #expect(try await runner.migrate(on: conn, schemas: ["engine", "demo"]).map(\.version) == [3])
            expectCode(.invalidInput) { try MigrationTarget(parsing: "demo:4", catalog: catalog) }
            expectCode(.invalidInput) { try MigrationTarget(parsing: "nope:1", catalog: catalog) }
            expectCode(.invalidInput) { try MigrationTarget(parsing: "demo", catalog: catalog) }
            expectCode(.invalidInput) { try MigrationTarget(parsing: "demo:0", catalog: catalog) }
        }
    }

    @Test func failingFileRollsBackItsWholeSchema() async throws {
        let catalog = MigrationCatalog([
            Migration(schema: "engine", version: 1, name: "engine", sql: MigrationCatalog.builtIn.migrations(for: "engine")[0].sql),
            Migration(schema: "demo", version: 1, name: "one", sql: "CREATE SCHEMA IF NOT EXISTS demo; CREATE TABLE demo.a (x int);"),
            Migration(schema: "demo", version: 2, name: "broken", sql: "CREATE TABLE demo.a (x int);"),
        ])
        try await TestDatabase.shared.withConnection { conn, _ in
            await expectCode(.migrationFailed) {
                try await MigrationRunner(catalog: catalog, appliedBy: "t").migrate(on: conn, schemas: ["engine", "demo"])
            }
            let row = try await conn.query("SELECT to_regclass('demo.a') IS NULL AS gone, (SELECT count(*) FROM engine.migrations WHERE schema_name = 'demo') AS n").single()
            #expect(try row.decode("gone", as: Bool.self))
            #expect(try row.decode("n", as: Int.self) == 0)
        }
    }
}

@Suite("Modules and boot against a real server")
struct ModuleTests {
    @Test func bootSeedsModulesAndMigratesEnabledSchemas() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let result = try await Boot(options: .init(database: config, actor: "test")).run()
        #expect(Set(result.modules.map(\.name)) == ["engine", "workflow", "auth", "vault"])
        #expect(result.modules.allSatisfy { $0.enabled })
        #expect(result.enabledSchemas == ["engine", "auth", "vault", "workflow"])
        #expect(result.migrationsApplied.count == MigrationCatalog.builtIn.migrations.count)
        let schemas = try await result.pool.query(
            "SELECT count(*) AS n FROM pg_namespace WHERE nspname IN ('engine', 'workflow', 'auth', 'vault')").single()
        #expect(try schemas.decode("n", as: Int.self) == 4)
        // A second boot reads the table instead of reseeding and migrates nothing.
        let again = try await Boot(options: .init(database: config, actor: "test")).run()
        #expect(again.migrationsApplied.isEmpty)
        await result.pool.shutdown()
        await again.pool.shutdown()
    }

    @Test func operatorChoiceSurvivesReboot() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let first = try await Boot(options: .init(database: config, actor: "test")).run()
        let registry = ModuleRegistry()
        let state = try await first.pool.withConnection {
            try await registry.setEnabled("workflow", false, actor: "operator", on: $0)
        }
        #expect(state.enabled == false)
        let second = try await Boot(options: .init(database: config, actor: "test")).run()
        #expect(second.modules.first { $0.name == "workflow" }?.enabled == false)
        #expect(second.enabledSchemas == ["engine", "auth", "vault"])
        let audit = try await second.pool.query(
            "SELECT actor, action, detail->>'module' AS module FROM engine.audit ORDER BY id").single()
        #expect(try audit.decode("action", as: String.self) == "module.disabled")
        #expect(try audit.decode("actor", as: String.self) == "operator")
        #expect(try audit.decode("module", as: String.self) == "workflow")
        await first.pool.shutdown()
        await second.pool.shutdown()
    }

    @Test func invalidOrUnknownModuleNamesChangeNothing() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let boot = try await Boot(options: .init(database: config, actor: "test")).run()
        let registry = ModuleRegistry()
        try await boot.pool.withConnection { conn in
            for bad in ["", "Auth", "auth; DROP SCHEMA engine", "a\u{7}b", String(repeating: "x", count: 64)] {
                await expectCode(.invalidInput) { try await registry.setEnabled(bad, true, actor: "t", on: conn) }
            }
            do {
                _ = try await registry.setEnabled("nosuch", true, actor: "t", on: conn)
                Issue.record("an unknown module must be refused")
            } catch let error as RegentError {
                #expect(error.code == .unknownModule)
                #expect(error.message.contains("nosuch"))
            }
            await expectCode(.invalidInput) { try await registry.setEnabled("engine", false, actor: "t", on: conn) }
            let audits = try await conn.query("SELECT count(*) AS n FROM engine.audit").single().decode("n", as: Int.self)
            #expect(audits == 0)
            #expect(try await registry.list(on: conn).allSatisfy { $0.enabled })
        }
        await boot.pool.shutdown()
    }
}

@Suite("Boot beside a migration in progress")
struct BootBesideMigrationTests {
    /// A booting node joins while another runner (a leader creating or upgrading a schema,
    /// slow on a loaded machine) holds the migration lock; once the lock is free, its leader
    /// duty applies the pending expands. Before, the boot queued behind the lock and the node
    /// neither joined nor heartbeated until that run ended.
    @Test func aNodeJoinsWhileTheMigrationLockIsHeldAndAppliesExpandsOnceFree() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let setup = try await PostgresConnection.connect(config)
        let runner = MigrationRunner(appliedBy: "test")
        try await runner.migrate(on: setup, schemas: ["engine", "auth"])
        let older = try MigrationTarget(parsing: "workflow:16", catalog: .builtIn)
        try await runner.migrate(on: setup, schemas: ["workflow"], target: older)
        let holder = try await PostgresConnection.connect(config)
        try await holder.query(MigrationRunner.lockRunner)
        var cluster = Cluster(config: config)
        let node = cluster.start("beside")
        #expect(await eventually(timeout: .seconds(30)) {
            try await setup.query("SELECT count(*) AS n FROM engine.instances WHERE node_name = 'beside'").single().decode("n", as: Int.self) == 1
        })
        let version: @Sendable () async throws -> Int = {
            try await setup.query("SELECT max(version) AS v FROM engine.migrations WHERE schema_name = 'workflow'").single().decode("v", as: Int.self)
        }
        #expect(try await version() == 16)
        let expected = try await runner.plan(on: setup, schemas: ["workflow"]).last?.version ?? 16
        #expect(expected > 16)
        try await holder.query(MigrationRunner.unlockRunner)
        #expect(await eventually(timeout: .seconds(60)) { try await version() == expected })
        _ = node
        await cluster.stopAll()
        await holder.close()
        await setup.close()
    }
}
