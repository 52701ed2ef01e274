import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Testing

/// Rolling upgrades: expand and contract migrations, the compatibility floor, bounded lock
/// waits, and what `regent migrate --plan` reads from a file.
@Suite("Compatibility levels against a real server")
struct CompatibilityTests {
    static let engineFiles = MigrationCatalog.builtIn.migrations(for: "engine")

    /// The built-in engine files and `demo` files 1...`upTo` of this release history:
    /// 1 creates, 2 expands (a table), 3 expands (a nullable column), 4 contracts (drops the
    /// table 2 made), 5 expands again.
    static func catalog(demoUpTo: Int) -> MigrationCatalog {
        let demo = [
            Migration(schema: "demo", version: 1, name: "one", sql: "CREATE SCHEMA IF NOT EXISTS demo; CREATE TABLE demo.items (id int PRIMARY KEY);"),
            Migration(schema: "demo", version: 2, name: "two", sql: "-- regent:expand\nCREATE TABLE demo.old_notes (id int);"),
            Migration(schema: "demo", version: 3, name: "three", sql: "-- regent:expand\nALTER TABLE demo.items ADD COLUMN label text;"),
            Migration(schema: "demo", version: 4, name: "four", sql: "-- regent:contract\nDROP TABLE demo.old_notes;"),
            Migration(schema: "demo", version: 5, name: "five", sql: "-- regent:expand\nCREATE TABLE demo.more (id int);"),
        ]
        return MigrationCatalog(engineFiles + demo.prefix(demoUpTo))
    }

    static func runner(_ demoUpTo: Int, lockTimeout: Duration? = nil) -> MigrationRunner {
        MigrationRunner(catalog: catalog(demoUpTo: demoUpTo), appliedBy: "release-\(demoUpTo)", lockTimeout: lockTimeout)
    }

    @Test func kindsAreReadFromTheFirstLineAndRecorded() async throws {
        #expect(Self.catalog(demoUpTo: 5).migrations(for: "demo").map(\.kind) == [.breaking, .expand, .expand, .contract, .expand])
        #expect(Migration(schema: "x", version: 1, name: "x", sql: "-- regent:breaking\nSELECT 1").kind == .breaking)
        #expect(Migration(schema: "x", version: 1, name: "x", sql: "--   regent:expand  \nSELECT 1").kind == .expand)
        #expect(Migration(schema: "x", version: 1, name: "x", sql: "SELECT 1 -- regent:expand").kind == .breaking)
        // Every file before compatibility levels counts as breaking; engine 0006 records kinds.
        let engine = MigrationCatalog.builtIn.migrations(for: "engine")
        #expect(engine.prefix(5).allSatisfy { $0.kind == .breaking })
        #expect(engine[5].kind == .expand && engine[5].name == "compatibility_levels")
        try await TestDatabase.shared.withConnection { conn, _ in
            try await Self.runner(3).migrate(on: conn, schemas: ["engine", "demo"])
            let applied = try await Self.runner(3).applied(on: conn)
            #expect(applied.filter { $0.schema == "demo" }.map(\.kind) == [.breaking, .expand, .expand])
            #expect(applied.first { $0.schema == "engine" && $0.version == 6 }?.kind == .expand)
            #expect(applied.first { $0.schema == "engine" && $0.version == 1 }?.kind == .breaking)
            #expect(MigrationRunner.floor(of: "demo", in: applied) == 1)
            // From engine 0007 on, each file's duration is recorded (0007 itself included).
            #expect(applied.first { $0.schema == "engine" && $0.version == 6 }?.durationMs == nil)
            #expect(applied.filter { $0.schema == "demo" || ($0.schema == "engine" && $0.version >= 7) }.allSatisfy { ($0.durationMs ?? -1) >= 0 })
        }
    }

    /// The rollout: a newer binary expands the schema; the older binary still starts against it
    /// (and finds it current); the contract waits until asked; after it, the older binary is
    /// refused, naming the floor and what to run instead.
    @Test func anOlderBinaryRunsUntilTheContractAndIsRefusedAfterIt() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            let schemas = ["engine", "demo"]
            #expect(try await Self.runner(2).migrate(on: conn, schemas: schemas).count == Self.engineFiles.count + 2)
            // The new release (files up to 5) applies only the expand file before its contract.
            let new = Self.runner(5)
            #expect(try await new.plan(on: conn, schemas: schemas).map(\.version) == [3])
            #expect(try await new.migrate(on: conn, schemas: schemas).map(\.version) == [3])
            #expect(try await new.migrate(on: conn, schemas: schemas).isEmpty, "the contract is never applied unasked")
            let newStatus = try #require(try await new.status(on: conn, schemas: schemas).last)
            #expect(newStatus.appliedVersion == 3 && newStatus.heldContract == 4 && newStatus.floor == 1 && newStatus.isCurrent)
            // The old release (up to 2) verifies, applies nothing, and finds the schema current.
            let old = Self.runner(2)
            let applied = try await old.applied(on: conn)
            try old.verify(applied, schemas: schemas)
            #expect(try await old.migrate(on: conn, schemas: schemas).isEmpty)
            #expect(try await old.status(on: conn, schemas: schemas).allSatisfy(\.isCurrent))
            // The operator contracts once every node runs the new release.
            #expect(try await new.plan(on: conn, schemas: schemas, contract: true).map(\.version) == [4, 5])
            #expect(try await new.migrate(on: conn, schemas: schemas, contract: true).map(\.version) == [4, 5])
            #expect(MigrationRunner.floor(of: "demo", in: try await new.applied(on: conn)) == 4)
            let gone = try await conn.query("SELECT to_regclass('demo.old_notes') IS NULL AS gone").single().decode("gone", as: Bool.self)
            #expect(gone)
            // Now the old release is refused at once, saying which version it needs.
            let contracted = try await new.applied(on: conn)
            for release in [2, 3] {
                do {
                    try Self.runner(release).verify(contracted, schemas: schemas)
                    Issue.record("release \(release) must be refused below the floor")
                } catch let error as RegentError {
                    #expect(error.code == .databaseNewerThanBinary)
                    #expect(error.message.contains("needs a binary that knows version 4 or later"), "\(error.message)")
                    #expect(error.message.contains("only up to \(release)"))
                    #expect(error.hint?.contains("0004") == true)
                }
                #expect(try await !Self.runner(release).status(on: conn, schemas: schemas).last!.isCurrent)
            }
            // A binary that knows the contract itself runs on.
            try Self.runner(4).verify(try await new.applied(on: conn), schemas: schemas)
        }
    }

    /// A breaking file (every file before compatibility levels) is applied by booting nodes,
    /// as the binary shipping it needs it, and raises the floor at once.
    /// A migration's `-- regent:functions` line applies those function files inside its own
    /// transaction, before its statements: its trigger finds the body it needs (function files
    /// are otherwise applied only after every migration of the schema). A name the binary does
    /// not carry fails the migration, naming it, and applies nothing.
    @Test func aMigrationAppliesTheFunctionFilesItNamesInItsOwnTransaction() async throws {
        let one = Migration(schema: "demo", version: 1, name: "one", sql: "CREATE SCHEMA IF NOT EXISTS demo; CREATE TABLE demo.items (id int PRIMARY KEY, label text);")
        let two = Migration(
            schema: "demo", version: 2, name: "two",
            sql: """
                -- regent:expand
                -- regent:functions stamp
                CREATE TRIGGER items_stamped BEFORE INSERT ON demo.items FOR EACH ROW EXECUTE FUNCTION demo.stamp();
                INSERT INTO demo.items (id) VALUES (1);
                """)
        #expect(two.kind == .expand)
        #expect(two.functions == ["stamp"])
        #expect(one.functions.isEmpty)
        let stamp = FunctionFile(
            schema: "demo", name: "stamp",
            sql: "CREATE OR REPLACE FUNCTION demo.stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.label := 'stamped'; RETURN NEW; END $$;")
        try await TestDatabase.shared.withConnection { conn, _ in
            try await MigrationRunner(catalog: MigrationCatalog(Self.engineFiles + [one]), appliedBy: "old").migrate(on: conn, schemas: ["engine", "demo"])
            let missing = MigrationRunner(catalog: MigrationCatalog(Self.engineFiles + [one, two]), appliedBy: "missing")
            do {
                try await missing.migrate(on: conn, schemas: ["engine", "demo"])
                Issue.record("a migration naming a function file the binary lacks must fail")
            } catch let error as RegentError {
                #expect(error.code == .migrationFailed)
                #expect(error.message.contains("stamp"), "\(error)")
            }
            #expect(MigrationRunner.version(of: "demo", in: try await missing.applied(on: conn)) == 1, "nothing of file 2 applied")
            #expect(try await conn.query("SELECT count(*)::int AS n FROM demo.items").single().decode("n", as: Int.self) == 0)

            let runner = MigrationRunner(catalog: MigrationCatalog(Self.engineFiles + [one, two], functionFiles: [stamp]), appliedBy: "new")
            #expect(try await runner.migrate(on: conn, schemas: ["engine", "demo"]).map(\.version) == [2])
            #expect(try await conn.query("SELECT label FROM demo.items WHERE id = 1").single().decode("label", as: String.self) == "stamped")
        }
    }

    @Test func aBreakingMigrationIsAppliedByNodesAndRaisesTheFloorAtOnce() async throws {
        let files = [
            Migration(schema: "demo", version: 1, name: "one", sql: "CREATE SCHEMA IF NOT EXISTS demo; CREATE TABLE demo.items (id int);"),
            Migration(schema: "demo", version: 2, name: "two", sql: "-- regent:expand\nCREATE TABLE demo.b (id int);"),
            Migration(schema: "demo", version: 3, name: "three", sql: "-- regent:breaking\nALTER TABLE demo.items RENAME COLUMN id TO item_id;"),
        ]
        let old = MigrationRunner(catalog: MigrationCatalog(Self.engineFiles + files.prefix(2)), appliedBy: "old")
        let new = MigrationRunner(catalog: MigrationCatalog(Self.engineFiles + files), appliedBy: "new")
        try await TestDatabase.shared.withConnection { conn, _ in
            try await old.migrate(on: conn, schemas: ["engine", "demo"])
            #expect(try await new.migrate(on: conn, schemas: ["engine", "demo"]).map(\.version) == [3])
            let applied = try await new.applied(on: conn)
            #expect(MigrationRunner.floor(of: "demo", in: applied) == 3)
            #expect(applied.last { $0.schema == "demo" }?.kind == .breaking)
            do {
                try old.verify(applied, schemas: ["engine", "demo"])
                Issue.record("a binary below a breaking migration must be refused")
            } catch let error as RegentError {
                #expect(error.code == .databaseNewerThanBinary)
            }
        }
    }

    /// Nodes never rewrite (or scan under a blocking lock) a hot table of a live database: such
    /// a file waits for an operator's `regent migrate`, and the nodes say so; on a schema created
    /// from nothing (empty tables) they apply it.
    @Test func aHotTableRewriteWaitsForAnOperator() async throws {
        let files = Self.catalog(demoUpTo: 2).migrations + [
            Migration(schema: "demo", version: 3, name: "retype", sql: "-- regent:breaking\nALTER TABLE demo.items ALTER COLUMN id TYPE bigint;"),
            Migration(schema: "demo", version: 4, name: "after", sql: "-- regent:expand\nCREATE TABLE demo.later (id int);"),
        ]
        func runner(automatic: Bool) -> MigrationRunner {
            MigrationRunner(catalog: MigrationCatalog(files), appliedBy: automatic ? "node" : "operator", automatic: automatic, hotTables: ["demo.items"])
        }
        try await TestDatabase.shared.withConnection { conn, _ in
            try await Self.runner(2).migrate(on: conn, schemas: ["engine", "demo"])
            let node = runner(automatic: true)
            #expect(try await node.migrate(on: conn, schemas: ["engine", "demo"]).isEmpty)
            let applied = try await node.applied(on: conn)
            #expect(try node.heldForOperator(applied: applied, schemas: ["engine", "demo"]).map(\.version) == [3])
            #expect(try await !node.status(on: conn, schemas: ["engine", "demo"]).last!.isCurrent, "the node needs it: not ready")
            // The operator applies it (and what follows).
            #expect(try await runner(automatic: false).migrate(on: conn, schemas: ["engine", "demo"]).map(\.version) == [3, 4])
            #expect(try await node.status(on: conn, schemas: ["engine", "demo"]).last!.isCurrent)
        }
        try await TestDatabase.shared.withConnection { conn, _ in
            let ran = try await runner(automatic: true).migrate(on: conn, schemas: ["engine", "demo"])
            #expect(ran.filter { $0.schema == "demo" }.count == 4, "a schema created from nothing: nothing to rewrite")
        }
    }

    @Test func aSchemaCreatedFromNothingTakesItsContractsAtOnce() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            let ran = try await Self.runner(5).migrate(on: conn, schemas: ["engine", "demo"])
            #expect(ran.filter { $0.schema == "demo" }.map(\.version) == [1, 2, 3, 4, 5])
        }
    }

    /// A node's migration never waits behind live traffic with every claim queued behind it:
    /// past the lock timeout it gives up, changes nothing, says why, and succeeds later.
    @Test func aMigrationGivesUpOnABusyTableAndChangesNothing() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        try await PostgresConnection.withConnection(config) { conn in
            try await Self.runner(2).migrate(on: conn, schemas: ["engine", "demo"])
            let traffic = try await PostgresConnection.connect(config)
            try await traffic.query("BEGIN")
            try await traffic.query("INSERT INTO demo.items (id) VALUES (1)")
            let started = ContinuousClock.now
            do {
                try await Self.runner(3, lockTimeout: .milliseconds(300)).migrate(on: conn, schemas: ["engine", "demo"])
                Issue.record("the ALTER TABLE must give up while a transaction holds the table")
            } catch let error as RegentError {
                #expect(error.code == .migrationFailed)
                #expect(error.message.contains("waited more than") && error.message.contains("table lock"), "\(error.message)")
            }
            #expect(started.duration(to: .now) < .seconds(20))
            let column = try await conn.query(
                "SELECT count(*) AS n FROM information_schema.columns WHERE table_schema = 'demo' AND column_name = 'label'"
            ).single().decode("n", as: Int.self)
            #expect(column == 0)
            #expect(try await Self.runner(3).applied(on: conn).filter { $0.schema == "demo" }.count == 2)
            // Other sessions were never queued behind the migration: the traffic's own
            // transaction goes on and commits.
            try await traffic.query("INSERT INTO demo.items (id) VALUES (2)")
            try await traffic.query("COMMIT")
            await traffic.close()
            #expect(try await Self.runner(3, lockTimeout: .milliseconds(300)).migrate(on: conn, schemas: ["engine", "demo"]).map(\.version) == [3])
        }
    }

    @Test func theEffectsOfAFileAreReadFromItsStatements() {
        let e = MigrationEffects.effects(of: """
            -- ALTER TABLE in a comment is not a statement
            CREATE TABLE workflow.fresh (id int);
            CREATE INDEX fresh_idx ON workflow.fresh (id);
            ALTER TABLE workflow.fresh ADD COLUMN y int;
            CREATE FUNCTION workflow.f() RETURNS void LANGUAGE plpgsql AS $fn$
            BEGIN ALTER TABLE workflow.ready ADD COLUMN z int; END $fn$;
            CREATE INDEX CONCURRENTLY ready_x_idx ON workflow.ready (execution_id);
            CREATE UNIQUE INDEX runs_y_idx ON ONLY workflow.runs (run_id);
            ALTER TABLE workflow.executions ALTER COLUMN lane TYPE text, ADD COLUMN note text DEFAULT 'x;y';
            ALTER TABLE IF EXISTS workflow.leases ADD COLUMN at timestamptz DEFAULT clock_timestamp();
            ALTER TABLE workflow.attempts SET (fillfactor = 70);
            ALTER TABLE workflow.runs ADD CONSTRAINT c CHECK (depth >= 0) NOT VALID;
            ALTER TABLE workflow.runs DROP CONSTRAINT d, ADD CONSTRAINT d CHECK (state IN ('a', 'b')) NOT VALID;
            ALTER TABLE workflow.runs VALIDATE CONSTRAINT c;
            CREATE TRIGGER t AFTER UPDATE ON workflow.run_steps FOR EACH ROW EXECUTE FUNCTION workflow.f();
            UPDATE workflow.packages SET x = 1 WHERE y = 2;
            DELETE FROM engine.audit;
            DROP TABLE IF EXISTS demo.a, demo.b CASCADE;
            LOCK TABLE engine.events IN SHARE ROW EXCLUSIVE MODE;
            """)
        let described = e.map { "\($0.table) \($0.lock) \($0.rewrites ? "rewrite" : $0.scans ? "scan" : "-")" }
        #expect(described == [
            "workflow.ready SHARE UPDATE EXCLUSIVE scan",
            "workflow.runs SHARE scan",
            "workflow.executions ACCESS EXCLUSIVE rewrite",
            "workflow.leases ACCESS EXCLUSIVE rewrite",
            "workflow.attempts SHARE UPDATE EXCLUSIVE -",
            "workflow.runs ACCESS EXCLUSIVE -",
            "workflow.runs ACCESS EXCLUSIVE -",
            "workflow.runs SHARE UPDATE EXCLUSIVE scan",
            "workflow.run_steps SHARE ROW EXCLUSIVE -",
            "workflow.packages ROW EXCLUSIVE -",
            "engine.audit ROW EXCLUSIVE scan",
            "demo.a ACCESS EXCLUSIVE -",
            "demo.b ACCESS EXCLUSIVE -",
            "engine.events SHARE ROW EXCLUSIVE -",
        ], "\(described)")
        // The history as the plan would print it: 0009 rewrote the queue's hot table.
        let q9 = MigrationCatalog.builtIn.migrations(for: "workflow")[8]
        #expect(q9.name == "queue_hot_path")
        #expect(q9.effects.contains { $0.table == "workflow.executions" && $0.rewrites && $0.onHotTable })
    }

    /// A column retyped to a domain the same file created with no constraint keeps its file;
    /// once the domain has a constraint, a retype to it rewrites (PostgreSQL checks every value).
    @Test func aColumnRetypedToAPlainDomainIsNoRewrite() {
        let plain = MigrationEffects.effects(of: """
            CREATE DOMAIN workflow.step_kind AS text;
            ALTER TABLE workflow.run_steps ALTER COLUMN kind TYPE workflow.step_kind, ALTER COLUMN name TYPE text;
            ALTER TABLE workflow.runs ALTER COLUMN kind TYPE workflow.step_kind;
            ALTER DOMAIN workflow.step_kind ADD CONSTRAINT k CHECK (VALUE IN ('a')) NOT VALID;
            ALTER TABLE workflow.executions ALTER COLUMN kind TYPE workflow.step_kind;
            CREATE DOMAIN workflow.checked AS text CHECK (VALUE <> '');
            ALTER TABLE workflow.leases ALTER COLUMN note TYPE workflow.checked;
            """)
        #expect(plain.map { "\($0.table) \($0.rewrites ? "rewrite" : "-")" } == [
            "workflow.run_steps rewrite", "workflow.runs -", "workflow.executions rewrite", "workflow.leases rewrite",
        ], "a retype to text is still read as a rewrite; the others by their domain: \(plain)")
    }

    /// workflow 0021 retypes columns of executions, run_steps and runs to plain domains: a node
    /// applies it by itself, and no table or index of theirs gets a new file (no rewrite), while
    /// the rules it moved into the domains refuse what the table constraints refused.
    @Test func workflow0021RetypesHotColumnsWithoutARewrite() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        try await PostgresConnection.withConnection(config) { conn in
            let operator_ = MigrationRunner(appliedBy: "operator")
            _ = try await operator_.migrate(on: conn, schemas: ["engine", "workflow"], target: MigrationTarget(schema: "workflow", version: 20))
            func files() async throws -> [String: Int] {
                let rows = try await conn.query("""
                    SELECT c.relname AS name, c.relfilenode::bigint AS file FROM pg_class c
                    WHERE c.relnamespace = 'workflow'::regnamespace AND c.relkind IN ('r', 'i')
                      AND (c.relname LIKE 'executions%' OR c.relname LIKE 'run_steps%' OR c.relname LIKE 'runs%')
                      AND c.relname <> 'run_steps_child_hash_idx'
                    """)
                var out: [String: Int] = [:]
                for row in rows { out[try row.decode("name", as: String.self)] = try row.decode("file", as: Int.self) }
                return out
            }
            let before = try await files()
            #expect(before.count >= 8, "\(before)")
            let node = MigrationRunner(appliedBy: "node", automatic: true)
            let ran = try await node.migrate(on: conn, schemas: ["engine", "workflow"], target: MigrationTarget(schema: "workflow", version: 21))
            #expect(ran.map(\.version) == [21], "a node applies it: nothing in it waits for an operator")
            #expect(try await files() == before)
            for (value, domain) in [("bogus", "step_state"), ("robot", "step_kind"), ("step_1", "step_id"), ("ABC", "sha256_hex"), ("x:1", "execution_flow_key")] {
                do {
                    try await conn.query("SELECT \(value)::text::workflow.\(identifier: try SQLIdentifier(domain))")
                    Issue.record("workflow.\(domain) took \(value)")
                } catch let error as PostgresError {
                    #expect(error.sqlState == "23514", "\(error)")
                }
            }
            try await conn.query("SELECT 'succeeded'::text::workflow.step_state, 'c:k'::text::workflow.execution_flow_key")
            // The rules restated without counted repetitions accept exactly what the old
            // expressions accepted.
            let ids = "0123456789abcdefghjkmnpqrs"
            let samples = ["", "a", "lane-1", "a b", "é", String(repeating: "x", count: 128), String(repeating: "x", count: 129),
                           "step_" + ids, "step_" + ids.dropLast(), "step_" + ids + "t", "step_" + ids.uppercased(), "run_" + ids,
                           String(repeating: "ab12", count: 16), String(repeating: "ab12", count: 16) + "0", String(repeating: "AB12", count: 16)]
            for (domain, old) in [("queue_ident", "^[A-Za-z0-9_.:-]{1,128}$"), ("step_id", "^step_[0-9a-z]{26}$"), ("sha256_hex", "^[0-9a-f]{64}$")] {
                for sample in samples {
                    let before = try await conn.query("SELECT \(sample) ~ \(old) AS ok").single().decode("ok", as: Bool.self)
                    var now = true
                    do { try await conn.query("SELECT \(sample)::text::workflow.\(identifier: try SQLIdentifier(domain))") } catch is PostgresError { now = false }
                    #expect(now == before, "workflow.\(domain) on \(sample.debugDescription)")
                }
            }
        }
    }

    /// Workflow 0022 moves the runs columns nothing updates after a start into domains: a node
    /// applies it by itself, no table or index of runs gets a new file (no rewrite, no rebuild),
    /// each domain refuses what the table's rule refused, and a run with a bad value is still
    /// refused at its start.
    @Test func workflow0022RetypesRunColumnsWithoutARewrite() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        try await PostgresConnection.withConnection(config) { conn in
            _ = try await MigrationRunner(appliedBy: "operator").migrate(
                on: conn, schemas: ["engine", "workflow"], target: MigrationTarget(schema: "workflow", version: 21))
            func files() async throws -> [String: Int] {
                let rows = try await conn.query("""
                    SELECT c.relname AS name, c.relfilenode::bigint AS file FROM pg_class c
                    WHERE c.relnamespace = 'workflow'::regnamespace AND c.relkind IN ('r', 'i')
                      AND (c.relname LIKE 'runs%' OR c.relname LIKE 'run_steps%' OR c.relname LIKE 'signals%' OR c.relname LIKE 'run_waiting%')
                    """)
                var out: [String: Int] = [:]
                for row in rows { out[try row.decode("name", as: String.self)] = try row.decode("file", as: Int.self) }
                return out
            }
            let before = try await files()
            #expect(before.count >= 8, "\(before)")
            let ran = try await MigrationRunner(appliedBy: "node", automatic: true).migrate(
                on: conn, schemas: ["engine", "workflow"], target: MigrationTarget(schema: "workflow", version: 22))
            #expect(ran.map(\.version) == [22], "a node applies it: nothing in it waits for an operator")
            #expect(try await files() == before)
            let checks = try await conn.query("""
                SELECT count(*)::int AS n FROM pg_constraint WHERE conrelid = 'workflow.runs'::regclass AND contype = 'c'
                """).single().decode("n", as: Int.self)
            #expect(checks == 6, "state, reason, unfinished, run_id, package_hash and idempotency_key stay table rules")
            let refused: [(PostgresQuery, String)] = [
                ("SELECT '[]'::jsonb::workflow.run_input", "an array input"), ("SELECT 9::workflow.run_depth", "depth 9"),
                ("SELECT (-1)::workflow.run_depth", "depth -1"), ("SELECT 'x:1'::text::workflow.run_flow_key", "a flow key not r:"),
                ("SELECT 0::workflow.run_budget", "a budget of 0"), ("SELECT 'a b'::text::workflow.run_namespace", "a namespace with a space"),
                ("SELECT repeat('a', 129)::workflow.run_namespace", "a namespace of 129 characters"),
            ]
            for (query, what) in refused {
                do {
                    try await conn.query(query)
                    Issue.record("\(what) was taken")
                } catch let error as PostgresError {
                    #expect(error.sqlState == "23514", "\(error)")
                }
            }
            try await conn.query("""
                SELECT '{}'::jsonb::workflow.run_input, 8::workflow.run_depth, 'r:t/k'::text::workflow.run_flow_key,
                       0.5::workflow.run_budget, 'runs'::text::workflow.run_namespace
                """)
            // The rule still holds where runs are written: an array input is refused, and nothing is made.
            do {
                try await conn.query("""
                    INSERT INTO workflow.runs (run_id, workflow_type, package_hash, input, started_by, namespace, depth, state)
                    VALUES ('run_' || repeat('0', 26), 't', repeat('a', 64), '[1]', 'test', 'runs', 0, 'running')
                    """)
                Issue.record("a run with an array input was stored")
            } catch let error as PostgresError {
                #expect(error.sqlState == "23514", "\(error)")
            }
            let triggers = try await conn.query("""
                SELECT count(*)::int AS n FROM pg_trigger WHERE tgrelid = 'workflow.runs'::regclass AND tgname IN ('run_flow_changed', 'flow_settle_runs')
                """).single().decode("n", as: Int.self)
            #expect(triggers == 2, "the runs triggers came back")
        }
    }

    /// The rule for every expand migration from now on: it never rewrites or scans a hot table
    /// while holding a lock that blocks its traffic. (Those are done online, in pages, or as
    /// a manual step with a runbook entry.)
    @Test func noExpandMigrationRewritesOrScansAHotTableUnderABlockingLock() {
        for file in MigrationCatalog.builtIn.migrations where file.kind == .expand {
            let bad = file.effects.filter { $0.onHotTable && $0.blocksTraffic && ($0.rewrites || $0.scans) }
            #expect(bad.isEmpty, "\(file): \(bad)")
        }
    }
}

/// One home for each SQL function: `sql/<schema>/functions/<name>.sql` (docs/operations.md,
/// "Where SQL functions live").
@Suite("Function files against a real server")
struct FunctionFileTests {
    let allSchemas = MigrationCatalog.builtIn.schemas

    /// Every SQL function of Regent's schemas has exactly one home, and every such file defines
    /// a live function of its name; after a migration their checksum is recorded.
    @Test func everyFunctionHasOneHomeAndTheAppliedFilesAreRecorded() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            let runner = MigrationRunner(appliedBy: "test")
            try await runner.migrate(on: conn, schemas: allSchemas)
            let live = try await conn.query(
                """
                SELECT DISTINCT n.nspname AS schema, p.proname AS name FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = ANY (\(allSchemas)) ORDER BY 1, 2
                """).map { "\(try $0.decode("schema", as: String.self)).\(try $0.decode("name", as: String.self))" }
            let files = MigrationCatalog.builtIn.functionFiles
            #expect(!live.isEmpty)
            for function in live {
                #expect(files.filter { "\($0.schema).\($0.name)" == function }.count == 1, "\(function) needs exactly one function file")
            }
            for file in files {
                #expect(live.contains("\(file.schema).\(file.name)"), "\(file) defines no live function")
                #expect(file.sql.contains("FUNCTION \(file.schema).\(file.name)("), "\(file) defines another function")
            }
            for schema in Set(files.map(\.schema)) {
                let row = try await conn.query("SELECT checksum, binary_level FROM engine.function_files WHERE schema_name = \(schema)").single()
                #expect(try row.decode("checksum", as: String.self) == MigrationCatalog.builtIn.functionsChecksum(of: schema), "\(schema)")
                #expect(try row.decode("binary_level", as: Int.self) == MigrationCatalog.builtIn.latestVersion(of: schema))
            }
            #expect(try await runner.functionsPending(on: conn, schemas: allSchemas).isEmpty)
            #expect(try await !runner.hasWork(on: conn, schemas: allSchemas))
        }
    }

    /// Two binaries that know the same schema version must carry the same function files, or
    /// their leaders would put back each other's definitions: a change to a schema's function
    /// files comes with a new migration of that schema, and `functions/LEVEL` records it.
    @Test func aFunctionFileChangeComesWithAMigration() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let catalog = MigrationCatalog.builtIn
        for schema in Set(catalog.functionFiles.map(\.schema)).sorted() {
            let path = root.appendingPathComponent("sql/\(schema)/functions/LEVEL").path
            let recorded = (try? String(contentsOfFile: path, encoding: .utf8))?.split(whereSeparator: \.isWhitespace) ?? []
            let expected = "\(catalog.latestVersion(of: schema)) \(catalog.functionsChecksum(of: schema) ?? "")"
            guard recorded.count == 2, let version = Int(recorded[0]) else {
                Issue.record("sql/\(schema)/functions/LEVEL must hold `VERSION CHECKSUM`; write: \(expected)")
                continue
            }
            if String(recorded[1]) != catalog.functionsChecksum(of: schema) {
                #expect(
                    catalog.latestVersion(of: schema) > version,
                    "sql/\(schema)/functions changed without a migration: add sql/\(schema)/\(catalog.latestVersion(of: schema) + 1)_… (an `-- regent:expand` file saying which functions changed), then write into LEVEL: VERSION CHECKSUM")
                Issue.record("sql/\(schema)/functions/LEVEL is out of date; write: \(expected)")
            }
        }
    }

    /// A binary applies its function files once its migrations are in and it is at least as new
    /// as the one that applied the recorded files; an older binary never puts back its own.
    @Test func theNewestBinarysFilesWinAndAnOlderOneNeverPutsBackItsOwn() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            try await MigrationRunner(appliedBy: "test").migrate(on: conn, schemas: allSchemas)
            let builtIn = MigrationCatalog.builtIn
            func catalog(marker: String, workflowFiles: Int) -> MigrationCatalog {
                let workflow = builtIn.migrations(for: "workflow").prefix(workflowFiles)
                let extra = workflowFiles > builtIn.latestVersion(of: "workflow")
                    ? [Migration(schema: "workflow", version: workflowFiles, name: "newer", sql: "-- regent:expand\nSELECT 1;")] : []
                return MigrationCatalog(
                    builtIn.migrations.filter { $0.schema != "workflow" } + workflow + extra,
                    functionFiles: builtIn.functionFiles.map { f in
                        guard f.schema == "workflow", f.name == "notify_queue" else { return f }
                        return FunctionFile(schema: f.schema, name: f.name, sql: f.sql.replacingOccurrences(of: "DECLARE\n", with: "DECLARE\n    -- \(marker)\n"))
                    })
            }
            func definition() async throws -> String {
                try await conn.query("SELECT pg_get_functiondef('workflow.notify_queue(text,text[])'::regprocedure) AS d").single().decode("d")
            }
            let latest = builtIn.latestVersion(of: "workflow")
            // A newer binary: its migration, then its files, once.
            let newer = MigrationRunner(catalog: catalog(marker: "newer body", workflowFiles: latest + 1), appliedBy: "newer")
            #expect(try await newer.migrate(on: conn, schemas: allSchemas).map(\.version) == [latest + 1])
            #expect(try await definition().contains("newer body"))
            let at = try await conn.query("SELECT applied_at, applied_by, binary_level FROM engine.function_files WHERE schema_name = 'workflow'").single()
            #expect(try at.decode("applied_by", as: String.self) == "newer" && at.decode("binary_level", as: Int.self) == latest + 1)
            #expect(try await newer.migrate(on: conn, schemas: allSchemas).isEmpty)
            let again = try await conn.query("SELECT applied_at FROM engine.function_files WHERE schema_name = 'workflow'").single()
            #expect(try again.decode("applied_at", as: Date.self) == at.decode("applied_at", as: Date.self), "unchanged: not applied again")
            // The previous release (this build's files) runs against it and leaves them alone.
            let older = MigrationRunner(catalog: catalog(marker: "older body", workflowFiles: latest), appliedBy: "older")
            try older.verify(try await older.applied(on: conn), schemas: allSchemas)
            #expect(try await older.functionsPending(on: conn, schemas: ["workflow"]).isEmpty)
            #expect(try await older.migrate(on: conn, schemas: allSchemas).isEmpty)
            #expect(try await definition().contains("newer body"))
            // A binary whose own migrations are not all applied yet waits for them first.
            let base = catalog(marker: "ahead body", workflowFiles: latest + 1)
            let ahead = MigrationRunner(catalog: MigrationCatalog(
                base.migrations + [Migration(schema: "workflow", version: latest + 2, name: "more", sql: "-- regent:expand\nSELECT 2;")],
                functionFiles: base.functionFiles), appliedBy: "ahead")
            #expect(try await ahead.functionsPending(on: conn, schemas: ["workflow"]).isEmpty, "its own migration comes first")
            #expect(try await ahead.migrate(on: conn, schemas: allSchemas).map(\.version) == [latest + 2])
            #expect(try await definition().contains("ahead body"))
        }
    }
}
