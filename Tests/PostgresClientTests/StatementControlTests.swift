import Foundation
@testable import PostgresClient
import RegentTestSupport
import Synchronization
import Testing

@Suite("Aborting, cancelling, waiting and preparing statements against a real server")
struct StatementControlTests {
    @Test func abortUnblocksAStatementWaitingOnTheServer() async throws {
        let (conn, _) = try await TestDatabase.shared.connect()
        let started = ContinuousClock.now
        let sleeper = Task { try await conn.query("SELECT pg_sleep(30)") }
        try await Task.sleep(for: .milliseconds(200))
        conn.abort()
        await expectPostgresError(.connectionClosed) { try await sleeper.value }
        #expect(ContinuousClock.now - started < .seconds(10))
        #expect(!conn.isUsable)
        await conn.close()
    }

    // The send of a statement on an idle connection happens on the caller's thread; these
    // check that the hand-over to the connection's queue keeps statements apart.

    /// Zero: every wait on the queue; 1 ms (the default): short statements complete on the
    /// caller's thread; 10 ms (the most): nearly every statement does, the others held back.
    @Test(arguments: [Duration.zero, .milliseconds(1), ConnectionConfiguration.maxCallerThreadWait])
    func concurrentStatementsOnOneConnectionEachGetTheirOwnResult(callerThreadWait: Duration) async throws {
        var config = try await TestDatabase.shared.freshDatabase()
        config.callerThreadWait = callerThreadWait
        let conn = try await PostgresConnection.connect(config)
        let results = try await withThrowingTaskGroup(of: (Int, Int).self) { group in
            for i in 0..<200 {
                group.addTask { (i, try await conn.query("SELECT \(i)::int + 0 AS v").single().decode("v", as: Int.self)) }
            }
            return try await group.reduce(into: [(Int, Int)]()) { $0.append($1) }
        }
        #expect(results.count == 200)
        #expect(results.allSatisfy { $0.0 == $0.1 })
        await conn.close()
    }

    @Test func statementLargerThanTheSocketBufferIsSentWhole() async throws {
        let (conn, _) = try await TestDatabase.shared.connect()
        let big = String(repeating: "x", count: 8 << 20)
        for _ in 0..<3 {
            let n = try await conn.query("SELECT length(\(big)) AS n, md5(\(big)) = md5(repeat('x', \(8 << 20))) AS same").single()
            #expect(try n.decode("n", as: Int.self) == 8 << 20)
            #expect(try n.decode("same", as: Bool.self))
        }
        #expect(try await conn.query("SELECT 1 AS one").single().decode("one", as: Int.self) == 1)
        await conn.close()
    }

    @Test func failedOrCancelledStatementLeavesTheConnectionUsable() async throws {
        let (conn, _) = try await TestDatabase.shared.connect()
        await expectPostgresError(.server, sqlState: "22012") { try await conn.query("SELECT 1/0") }
        #expect(try await conn.query("SELECT 2 AS two").single().decode("two", as: Int.self) == 2)
        let started = ContinuousClock.now
        let sleeper = Task { try await conn.query("SELECT pg_sleep(30)") }
        try await Task.sleep(for: .milliseconds(200))
        sleeper.cancel()
        await expectPostgresError(.server, sqlState: "57014") { try await sleeper.value }
        #expect(ContinuousClock.now - started < .seconds(10))
        #expect(conn.isUsable)
        #expect(try await conn.query("SELECT 3 AS three").single().decode("three", as: Int.self) == 3)
        await conn.close()
        await expectPostgresError(.connectionClosed) { try await conn.query("SELECT 4") }
    }

    @Test func statementOutlastingTheCallersWaitIsFinishedByTheQueueInOrder() async throws {
        var config = try await TestDatabase.shared.freshDatabase()
        config.callerThreadWait = .milliseconds(1)
        let conn = try await PostgresConnection.connect(config)
        // A slow statement runs out of the caller's wait with nothing read; a large result
        // usually with part of it read. Statements sent meanwhile wait their turn.
        let big = 4 << 20
        async let slow = conn.query("SELECT pg_sleep(0.2), 'slow' AS v").single().decode("v", as: String.self)
        async let large = conn.query("SELECT repeat('y', \(big)) AS v").single().decode("v", as: String.self)
        let quick = try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<50 {
                group.addTask { try await conn.query("SELECT \(i)::int * 2 AS v").single().decode("v", as: Int.self) == i * 2 }
            }
            return try await group.reduce(true) { $0 && $1 }
        }
        #expect(quick)
        #expect(try await slow == "slow")
        let text = try await large
        #expect(text.utf8.count == big && text.utf8.allSatisfy { $0 == UInt8(ascii: "y") })
        #expect(try await conn.query("SELECT 5 AS five").single().decode("five", as: Int.self) == 5)
        await conn.close()
    }

    // A statement waited for on the caller's thread can still be cut short. The abort or
    // cancel comes from a thread of its own (the caller's thread may be the pool's last),
    // a moment after the statement starts: inside the caller's wait when the machine keeps
    // up, on the queue otherwise; either way it must end the statement. (A cancel that
    // comes before the statement is sent does nothing, by design; on a busy machine the
    // first one can, so the thread repeats it every 3 ms until the statement has ended.)

    @Test(arguments: [true, false])
    func statementWaitedForOnTheCallersThreadCanBeCutShort(byAbort: Bool) async throws {
        var config = try await TestDatabase.shared.freshDatabase()
        config.callerThreadWait = ConnectionConfiguration.maxCallerThreadWait
        let conn = try await PostgresConnection.connect(config)
        let started = ContinuousClock.now
        let ended = Atomic<Bool>(false)
        let threadDone = Atomic<Bool>(false)
        Thread {
            repeat {
                usleep(3000)
                if ended.load(ordering: .relaxed) { break }
                if byAbort { conn.abort() } else { conn.cancelCurrentStatement() }
            } while !byAbort && ContinuousClock.now - started < .seconds(10)
            threadDone.store(true, ordering: .relaxed)
        }.start()
        await expectPostgresError(byAbort ? .connectionClosed : .server, sqlState: byAbort ? nil : "57014") { try await conn.query("SELECT pg_sleep(30)") }
        ended.store(true, ordering: .relaxed)
        // No cancel of that thread's may reach the next statement.
        #expect(await eventually { threadDone.load(ordering: .relaxed) })
        #expect(ContinuousClock.now - started < .seconds(10))
        if byAbort {
            #expect(!conn.isUsable)
        } else {
            #expect(try await conn.query("SELECT 6 AS six").single().decode("six", as: Int.self) == 6)
        }
        await conn.close()
    }

    /// Cancelling a task whose statement's server went silent returns at once. A cancel
    /// request (PQcancel) opens a connection of its own and waits on it without limit; it
    /// once ran inside the task's cancellation handler, holding the task's status lock and
    /// the calling thread until the network came back: on two cores a whole test process
    /// froze that way, its two cooperative threads stuck behind one frozen proxy.
    @Test func cancellingAStatementOnASilentNetworkDoesNotBlockTheCanceller() async throws {
        let (proxy, viaProxy) = try TCPProxy.inFront(of: try await TestDatabase.shared.freshDatabase())
        defer { proxy.close() }
        let conn = try await PostgresConnection.connect(viaProxy)
        let statement = Task { try await conn.query("SELECT pg_sleep(60)") }
        try await Task.sleep(for: .milliseconds(200))
        proxy.freeze()
        let returned = Atomic<Bool>(false)
        Thread {
            statement.cancel()
            returned.store(true, ordering: .releasing)
        }.start()
        #expect(await eventually(timeout: .seconds(2)) { returned.load(ordering: .acquiring) })
        proxy.close()  // the network fails for good: the statement ends with an error
        await expectPostgresError(.connectionClosed) { try await statement.value }
        await conn.close()
    }

    /// A cancel request goes out from another thread, a little later: if its statement has
    /// ended by then, it must not reach the next one (PostgreSQL cancels whatever runs when
    /// it arrives). Once, a node's shutdown cancelled its last heartbeat, the heartbeat ended
    /// on its own, and the late request cancelled the DELETE of the node's instance row. The
    /// next statement waits until the request is out (an idle backend drops it).
    @Test func aLateCancelRequestNeverReachesTheNextStatement() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            conn.delayCancelRequestsForTesting(.milliseconds(300))
            let first = Task { try await conn.query("SELECT pg_sleep(0.05) AS slept") }
            try await Task.sleep(for: .milliseconds(10))
            first.cancel()  // the request waits 300 ms; the statement ends after 50
            _ = try? await first.value
            let started = ContinuousClock.now
            let second = try await conn.query("SELECT pg_sleep(0.6) AS slept, 'done' AS outcome").single()
            #expect(try second.decode("outcome", as: String.self) == "done")
            #expect(ContinuousClock.now - started >= .milliseconds(550))

            // A request made while its statement still runs is sent.
            let third = Task { try await conn.query("SELECT pg_sleep(30)") }
            try await Task.sleep(for: .milliseconds(100))
            third.cancel()
            await expectPostgresError(.server, sqlState: "57014") { try await third.value }
            #expect(conn.isUsable)
        }
    }

    /// Cancel requests stuck on a silent network must not take threads the process needs:
    /// with more of them than cores, timers (`Task.sleep`) and dispatch's global queues must
    /// still run. (Each goes out from a thread of its own; a request sent from the
    /// cancellation handler once froze a whole process.)
    @Test func cancelRequestsStuckOnASilentNetworkLeaveTimersAndGlobalQueuesRunning() async throws {
        let (proxy, viaProxy) = try TCPProxy.inFront(of: try await TestDatabase.shared.freshDatabase())
        defer { proxy.close() }
        let count = 3 * ProcessInfo.processInfo.activeProcessorCount + 2
        var conns: [PostgresConnection] = []
        for _ in 0..<count { conns.append(try await PostgresConnection.connect(viaProxy)) }
        let statements = conns.map { conn in Task { try await conn.query("SELECT pg_sleep(60)") } }
        try await Task.sleep(for: .milliseconds(300))
        proxy.freeze()
        for statement in statements { statement.cancel() }
        try await Task.sleep(for: .milliseconds(100))  // the requests are out, and stuck

        let started = ContinuousClock.now
        for _ in 0..<5 { try await Task.sleep(for: .milliseconds(10)) }
        // 50 ms of sleeps; a frozen timer thread would hold them for as long as the stuck requests
        // (tens of seconds). The bound leaves room for a machine loaded by the parallel tests.
        #expect(ContinuousClock.now - started < .seconds(3))
        let ran = Atomic<Bool>(false)
        let queued = ContinuousClock.now
        DispatchQueue.global().async { ran.store(true, ordering: .releasing) }
        #expect(await eventually(timeout: .seconds(3)) { ran.load(ordering: .acquiring) })
        #expect(ContinuousClock.now - queued < .milliseconds(900))

        proxy.close()
        for statement in statements { _ = try? await statement.value }
        for conn in conns { await conn.close() }
    }

    /// A statement marked `prepared()` is parsed and planned once per session, whatever its
    /// values; a rolled-back transaction does not undo that; a session that lost it
    /// (DEALLOCATE ALL) prepares it again without the caller noticing, except inside a
    /// transaction, which the error aborts and which must therefore see it.
    @Test func preparedStatementsArePreparedOncePerSessionAndRecoverWhenLost() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            func add(_ n: Int) async throws -> Int {
                let q: PostgresQuery = "SELECT \(n)::int + 1 AS v, \("é ✓")::text AS s"
                let row = try await conn.query(q.prepared()).single()
                #expect(try row.decode("s", as: String.self) == "é ✓")
                return try row.decode("v", as: Int.self)
            }
            func prepared() async throws -> [String] {
                try await conn.query("SELECT name FROM pg_prepared_statements ORDER BY name").map { try $0.decode("name", as: String.self) }
            }
            for n in 0..<5 { #expect(try await add(n) == n + 1) }
            let names = try await prepared()
            #expect(names.count == 1)
            // Another text is another statement; the unprepared form of the same text prepares nothing.
            #expect(try await conn.query(PostgresQuery("SELECT 7 AS v").prepared()).single().decode("v", as: Int.self) == 7)
            try await conn.query("SELECT \(1)::int + 1 AS v, \("x")::text AS s")
            #expect(try await prepared().count == 2)

            struct Abandon: Error {}
            await #expect(throws: Abandon.self) {
                try await conn.withTransaction { tx in
                    #expect(try await tx.query(PostgresQuery("SELECT \(1)::int + 2 AS w").prepared()).single().decode("w", as: Int.self) == 3)
                    throw Abandon()
                }
            }
            #expect(try await prepared().count == 3)  // preparing is not transactional
            #expect(try await add(10) == 11)

            try await conn.query("DEALLOCATE ALL")
            #expect(try await add(20) == 21)  // lost, prepared again, run: the caller sees nothing
            #expect(try await prepared().count == 1)
            #expect(try await prepared() != names)  // under a new name

            try await conn.query("DEALLOCATE ALL")
            await expectPostgresError(.server, sqlState: "26000") {
                try await conn.withTransaction { tx in _ = try await tx.query(PostgresQuery("SELECT \(1)::int + 1 AS v, \("é ✓")::text AS s").prepared()) }
            }
            #expect(try await add(30) == 31)  // and the next run outside prepares it again
            #expect(conn.isUsable)
        }
    }
}
