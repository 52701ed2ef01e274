import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Testing

/// Cron schedules (issue 31, sql/workflow/0017) against a real server: fired by a real leader's
/// duty, each slot once under its idempotency key, never early; pause, resume, trigger, delete;
/// catch-up after a leaderless hour; pages fired side by side taking no slot twice.
@Suite("Schedules")
struct ScheduleTests {
    static let actor = AuditActor.named("test")

    static func fires(_ conn: PostgresConnection, _ name: String) async throws -> [(slot: Date, outcome: String, runID: String?)] {
        try await conn.query("SELECT slot, outcome, run_id FROM workflow.schedule_fires WHERE schedule = \(name) ORDER BY slot, id").map {
            (try $0.decode("slot"), try $0.decode("outcome"), try $0.decodeOptional("run_id"))
        }
    }

    /// Puts a schedule's next slot back in time, as a leaderless stretch would have left it.
    static func rewind(_ conn: PostgresConnection, _ name: String, to slot: Date) async throws {
        try await conn.query("UPDATE workflow.schedules SET next_slot = \(slot), next_fire_at = \(slot) WHERE name = \(name)")
    }

    @Test func aLeaderFiresEachSlotOnceNeverEarlyAndPauseResumeTriggerDeleteWork() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("cronned", steps: [#"{"name": "a", "lane": "work"}"#], on: conn)
            let store = ScheduleStore()
            let name = try ScheduleName("every-second")
            let created = try await store.create(
                try ScheduleSpec(name: "every-second", workflowType: "cronned", cron: "* * * * * *", input: #"{"tenant": "acme"}"#), actor: Self.actor, on: conn)
            #expect(created.nextSlot > created.createdAt && !created.paused && created.input == #"{"tenant": "acme"}"#)
            var cluster = Cluster(config: config)
            _ = cluster.start("one")
            _ = cluster.start("two")
            try await waitUntil("three slots fire", timeout: StepKindTests.leaderWork) { try await Self.fires(conn, "every-second").count >= 3 }
            _ = try await store.pause(name, actor: Self.actor, on: conn)
            try await Task.sleep(for: .milliseconds(300))  // a page in flight commits
            let atPause = try await Self.fires(conn, "every-second")
            #expect(atPause.allSatisfy { $0.outcome == "started" }, "\(atPause)")
            #expect(Set(atPause.map(\.slot)).count == atPause.count, "no slot twice")
            let runs = try await conn.query(
                """
                SELECT r.idempotency_key, r.started_by, r.input::text AS input, r.started_at >= f.slot AS not_early
                FROM workflow.schedule_fires f JOIN workflow.runs r USING (run_id) WHERE f.schedule = 'every-second'
                """)
            #expect(runs.count == atPause.count)
            for r in runs {
                #expect(try r.decode("not_early", as: Bool.self), "a slot's run never starts before its slot")
                #expect(try r.decode("idempotency_key", as: String.self).hasPrefix("schedule:every-second:20"))
                #expect(try r.decode("input", as: String.self) == #"{"tenant": "acme"}"#)
            }
            // Consecutive seconds: no slot was skipped in between.
            let slots = atPause.map(\.slot)
            #expect(zip(slots, slots.dropFirst()).allSatisfy { $1.timeIntervalSince($0) == 1 }, "\(slots)")
            try await Task.sleep(for: .milliseconds(1500))
            #expect(try await Self.fires(conn, "every-second").count == atPause.count, "a paused schedule fires nothing")
            // Resumed: from now on (what passed while paused is not fired).
            let resumed = try await store.resume(name, actor: Self.actor, on: conn)
            #expect(!resumed.paused && resumed.nextSlot > slots.last!.addingTimeInterval(1.5))
            try await waitUntil("it fires again", timeout: StepKindTests.leaderWork) { try await Self.fires(conn, "every-second").count > atPause.count }
            // A trigger starts one now; the same trigger key starts nothing new.
            let t1 = try await store.trigger(name, key: "manual-1", actor: Self.actor, on: conn)
            let t2 = try await store.trigger(name, key: "manual-1", actor: Self.actor, on: conn)
            #expect(t1.created && !t2.created && t1.runID == t2.runID)
            try await store.delete(name, actor: Self.actor, on: conn)
            await expectCode(.notFound) { _ = try await store.get(name, on: conn) }
            await expectCode(.notFound) { _ = try await store.pause(name, actor: Self.actor, on: conn) }
            let audited = try await conn.query("SELECT action FROM engine.audit WHERE action LIKE 'schedule.%' ORDER BY id").map { try $0.decode("action", as: String.self) }
            #expect(audited == ["schedule.created", "schedule.paused", "schedule.resumed", "schedule.triggered", "schedule.triggered", "schedule.deleted"])
            _ = f
            await cluster.stopAll()
        }
    }

    @Test func badSchedulesAreRefusedNamingWhatIsWrong() async throws {
        let cases: [(() throws -> ScheduleSpec, String)] = [
            ({ try ScheduleSpec(name: "bad name", workflowType: "t", cron: "* * * * *") }, "schedule name"),
            ({ try ScheduleSpec(name: "n", workflowType: "t", cron: "* * * *") }, "4 fields"),
            ({ try ScheduleSpec(name: "n", workflowType: "t", cron: "* * * * *", timeZone: "EST") }, "IANA"),
            ({ try ScheduleSpec(name: "n", workflowType: "t", cron: "* * * * *", timeZone: "Mars/Olympus") }, "IANA"),
            ({ try ScheduleSpec(name: "n", workflowType: "t", cron: "* * * * *", input: "[1]") }, "JSON object"),
            ({ try ScheduleSpec(name: "n", workflowType: "t", cron: "* * * * *", catchUp: "some") }, "skip, latest, all"),
            ({ try ScheduleSpec(name: "n", workflowType: "t", cron: "* * * * *", jitter: .seconds(3601)) }, "jitter"),
            ({ try ScheduleSpec(name: "n", workflowType: "t", cron: "0 0 30 2 *") }, "never fires"),
        ]
        for (make, says) in cases {
            #expect(throws: RegentError.self) { _ = try make() }
            do { _ = try make() } catch let error as RegentError {
                #expect(error.code == .invalidInput && error.message.contains(says), "\(error.message)")
            } catch {}
        }
        try await withBootedDatabase { _, conn in
            let spec = try ScheduleSpec(name: "twice", workflowType: "t", cron: "@daily", timeZone: "Europe/Paris")
            _ = try await ScheduleStore().create(spec, actor: Self.actor, on: conn)
            await expectCode(.conflict) { _ = try await ScheduleStore().create(spec, actor: Self.actor, on: conn) }
            let n = try await conn.query("SELECT count(*) AS n FROM workflow.schedules").single().decode("n", as: Int.self)
            #expect(n == 1)
        }
    }

    /// An hour without a leader over schedules every five minutes, one per catch-up policy, and
    /// one whose type has no routed version: what each fires when a leader is back.
    @Test func catchUpAfterALeaderlessHour() async throws {
        try await withBootedDatabase { config, conn in
            _ = try await RunFixture.deploy("catching", steps: [#"{"name": "a", "lane": "work"}"#], on: conn)
            let store = ScheduleStore()
            for policy in CatchUp.allCases {
                _ = try await store.create(try ScheduleSpec(name: policy.rawValue, workflowType: "catching", cron: "*/5 * * * *", catchUp: policy.rawValue),
                                           actor: Self.actor, on: conn)
            }
            _ = try await store.create(try ScheduleSpec(name: "unrouted", workflowType: "nobody.here", cron: "*/5 * * * *", catchUp: "latest"), actor: Self.actor, on: conn)
            // The slot that was next an hour and ten minutes ago (so the latest missed one is
            // past the minute of grace whatever the clock says now).
            let base = try await conn.query(
                "SELECT date_trunc('hour', now()) - interval '1 hour' - interval '10 minutes' AS t").single().decode("t", as: Date.self)
            for name in ["skip", "latest", "all", "unrouted"] { try await Self.rewind(conn, name, to: base) }
            let now = try await ScheduleStore.now(conn)
            let missed = Int(now.timeIntervalSince(base) / 300) + 1
            var cluster = Cluster(config: config)
            _ = cluster.start("leader")
            try await waitUntil("every schedule moved past now", timeout: StepKindTests.leaderWork) {
                try await conn.query("SELECT bool_and(next_slot > now()) AS ok FROM workflow.schedules").single().decode("ok", as: Bool.self)
            }
            let all = try await Self.fires(conn, "all"), latest = try await Self.fires(conn, "latest"), skip = try await Self.fires(conn, "skip")
            #expect(all.filter { $0.outcome == "started" }.count == missed, "all: every missed slot, \(missed)")
            #expect(latest.filter { $0.outcome == "started" }.count == 1 && latest.first { $0.outcome == "skipped" } != nil)
            let skipStarted = skip.filter { $0.outcome == "started" }
            #expect(skipStarted.allSatisfy { now.timeIntervalSince($0.slot) <= SlotPlanner.grace + 5 }, "skip fires only what the grace allows")
            let counts = try await conn.query("SELECT name, fired, skipped FROM workflow.schedules ORDER BY name").map {
                (try $0.decode("name", as: String.self), try $0.decode("fired", as: Int.self), try $0.decode("skipped", as: Int.self))
            }
            for (name, fired, skipped) in counts where name != "unrouted" {
                #expect(fired + skipped >= missed, "\(name): every missed slot is fired or skipped, \(fired) + \(skipped)")
            }
            let unrouted = try await store.get(try ScheduleName("unrouted"), on: conn)
            #expect(unrouted.lastError?.contains("no routed package version") == true && unrouted.nextSlot > now)
            await cluster.stopAll()
        }
    }

    /// 300 schedules due at once, fired by three pages side by side, again and again, while the
    /// leader's own duty fires too: every slot once.
    @Test func pagesSideBySideFireEverySlotOnce() async throws {
        try await withBootedDatabase { config, conn in
            _ = try await RunFixture.deploy("many", steps: [#"{"name": "a", "lane": "work"}"#], on: conn)
            try await conn.query(
                """
                INSERT INTO workflow.schedules (name, workflow_type, cron, timezone, catch_up, next_slot, next_fire_at, created_by, updated_by)
                SELECT 'm' || i, 'many', '*/10 * * * * *', 'UTC', 'all', date_trunc('minute', now()) - interval '30 seconds',
                       date_trunc('minute', now()) - interval '30 seconds', 'test', 'test'
                FROM generate_series(1, 300) AS i
                """)
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 6))
            let (fence, cluster) = try await leaderFence(config)
            let duty = ScheduleFiring(pool: pool, bell: nil, pageSize: 40)
            let nodes = cluster.nodes
            for _ in 0..<20 {
                async let p0 = asLeader(fence, of: nodes) { try await duty.fireOnce(fence: $0, part: 0, parts: 3) }
                async let p1 = asLeader(fence, of: nodes) { try await duty.fireOnce(fence: $0, part: 1, parts: 3) }
                async let p2 = asLeader(fence, of: nodes) { try await duty.fireOnce(fence: $0, part: 2, parts: 3) }
                _ = try await (p0, p1, p2)
            }
            try await waitUntil("every schedule moved past now", timeout: StepKindTests.leaderWork) {
                try await conn.query("SELECT bool_and(next_fire_at > now()) AS ok FROM workflow.schedules").single().decode("ok", as: Bool.self)
            }
            let twice = try await conn.query(
                "SELECT count(*) AS n FROM (SELECT schedule, slot FROM workflow.schedule_fires GROUP BY 1, 2 HAVING count(*) > 1) AS t"
            ).single().decode("n", as: Int.self)
            #expect(twice == 0, "no slot recorded twice")
            let check = try await conn.query(
                """
                SELECT (SELECT count(*) FROM workflow.schedule_fires WHERE outcome = 'started') AS started,
                       (SELECT count(*) FROM workflow.schedule_fires WHERE outcome <> 'started') AS other,
                       (SELECT count(*) FROM workflow.runs WHERE idempotency_key LIKE 'schedule:%') AS runs
                """).single()
            let started = try check.decode("started", as: Int.self)
            let runs = try check.decode("runs", as: Int.self), other = try check.decode("other", as: Int.self)
            #expect(started >= 300 * 4 && runs == started && other == 0, "\(started) started, \(runs) runs, \(other) other")
            await cluster.stopAll()
            await pool.shutdown()
        }
    }

    /// A page mixing types the firing starts together (worker roots, no run key) with types it
    /// starts one by one (a timer root, a run key) and an unrouted one: every slot gets its run
    /// (the batch's runs whole: steps, root executions claimable, `run.started`), and firing
    /// the same page again starts nothing twice.
    @Test func aPageMixesBatchedAndSingleStartsAndNeverStartsASlotTwice() async throws {
        try await withBootedDatabase { _, conn in
            let plain = try await RunFixture.deploy("plain", steps: [#"{"name": "a", "lane": "work"}"#, #"{"name": "b", "lane": "work", "after": ["a"]}"#], on: conn)
            _ = try await RunFixture.deploy("napper", steps: [#"{"name": "nap", "sleep": "1h"}"#], on: conn)
            _ = try await RunFixture.deploy("keyed", steps: [#"{"name": "a", "lane": "work"}"#], top: #""concurrency": {"key": "$.input.k"}"#, on: conn)
            let types = ["p1": "plain", "p2": "plain", "p3": "plain", "n1": "napper", "k1": "keyed", "k2": "keyed", "u1": "nobody.here"]
            for (name, type) in types {
                try await conn.query(
                    """
                    INSERT INTO workflow.schedules (name, workflow_type, cron, timezone, catch_up, next_slot, next_fire_at, created_by, updated_by)
                    VALUES (\(name), \(type), '0 * * * *', 'UTC', 'skip', now(), now(), 'test', 'test')
                    """)
            }
            let fires = "[" + types.keys.sorted().map { #"{"schedule": "\#($0)", "slot": "2026-01-01T00:00:00Z", "due_at": "2026-01-01T00:00:00Z", "skip": false}"# }
                .joined(separator: ", ") + "]"
            func fire() async throws -> [String: (outcome: String, run: String?)] {
                var out: [String: (String, String?)] = [:]
                for row in try await conn.query("SELECT schedule, outcome, run_id FROM workflow.fire_schedules(\(fires)::jsonb, '[]'::jsonb, 'test', 1, NULL)") {
                    out[try row.decode("schedule")] = (try row.decode("outcome"), try row.decodeOptional("run_id"))
                }
                return out
            }
            let first = try await fire()
            #expect(first.count == types.count)
            for name in ["p1", "p2", "p3", "n1", "k1", "k2"] { #expect(first[name]?.outcome == "started", "\(name): \(String(describing: first[name]))") }
            #expect(first["u1"]?.outcome == "failed")
            let runs = Set(first.values.compactMap(\.run))
            #expect(runs.count == 6)
            // The batched runs are whole: their first step is claimable, the second pending.
            let leases = try await plain.claim(limit: 10)
            #expect(Set(leases.compactMap(\.step?.runID)) == Set(["p1", "p2", "p3", "k1", "k2"].compactMap { first[$0]?.run }).subtracting(
                try await conn.query("SELECT run_id FROM workflow.runs WHERE state = 'queued'").map { try $0.decode("run_id", as: String.self) }))
            #expect(leases.allSatisfy { $0.step?.name == "a" })
            for name in ["p1", "p2", "p3"] { #expect(try await plain.stepStates(first[name]!.run!) == ["a": "running", "b": "pending"]) }
            #expect(try await plain.stepStates(first["n1"]!.run!) == ["nap": "waiting"])
            let states = try await conn.query("SELECT state FROM workflow.runs WHERE workflow_type = 'keyed' ORDER BY state").map { try $0.decode("state", as: String.self) }
            #expect(states == ["queued", "running"], "the run key still applies to runs a schedule starts")
            let started = try await conn.query("SELECT count(*)::int AS n FROM engine.events WHERE topic = 'run.started'").single().decode("n", as: Int.self)
            #expect(started == 5, "three batched, the timer's, the admitted keyed one")
            // The same page again (a successor leader replaying it): nothing started twice.
            let again = try await fire()
            for name in ["p1", "p2", "p3", "n1", "k1", "k2"] {
                #expect(again[name]?.outcome == "existing" && again[name]?.run == first[name]?.run, "\(name): \(String(describing: again[name]))")
            }
            let count = try await conn.query("SELECT count(*)::int AS n FROM workflow.runs").single().decode("n", as: Int.self)
            #expect(count == 6)
        }
    }
}
