import Foundation
import RegentDrill
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Testing

@Suite("Real regent processes", .serialized)
struct ProcessTests {
    func serve(_ db: ConnectionConfiguration, _ name: String) throws -> RegentProcess {
        try RegentProcess(
            ["serve", "--database-url", db.conninfo, "--node-name", name, "--heartbeat-interval", "200ms", "--stale-after", "1s",
             "--lease-window", "1s"],
            logPath: NSTemporaryDirectory() + "regent-test-\(getpid())-\(name).log")
    }

    func status(_ db: ConnectionConfiguration) async throws -> ClusterStatus {
        return try await PostgresConnection.withConnection(db) { conn in
            return try await ClusterStatus.read(on: conn, staleAfter: .seconds(1))
        }
    }

    @Test func followerTakesOverAfterLeaderProcessIsKilled() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary), "build the regent binary first (swift build)")
        let db = try await TestDatabase.shared.freshDatabase()
        let nodes = try ["a", "b", "c"].map { try serve(db, $0) }
        defer { nodes.forEach { $0.signal(SIGKILL) } }
        #expect(await eventually(timeout: .seconds(20)) {
            let s = try await status(db)
            return s.leader != nil && s.instances.count == 3
        })
        let before = try await status(db)
        let leader = try #require(nodes.first { $0.pid == before.leader?.pid })
        let killed = ContinuousClock.now
        leader.signal(SIGKILL)
        #expect(await eventually(timeout: .seconds(2)) {
            let s = try await status(db)
            return s.term == before.term + 1 && s.leader != nil && s.leader?.pid != leader.pid
        })
        #expect(ContinuousClock.now - killed < .seconds(2))
        // The dead node's row goes stale and the new leader sweeps it.
        #expect(await eventually(timeout: .seconds(8)) {
            try await status(db).instances.count == 2
        })
        for n in nodes where n !== leader { n.signal(SIGTERM) }
        for n in nodes where n !== leader {
            let code = await n.waitForExit(timeout: .seconds(10))
            #expect(code == 0, "graceful exit expected; log:\n\(n.log)")
        }
        _ = await leader.waitForExit(timeout: .seconds(1))
        // SIGTERM drained: no instance rows left.
        #expect(try await status(db).instances.isEmpty)
    }

    @Test func nodeRefusesToServeADatabaseNewerThanItsBinary() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary))
        let db = try await TestDatabase.shared.freshDatabase()
        let conn = try await PostgresConnection.connect(db)
        try await MigrationRunner(appliedBy: "test").migrate(on: conn, schemas: ["engine"])
        try await conn.query(
            "INSERT INTO engine.migrations (schema_name, version, name, checksum, applied_by) VALUES ('engine', 999, 'future', 'x', 'newer')")
        // No --fail-fast: a newer database is not a transient error, so it must exit, not retry.
        let p = try RegentProcess(
            ["serve", "--database-url", db.conninfo], logPath: NSTemporaryDirectory() + "regent-test-\(getpid())-newer.log")
        let code = await p.waitForExit(timeout: .seconds(20))
        if code == nil { p.signal(SIGKILL) }
        #expect(code != nil && code != 0)
        #expect(p.log.contains("engine is at version 999 and needs a binary that knows version 999 or later"), "log:\n\(p.log)")
        #expect(p.log.contains("but this binary knows only up to \(MigrationCatalog.builtIn.latestVersion(of: "engine"))"), "log:\n\(p.log)")
        let rows = try await conn.query("SELECT count(*) AS n FROM engine.instances").single().decode("n", as: Int.self)
        #expect(rows == 0)
        await conn.close()
    }

    /// `migrate --plan` names each file's kind, its blocking locks and the floor after it, and
    /// changes nothing; `migrate` then prints the floors.
    @Test func migratePlanShowsKindsLocksAndFloors() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary))
        let db = try await TestDatabase.shared.freshDatabase()
        let plan = try RegentProcess(["migrate", "--plan", "--database-url", db.conninfo], logPath: NSTemporaryDirectory() + "regent-test-\(getpid())-plan.log")
        #expect(await plan.waitForExit(timeout: .seconds(30)) == 0, "\(plan.log)")
        func line(_ file: String) -> String { plan.log.split(separator: "\n").first { $0.contains(file) }.map(String.init) ?? "" }
        #expect(line("workflow 0009_queue_hot_path").contains(" breaking "), "\(plan.log)")
        #expect(line("workflow 0009_queue_hot_path").contains("workflow.executions ACCESS EXCLUSIVE rewrite HOT"), "\(plan.log)")
        #expect(line("engine 0007_migration_durations").contains(" expand "), "\(plan.log)")
        let conn = try await PostgresConnection.connect(db)
        #expect(try await conn.query("SELECT to_regclass('engine.migrations') IS NULL AS none").single().decode("none", as: Bool.self))
        let run = try RegentProcess(["migrate", "--database-url", db.conninfo], logPath: NSTemporaryDirectory() + "regent-test-\(getpid())-migrate.log")
        #expect(await run.waitForExit(timeout: .seconds(30)) == 0, "\(run.log)")
        #expect(run.log.contains("floor"), "\(run.log)")
        let floor = MigrationRunner.floor(of: "engine", in: try await MigrationRunner(appliedBy: "").applied(on: conn))
        #expect(floor == 5, "engine 0006 and 0007 are expand: the floor stays at 0005")
        await conn.close()
    }

    @Test func badFlagsAreRefusedWithOneLineAndNonZeroExit() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary))
        let db = try await TestDatabase.shared.freshDatabase()
        let cases: [([String], String)] = [
            (["serve", "--database-url", db.conninfo, "--heartbeat-interval", "3"], "invalid duration"),
            (["serve", "--database-url", db.conninfo, "--heartbeat-interval", "2s", "--lease-window", "1s"], "lease-window"),
            (["serve", "--database-url", db.conninfo, "--heartbeat-interval", "2s", "--stale-after", "3s"], "--stale-after (3.0 seconds) must be at least twice --heartbeat-interval (2.0 seconds)"),
            (["serve", "--database-url", db.conninfo, "--heartbeat-interval", "1s", "--stale-after", "4s", "--lease-window", "5s"], "--lease-window (5.0 seconds) must not be longer than --stale-after (4.0 seconds)"),
            (["serve", "--database-url", "postgres://u@127.0.0.1:1/x", "--fail-fast"], "cannot connect"),
            (["serve", "--database-url", "postgres://h:port/x"], "malformed database URL"),
            (["migrate", "--database-url", db.conninfo, "--target", "nosuch:1"], "unknown schema"),
            (["migrate", "--database-url", db.conninfo, "--lock-timeout", "soon"], "invalid duration"),
            (["modules", "enable", "Bad;Name", "--database-url", db.conninfo], "invalid module name"),
            (["status"], "no database given"),
        ]
        for (index, (args, expected)) in cases.enumerated() {
            let p = try RegentProcess(args, logPath: NSTemporaryDirectory() + "regent-test-\(getpid())-bad\(index).log")
            let code = await p.waitForExit(timeout: .seconds(20))
            #expect(code != nil && code != 0, "\(args) must fail")
            #expect(p.log.contains(expected), "\(args): expected \(expected.debugDescription) in:\n\(p.log)")
        }
        // Nothing was changed: the database was never migrated by the refused commands.
        let conn = try await PostgresConnection.connect(db)
        let present = try await conn.query("SELECT to_regclass('engine.migrations') IS NOT NULL AS p").single().decode("p", as: Bool.self)
        #expect(!present)
        await conn.close()
    }
}

/// The fault drills, run as an operator would, bounded to fit CI.
@Suite("Fault drills", .serialized)
struct FaultDrillTests {
    func drill(_ args: [String], timeout: Duration = .seconds(150)) async throws -> (Int32?, String) {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary), "build the regent binary first (swift build)")
        let p = try RegentProcess(["drill"] + args, logPath: NSTemporaryDirectory() + "regent-test-\(getpid())-drill-\(args[0]).log")
        let code = await p.waitForExit(timeout: timeout)
        if code == nil { p.signal(SIGKILL) }
        return (code, p.log)
    }

    @Test func freezeDrillReplacesAFrozenLeaderWithinItsBound() async throws {
        let (code, log) = try await drill(["freeze", "--nodes", "3", "--freezes", "1"])
        #expect(code == 0, "\(log.suffix(3000))")
        #expect(log.contains("SIGSTOP") && log.contains("every takeover audited and within its bound"))
    }

    @Test func outageDrillSweepsNothingLive() async throws {
        let (code, log) = try await drill(["outage", "--nodes", "2", "--workers", "3", "--ttl", "1s", "--down-for", "3s"])
        #expect(code == 0, "\(log.suffix(3000))")
        #expect(log.contains("live workers: 0 swept, 0 leases reclaimed, 0 heartbeats/renewals refused"))
    }

    @Test func workflowDrillFinishesEveryRunExactlyOnceThroughKills() async throws {
        let (code, log) = try await drill(["workflows", "--runs", "150", "--kills", "2", "--workers", "3", "--cancels", "40", "--batch", "10"])
        #expect(code == 0, "\(log.suffix(3000))")
        #expect(log.contains("invariants held") && log.contains("unload of the pinned version 1 refused"), "\(log.suffix(2000))")
        #expect(log.contains("nothing of a finished run left claimable or running") && log.contains("runs cancelled"), "\(log.suffix(2000))")
        #expect(log.contains("deadlocks"), "\(log.suffix(2000))")
    }

    @Test func semanticsDrillProvesTimersSignalsChildrenAndResumesThroughKills() async throws {
        let (code, log) = try await drill(["semantics", "--runs", "45", "--kills", "2", "--workers", "2"])
        #expect(code == 0, "\(log.suffix(3000))")
        // (The mid-drill unload of the first child version is refused while children run on it; the
        // drill counts an unload that succeeded while one ran as a violation.)
        #expect(log.contains("invariants held: every run succeeded"), "\(log.suffix(2000))")
    }

    /// Issue 31's drill, bounded for CI: schedules every second through leader SIGKILLs.
    @Test func scheduleDrillFiresEachSlotOnceThroughLeaderKills() async throws {
        let (code, log) = try await drill(["schedules", "--schedules", "3", "--seconds", "15"])
        #expect(code == 0, "\(log.suffix(3000))")
        #expect(log.contains("invariants held: every slot fired exactly once") && log.contains("SIGKILLed and replaced"), "\(log.suffix(2000))")
    }

    /// The previous tagged release's binary (scripts/build-previous.sh; scripts/test.sh sets it).
    static var previousRelease: String? {
        ProcessInfo.processInfo.environment["REGENT_PREVIOUS_BINARY"].flatMap { FileManager.default.isExecutableFile(atPath: $0) ? $0 : nil }
    }

    @Test(.enabled(if: previousRelease != nil, "REGENT_PREVIOUS_BINARY is not set: bash scripts/build-previous.sh builds it (scripts/test.sh does)"))
    func upgradeDrillRollsFromThePreviousReleaseAndBack() async throws {
        let (code, log) = try await drill(["upgrade", "--from", try #require(Self.previousRelease), "--runs", "24"], timeout: .seconds(420))
        #expect(code == 0, "\(log.suffix(4000))")
        #expect(log.contains("invariants held through the rollout and the undo"), "\(log.suffix(3000))")
        for step in ["the crashed old node comes back on the old binary", "rollout undo: the old binary against the new schema", "migrate --contract"] {
            #expect(log.contains(step), "the timeline names: \(step)")
        }
        // The timeline, in CI's log.
        if let start = log.range(of: "timeline:") { print(log[start.lowerBound...].prefix(4000)) }
    }

    @Test func terminateAllDrillElectsAgain() async throws {
        let (code, log) = try await drill(["terminate-all", "--nodes", "3", "--rounds", "2"])
        #expect(code == 0, "\(log.suffix(3000))")
        #expect(log.contains("every session ended"))
    }

    @Test(.enabled(if: EmbeddedPgBouncer.binary != nil, "pgbouncer is not installed (apt-get install pgbouncer)"))
    func poolerDrill() async throws {
        let (code, log) = try await drill(["pooler", "--kills", "1"])
        #expect(code == 0, "\(log.suffix(3000))")
        #expect(log.contains("transaction pooling refused, session pooling works"))
    }

    @Test func drillFlagsOutOfRangeAreRefused() async throws {
        for (args, expected) in [
            (["freeze", "--freezes", "0"], "--freezes must be 1 to 20"),
            (["outage", "--ttl", "2s", "--down-for", "1s"], "must be at least --ttl"),
            (["outage", "--ttl", "soon"], "invalid duration"),
            (["terminate-all", "--rounds", "0"], "--rounds must be 1 to 50"),
            (["workflows", "--runs", "10", "--cancels", "11"], "--cancels must be 0 to --runs (10), got 11"),
            (["workflows", "--batch", "0"], "--batch must be 1 to 100, got 0"),
            (["semantics", "--runs", "0"], "--runs must be 1 to 10000, got 0"),
            (["schedules", "--seconds", "1"], "--seconds must be 5 to 3600, got 1"),
            (["upgrade", "--from", "/nonexistent/regent"], "--from /nonexistent/regent is not an executable file"),
            (["upgrade", "--from", "/bin/true", "--runs", "2"], "--runs must be 3 to 3000, got 2"),
        ] {
            let (code, log) = try await drill(args, timeout: .seconds(20))
            #expect(code != nil && code != 0, "\(args) must fail")
            #expect(log.contains(expected), "\(args): expected \(expected) in \(log)")
        }
    }
}

/// The failover drill through its library, as `regent drill failover` runs it, bounded for CI.
@Suite("Failover drill library", .serialized)
struct FailoverDrillTests {
    @Test func shortFailoverDrillReplacesEachKilledLeaderAndKeepsItsInvariants() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary), "build the regent binary first (swift build)")
        let env = try await DrillEnvironment.start(databaseURL: nil, nodes: 3, executable: RegentProcess.binary, say: { _ in })
        let result: FailoverDrill.Result
        do {
            result = try await FailoverDrill(
                cluster: env.cluster, probe: env.probe, databaseURL: env.databaseURL, kills: 2, gracefulEvery: 2, say: { _ in }
            ).run()
        } catch {
            await env.close()
            throw error
        }
        let logs = env.cluster.logDirectory
        await env.close()
        #expect(result.violations.isEmpty, "\(result.violations); node logs in \(logs)")
        // Round 1 is a SIGKILL, round 2 a SIGTERM (every second round is graceful).
        #expect(result.sigkill.count == 1 && result.sigterm.count == 1)
        for took in result.sigkill + result.sigterm { #expect(took < .seconds(5), "a failover took \(took)") }
    }
}

/// The queue's CLI, run as an operator would.
@Suite("Queue CLI", .serialized)
struct QueueCLITests {
    func run(_ args: [String], _ label: String) async throws -> (Int32?, String) { try await runRegent(args, "q-\(label)") }

    @Test func enqueueClaimWithWaitAndCancelFromTheCommandLine() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary), "build the regent binary first (swift build)")
        try await withBootedDatabase { config, conn in
            let url = config.conninfo
            _ = try await WorkerRegistry().register(
                namespace: try Namespace("cli"), workerInstanceID: try WorkerInstanceID("w1"), workerID: try WorkerID("w"), lanes: [try Lane("a")],
                capabilities: [], livenessTTL: .seconds(120), on: conn)
            // Three at once with one key: one created, then the same id twice, marked existing.
            let (code, out) = try await run(
                ["executions", "enqueue", "--database-url", url, "--namespace", "cli", "--lane", "a", "--count", "3", "--unique-key", "k",
                 "--priority=2", "--retry-base", "1s"], "enqueue")
            #expect(code == 0, "\(out)")
            let lines = out.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
            #expect(lines.count == 3 && lines[1] == lines[0] + " existing" && lines[2] == lines[0] + " existing", "\(out)")
            let id = lines[0]
            // A claim takes it at once; a second waits and returns when another is enqueued.
            let (c1, claimed) = try await run(
                ["leases", "claim", "--database-url", url, "--namespace", "cli", "--worker", "w1", "--lane", "a"], "claim1")
            #expect(c1 == 0 && claimed.contains(#""execution_id" : "\#(id)""#), "\(claimed)")
            let waiting = try RegentProcess(
                ["leases", "claim", "--database-url", url, "--namespace", "cli", "--worker", "w1", "--lane", "a", "--wait", "20s", "--log-level", "error"],
                logPath: NSTemporaryDirectory() + "regent-test-\(getpid())-q-wait.log")
            try await Task.sleep(for: .milliseconds(1500))
            let later = try await LeaseStore().enqueue(namespace: try Namespace("cli"), [EnqueueRequest(lane: try Lane("a"))], on: conn)[0].executionID
            let waited = await waiting.waitForExit(timeout: .seconds(15))
            #expect(waited == 0, "\(waiting.log)")
            #expect(waiting.log.contains(later.uuidString.lowercased()), "\(waiting.log)")
            // Cancel the running first one; a made-up id is not found (exit 1).
            let (c2, cancelled) = try await run(["executions", "cancel", "--database-url", url, id], "cancel")
            #expect(c2 == 0 && cancelled.contains("cancelled_running"), "\(cancelled)")
            let (c3, missing) = try await run(["executions", "cancel", "--database-url", url, UUID().uuidString], "cancel-missing")
            #expect(c3 == 1 && missing.contains("not_found"), "\(missing)")
            // Bad input: a clear error, nothing enqueued.
            for (args, expected) in [
                (["--run-at", "tomorrow"], "invalid --run-at"),
                (["--priority=1001"], "priority must be 0"),
                (["--retry-base", "2s", "--retry-max", "1s"], "retry maximum"),
                (["--count", "0"], "--count must be 1 to 1000"),
            ] {
                let (c, o) = try await run(["executions", "enqueue", "--database-url", url, "--namespace", "cli", "--lane", "a"] + args, "bad")
                #expect(c != 0 && o.contains(expected), "\(args): \(o)")
            }
            let count = try await conn.query("SELECT count(*) AS n FROM workflow.executions").single().decode("n", as: Int.self)
            #expect(count == 2)
        }
    }
}

/// The packages CLI, run as an operator would.
@Suite("Packages CLI", .serialized)
struct PackageCLITests {
    func run(_ args: [String], _ label: String) async throws -> (Int32?, String) { try await runRegent(args, "p-\(label)") }

    @Test func deployListShowFetchRouteAndUnloadFromTheCommandLine() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary), "build the regent binary first (swift build)")
        try await withBootedDatabase { config, conn in
            let url = config.conninfo
            let v1 = try PackageFixture(type: "cli.flow", extra: "1"), v2 = try PackageFixture(type: "cli.flow", extra: "2")
            defer { v1.remove(); v2.remove() }
            let gz = v2.directory.path + ".tgz"
            try Data(try v2.tar(gzip: true)).write(to: URL(fileURLWithPath: gz))
            defer { try? FileManager.default.removeItem(atPath: gz) }
            // deploy prints the hash (64 lowercase hex digits) first.
            let (c1, o1) = try await run(["packages", "deploy", v1.directory.path, "--database-url", url], "deploy1")
            let h1 = String(o1.split(separator: "\n").first ?? "")
            #expect(c1 == 0 && PackageStore.isHash(h1), "\(o1)")
            let (c2, o2) = try await run(["packages", "deploy", gz, "--database-url", url, "--json"], "deploy2")
            #expect(c2 == 0 && o2.contains(#""freshly_stored" : true"#) && o2.contains(#""previous_hash" : "\#(h1)""#), "\(o2)")
            let h2 = try await PackageStore().routedHash(type: try WorkflowType("cli.flow"), on: conn) ?? ""
            #expect(h2 != h1 && PackageStore.isHash(h2))
            let (c3, list) = try await run(["packages", "list", "--database-url", url], "list")
            #expect(c3 == 0 && list.contains(h1) && list.contains("*  cli.flow  \(h2)"), "\(list)")
            let (c4, shown) = try await run(["packages", "show", "cli.flow", "--database-url", url], "show")
            #expect(c4 == 0 && shown.contains("\(h2) (routed)") && shown.contains("schemas/input.json"), "\(shown)")
            let out = NSTemporaryDirectory() + "regent-test-\(getpid())-fetched.tar"
            defer { try? FileManager.default.removeItem(atPath: out) }
            let (c5, _) = try await run(["packages", "fetch", h1, "--out", out, "--database-url", url], "fetch")
            #expect(c5 == 0)
            #expect(SHA256.hex(bytes: [UInt8](try Data(contentsOf: URL(fileURLWithPath: out)))) == h1)
            // Roll back, unload the other; the routed one is refused.
            let (c6, routed) = try await run(["packages", "route", "cli.flow", h1, "--database-url", url], "route")
            #expect(c6 == 0 && routed.contains("was \(h2)"), "\(routed)")
            let (c7, refused) = try await run(["packages", "unload", "cli.flow", h1, "--database-url", url], "unload-routed")
            #expect(c7 != 0 && refused.contains("routed version"), "\(refused)")
            let (c8, unloaded) = try await run(["packages", "unload", "cli.flow", h2, "--database-url", url], "unload")
            #expect(c8 == 0 && unloaded.contains("unloaded"), "\(unloaded)")
            // Bad input: a clear error, nothing changed.
            for (args, expected) in [
                (["packages", "route", "cli.flow", "XYZ"], "invalid content hash"),
                (["packages", "route", "bad type!", h1], "invalid workflow type"),
                (["packages", "deploy", "/nonexistent/pkg"], "no package at"),
                (["packages", "deploy", v1.directory.path, "--package-max-bytes", "12x"], "invalid --package-max-bytes"),
                (["packages", "deploy", v1.directory.path, "--package-max-files", "2"], "more than 2 files"),
                (["packages", "deploy", v1.directory.path, "--package-max-bytes", "1"], "size limit 1 bytes"),
                (["packages", "fetch", String(repeating: "0", count: 64)], "no stored version"),
            ] {
                let (c, o) = try await run(args + ["--database-url", url], "bad")
                #expect(c != 0 && o.contains(expected), "\(args): \(o)")
            }
            let count = try await conn.query("SELECT count(*) AS n FROM workflow.packages").single().decode("n", as: Int.self)
            #expect(count == 1)
        }
    }
}

/// Runs `regent ARGS --log-level error` to its end (at most 30 s): its exit code and output.
func runRegent(_ args: [String], _ label: String) async throws -> (Int32?, String) {
    let p = try RegentProcess(args + ["--log-level", "error"], logPath: NSTemporaryDirectory() + "regent-test-\(getpid())-\(label).log")
    let code = await p.waitForExit(timeout: .seconds(30))
    if code == nil { p.signal(SIGKILL) }
    return (code, p.log)
}

/// The runs CLI and the demo worker, run as an operator would.
@Suite("Runs CLI", .serialized)
struct RunCLITests {
    @Test func startListShowAndCancelFromTheCommandLineWithAWorkerProcess() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary), "build the regent binary first (swift build)")
        try await withBootedDatabase { config, conn in
            let url = config.conninfo
            let p = try PackageFixture(files: ["workflow.json": PackageFixture.manifest(type: "cli.run", steps: [
                #"{"name": "first", "lane": "cli"}"#, #"{"name": "second", "lane": "cli"}"#,
            ]).replacingOccurrences(of: #""steps":"#, with: #""budget": {"limit": 50, "unit": "cents"}, "steps":"#)])
            defer { p.remove() }
            let (c0, _) = try await runRegent(["packages", "deploy", p.directory.path, "--database-url", url], "r-deploy")
            #expect(c0 == 0)
            let (c1, o1) = try await runRegent(["runs", "start", "cli.run", "--input", #"{"n": 1}"#, "--idempotency-key", "k1", "--database-url", url], "r-start")
            let runID = String(o1.split(separator: "\n").first ?? "")
            #expect(c1 == 0 && RunStore.isRunID(runID), "\(o1)")
            let (_, again) = try await runRegent(
                ["runs", "start", "cli.run", "--input", #"{"n": 1}"#, "--idempotency-key", "k1", "--database-url", url], "r-again")
            #expect(again.contains("\(runID) existing"), "\(again)")
            // The same key with another input is refused, naming the run it started.
            let (cOther, other) = try await runRegent(["runs", "start", "cli.run", "--idempotency-key", "k1", "--database-url", url], "r-other")
            #expect(cOther != 0 && other.contains("different input") && other.contains(runID), "\(other)")
            // A worker process carries it to the end.
            let worker = try RegentProcess(
                ["worker", "--database-url", url, "--lane", "cli", "--name", "cli-worker", "--cost", "2.5", "--log-level", "warning"],
                logPath: NSTemporaryDirectory() + "regent-test-\(getpid())-r-worker.log")
            try await waitUntil("the run succeeds") { try await RunStore().get(runID, on: conn)?.state == "succeeded" }
            worker.signal(SIGTERM)
            #expect(await worker.waitForExit(timeout: .seconds(10)) == 0, "\(worker.log)")
            let (c2, shown) = try await runRegent(["runs", "show", runID, "--database-url", url], "r-show")
            #expect(c2 == 0 && shown.contains("succeeded") && shown.contains("cli-worker") && shown.contains("5 of 50 cents spent, 45 left"), "\(shown)")
            let (c3, list) = try await runRegent(["runs", "list", "--state", "succeeded", "--database-url", url], "r-list")
            #expect(c3 == 0 && list.contains(runID), "\(list)")
            // Cancel: a finished run is already finished; a fresh one is cancelled.
            let (_, o4) = try await runRegent(["runs", "start", "cli.run", "--database-url", url], "r-start2")
            let second = String(o4.split(separator: "\n").first ?? "")
            let (c5, cancelled) = try await runRegent(["runs", "cancel", second, "--reason", "testing", "--database-url", url], "r-cancel")
            #expect(c5 == 0 && cancelled.contains("cancelled"), "\(cancelled)")
            let (_, finished) = try await runRegent(["runs", "cancel", runID, "--reason", "late", "--database-url", url], "r-cancel2")
            #expect(finished.contains("already_finished"), "\(finished)")
            // Retry: a cancelled run has no failed step; all-unfinished resumes it.
            let (c6, noFailed) = try await runRegent(["runs", "retry", second, "--database-url", url], "r-retry1")
            #expect(c6 != 0 && noFailed.contains("all-unfinished"), "\(noFailed)")
            let (c7, retried) = try await runRegent(["runs", "retry", second, "--steps", "all-unfinished", "--database-url", url], "r-retry2")
            #expect(c7 == 0 && retried.contains("retried \(second): queued first"), "\(retried)")
            for (args, expected) in [
                (["runs", "start", "cli.run", "--input", "[1]"], "input must be a JSON object"),
                (["runs", "start", "nosuch.type"], "has no routed package version"),
                (["runs", "start", "cli.run", "--deadline", "soon"], "invalid duration"),
                (["runs", "show", "run_nope"], "invalid run id"),
                (["runs", "list", "--state", "sleeping"], "invalid --state"),
                (["runs", "cancel", second], "--reason"),
                (["runs", "start", "cli.run", "--version", "v2"], "is not a package version"),
                (["runs", "retry", second, "--steps", "everything"], "invalid --steps"),
                (["runs", "retry", second, "--budget", "0"], "budget limit must be above 0"),
                (["runs", "start", "cli.run", "--version", String(repeating: "0", count: 64)], "is not stored"),
            ] {
                let (c, o) = try await runRegent(args + ["--database-url", url], "r-bad")
                #expect(c != 0 && o.contains(expected), "\(args): \(o)")
            }
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.runs").single().decode("n", as: Int.self) == 2)
        }
    }

    /// `runs signal`: kept before the wait, then consumed; shown with the step's kind and wait;
    /// refusals named.
    @Test func aRunIsSignalledFromTheCommandLine() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary), "build the regent binary first (swift build)")
        try await withBootedDatabase { config, conn in
            let url = config.conninfo
            let p = try PackageFixture(files: ["workflow.json": PackageFixture.manifest(type: "cli.signal", steps: [
                #"{"name": "approve", "wait_for": "approval", "timeout": "1h"}"#, #"{"name": "after", "lane": "cli"}"#,
            ])])
            defer { p.remove() }
            #expect(try await runRegent(["packages", "deploy", p.directory.path, "--database-url", url], "s-deploy").0 == 0)
            let (_, o1) = try await runRegent(["runs", "start", "cli.signal", "--database-url", url], "s-start")
            let runID = String(o1.split(separator: "\n").first ?? "")
            let (c2, sent) = try await runRegent(
                ["runs", "signal", runID, "approval", "--data", #"{"by": "ana"}"#, "--id", "t-1", "--database-url", url], "s-signal")
            #expect(c2 == 0 && sent.contains("consumed by approve (signal t-1; run running)"), "\(sent)")
            let (_, again) = try await runRegent(["runs", "signal", runID, "approval", "--data", #"{"by": "ana"}"#, "--id", "t-1", "--database-url", url], "s-again")
            #expect(again.contains("sent before"), "\(again)")
            let (c3, shown) = try await runRegent(["runs", "show", runID, "--database-url", url], "s-show")
            #expect(c3 == 0 && shown.contains("signal approval") && shown.contains("approve") && shown.contains("t-1"), "\(shown)")
            for (args, expected) in [
                (["runs", "signal", runID, "nope"], "waits for a signal named"),
                (["runs", "signal", runID, "approval", "--data", "{bad"], "not JSON"),
                (["runs", "signal", runID, "approval", "--id", "has space"], "invalid signal id"),
                (["runs", "signal", "run_nope", "approval"], "invalid run id"),
            ] {
                let (c, o) = try await runRegent(args + ["--database-url", url], "s-bad")
                #expect(c != 0 && o.contains(expected), "\(args): \(o)")
            }
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.signals").single().decode("n", as: Int.self) == 1)
        }
    }
}
