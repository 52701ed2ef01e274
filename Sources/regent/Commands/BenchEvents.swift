import ArgumentParser
import CLibPQ
import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore
import Synchronization

extension BenchCommand {
    struct Events: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Event bus latency and throughput against raw NOTIFY → LISTEN, in one run.",
            discussion: """
                Latency: one event every 2 ms, each delivered to 3 subscribers on separate \
                connections; publish call → delivery. Throughput: one publisher sends as fast as it \
                can until all 3 subscribers have every event. The baseline does the same with raw \
                libpq: a prepared `SELECT pg_notify(...)` per transaction and 3 LISTEN connections; a middle \
                row publishes through the outbox but receives with raw libpq (the server's share). \
                The three take turns in rounds, so that a noisy machine disturbs them alike.
                """
        )
        @Option(help: "Events in the latency run (split over the rounds).") var latencyEvents = 1000
        @Option(help: "Events in the throughput run (split over the rounds).") var throughputEvents = 10000
        @Option(help: "Rounds: each variant's share of the events, taken in turn.") var rounds = 5
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database.", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (10...100_000).contains(latencyEvents), (100...1_000_000).contains(throughputEvents), (1...50).contains(rounds) else {
                throw ValidationError("--latency-events 10-100000, --throughput-events 100-1000000, --rounds 1-50")
            }
        }

        func run() async throws {
            let (url, embedded) = try benchDatabase(databaseURL)
            defer { embedded?.destroy() }
            let config = try ConnectionConfiguration(url)
            let setup = try await PostgresConnection.connect(config)
            try await MigrationRunner(appliedBy: "bench").migrate(on: setup, schemas: ["engine"])
            await setup.close()

            let perRound = (latency: max(1, latencyEvents / rounds), throughput: max(1, throughputEvents / rounds))
            print("▶ \(rounds) rounds; in each, per variant: \(perRound.latency) events 2 ms apart, then \(perRound.throughput) flat out; 3 receivers")
            // One variant's connections at a time: PostgreSQL signals every listening backend
            // of the database on each NOTIFY, whatever its channel.
            var figures = [RunFigures](repeating: RunFigures(), count: 3)
            for round in 1...rounds {
                // Each round starts with another variant, so none always runs first or last.
                for variant in (0..<3).map({ ($0 + round) % 3 }) {
                    if variant < 2 {
                        let raw = try RawNotify(conninfo: url, viaOutbox: variant == 1)
                        defer { raw.stop() }
                        figures[variant].add(try raw.latency(events: perRound.latency))
                        figures[variant].add(raw.throughput(events: perRound.throughput))
                        continue
                    }
                    let bus = try await BusRun.start(config: config)
                    do {
                        figures[2].add(try await bus.latency(events: perRound.latency))
                        figures[2].add(try await bus.throughput(events: perRound.throughput))
                    } catch {
                        await bus.stop()
                        throw error
                    }
                    await bus.stop()
                }
                print(String(
                    format: "  round %d: p50 raw %@, outbox %@, Regent %@; throughput raw %.0f/s, outbox %.0f/s, Regent %.0f/s", round,
                    ms(Figures(figures[0].lastLatencies).median), ms(Figures(figures[1].lastLatencies).median),
                    ms(Figures(figures[2].lastLatencies).median), figures[0].lastThroughput, figures[1].lastThroughput,
                    figures[2].lastThroughput))
            }

            let (r, o, b) = (figures[0], figures[1], figures[2])
            let rl = Figures(r.latencies), ol = Figures(o.latencies), bl = Figures(b.latencies)
            print("")
            print(table(
                ["", "p50", "p99", "throughput", "lost"],
                [
                    ["raw NOTIFY → LISTEN (limit)", ms(rl.median), ms(rl.p99), String(format: "%.0f /s", r.throughput), "\(r.lost)"],
                    ["outbox publish → raw LISTEN", ms(ol.median), ms(ol.p99), String(format: "%.0f /s", o.throughput), "\(o.lost)"],
                    ["Regent publish → subscriber", ms(bl.median), ms(bl.p99), String(format: "%.0f /s", b.throughput), "\(b.lost)"],
                ]))
            print(String(
                format: "\nratios: p50 latency %.2f× raw (goal ≤ 1.5×; the outbox alone: %.2f×), throughput %.0f%% of raw (goal ≥ 50%%), lost events: %d (goal 0)",
                bl.median.milliseconds / max(rl.median.milliseconds, 0.0001), ol.median.milliseconds / max(rl.median.milliseconds, 0.0001),
                100 * b.throughput / max(r.throughput, 1), b.lost))
            if b.lost > 0 { throw ExitCode(1) }
        }
    }
}

/// One variant's figures, summed over rounds.
struct RunFigures {
    var latencies: [Duration] = []
    var lastLatencies: [Duration] = []
    var events = 0
    var elapsed = Duration.zero
    var lastThroughput = 0.0
    var lost = 0

    mutating func add(_ latencies: [Duration]) {
        self.latencies += latencies
        lastLatencies = latencies
    }

    mutating func add(_ run: ThroughputRun) {
        events += run.events
        elapsed += run.elapsed
        lost += run.lost
        lastThroughput = Double(run.events) / max(run.elapsed.milliseconds / 1000, 1e-9)
    }

    /// Events per second over every round.
    var throughput: Double { Double(events) / max(elapsed.milliseconds / 1000, 1e-9) }
}

struct ThroughputRun {
    var events: Int
    var elapsed: Duration
    var lost: Int
}

/// Arrival records shared between receiver threads/tasks and the measuring code.
final class Arrivals: Sendable {
    private let state: Mutex<[[Int64: ContinuousClock.Instant]]>
    init(receivers: Int) { state = Mutex(Array(repeating: [:], count: receivers)) }
    func record(_ receiver: Int, key: Int64, at: ContinuousClock.Instant) { state.withLock { $0[receiver][key] = at } }
    func count(_ receiver: Int) -> Int { state.withLock { $0[receiver].count } }
    func minCount() -> Int { state.withLock { $0.map(\.count).min() ?? 0 } }
    func snapshot() -> [[Int64: ContinuousClock.Instant]] { state.withLock { $0 } }
    func reset() { state.withLock { for i in $0.indices { $0[i].removeAll() } } }
}

func waitFor(_ condition: () -> Bool, timeout: Duration) -> Bool {
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
final class RawNotify {
    let viaOutbox: Bool
    let arrivals = Arrivals(receivers: 3)
    let stopFlag = StopFlag()
    let publisher: OpaquePointer
    let exited = DispatchGroup()
    var nextKey: Int64 = 0
    var prepared = false

    init(conninfo: String, viaOutbox: Bool) throws {
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
    func stop() {
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

    func latency(events: Int) throws -> [Duration] {
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

    func throughput(events: Int) -> ThroughputRun {
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
    static func seq(in text: String) -> Int64 {
        guard let r = text.range(of: "\"seq\": ") else { return -1 }
        return Int64(text[r.upperBound...].prefix { $0.isNumber }) ?? -1
    }
}

final class StopFlag: Sendable {
    private let value = Mutex(false)
    var isSet: Bool { value.withLock { $0 } }
    func set() { value.withLock { $0 = true } }
}

/// The same through Regent: three buses (three listener connections), one publisher.
final class BusRun {
    let arrivals: Arrivals
    let buses: [(EventBus, ConnectionPool)]
    let subscriptions: [EventSubscription]
    let publisher: PostgresConnection
    let tasks: [Task<Void, any Error>]
    let topic: EventTopic

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

    static func start(config: ConnectionConfiguration) async throws -> BusRun {
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

    func stop() async {
        for (bus, _) in buses { bus.stop() }
        for sub in subscriptions { sub.cancel() }
        for task in tasks { _ = await task.result }
        for (_, pool) in buses { await pool.shutdown() }
        await publisher.close()
    }

    private func publish(_ k: Int) async throws -> Int64 {
        try await EventPublisher.publish(topic: topic, payload: try EventPayload(trusted: #"{"seq": \#(k)}"#), publisher: nil, on: publisher)
    }

    func latency(events: Int) async throws -> [Duration] {
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

    func throughput(events: Int) async throws -> ThroughputRun {
        arrivals.reset()
        let started = ContinuousClock.now
        for k in 0..<events { _ = try await publish(k) }
        _ = await eventuallyCount(events)
        let elapsed = started.duration(to: .now)
        return ThroughputRun(events: events, elapsed: elapsed, lost: 3 * events - arrivals.snapshot().map(\.count).reduce(0, +))
    }

    func eventuallyCount(_ n: Int) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if arrivals.minCount() >= n { return true }
            try? await Task.sleep(for: .milliseconds(1))
        }
        return false
    }
}
