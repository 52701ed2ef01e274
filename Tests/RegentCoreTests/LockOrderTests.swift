import Foundation
import PostgresClient
@testable import RegentCore
import RegentDrill
import RegentTestSupport
import Synchronization
import Testing

/// Deterministic interleavings of two sessions that take the same rows (issue 26 §1): one side
/// is held at a barrier in the middle of its lock sequence, the other is started, then the
/// barrier opens. With one global lock order (docs/workers-and-leases.md) none of them may end
/// in a deadlock (40P01): the server would resolve it after `deadlock_timeout` by killing one.
///
/// The barrier is test-only: a row trigger on `workflow.executions`, named to fire before the
/// step trigger, that lets the first step execution of a statement through and makes the second
/// wait for a shared advisory lock the test holds. So a batch that advances two runs has locked
/// the first run's row when it stops.
@Suite("Lock order: claims, completions, finishes, the scanner and the sweep never deadlock")
struct LockOrderTests {
    static let barrierKey: Int64 = 42_424_242

    /// Installs the barrier and takes its lock (held by `gate` until ``open(_:)``).
    static func installBarrier(_ conn: PostgresConnection, gate: PostgresConnection) async throws {
        try await conn.query(
            """
            CREATE FUNCTION public.test_barrier() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF current_setting('regent_test.seen', true) = 'yes' OR current_setting('regent_test.always', true) = 'yes' THEN
                    PERFORM pg_advisory_xact_lock_shared(42424242);
                ELSE
                    PERFORM set_config('regent_test.seen', 'yes', true);
                END IF;
                RETURN NULL;
            END
            $$
            """)
        try await conn.query(
            """
            CREATE TRIGGER a_test_barrier AFTER UPDATE OF state ON workflow.executions FOR EACH ROW
            WHEN (NEW.step_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state
                  AND NEW.state IN ('completed', 'failed', 'dead_lettered', 'cancelled'))
            EXECUTE FUNCTION public.test_barrier()
            """)
        try await gate.query("SELECT pg_advisory_lock(\(barrierKey))")
    }

    static func open(_ gate: PostgresConnection) async throws {
        try await gate.query("SELECT pg_advisory_unlock(\(barrierKey))")
    }

    static func pid(_ conn: PostgresConnection) async throws -> Int32 {
        try await conn.query("SELECT pg_backend_pid() AS pid").single().decode("pid", as: Int32.self)
    }

    /// Waits until the session `pid` waits for a lock (row, transaction or advisory), or `done` says it finished.
    static func waitBlocked(_ observer: PostgresConnection, _ pids: [Int32], orDone done: @escaping @Sendable () async -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            var waiting = 0
            for pid in pids {
                let n = try await observer.query(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = \(pid) AND wait_event_type = 'Lock'").single().decode("n", as: Int.self)
                waiting += n
            }
            if waiting == pids.count { return }
            if await done() { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("sessions \(pids) neither blocked nor finished in 20 s")
    }

    /// The database's deadlock counter, as the workflow drill reads it.
    static func deadlocks(_ conn: PostgresConnection) async throws -> Int64 { try await WorkflowDrill.deadlockCount(conn) }

    /// Fails the test on a 40P01 (the server broke a lock cycle).
    static func noDeadlock<T: Sendable>(_ what: String, _ body: () async throws -> T) async throws -> T? {
        do {
            return try await body()
        } catch let error as PostgresError where error.sqlState == "40P01" {
            Issue.record("\(what) ended in a deadlock: \(error)")
            return nil
        }
    }

    /// The rest of a claim whose `ready` row `claimer` holds: the row taken out, the execution
    /// running (the claim statement's order), committed. A 40P01 fails the test.
    static func finishClaim(_ claimer: PostgresConnection, _ x: UUID) async throws {
        _ = try await noDeadlock("the claim") {
            try await claimer.query("DELETE FROM workflow.ready WHERE execution_id = \(x)")
            try await claimer.query(
                "UPDATE workflow.executions SET state = 'running', attempts = attempts + 1, lease_epoch = lease_epoch + 1 WHERE execution_id = \(x) AND state = 'queued'")
            try await claimer.query("COMMIT")
        }
    }

    /// Starts `body` (one side of an interleaving) in the background; the flag says when it ended.
    static func started<T: Sendable>(_ what: String, _ body: @escaping @Sendable () async throws -> T) -> (task: Task<T?, any Error>, done: DoneFlag) {
        let done = DoneFlag()
        let task = Task {
            defer { done.set() }
            return try await noDeadlock(what, body)
        }
        return (task, done)
    }

    static let parallel = [#"{"name": "a", "lane": "work", "max_attempts": 1, "after": []}"#, #"{"name": "b", "lane": "work", "max_attempts": 1, "after": []}"#]

    /// Claim × finish. A claim holds the `ready` row it picked and then updates the execution;
    /// a cancel of the run must not take the execution first and then wait for the `ready`
    /// row. Here the claim's two steps are played by hand on the same rows in the same order.
    @Test func aClaimAndACancelOfItsRunDoNotDeadlock() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("claimcancel", steps: Self.parallel, on: conn)
            let run = try await f.start()
            let x = try await conn.query(
                "SELECT execution_id FROM workflow.run_steps WHERE run_id = \(run.runID) AND name = 'a'").single().decode("execution_id", as: UUID.self)
            let before = try await Self.deadlocks(conn)
            let claimer = try await PostgresConnection.connect(config)
            let canceller = try await PostgresConnection.connect(config)
            let cancellerPID = try await Self.pid(canceller)
            try await claimer.query("BEGIN")
            try await claimer.query("SELECT execution_id FROM workflow.ready WHERE execution_id = \(x) FOR UPDATE")
            let (cancel, finished) = Self.started("the cancel") { try await RunStore().cancel(run.runID, reason: "race", actor: f.actor, on: canceller) }
            try await Self.waitBlocked(conn, [cancellerPID]) { finished.isSet }
            try await Self.finishClaim(claimer, x)
            #expect(try await cancel.value == .cancelled)
            #expect(try await f.run(run.runID).state == "cancelled")
            // The claim won its row: the finish left it to the sweep (recorded as a stray), and it fences it.
            #expect(try await RunTests.strays(conn) == 1)
            _ = try await conn.query("SELECT workflow.expire_runs(100, 'test', 1)")
            #expect(try await conn.query("SELECT state FROM workflow.executions WHERE execution_id = \(x)").single().decode("state", as: String.self) == "cancelled")
            #expect(try await Self.deadlocks(conn) == before)
            await claimer.close()
            await canceller.close()
        }
    }

    /// Claim × stray sweep: a queued execution of a finished run (a stray) is claimed while the
    /// deadline duty's sweep fences it.
    @Test func aClaimAndTheStraySweepDoNotDeadlock() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("claimsweep", steps: Self.parallel, on: conn)
            let run = try await f.start()
            let x = try await conn.query(
                "SELECT execution_id FROM workflow.run_steps WHERE run_id = \(run.runID) AND name = 'a'").single().decode("execution_id", as: UUID.self)
            // Make it a stray: cancel while another session holds it, then let go.
            let holder = try await PostgresConnection.connect(config)
            try await holder.query("BEGIN")
            try await holder.query("SELECT 1 AS one FROM workflow.executions WHERE execution_id = \(x) FOR UPDATE")
            _ = try await RunStore().cancel(run.runID, reason: "test", actor: f.actor, on: conn)
            try await holder.query("ROLLBACK")
            await holder.close()
            #expect(try await RunTests.strays(conn) >= 1)
            let before = try await Self.deadlocks(conn)
            let claimer = try await PostgresConnection.connect(config)
            let sweeper = try await PostgresConnection.connect(config)
            let sweeperPID = try await Self.pid(sweeper)
            try await claimer.query("BEGIN")
            try await claimer.query("SELECT execution_id FROM workflow.ready WHERE execution_id = \(x) FOR UPDATE")
            let (sweep, finished) = Self.started("the sweep") { try await sweeper.query("SELECT workflow.expire_runs(100, 'test', 1)") }
            try await Self.waitBlocked(conn, [sweeperPID]) { finished.isSet }
            try await Self.finishClaim(claimer, x)
            _ = try await sweep.value
            // The next round fences what the claim took.
            _ = try await conn.query("SELECT workflow.expire_runs(100, 'test', 1)")
            #expect(try await conn.query("SELECT state FROM workflow.executions WHERE execution_id = \(x)").single().decode("state", as: String.self) == "cancelled")
            #expect(try await RunTests.strays(conn) == 0)
            #expect(try await Self.deadlocks(conn) == before)
            await claimer.close()
            await sweeper.close()
        }
    }

    /// Two runs with two parallel steps each, all four claimed.
    static func twoRuns(_ f: RunFixture) async throws -> (r1: [Lease], r2: [Lease]) {
        let one = try await f.start()
        let two = try await f.start()
        let leases = try await f.claim(limit: 10)
        let r1 = leases.filter { $0.step?.runID == one.runID }.sorted { $0.step!.name < $1.step!.name }
        let r2 = leases.filter { $0.step?.runID == two.runID }.sorted { $0.step!.name < $1.step!.name }
        try #require(r1.count == 2 && r2.count == 2)
        return (r1, r2)
    }

    /// Batch completion × batch completion: one worker completes [run 1's a, run 2's a], the
    /// other [run 2's b, run 1's b]; each is held after its first step advanced its run.
    @Test func twoBatchCompletionsAcrossTwoRunsDoNotDeadlock() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("batches", steps: Self.parallel, on: conn)
            let (r1, r2) = try await Self.twoRuns(f)
            let gate = try await PostgresConnection.connect(config)
            try await Self.installBarrier(conn, gate: gate)
            let before = try await Self.deadlocks(conn)
            let one = try await PostgresConnection.connect(config)
            let two = try await PostgresConnection.connect(config)
            let pids = [try await Self.pid(one), try await Self.pid(two)]
            let first = Task {
                try await Self.noDeadlock("batch one") {
                    try await LeaseStore().complete(
                        [Completion(executionID: r1[0].executionID, epoch: r1[0].epoch), Completion(executionID: r2[0].executionID, epoch: r2[0].epoch)], on: one)
                }
            }
            try await Self.waitBlocked(conn, [pids[0]]) { false }
            let second = Task {
                try await Self.noDeadlock("batch two") {
                    try await LeaseStore().complete(
                        [Completion(executionID: r2[1].executionID, epoch: r2[1].epoch), Completion(executionID: r1[1].executionID, epoch: r1[1].epoch)], on: two)
                }
            }
            try await Self.waitBlocked(conn, pids) { false }
            try await Self.open(gate)
            let a = try await first.value
            let b = try await second.value
            #expect(a?.done.count == 2 && b?.done.count == 2)
            for lease in r1 + r2 { #expect(try await f.run(lease.step!.runID).state == "succeeded") }
            #expect(try await Self.deadlocks(conn) == before)
            for c in [one, two, gate] { await c.close() }
        }
    }

    /// The lease scanner × a batch completion: a worker completes run 2's b and then run 1's b
    /// (held after the first); the scanner's page then dead-letters run 1's a and run 2's a.
    @Test func theLeaseScannerAndABatchCompletionDoNotDeadlock() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("scanner", steps: Self.parallel, on: conn)
            let (r1, r2) = try await Self.twoRuns(f)
            // Run 1's a expired first, then run 2's a.
            try await conn.query(
                "UPDATE workflow.leases SET lease_expires_at = now() - interval '20 seconds', lease_ms = 1000 WHERE execution_id = \(r1[0].executionID)")
            try await conn.query(
                "UPDATE workflow.leases SET lease_expires_at = now() - interval '10 seconds', lease_ms = 1000 WHERE execution_id = \(r2[0].executionID)")
            let gate = try await PostgresConnection.connect(config)
            try await Self.installBarrier(conn, gate: gate)
            let before = try await Self.deadlocks(conn)
            let scanner = try await PostgresConnection.connect(config)
            let worker = try await PostgresConnection.connect(config)
            let pids = [try await Self.pid(worker), try await Self.pid(scanner)]
            let reclaim = LeaseExpiryScanner.reclaim(pageSize: 100, leader: InstanceID(UUID()), term: Term(1), since: Date(timeIntervalSince1970: 0))
            let complete = Task {
                try await Self.noDeadlock("the completion") {
                    try await LeaseStore().complete(
                        [Completion(executionID: r2[1].executionID, epoch: r2[1].epoch), Completion(executionID: r1[1].executionID, epoch: r1[1].epoch)], on: worker)
                }
            }
            try await Self.waitBlocked(conn, [pids[0]]) { false }
            let (scan, scanned) = Self.started("the scanner") { try await scanner.query(reclaim).single().decode("expired", as: Int.self) }
            try await Self.waitBlocked(conn, pids) { scanned.isSet }
            try await Self.open(gate)
            _ = try await complete.value
            _ = try await scan.value
            // Whatever the first page skipped, the next one takes: both runs fail on their a.
            _ = try await Self.noDeadlock("the scanner's next page") { try await conn.query(reclaim) }
            #expect(try await f.run(r1[0].step!.runID).state == "failed")
            #expect(try await f.run(r2[0].step!.runID).state == "failed")
            #expect(try await Self.deadlocks(conn) == before)
            for c in [scanner, worker, gate] { await c.close() }
        }
    }

    /// Retention × a late completion: a finished run is pruned while a worker completes its
    /// stray step. The completion is held (barrier) once it has its execution row; the pruner
    /// then takes the run and deletes the run's executions.
    @Test func pruningARunAndALateCompletionDoNotDeadlock() async throws {
        try await withBootedDatabase { config, conn in
            let f = try await RunFixture.deploy("prune", steps: Self.parallel, on: conn)
            let run = try await f.start()
            let leases = try await f.claim(limit: 10)
            try #require(leases.count == 2)
            // The run fails on a's failure while b is held by another session: b stays running (a stray).
            let holder = try await PostgresConnection.connect(config)
            try await holder.query("BEGIN")
            try await holder.query("SELECT 1 AS one FROM workflow.executions WHERE execution_id = \(leases[1].executionID) FOR UPDATE")
            _ = try await LeaseStore().fail(executionID: leases[0].executionID, epoch: leases[0].epoch, error: "boom", retryable: false, on: conn)
            try await holder.query("ROLLBACK")
            await holder.close()
            #expect(try await f.run(run.runID).state == "failed")
            try await conn.query("UPDATE workflow.runs SET finished_at = now() - interval '1 day' WHERE run_id = \(run.runID)")
            let gate = try await PostgresConnection.connect(config)
            try await Self.installBarrier(conn, gate: gate)
            let before = try await Self.deadlocks(conn)
            let pruner = try await PostgresConnection.connect(config)
            let worker = try await PostgresConnection.connect(config)
            let pids = [try await Self.pid(pruner), try await Self.pid(worker)]
            try await worker.query("SET regent_test.always = 'yes'")
            let late = Task {
                try await Self.noDeadlock("the late completion") {
                    try await LeaseStore().complete([Completion(executionID: leases[1].executionID, epoch: leases[1].epoch)], on: worker)
                }
            }
            try await Self.waitBlocked(conn, [pids[1]]) { false }
            let (prune, pruned) = Self.started("retention") {
                try await pruner.query("SELECT workflow.prune_runs(interval '1 hour', 100) AS n").single().decode("n", as: Int.self)
            }
            try await Self.waitBlocked(conn, [pids[0]]) { pruned.isSet }
            try await Self.open(gate)
            let outcome = try await late.value
            #expect(outcome?.done.isEmpty == true)
            _ = try await prune.value
            _ = try await conn.query("SELECT workflow.prune_runs(interval '1 hour', 100) AS n")
            #expect(try await conn.query("SELECT count(*) AS n FROM workflow.runs WHERE run_id = \(run.runID)").single().decode("n", as: Int.self) == 0)
            #expect(try await Self.deadlocks(conn) == before)
            for c in [pruner, worker, gate] { await c.close() }
        }
    }
}

/// A flag set once, read from anywhere.
final class DoneFlag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}
