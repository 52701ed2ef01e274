import Foundation
import MetricsTestKit
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Testing

/// Late events (an id given up by the sequencer whose transaction commits after all) meeting
/// subscriptions that page from the table: a slow consumer, or one replaying from an id.
/// Each test orders the steps so that the case happens for certain, not by chance.
@Suite("Late events and paging subscriptions")
struct LateEventTests {
    /// A short gap timeout, so that tests do not wait long for ids to be given up.
    /// (Gap checks are off unless a test turns them on: the first comes an interval after
    /// the listener connects, and they would find the rows these tests leave for a catch-up
    /// or a page to find.)
    static func options(bufferLimit: Int = 1024, pageSize: Int = 500, gapCheckInterval: Duration = .seconds(3600)) -> EventBus.Options {
        var options = EventBus.Options()
        options.gapCheckInterval = gapCheckInterval
        options.gapTimeout = .milliseconds(100)
        options.bufferLimit = bufferLimit
        options.pageSize = pageSize
        return options
    }

    static func publish(_ label: String, on conn: PostgresConnection) async throws -> Int64 {
        try await EventPublisher.publish(topic: EventTopic("late"), payload: EventPayload(json: #"{"e":"\#(label)"}"#), publisher: nil, on: conn)
    }

    /// Opens a transaction on `conn` that inserts an event without NOTIFY (as if its
    /// notification were lost): the listener learns of it only from the table, when it
    /// catches up after a reconnect. Returns its id; the caller commits.
    static func beginUnannouncedRow(on conn: PostgresConnection) async throws -> Int64 {
        try await conn.query("BEGIN")
        return try await insertUnannouncedRow(on: conn)
    }

    /// Inserts an event without NOTIFY, in whatever transaction `conn` is in (committed at
    /// once if none): the listener knows its id only as a gap. Returns its id.
    static func insertUnannouncedRow(on conn: PostgresConnection) async throws -> Int64 {
        try await conn.query(#"INSERT INTO engine.events (topic, payload) VALUES ('late', '{"e":"t"}') RETURNING id"#).single()
            .decode("id", as: Int64.self)
    }

    /// Leaves a gap for good: an id taken and never committed.
    static func rollBackAPublish(on conn: PostgresConnection) async throws {
        try await conn.query("BEGIN")
        _ = try await publish("rolled back", on: conn)
        try await conn.query("ROLLBACK")
    }

    /// Reads until the event with id `last` (a sentinel published after everything else),
    /// so that a lost event shows as a missing id rather than as a test that never ends.
    static func read(_ it: inout EventSubscription.AsyncIterator, through last: Int64) async throws -> [Int64] {
        var ids: [Int64] = []
        while let event = try await it.next() {
            ids.append(event.id)
            if event.id == last { break }
        }
        return ids
    }

    @Test func aLateEventIsNotLostByASubscriptionThatIsPaging() async throws {
        let config = try await migratedDatabase()
        let running = await RunningBus(config, options: Self.options(pageSize: 2))
        let watch = try await running.bus.subscribe()
        let pub = try await PostgresConnection.connect(config)
        let slow = try await PostgresConnection.connect(config)
        let a = try await Self.publish("a", on: pub)
        try await slow.query("BEGIN")
        let t = try await Self.publish("t", on: slow)  // holds its id past the gap timeout
        var after: [Int64] = []
        for label in ["b", "c", "d", "e", "f"] { after.append(try await Self.publish(label, on: pub)) }
        // The listener gave t up and released the rest.
        #expect(try await collect(watch, count: 6).map(\.id) == [a] + after)

        // Replaying from a: two events a page. After three events its pages are past t.
        let pager = try await running.bus.subscribe(fromID: a)
        var it = pager.makeAsyncIterator()
        var got: [Int64] = []
        for _ in 0..<3 { got.append(try #require(try await it.next()).id) }
        #expect(got == [a, after[0], after[1]])
        // t commits while the pager is still paging; the listener releases it late.
        try await slow.query("COMMIT")
        #expect(try await collect(watch, count: 1).map(\.id) == [t])
        let sentinel = try await Self.publish("end", on: pub)
        got += try await Self.read(&it, through: sentinel)
        #expect(Set(got) == Set([a, t, sentinel] + after))
        #expect(got.count == 8, "no event twice: \(got)")
        await pub.close()
        await slow.close()
        await running.stop()
    }

    @Test func anEventAPageAlreadyDeliveredIsNotDeliveredAgainWhenItsLateReleaseFollows() async throws {
        let config = try await migratedDatabase()
        // Three a page: [a, t, b], then [c], a short page that takes it back to live delivery.
        let running = await RunningBus(config, options: Self.options(pageSize: 3))
        let watch = try await running.bus.subscribe()
        let pub = try await PostgresConnection.connect(config)
        let slow = try await PostgresConnection.connect(config)
        let a = try await Self.publish("a", on: pub)
        // Until the listener catches up, a page can have this row and the listener not.
        let t = try await Self.beginUnannouncedRow(on: slow)
        let b = try await Self.publish("b", on: pub)
        let c = try await Self.publish("c", on: pub)
        #expect(try await collect(watch, count: 3).map(\.id) == [a, b, c])  // t was given up
        try await slow.query("COMMIT")

        let pager = try await running.bus.subscribe(fromID: a)
        var it = pager.makeAsyncIterator()
        var got: [Int64] = []
        for _ in 0..<4 { got.append(try #require(try await it.next()).id) }
        #expect(got == [a, t, b, c])
        // The listener reconnects, catches up from below t, and releases t late; the pager
        // (live again by now) had it from a page.
        let pid = running.bus.listenerBackendPID
        running.bus.abortListener()
        #expect(try await collect(watch, count: 1).map(\.id) == [t])
        #expect(running.bus.listenerBackendPID != pid)
        let sentinel = try await Self.publish("end", on: pub)
        let rest = try await Self.read(&it, through: sentinel)
        #expect(rest == [sentinel], "t came twice: \(rest)")
        await pub.close()
        await slow.close()
        await running.stop()
    }

    @Test func aLateEventWaitingInTheBufferIsKeptWhenTheConsumerFallsBehind() async throws {
        let config = try await migratedDatabase()
        let running = await RunningBus(config, options: Self.options(bufferLimit: 3))
        let sub = try await running.bus.subscribe()
        let watch = try await running.bus.subscribe()
        let pub = try await PostgresConnection.connect(config)
        let slow = try await PostgresConnection.connect(config)
        let a = try await Self.publish("a", on: pub)
        try await slow.query("BEGIN")
        let t = try await Self.publish("t", on: slow)
        let b = try await Self.publish("b", on: pub)
        let c = try await Self.publish("c", on: pub)
        var it = sub.makeAsyncIterator()
        var got: [Int64] = []
        for _ in 0..<3 { got.append(try #require(try await it.next()).id) }
        #expect(got == [a, b, c])
        // The consumer stops reading; t commits and waits in its buffer, below what it has read.
        try await slow.query("COMMIT")
        // (The watcher's own buffer may overflow at t too: then it pages, and has t in id order.)
        #expect(Set(try await collect(watch, count: 4).map(\.id)) == [a, b, c, t])
        // Three more overflow the buffer (limit 3): the subscription goes back to paging from c.
        var more: [Int64] = []
        for label in ["d", "e", "f"] { more.append(try await Self.publish(label, on: pub)) }
        #expect(try await collect(watch, count: 3).map(\.id) == more)
        let sentinel = try await Self.publish("end", on: pub)
        got += try await Self.read(&it, through: sentinel)
        #expect(Set(got) == Set([a, b, c, t, sentinel] + more))
        #expect(got.count == 8, "no event twice: \(got)")
        await pub.close()
        await slow.close()
        await running.stop()
    }

    @Test func aReconnectReadsTheGapsAndWhatItMissedNotTheWholeOutbox() async throws {
        let config = try await migratedDatabase()
        let metrics = TestMetrics()
        let running = await RunningBus(config, options: Self.options(), metrics: RegentMetrics(factory: metrics))
        let watch = try await running.bus.subscribe()
        let pub = try await PostgresConnection.connect(config)
        let slow = try await PostgresConnection.connect(config)
        // A rolled-back publish leaves a gap for good; a row written without NOTIFY (as if its
        // notification had been lost) is a gap that fills without the listener knowing.
        try await Self.rollBackAPublish(on: pub)
        let t = try await Self.beginUnannouncedRow(on: slow)
        var ids: [Int64] = []
        for i in 0..<40 { ids.append(try await Self.publish("\(i)", on: pub)) }
        #expect(try await collect(watch, count: 40).map(\.id) == ids)  // both gaps given up
        try await slow.query("COMMIT")

        let pid = running.bus.listenerBackendPID
        running.bus.abortListener()
        // Caught up: t, found in its gap; nothing else was missed, and nothing else is read.
        #expect(try await collect(watch, count: 1).map(\.id) == [t])
        #expect(running.bus.listenerBackendPID != pid)
        #expect(running.bus.rowsReadSinceConnected == 1)
        #expect(try metrics.expectCounter("regent_event_listener_reconnects_total").totalValue == 1)
        #expect(try metrics.expectCounter("regent_events_late_total").totalValue == 1)
        // Events published while the listener is away come from the pages above the horizon.
        await running.bus.waitUntilListening()
        let pid2 = running.bus.listenerBackendPID
        let killer = try await PostgresConnection.connect(config)
        try await killer.query("SELECT pg_terminate_backend(\(try #require(pid2)))")
        var missed: [Int64] = []
        for i in 0..<3 { missed.append(try await Self.publish("away \(i)", on: pub)) }
        #expect(try await collect(watch, count: 3).map(\.id) == missed)
        await killer.close()
        await pub.close()
        await slow.close()
        await running.stop()
    }

    @Test func anEventInFlightWhenTheBusStartsIsFoundByACatchUp() async throws {
        let config = try await migratedDatabase()
        let pub = try await PostgresConnection.connect(config)
        let slow = try await PostgresConnection.connect(config)
        try await Self.rollBackAPublish(on: pub)
        // Taken before the bus starts, committed after, its notification lost.
        let t = try await Self.beginUnannouncedRow(on: slow)
        let b = try await Self.publish("b", on: pub)
        let running = await RunningBus(config, options: Self.options())
        let watch = try await running.bus.subscribe()
        try await slow.query("COMMIT")
        running.bus.abortListener()
        #expect(try await collect(watch, count: 1).map(\.id) == [t])
        // Two gaps below b when the bus started (the rolled-back id and t): one row found.
        #expect(running.bus.rowsReadSinceConnected == 1)
        let c = try await Self.publish("c", on: pub)
        #expect(try await collect(watch, count: 1).map(\.id) == [c])
        #expect(b < c)
        await pub.close()
        await slow.close()
        await running.stop()
    }

    @Test func aStartingBusFindsTheGapsBelowTheHighestID() async throws {
        let config = try await migratedDatabase()
        let conn = try await PostgresConnection.connect(config)
        var ids: [Int64] = []
        for i in 0..<8 { ids.append(try await Self.publish("\(i)", on: conn)) }
        try await conn.query("DELETE FROM engine.events WHERE id = ANY(\([ids[1], ids[2], ids[5]].map(String.init))::text[]::bigint[])")
        let rows = try await conn.query(EventQueries.start(window: 6))
        #expect(try rows.map { try $0.decode("max", as: Int64.self) } == [ids[7], ids[7]])
        // The window is the 6 ids up to the highest (ids[2] to ids[7]): ids[2] and ids[5] are
        // missing in it; ids[1] is below it.
        #expect(try rows.map { try $0.decode("lo", as: Int64.self) ... $0.decode("hi", as: Int64.self) } == [ids[2]...ids[2], ids[5]...ids[5]])
        // No gap in ids[6] to ids[7]: one row, null bounds.
        let none = try await conn.query(EventQueries.start(window: 2))
        #expect(none.count == 1)
        #expect(try none.first?.decodeOptional("lo", as: Int64.self) == nil)
        await conn.close()
    }

    @Test func gapsNothingCanFillAreForgottenAfterALastLook() async throws {
        let config = try await migratedDatabase()
        let metrics = TestMetrics()
        let running = await RunningBus(config, options: Self.options(gapCheckInterval: .milliseconds(100)), metrics: RegentMetrics(factory: metrics))
        let watch = try await running.bus.subscribe()
        let pub = try await PostgresConnection.connect(config)
        let slow = try await PostgresConnection.connect(config)
        try await Self.rollBackAPublish(on: pub)
        let b = try await Self.publish("b", on: pub)
        #expect(try await collect(watch, count: 1).map(\.id) == [b])
        // The rolled-back id's gap goes once the transactions running when it was given up
        // have ended (here: at once).
        #expect(await eventually { running.bus.givenUpGaps.isEmpty })
        let t = try await Self.beginUnannouncedRow(on: slow)
        let c = try await Self.publish("c", on: pub)
        #expect(try await collect(watch, count: 1).map(\.id) == [c])
        #expect(running.bus.givenUpGaps == [t...t])
        // t's stays while its transaction is open, however many checks pass.
        let checks = running.bus.gapChecksRun
        #expect(await eventually { running.bus.gapChecksRun >= checks + 3 })
        #expect(running.bus.givenUpGaps == [t...t])
        #expect(try metrics.expectGauge("regent_event_gaps").lastValue == 1)
        // t commits without a notification: the last look at its gap finds it, no reconnect needed.
        try await slow.query("COMMIT")
        #expect(try await collect(watch, count: 1).map(\.id) == [t])
        #expect(await eventually { running.bus.givenUpGaps.isEmpty })
        #expect(running.bus.reconnects == 0)
        #expect(try metrics.expectCounter("regent_events_late_total").totalValue == 1)
        #expect(await eventually { (try? metrics.expectGauge("regent_event_gaps").lastValue) == 0 })
        #expect(try metrics.expectCounter("regent_event_listener_reconnects_total").totalValue == 0)
        await pub.close()
        await slow.close()
        await running.stop()
    }

    /// A transaction can take an event id and only write (and so get a transaction id) much
    /// later: here the INSERT waits on an advisory lock between its `nextval` and its row,
    /// as a slow `BEFORE INSERT` trigger would. Its gap must stay until the transaction ends,
    /// however many gap checks pass meanwhile, and then the row is delivered.
    @Test func anIDTakenLongBeforeItsRowIsWrittenKeepsItsGap() async throws {
        let config = try await migratedDatabase()
        let running = await RunningBus(config, options: Self.options(gapCheckInterval: .milliseconds(100)))
        let watch = try await running.bus.subscribe()
        let pub = try await PostgresConnection.connect(config)
        let slow = try await PostgresConnection.connect(config)
        let gate = try await PostgresConnection.connect(config)
        try await gate.query("SELECT pg_advisory_lock(4242)")
        let insert = Task {
            try await slow.query(
                """
                INSERT INTO engine.events (id, topic, payload)
                SELECT a.id, 'late', '{"e":"t"}'::jsonb
                FROM (SELECT nextval('engine.events_id_seq') AS id) AS a, LATERAL pg_advisory_xact_lock(4242 + 0 * a.id) AS w
                """)
        }
        // The INSERT has taken its id and waits for the gate, with no transaction id yet.
        #expect(await eventually {
            try await gate.query("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = 4242 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").count == 1
        })
        let c = try await Self.publish("c", on: pub)
        let t = c - 1
        #expect(try await collect(watch, count: 1).map(\.id) == [c])
        #expect(await eventually { running.bus.givenUpGaps == [t...t] })
        let checks = running.bus.gapChecksRun
        #expect(await eventually { running.bus.gapChecksRun >= checks + 3 })
        #expect(running.bus.givenUpGaps == [t...t])
        try await gate.query("SELECT pg_advisory_unlock(4242)")
        try await insert.value
        // Committed without a notification: the last look at its gap finds it.
        #expect(try await collect(watch, count: 1).map(\.id) == [t])
        #expect(await eventually { running.bus.givenUpGaps.isEmpty })
        await gate.close()
        await pub.close()
        await slow.close()
        await running.stop()
    }

    /// A catch-up looks into the given-up gaps a few hundred at a time; every one of them is
    /// read, the first and the last of each batch included.
    @Test func aCatchUpReadsEveryGapHoweverMany() async throws {
        let config = try await migratedDatabase()
        let running = await RunningBus(config, options: Self.options())
        let watch = try await running.bus.subscribe()
        let pub = try await PostgresConnection.connect(config)
        let count = EventCatchUpReader.gapsPerRead + 44
        let withRows: Set = [0, EventCatchUpReader.gapsPerRead - 1, EventCatchUpReader.gapsPerRead, count - 1]
        var announced: [Int64] = []
        var unannounced: [Int64] = []
        for i in 0..<count {
            if withRows.contains(i) {
                // Committed without a notification: the listener knows it only as a gap.
                unannounced.append(try await Self.insertUnannouncedRow(on: pub))
            } else {
                try await Self.rollBackAPublish(on: pub)
            }
            announced.append(try await Self.publish("\(i)", on: pub))
        }
        #expect(try await collect(watch, count: count).map(\.id) == announced)
        #expect(running.bus.givenUpGaps.count == count)
        running.bus.abortListener()
        #expect(try await collect(watch, count: withRows.count).map(\.id) == unannounced)
        #expect(running.bus.rowsReadSinceConnected == withRows.count)
        #expect(running.bus.givenUpGaps.count == count - withRows.count)
        await pub.close()
        await running.stop()
    }
}
