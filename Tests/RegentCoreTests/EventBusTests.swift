import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Testing

/// The events `sub` delivers up to and including the first that `last` accepts (or what came
/// within `timeout`, when none did).
func collect(_ sub: EventSubscription, timeout: Duration = .seconds(10), until last: @escaping @Sendable (Event) -> Bool) async throws -> [Event] {
    try await withThrowingTaskGroup(of: [Event]?.self) { group in
        group.addTask {
            var out: [Event] = []
            for try await e in sub {
                out.append(e)
                if last(e) { break }
            }
            return out
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            sub.cancel()
            return nil
        }
        var got: [Event] = []
        while let next = try await group.next() {
            if let next { got = next; break }
        }
        group.cancelAll()
        return got
    }
}

func collect(_ sub: EventSubscription, count: Int, timeout: Duration = .seconds(10)) async throws -> [Event] {
    try await withThrowingTaskGroup(of: [Event].self) { group in
        group.addTask {
            var out: [Event] = []
            for try await e in sub {
                out.append(e)
                if out.count == count { break }
            }
            return out
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            sub.cancel()
            return []
        }
        let first = try await group.next() ?? []
        group.cancelAll()
        return first
    }
}

@Suite("Event bus against a real server")
struct EventBusTests {
    @Test func everySubscriberGetsEveryEventInIDOrder() async throws {
        let config = try await migratedDatabase()
        var buses: [RunningBus] = []
        for _ in 0..<3 { buses.append(await RunningBus(config)) }
        var subs: [EventSubscription] = []
        for b in buses { subs.append(try await b.bus.subscribe(topics: ["orders"])) }
        let publisher = buses[0]
        for i in 0..<50 {
            try await publisher.bus.publish(topic: i % 5 == 0 ? "other" : "orders", payload: #"{"n": \#(i)}"#)
        }
        for sub in subs {
            let got = try await collect(sub, count: 40)
            #expect(got.count == 40)
            #expect(got.map(\.id) == got.map(\.id).sorted())
            #expect(Set(got.map(\.id)).count == 40)
            #expect(got.allSatisfy { $0.topic == "orders" })
        }
        for b in buses { await b.stop() }
    }

    @Test func rolledBackPublishLeavesNoEvent() async throws {
        struct Abort: Error {}
        let config = try await migratedDatabase()
        let running = await RunningBus(config)
        let sub = try await running.bus.subscribe()
        let conn = try await PostgresConnection.connect(config)
        await #expect(throws: Abort.self) {
            try await conn.withTransaction { tx in
                try await EventPublisher.publish(topic: EventTopic("t"), payload: EventPayload(json: #"{"rolled":"back"}"#), publisher: nil, on: tx)
                throw Abort()
            }
        }
        try await conn.withTransaction { tx in
            try await EventPublisher.publish(topic: EventTopic("t"), payload: EventPayload(json: #"{"kept":true}"#), publisher: nil, on: tx)
        }
        let got = try await collect(sub, count: 1)
        #expect(got.map(\.payload) == [#"{"kept": true}"#])
        let rows = try await conn.query("SELECT count(*) AS n FROM engine.events WHERE payload ? 'rolled'").single()
        #expect(try rows.decode("n", as: Int.self) == 0)
        await conn.close()
        await running.stop()
    }

    @Test func hundredKilobytePayloadArrivesWhole() async throws {
        let config = try await migratedDatabase()
        let running = await RunningBus(config)
        let sub = try await running.bus.subscribe()
        let blob = String(repeating: "é0123456789", count: 10_000)
        try await running.bus.publish(topic: "big", payload: #"{"blob": "\#(blob)"}"#)
        let got = try await collect(sub, count: 1)
        let whole = got.first?.payload == #"{"blob": "\#(blob)"}"#  // compared apart: a failure must not print 100 KB
        #expect(whole, "payload of \(got.first?.payload.utf8.count ?? 0) bytes differs")
        await running.stop()
    }

    @Test func listenerBackendTerminatedMidStreamLosesNothingAndDuplicatesNothing() async throws {
        let config = try await migratedDatabase()
        let running = await RunningBus(config)
        let sub = try await running.bus.subscribe()
        let total = 300
        let publisher = Task {
            let conn = try await PostgresConnection.connect(config)
            for i in 0..<total {
                try await EventPublisher.publish(topic: EventTopic("s"), payload: EventPayload(json: #"{"i": \#(i)}"#), publisher: nil, on: conn)
                if i % 20 == 0 { try await Task.sleep(for: .milliseconds(5)) }
            }
            await conn.close()
        }
        let admin = try await PostgresConnection.connect(config)
        try await Task.sleep(for: .milliseconds(30))
        for _ in 0..<2 {
            if let pid = running.bus.listenerBackendPID {
                try await admin.query("SELECT pg_terminate_backend(\(Int(pid)))")
            }
            try await Task.sleep(for: .milliseconds(80))
        }
        try await publisher.value
        let got = try await collect(sub, count: total)
        #expect(got.count == total)
        #expect(got.map(\.id) == Array(got.first!.id...(got.first!.id + Int64(total) - 1)))
        #expect(running.bus.reconnects >= 1)
        await admin.close()
        await running.stop()
    }

    @Test func databaseRestartLosesNothing() async throws {
        let pg = try await EmbeddedPostgresForTest.start()
        defer { pg.destroy() }  // on failure; a passing run has destroyed it off the pool already
        let config = try await pg.createDatabase("bus_restart")
        let setup = try await PostgresConnection.connect(config)
        try await MigrationRunner(appliedBy: "test").migrate(on: setup, schemas: ["engine"])
        await setup.close()
        let running = await RunningBus(config)
        let sub = try await running.bus.subscribe(topics: ["r"])
        func publish(_ range: Range<Int>) async throws {
            let conn = try await PostgresConnection.connect(config)
            for i in range { try await EventPublisher.publish(topic: EventTopic("r"), payload: EventPayload(json: #"{"i": \#(i)}"#), publisher: nil, on: conn) }
            await conn.close()
        }
        try await publish(0..<20)
        try await offThePool { try pg.restart() }
        // Published while the bus is still reconnecting: read back from the outbox.
        try await publish(20..<40)
        let got = try await collect(sub, count: 40, timeout: .seconds(20))
        #expect(got.count == 40)
        let numbers = got.compactMap { e -> Int? in
            (try? JSONSerialization.jsonObject(with: Data(e.payload.utf8)) as? [String: Int])?["i"]
        }
        #expect(numbers == Array(0..<40))
        await running.stop()
        try await offThePool { pg.destroy() }
    }

    @Test func lowerIDCommittingLaterIsDeliveredInOrderNotSkipped() async throws {
        let config = try await migratedDatabase()
        // A gap timeout well above the 100 ms the slow transaction waits, so a loaded machine
        // (the parallel pass on two cores) cannot stretch that wait past it.
        var options = EventBus.Options()
        options.gapTimeout = .seconds(2)
        let running = await RunningBus(config, options: options)
        let sub = try await running.bus.subscribe()
        let slow = try await PostgresConnection.connect(config)
        let fast = try await PostgresConnection.connect(config)
        try await slow.query("BEGIN")
        let low = try await EventPublisher.publish(topic: EventTopic("o"), payload: EventPayload(json: #"{"who":"slow"}"#), publisher: nil, on: slow)
        let high = try await EventPublisher.publish(topic: EventTopic("o"), payload: EventPayload(json: #"{"who":"fast"}"#), publisher: nil, on: fast)
        #expect(low < high)
        try await Task.sleep(for: .milliseconds(100))
        try await slow.query("COMMIT")
        let got = try await collect(sub, count: 2)
        #expect(got.map(\.id) == [low, high])
        // A transaction that holds its id past the gap timeout is delivered late, never skipped.
        try await slow.query("BEGIN")
        let late = try await EventPublisher.publish(topic: EventTopic("o"), payload: EventPayload(json: #"{"who":"late"}"#), publisher: nil, on: slow)
        let after = try await EventPublisher.publish(topic: EventTopic("o"), payload: EventPayload(json: #"{"who":"after"}"#), publisher: nil, on: fast)
        // The gap is given up after its timeout: `after` comes first, `late` once it commits.
        #expect(try await collect(sub, count: 1).map(\.id) == [after])
        try await slow.query("COMMIT")
        #expect(try await collect(sub, count: 1).map(\.id) == [late])
        await slow.close()
        await fast.close()
        await running.stop()
    }

    @Test func rawListenSeesTheDocumentedJSON() async throws {
        let config = try await migratedDatabase()
        let listener = try await PostgresListener.connect(config, channels: [try SQLIdentifier("regent_events")])
        let conn = try await PostgresConnection.connect(config)
        let id = try await EventPublisher.publish(topic: EventTopic("doc"), payload: EventPayload(json: #"{"a": [1, 2]}"#), publisher: nil, on: conn)
        let big = String(repeating: "x", count: 9000)
        let bigID = try await EventPublisher.publish(topic: EventTopic("doc"), payload: EventPayload(json: #"{"big": "\#(big)"}"#), publisher: nil, on: conn)
        var it = listener.notifications.makeAsyncIterator()
        let first = try #require(try await it.next())
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(first.payload.utf8)) as? [String: Any])
        #expect(doc["id"] as? Int == Int(id))
        #expect(doc["topic"] as? String == "doc")
        #expect((doc["payload"] as? [String: Any])?["a"] as? [Int] == [1, 2])
        #expect(doc.keys.contains("published_at"))
        let second = try #require(try await it.next())
        let truncated = try #require(try JSONSerialization.jsonObject(with: Data(second.payload.utf8)) as? [String: Any])
        #expect(truncated["id"] as? Int == Int(bigID))
        #expect(truncated["truncated"] as? Bool == true)
        #expect(truncated["payload"] == nil)
        listener.stop()
        await conn.close()
    }

    /// Regent publishes with a prepared statement of its own; other programs call
    /// `engine.publish_event`. Listeners must not be able to tell them apart: the same
    /// transaction publishes the same events both ways (so `published_at` agrees) and the
    /// texts must be equal but for the id — escapes, a publisher, and both sides of the
    /// 8000-byte truncation limit included.
    @Test func preparedPublishAnnouncesExactlyWhatPublishEventDoes() async throws {
        let config = try await migratedDatabase()
        let listener = try await PostgresListener.connect(config, channels: [try SQLIdentifier("regent_events")])
        let conn = try await PostgresConnection.connect(config)
        let publisher = UUID()
        // The notification's frame around the payload is 120-160 bytes: these sizes step
        // across the 8000-byte limit, with and without a publisher.
        let payloads =
            [#"{"a": [1, 2], "s": "quote \" backslash \\ tab \t é ✓ \u0001"}"#, #"{}"#, #"{"x": "\#(String(repeating: "y", count: 100_000))"}"#]
            + stride(from: 7800, through: 7900, by: 5).map { #"{"x": "\#(String(repeating: "y", count: $0))"}"# }
        var expected = 0
        for (i, json) in payloads.enumerated() {
            let who: UUID? = i.isMultiple(of: 2) ? publisher : nil
            try await conn.withTransaction { tx in
                _ = try await EventPublisher.publish(topic: EventTopic("parity.t-1/x:y"), payload: EventPayload(json: json), publisher: who, on: tx)
                try await tx.query("SELECT engine.publish_event('parity.t-1/x:y', \(json)::jsonb, \(who)::uuid)")
            }
            expected += 2
        }
        var it = listener.notifications.makeAsyncIterator()
        var texts: [String] = []
        for _ in 0..<expected { texts.append(try #require(try await it.next()).payload) }
        var truncatedSeen = 0
        for pair in stride(from: 0, to: texts.count, by: 2) {
            let (mine, theirs) = (texts[pair], texts[pair + 1])
            let withoutID = { (t: String) in t.replacing(/^\{"id":\d+,/, with: "{") }
            #expect(withoutID(mine) == withoutID(theirs))
            #expect(mine != theirs)  // the ids differ
            if mine.contains(#""truncated":true"#) { truncatedSeen += 1 } else { #expect(mine.utf8.count < 8000) }
        }
        #expect(truncatedSeen > 1 && truncatedSeen < payloads.count - 2)
        listener.stop()
        await conn.close()
    }

    /// The outbox's rules hold for any writer, not only for the publish paths; and the
    /// migration that moved them into domains keeps the events of an existing outbox.
    @Test func outboxRulesBindEveryWriterAndSurviveTheUpgradeToDomains() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            let runner = MigrationRunner(appliedBy: "test")
            try await runner.migrate(on: conn, schemas: ["engine"], target: MigrationTarget(schema: "engine", version: 3))
            for i in 1...3 { try await conn.query("SELECT engine.publish_event('before.upgrade', \(#"{"n": \#(i)}"#)::jsonb, NULL)") }
            // 0004 and every engine file after it (named by prefix: engine files keep coming).
            let ran = try await runner.migrate(on: conn, schemas: ["engine"]).map(\.description)
            #expect(ran.first == "engine 0004_event_domains" && ran.count == MigrationCatalog.builtIn.latestVersion(of: "engine") - 3, "\(ran)")
            let kept = try await conn.query("SELECT topic, payload->>'n' AS n FROM engine.events WHERE topic <> 'migration.applied' ORDER BY id")
                .map { "\(try $0.decode("topic", as: String.self))/\(try $0.decode("n", as: String.self))" }
            #expect(kept == ["before.upgrade/1", "before.upgrade/2", "before.upgrade/3"])

            let badTopics = ["", "has space", "tab\tin", String(repeating: "t", count: 201), "ünicode", "quote\"d"]
            for topic in badTopics {
                await #expect(throws: PostgresError.self, "topic \(topic.debugDescription)") {
                    try await conn.query("INSERT INTO engine.events (topic, payload) VALUES (\(topic), '{}')")
                }
            }
            for payload in ["[]", "1", "\"text\"", "null"] {
                await #expect(throws: PostgresError.self, "payload \(payload)") {
                    try await conn.query("INSERT INTO engine.events (topic, payload) VALUES ('ok', \(payload)::jsonb)")
                }
            }
            do {
                try await conn.query("INSERT INTO engine.events (topic, payload) VALUES ('has space', '{}')")
            } catch let error as PostgresError {
                #expect(error.sqlState == "23514")  // check_violation
            }
            try await conn.query("INSERT INTO engine.events (topic, payload) VALUES (\(String(repeating: "t", count: 200)), '{\"ok\": true}')")
            #expect(try await conn.query("SELECT count(*) AS n FROM engine.events WHERE topic <> 'migration.applied'").single().decode("n", as: Int.self) == 4)
        }
    }

    @Test func slowConsumerIsBoundedAndStillGetsEverything() async throws {
        let config = try await migratedDatabase()
        var options = EventBus.Options()
        options.bufferLimit = 8
        options.pageSize = 16
        let running = await RunningBus(config, options: options)
        let sub = try await running.bus.subscribe()
        let conn = try await PostgresConnection.connect(config)
        var ids: [Int64] = []
        for i in 0..<100 {
            ids.append(try await EventPublisher.publish(topic: EventTopic("slow"), payload: EventPayload(json: #"{"i": \#(i)}"#), publisher: nil, on: conn))
        }
        // The consumer is away: the bus holds at most bufferLimit events for it, then pages.
        #expect(await eventually { running.bus.subscriptionBuffers.first?.paging == true })
        let buffers = running.bus.subscriptionBuffers
        #expect(buffers.count == 1 && buffers.allSatisfy { $0.buffered <= options.bufferLimit }, "\(buffers)")
        let got = try await collect(sub, count: 100)
        #expect(got.map(\.id) == ids)
        await conn.close()
        await running.stop()
    }

    @Test func resumingFromAnIDReplaysAndBelowRetentionIsRefused() async throws {
        let config = try await migratedDatabase()
        let conn = try await PostgresConnection.connect(config)
        var ids: [Int64] = []
        for i in 0..<10 {
            ids.append(try await EventPublisher.publish(topic: EventTopic("h"), payload: EventPayload(json: #"{"i": \#(i)}"#), publisher: nil, on: conn))
        }
        try await conn.query("UPDATE engine.events SET published_at = now() - interval '2 days' WHERE id <= \(ids[4])")
        // Pruning is a leader duty: a made-up fence is refused and removes nothing ...
        let pool = ConnectionPool(configuration: config)
        let pruning = EventOutboxPruning(pool: pool)
        await expectCode(.notLeader) {
            _ = try await pruning.pruneOnce(fence: LeaderFence(term: 1, instanceID: InstanceID(), lockBackendPID: 0))
        }
        #expect(try await conn.query("SELECT count(*) AS n FROM engine.events WHERE topic = 'h'").single().decode("n", as: Int.self) == 10)
        // ... the leader prunes exactly what is past retention.
        var cluster = Cluster(config: config)
        let node = cluster.start("pruner")
        // Read together: a loaded node can lose its leadership between two separate reads.
        var held: LeaderFence?
        #expect(await eventually {
            held = await node.isLeader ? await node.currentFence : nil
            return held != nil
        })
        let fence = try #require(held)
        _ = try await asLeader(fence, of: cluster) { try await pruning.pruneOnce(fence: $0) }
        let left = try await conn.query("SELECT id FROM engine.events WHERE topic = 'h' ORDER BY id").map { try $0.decode("id", as: Int64.self) }
        #expect(left == Array(ids[5...]))
        let running = await RunningBus(config)
        do {
            _ = try await running.bus.subscribe(fromID: ids[2])
            Issue.record("resuming below the retention horizon must fail")
        } catch let error as RegentError {
            #expect(error.message.contains("resume from id \(ids[4] + 1)"))
        }
        let sub = try await running.bus.subscribe(topics: ["h"], fromID: ids[5])
        let replay = try await collect(sub, count: 5)
        #expect(replay.map(\.id) == Array(ids[5...]))
        await running.stop()
        await pool.shutdown()
        await conn.close()
        await cluster.stopAll()
    }

    @Test func everyNodeRunsABusThatSeesEngineEvents() async throws {
        let config = try await migratedDatabase()
        var cluster = Cluster(config: config)
        let node = cluster.start("n1")
        #expect(await eventually {
            let leads = await node.isLeader
            let hasBus = await node.eventBus != nil
            return leads && hasBus
        })
        let bus = try #require(await node.eventBus)
        let sub = try await bus.subscribe(topics: ["instance.joined"])
        let second = cluster.start("n2")
        // Generous: on a loaded machine a node's start (boot, connect, join) can take seconds.
        let joined = try await collect(sub, count: 1, timeout: .seconds(30))
        #expect(joined.first?.payload.contains("\"node_name\": \"n2\"") == true)
        // The leader hands over: the follower's own bus delivers the resignation, then the new election.
        #expect(await eventually { await second.eventBus != nil })
        let secondBus = try #require(await second.eventBus)
        // From n2's arrival on: a loaded machine can depose n1 (1 s test leases) and elect n2
        // before n1 shuts down, and then that election is the handover to see.
        let sub2 = try await secondBus.subscribe(topics: ["leader.resigned", "leader.elected"], fromID: try #require(joined.first).id)
        // Also from n2's arrival, and its sweep too: a loaded n1 whose heartbeat stalled can be
        // swept by the leader before it shuts down, and then there is no row left to delete.
        let left = try await secondBus.subscribe(topics: ["instance.left", "instance.swept"], fromID: try #require(joined.first).id)
        let ledAtShutdown = await node.isLeader
        await node.shutdown()
        let handover = try await collect(sub2, timeout: .seconds(30)) { $0.topic == "leader.elected" && $0.publisher == second.instanceID.uuid }
        #expect(handover.last?.topic == "leader.elected")
        // When it resigned as it went (it led at shutdown and was not deposed first by a loaded
        // machine's lock confirmation), its successor's election follows its resignation.
        if ledAtShutdown, handover.contains(where: { $0.topic == "leader.resigned" && $0.publisher == node.instanceID.uuid }) {
            #expect(handover.suffix(2).map(\.topic) == ["leader.resigned", "leader.elected"])
            #expect(handover.suffix(2).first?.publisher == node.instanceID.uuid)
        }
        // The node that shut down says so as it deletes its row (unless it had been swept).
        let gone = try await collect(left, timeout: .seconds(30)) { $0.payload.contains("\"node_name\": \"n1\"") }
        let last = try #require(gone.last)
        #expect(last.payload.contains("\"node_name\": \"n1\""))
        if last.topic == "instance.left" { #expect(last.publisher == node.instanceID.uuid) }
        await cluster.stopAll()
    }

    @Test func badTopicsAndPayloadsAreRefusedAndChangeNothing() async throws {
        let config = try await migratedDatabase()
        let running = await RunningBus(config)
        for topic in ["", String(repeating: "t", count: 201), "a b", "tab\t", "new\nline", "ünïcode"] {
            await expectCode(.invalidInput) { try await running.bus.publish(topic: topic, payload: "{}") }
        }
        for payload in ["[1]", "1", "\"s\"", "null", "{", "not json", "{\"a\":" + String(repeating: "1", count: EventPayload.maxBytes) + "}"] {
            await expectCode(.invalidInput) { try await running.bus.publish(topic: "ok", payload: payload) }
        }
        await expectCode(.invalidInput) { _ = try await running.bus.subscribe(topics: ["bad topic"]) }
        // A "trusted" payload that is not an object is still refused, by the outbox's constraint.
        for payload in ["{not json", "{\"a\": 1"] {
            await expectPostgresError(.server, sqlState: "22P02") {
                _ = try await running.pool.withConnection { conn in
                    try await EventPublisher.publish(topic: EventTopic("ok"), payload: EventPayload(trusted: payload), publisher: nil, on: conn)
                }
            }
        }
        expectCode(.invalidInput) { try EventPayload(trusted: "[1]") }
        let n = try await running.pool.query("SELECT count(*) AS n FROM engine.events WHERE topic <> 'migration.applied'").single()
        #expect(try n.decode("n", as: Int.self) == 0)
        await running.stop()
    }
}
