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
                libpq: `SELECT pg_notify(...)` per transaction and 3 LISTEN connections.
                """
        )
        @Option(help: "Events in the latency run.") var latencyEvents = 500
        @Option(help: "Events in the throughput run.") var throughputEvents = 5000
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database.", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (10...100_000).contains(latencyEvents), (100...1_000_000).contains(throughputEvents) else {
                throw ValidationError("--latency-events 10-100000, --throughput-events 100-1000000")
            }
        }

        func run() async throws {
            let (url, embedded) = try benchDatabase(databaseURL)
            defer { embedded?.destroy() }
            let config = try ConnectionConfiguration(url)
            let setup = try await PostgresConnection.connect(config)
            try await MigrationRunner(appliedBy: "bench").migrate(on: setup, schemas: ["engine"])
            await setup.close()

            print("▶ raw NOTIFY → LISTEN: \(latencyEvents) spaced, \(throughputEvents) flat out, 3 listeners")
            let raw = try RawNotify.run(conninfo: url, latencyEvents: latencyEvents, throughputEvents: throughputEvents)
            print("▶ engine.publish_event → raw LISTEN: the same (server-side cost alone)")
            let outbox = try RawNotify.run(conninfo: url, latencyEvents: latencyEvents, throughputEvents: throughputEvents, viaOutbox: true)
            print("▶ Regent event bus: the same")
            let bus = try await BusRun.run(config: config, latencyEvents: latencyEvents, throughputEvents: throughputEvents)

            let rl = Figures(raw.latencies), bl = Figures(bus.latencies), ol = Figures(outbox.latencies)
            print("")
            print(table(
                ["", "p50", "p99", "throughput", "lost"],
                [
                    ["raw NOTIFY → LISTEN (limit)", ms(rl.median), ms(rl.p99), String(format: "%.0f /s", raw.throughput), "\(raw.lost)"],
                    ["outbox publish → raw LISTEN", ms(ol.median), ms(ol.p99), String(format: "%.0f /s", outbox.throughput), "\(outbox.lost)"],
                    ["Regent publish → subscriber", ms(bl.median), ms(bl.p99), String(format: "%.0f /s", bus.throughput), "\(bus.lost)"],
                ]))
            print(String(
                format: "\nratios: p50 latency %.2f× raw (goal ≤ 1.5×), throughput %.0f%% of raw (goal ≥ 50%%), lost events: %d (goal 0)",
                bl.median.milliseconds / max(rl.median.milliseconds, 0.0001), 100 * bus.throughput / max(raw.throughput, 1), bus.lost))
            if bus.lost > 0 { throw ExitCode(1) }
        }
    }
}

struct RunFigures {
    var latencies: [Duration]
    var throughput: Double
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
enum RawNotify {
    /// `viaOutbox`: publish with `engine.publish_event` (Regent's server-side work) but
    /// receive with raw libpq, to split Regent's cost into server and client parts.
    static func run(conninfo: String, latencyEvents: Int, throughputEvents: Int, viaOutbox: Bool = false) throws -> RunFigures {
        let arrivals = Arrivals(receivers: 3)
        let stop = Mutex(false)
        var threads: [Thread] = []
        let ready = DispatchSemaphore(value: 0)
        for r in 0..<3 {
            let t = Thread {
                guard let conn = PQconnectdb(conninfo), PQstatus(conn) == CONNECTION_OK else { ready.signal(); return }
                PQclear(PQexec(conn, viaOutbox ? "LISTEN regent_events" : "LISTEN bench_raw"))
                ready.signal()
                var pfd = pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0)
                while !stop.withLock({ $0 }) {
                    if poll(&pfd, 1, 50) <= 0 { continue }
                    PQconsumeInput(conn)
                    while let n = PQnotifies(conn) {
                        let now = ContinuousClock.now
                        let text = String(cString: n.pointee.extra)
                        let key = viaOutbox ? seq(in: text) : (Int64(text) ?? -1)
                        PQfreemem(n)
                        arrivals.record(r, key: key, at: now)
                    }
                }
                PQfinish(conn)
            }
            t.start()
            threads.append(t)
        }
        for _ in 0..<3 { ready.wait() }
        guard let pub = PQconnectdb(conninfo), PQstatus(pub) == CONNECTION_OK else {
            throw RegentError(.bootFailed, "raw bench: cannot connect")
        }
        defer {
            stop.withLock { $0 = true }
            PQfinish(pub)
        }
        func notify(_ key: Int64) {
            let text = strdup(viaOutbox ? #"{"seq": \#(key)}"# : String(key))
            var values: [UnsafePointer<CChar>?] = [UnsafePointer(text)]
            let sql = viaOutbox ? "SELECT engine.publish_event('bench', $1::jsonb, NULL)" : "SELECT pg_notify('bench_raw', $1)"
            PQclear(PQexecParams(pub, sql, 1, nil, &values, nil, nil, 0))
            free(text)
        }
        var sent: [Int64: ContinuousClock.Instant] = [:]
        for k in 0..<Int64(latencyEvents) {
            sent[k] = .now
            notify(k)
            usleep(2000)
        }
        _ = waitFor({ arrivals.minCount() >= latencyEvents }, timeout: .seconds(10))
        let latencies = arrivals.snapshot().flatMap { received in
            received.compactMap { key, at in sent[key].map { $0.duration(to: at) } }
        }
        arrivals.reset()
        let started = ContinuousClock.now
        for k in 0..<Int64(throughputEvents) { notify(1_000_000 + k) }
        _ = waitFor({ arrivals.minCount() >= throughputEvents }, timeout: .seconds(60))
        let elapsed = started.duration(to: .now)
        let lost = 3 * throughputEvents - arrivals.snapshot().map(\.count).reduce(0, +)
        return RunFigures(latencies: latencies, throughput: Double(throughputEvents) / (elapsed.milliseconds / 1000), lost: lost)
    }

    /// The `"seq": N` number in a notification's payload.
    static func seq(in text: String) -> Int64 {
        guard let r = text.range(of: "\"seq\": ") else { return -1 }
        return Int64(text[r.upperBound...].prefix { $0.isNumber }) ?? -1
    }
}

/// The same through Regent: three buses (three listener connections), one publisher.
enum BusRun {
    static func run(config: ConnectionConfiguration, latencyEvents: Int, throughputEvents: Int) async throws -> RunFigures {
        let arrivals = Arrivals(receivers: 3)
        var buses: [(EventBus, ConnectionPool)] = []
        for _ in 0..<3 {
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
            buses.append((EventBus(configuration: config, pool: pool), pool))
        }
        let publisher = try await PostgresConnection.connect(config)
        let topic = try EventTopic("bench")
        return try await withThrowingTaskGroup(of: Void.self) { group in
            for (bus, _) in buses { group.addTask { await bus.run() } }
            var subs: [EventSubscription] = []
            for (bus, _) in buses { subs.append(try await bus.subscribe(topics: ["bench"])) }
            for (r, sub) in subs.enumerated() {
                group.addTask {
                    for try await event in sub { arrivals.record(r, key: event.id, at: .now) }
                }
            }
            var sent: [Int64: ContinuousClock.Instant] = [:]
            for k in 0..<latencyEvents {
                let t0 = ContinuousClock.now
                let id = try await EventBus.publish(topic: topic, payload: try EventPayload(trusted: #"{"seq": \#(k)}"#), publisher: nil, on: publisher)
                sent[id] = t0
                try await Task.sleep(for: .milliseconds(2))
            }
            _ = await eventuallyCount(arrivals, latencyEvents)
            let latencies = arrivals.snapshot().flatMap { received in
                received.compactMap { key, at in sent[key].map { $0.duration(to: at) } }
            }
            arrivals.reset()
            let started = ContinuousClock.now
            for k in 0..<throughputEvents {
                try await EventBus.publish(topic: topic, payload: try EventPayload(trusted: #"{"seq": \#(k)}"#), publisher: nil, on: publisher)
            }
            let publishedIn = started.duration(to: .now)
            _ = await eventuallyCount(arrivals, throughputEvents)
            print(String(format: "  publishing alone took %.0f ms; all delivered after %.0f ms", publishedIn.milliseconds, started.duration(to: .now).milliseconds))
            let elapsed = started.duration(to: .now)
            let lost = 3 * throughputEvents - arrivals.snapshot().map(\.count).reduce(0, +)
            for (bus, _) in buses { bus.stop() }
            for sub in subs { sub.cancel() }
            try await group.waitForAll()
            for (_, pool) in buses { await pool.shutdown() }
            await publisher.close()
            return RunFigures(latencies: latencies, throughput: Double(throughputEvents) / (elapsed.milliseconds / 1000), lost: lost)
        }
    }

    static func eventuallyCount(_ arrivals: Arrivals, _ n: Int) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if arrivals.minCount() >= n { return true }
            try? await Task.sleep(for: .milliseconds(1))
        }
        return false
    }
}
