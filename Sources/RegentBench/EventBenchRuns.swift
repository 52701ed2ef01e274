import CLibPQ
import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore
import RegentDrill
import Synchronization

/// One variant's figures, summed over rounds.
package struct RunFigures {
    package var latencies: [Duration] = []
    package var lastLatencies: [Duration] = []
    package var events = 0
    package var elapsed = Duration.zero
    package var lastThroughput = 0.0
    package var lost = 0

    package init() {}

    package mutating func add(_ latencies: [Duration]) {
        self.latencies += latencies
        lastLatencies = latencies
    }

    package mutating func add(_ run: ThroughputRun) {
        events += run.events
        elapsed += run.elapsed
        lost += run.lost
        lastThroughput = Double(run.events) / max(run.elapsed.milliseconds / 1000, 1e-9)
    }

    /// Events per second over every round.
    package var throughput: Double { Double(events) / max(elapsed.milliseconds / 1000, 1e-9) }
}

package struct ThroughputRun {
    package var events: Int
    package var elapsed: Duration
    package var lost: Int
}

/// Arrival records shared between receiver threads/tasks and the measuring code.
package final class Arrivals: Sendable {
    private let state: Mutex<[[Int64: ContinuousClock.Instant]]>
    package init(receivers: Int) { state = Mutex(Array(repeating: [:], count: receivers)) }
    package func record(_ receiver: Int, key: Int64, at: ContinuousClock.Instant) { state.withLock { $0[receiver][key] = at } }
    package func count(_ receiver: Int) -> Int { state.withLock { $0[receiver].count } }
    package func minCount() -> Int { state.withLock { $0.map(\.count).min() ?? 0 } }
    package func snapshot() -> [[Int64: ContinuousClock.Instant]] { state.withLock { $0 } }
    package func reset() { state.withLock { for i in $0.indices { $0[i].removeAll() } } }
}

package func waitFor(_ condition: () -> Bool, timeout: Duration) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        usleep(500)
    }
    return condition()
}

/// Raw libpq: one publishing connection, three LISTEN connections on threads of their own.
/// `viaOutbox`: publish with `engine.publish_event` (Regent's server-side work) but receive
/// with raw libpq, to split Regent's cost into server and client parts.
package final class RawNotify {
    package let viaOutbox: Bool
    package let arrivals = Arrivals(receivers: 3)
    package let stopFlag = StopFlag()
    package let publisher: OpaquePointer
    package let exited = DispatchGroup()
    package var nextKey: Int64 = 0
    package var prepared = false

    package init(conninfo: String, viaOutbox: Bool) throws {
        self.viaOutbox = viaOutbox
        let ready = DispatchSemaphore(value: 0)
        let (arrivals, stop, exited) = (self.arrivals, self.stopFlag, self.exited)
        for r in 0..<3 {
            exited.enter()
            let t = Thread {
                defer { exited.leave() }
                guard let conn = PQconnectdb(conninfo), PQstatus(conn) == CONNECTION_OK else { ready.signal(); return }
                PQclear(PQexec(conn, viaOutbox ? "LISTEN regent_events" : "LISTEN bench_raw"))
                ready.signal()
                var pfd = pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0)
                while !stop.isSet {
                    if poll(&pfd, 1, 50) <= 0 { continue }
                    PQconsumeInput(conn)
                    while let n = PQnotifies(conn) {
                        let now = ContinuousClock.now
                        let text = String(cString: n.pointee.extra)
                        let key = viaOutbox ? Self.seq(in: text) : (Int64(text) ?? -1)
                        PQfreemem(n)
                        arrivals.record(r, key: key, at: now)
                    }
                }
                PQfinish(conn)
            }
            t.start()
        }
        for _ in 0..<3 { ready.wait() }
        guard let pub = PQconnectdb(conninfo), PQstatus(pub) == CONNECTION_OK else {
            stopFlag.set()
            throw RegentError(.bootFailed, "raw bench: cannot connect")
        }
        publisher = pub
    }

    /// Closes every connection, waiting for the listener threads to end.
    package func stop() {
        stopFlag.set()
        PQfinish(publisher)
        exited.wait()
    }

    /// One publish, with a statement prepared once: for the outbox row Regent's own
    /// statement, as Regent's connections run it; for the limit, `pg_notify` prepared too,
    /// so that the limit is the fastest raw libpq way (planning even `SELECT pg_notify(…)`
    /// on every call costs ~0.03 ms).
    private func notify(_ key: Int64) {
        if !prepared {
            let (sql, count) = viaOutbox ? (EventPublisher.statementText, Int32(3)) : ("SELECT pg_notify('bench_raw', $1)", Int32(1))
            PQclear(PQprepare(publisher, "publish", sql, count, nil))
            prepared = true
        }
        let values = viaOutbox ? [strdup("bench"), strdup(#"{"seq": \#(key)}"#)] : [strdup(String(key))]
        var pointers: [UnsafePointer<CChar>?] = values.map { UnsafePointer($0) } + [nil]
        PQclear(PQexecPrepared(publisher, "publish", viaOutbox ? 3 : 1, &pointers, nil, nil, 0))
        values.forEach { free($0) }
    }

    package func latency(events: Int) throws -> [Duration] {
        arrivals.reset()
        var sent: [Int64: ContinuousClock.Instant] = [:]
        for _ in 0..<events {
            nextKey += 1
            sent[nextKey] = .now
            notify(nextKey)
            usleep(2000)
        }
        _ = waitFor({ arrivals.minCount() >= events }, timeout: .seconds(10))
        return arrivals.snapshot().flatMap { received in
            received.compactMap { key, at in sent[key].map { $0.duration(to: at) } }
        }
    }

    package func throughput(events: Int) -> ThroughputRun {
        arrivals.reset()
        let started = ContinuousClock.now
        for _ in 0..<events {
            nextKey += 1
            notify(nextKey)
        }
        _ = waitFor({ arrivals.minCount() >= events }, timeout: .seconds(60))
        let elapsed = started.duration(to: .now)
        return ThroughputRun(events: events, elapsed: elapsed, lost: 3 * events - arrivals.snapshot().map(\.count).reduce(0, +))
    }

    /// The `"seq": N` number in a notification's payload.
    package static func seq(in text: String) -> Int64 {
        guard let r = text.range(of: "\"seq\": ") else { return -1 }
        return Int64(text[r.upperBound...].prefix { $0.isNumber }) ?? -1
    }
}

package final class StopFlag: Sendable {
    private let value = Mutex(false)
    package var isSet: Bool { value.withLock { $0 } }
    package func set() { value.withLock { $0 = true } }
}

/// The same through Regent: three buses (three listener connections), one publisher.
package final class BusRun {
    package let arrivals: Arrivals
    package let buses: [(EventBus, ConnectionPool)]
    package let subscriptions: [EventSubscription]
    package let publisher: PostgresConnection
    package let tasks: [Task<Void, any Error>]
    package let topic: EventTopic

    private init(
        arrivals: Arrivals, buses: [(EventBus, ConnectionPool)], subscriptions: [EventSubscription], publisher: PostgresConnection,
        tasks: [Task<Void, any Error>]
    ) throws {
        self.arrivals = arrivals
        self.buses = buses
        self.subscriptions = subscriptions
        self.publisher = publisher
        self.tasks = tasks
        topic = try EventTopic("bench")
    }

    package static func start(config: ConnectionConfiguration) async throws -> BusRun {
        var buses: [(EventBus, ConnectionPool)] = []
        var tasks: [Task<Void, any Error>] = []
        for _ in 0..<3 {
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
            let bus = EventBus(configuration: config, pool: pool)
            buses.append((bus, pool))
            tasks.append(Task { await bus.run() })
        }
        var subs: [EventSubscription] = []
        for (bus, _) in buses { subs.append(try await bus.subscribe(topics: ["bench"])) }
        let arrivals = Arrivals(receivers: 3)
        for (r, sub) in subs.enumerated() {
            tasks.append(Task {
                for try await event in sub { arrivals.record(r, key: event.id, at: .now) }
            })
        }
        return try BusRun(
            arrivals: arrivals, buses: buses, subscriptions: subs, publisher: try await PostgresConnection.connect(config), tasks: tasks)
    }

    package func stop() async {
        for (bus, _) in buses { bus.stop() }
        for sub in subscriptions { sub.cancel() }
        for task in tasks { _ = await task.result }
        for (_, pool) in buses { await pool.shutdown() }
        await publisher.close()
    }

    private func publish(_ k: Int) async throws -> Int64 {
        try await EventPublisher.publish(topic: topic, payload: try EventPayload(trusted: #"{"seq": \#(k)}"#), publisher: nil, on: publisher)
    }

    package func latency(events: Int) async throws -> [Duration] {
        arrivals.reset()
        var sent: [Int64: ContinuousClock.Instant] = [:]
        for k in 0..<events {
            let t0 = ContinuousClock.now
            sent[try await publish(k)] = t0
            try await Task.sleep(for: .milliseconds(2))
        }
        _ = await eventuallyCount(events)
        return arrivals.snapshot().flatMap { received in
            received.compactMap { key, at in sent[key].map { $0.duration(to: at) } }
        }
    }

    package func throughput(events: Int) async throws -> ThroughputRun {
        arrivals.reset()
        let started = ContinuousClock.now
        for k in 0..<events { _ = try await publish(k) }
        _ = await eventuallyCount(events)
        let elapsed = started.duration(to: .now)
        return ThroughputRun(events: events, elapsed: elapsed, lost: 3 * events - arrivals.snapshot().map(\.count).reduce(0, +))
    }

    package func eventuallyCount(_ n: Int) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if arrivals.minCount() >= n { return true }
            try? await Task.sleep(for: .milliseconds(1))
        }
        return false
    }
}
