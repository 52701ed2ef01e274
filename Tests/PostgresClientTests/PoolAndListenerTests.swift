import Foundation
import PostgresClient
import RegentTestSupport
import Synchronization
import Testing

@Suite("Pool and LISTEN/NOTIFY against a real server")
struct PoolAndListenerTests {
    @Test func poolExhaustionWaitsThenTimesOutWithClearError() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let pool = ConnectionPool(
            configuration: config, options: .init(maxConnections: 2, checkoutTimeout: .milliseconds(300)))
        let a = try await pool.checkout()
        let b = try await pool.checkout()
        let started = ContinuousClock.now
        do {
            _ = try await pool.checkout()
            Issue.record("a third checkout from a pool of two must time out")
        } catch let error as PostgresError {
            #expect(error.code == .poolExhausted)
            #expect(error.message.contains("all 2 in use"))
        }
        #expect(ContinuousClock.now - started >= .milliseconds(250))
        // A waiter is served as soon as a connection comes back.
        async let waiter = pool.withConnection { try await $0.query("SELECT 7 AS n").single().decode("n", as: Int.self) }
        try await Task.sleep(for: .milliseconds(50))
        await pool.checkin(a)
        #expect(try await waiter == 7)
        await pool.checkin(b)
        #expect(await pool.statistics.open == 2)
        await pool.shutdown()
    }

    @Test func poolReplacesABrokenConnection() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 1, healthCheckAfterIdle: .zero))
        let pid = try await pool.withConnection { $0.backendPID }
        let admin = try await PostgresConnection.connect(config)
        try await admin.query("SELECT pg_terminate_backend(\(Int(pid)))")
        // Health check on checkout notices the dead session and opens another.
        let pid2 = try await pool.withConnection { conn in
            try await conn.query("SELECT pg_backend_pid() AS p").single().decode("p", as: Int32.self)
        }
        #expect(pid2 != pid)
        await admin.close()
        await pool.shutdown()
    }

    @Test func listenerReceivesNotifyFromAnotherConnection() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let listener = try await PostgresListener.connect(config, channels: [try SQLIdentifier("regent_test")])
        let sender = try await PostgresConnection.connect(config)
        try await sender.query("SELECT pg_notify(\("regent_test"), \("héllo 1"))")
        try await listener.listen(try SQLIdentifier("second"))
        try await sender.query("SELECT pg_notify(\("second"), \("two"))")
        var iterator = listener.notifications.makeAsyncIterator()
        let first = try await iterator.next()
        #expect(first?.channel == "regent_test")
        #expect(first?.payload == "héllo 1")
        #expect(first?.senderPID == sender.backendPID)
        let second = try await iterator.next()
        #expect(second?.channel == "second")
        #expect(second?.payload == "two")
        listener.stop()
        #expect(try await iterator.next() == nil)
        await sender.close()
    }

    @Test func listenerReportsLossWhenBackendIsTerminated() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let listener = try await PostgresListener.connect(config, channels: [try SQLIdentifier("ch")])
        let admin = try await PostgresConnection.connect(config)
        try await admin.query("SELECT pg_terminate_backend(\(Int(listener.backendPID)))")
        var iterator = listener.notifications.makeAsyncIterator()
        do {
            while try await iterator.next() != nil {}
            Issue.record("the sequence must end with an error, not quietly")
        } catch let error as PostgresError {
            #expect(error.code == .connectionClosed)
        }
        await admin.close()
    }

    /// Counts ticks on the listener thread.
    final class TickCounter: PostgresListenerHandler {
        let ticks = Atomic<Int>(0)
        var tickInterval: Duration? { .milliseconds(20) }
        func received(_ notification: PostgresNotification, session: ListenerSession) throws {}
        func tick(_ session: ListenerSession) throws { ticks.add(1, ordering: .relaxed) }
    }

    /// An idle listener with a tick sleeps between ticks: it once spun through zero-timeout
    /// polls for the last fraction of a millisecond before each one (thousands of wake-ups a
    /// second; ~50 are expected here).
    @Test func idleListenerWithATickSleepsBetweenTicks() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let listener = try await PostgresListener.open(config, channels: [try SQLIdentifier("idle")])
        let counter = TickCounter()
        listener.start(counter)
        try await Task.sleep(for: .seconds(1))
        let (wakeUps, ticks) = (listener.wakeUps, counter.ticks.load(ordering: .relaxed))
        listener.stop()
        try await listener.waitUntilClosed()
        #expect(ticks >= 10, "ticks at least every 20 ms: \(ticks) in a second")
        #expect(wakeUps <= 3 * ticks + 10, "\(wakeUps) wake-ups for \(ticks) ticks")
    }

    /// Waits for `listener` to end, without ever hanging the test: nil while it runs,
    /// then `.some(nil)` for a clean end or the error it ended with.
    final class EndWatcher: Sendable {
        let outcome = Mutex<PostgresError??>(nil)
        init(_ listener: PostgresListener) {
            Task { [self] in
                do {
                    try await listener.waitUntilClosed()
                    outcome.withLock { $0 = .some(nil) }
                } catch {
                    outcome.withLock { $0 = .some(error as? PostgresError) }
                }
            }
        }
        var ended: Bool { outcome.withLock { $0 != nil } }
        /// The error it ended with (nil while it runs, or after a clean end).
        var error: PostgresError? { outcome.withLock { $0 ?? nil } }
    }

    /// A listener behind a silent network (a partition: packets vanish, no reset) finds out
    /// through its ping: the server must answer within `answerTimeout`. Its ping once waited
    /// for an answer without limit, so such a listener never noticed, and never reconnected.
    @Test func listenerOnASilentNetworkEndsWhenItsPingGoesUnanswered() async throws {
        let (proxy, viaProxy) = try TCPProxy.inFront(of: try await TestDatabase.shared.freshDatabase())
        defer { proxy.close() }
        let listener = try await PostgresListener.connect(
            viaProxy, channels: [try SQLIdentifier("silent")], pingInterval: .milliseconds(200), answerTimeout: .milliseconds(500))
        let watcher = EndWatcher(listener)
        proxy.freeze()
        let frozenAt = ContinuousClock.now
        #expect(await eventually(timeout: .seconds(5)) { watcher.ended })
        #expect(ContinuousClock.now - frozenAt < .seconds(3))
        let error = watcher.error
        #expect(error?.code == .connectionClosed)
        #expect(error?.message.contains("no answer") == true, "\(String(describing: error))")
    }

    /// Runs one long statement from its first tick.
    final class SlowTick: PostgresListenerHandler {
        let started = Atomic<Bool>(false)
        var tickInterval: Duration? { .milliseconds(10) }
        func received(_ notification: PostgresNotification, session: ListenerSession) throws {}
        func tick(_ session: ListenerSession) throws {
            guard !started.exchange(true, ordering: .acquiringAndReleasing) else { return }
            _ = try session.query("SELECT pg_sleep(30)")
        }
    }

    /// `stop()` ends a listener at once even while a statement of its handler waits on the
    /// server, and the listener ends cleanly, as a stop should.
    @Test func stopCutsShortAStatementOnTheListenerThread() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let listener = try await PostgresListener.open(config, channels: [try SQLIdentifier("slow")])
        let handler = SlowTick()
        listener.start(handler)
        let watcher = EndWatcher(listener)
        #expect(await eventually { handler.started.load(ordering: .acquiring) })
        try await Task.sleep(for: .milliseconds(100))
        listener.stop()
        #expect(await eventually(timeout: .seconds(2)) { watcher.ended })
        #expect(watcher.error == nil, "a stopped listener ends without error: \(String(describing: watcher.error))")
    }
}

@Suite("Pool check-in against a real server")
struct PoolCheckinTests {
    @Test func aConnectionReturnedInsideATransactionIsNeverLentAgain() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
        let first = try await pool.checkout()
        try await first.query("BEGIN")
        try await first.query("CREATE TEMP TABLE leaked (v int)")
        #expect(first.isInTransaction)
        await pool.checkin(first)
        #expect(await pool.statistics.open == 0)
        let next = try await pool.checkout()
        #expect(next.backendPID != first.backendPID)
        #expect(!next.isInTransaction)
        // Nothing of the abandoned transaction is visible: it was never committed.
        #expect(try await next.query("SELECT to_regclass('pg_temp.leaked') IS NULL AS gone").single().decode("gone", as: Bool.self))
        await pool.checkin(next)
        #expect(await pool.statistics.idle == 1)
        await pool.shutdown()
    }
}
