import CLibPQ
import Foundation
import PostgresClient
import RegentCore
import RegentDrill
import Synchronization

/// `regent bench queue`: enqueue, drain and wake-up of the execution queue, each next to a
/// raw baseline measured in the same run on the same server: the very same statements sent
/// through plain libpq on threads (what Regent's client and Swift code cost on top).
package struct QueueBench: Sendable {
    package struct Options: Sendable {
        package var jobs = 20_000
        package var workers = 16
        package var bigBacklog = 100_000
        package var wakeSamples = 200
        /// Measure drains under flow control (issue 31): unkeyed, 1,000 keys of limit 1, one hot key.
        package var flow = true
        /// Only the flow-control phase.
        package var onlyFlow = false
        /// Alternating rounds of the flow-control phase (medians reported).
        package var flowRounds = 3
        package init() {}
    }

    package struct Report: Encodable, Sendable {
        package var enqueue_per_s = 0.0
        package var raw_enqueue_per_s = 0.0
        package var drain_per_s: [String: Double] = [:]
        package var raw_drain_per_s: [String: Double] = [:]
        /// Complete-and-claim in one call (`completeAndClaim`), keyed by batch size.
        package var drain_combined_per_s: [String: Double] = [:]
        package var raw_drain_combined_per_s: [String: Double] = [:]
        package var drain_1k_per_s = 0.0
        package var drain_100k_per_s = 0.0
        package var wake_p50_ms = 0.0
        package var wake_p99_ms = 0.0
        package var jobs = 0
        package var workers = 0
        /// Flow control, medians of alternating rounds (batch 10): unkeyed, 1,000 concurrency keys
        /// of limit 1, one hot key of limit 1 (its jobs drain one at a time), and fair keys (1,000
        /// tenants, window 10); `flow_unkeyed_vs_before`: the unkeyed drain with the gate's code
        /// in place against the same drain measured in the plain phase above.
        package var flow_drain_per_s: [String: Double] = [:]
        package var flow_enqueue_per_s: [String: Double] = [:]
        package var flow_hot_key_jobs = 0
        /// Fairness (issue 31): one tenant's backlog of `fair_backlog` executions, then one
        /// execution of another tenant; the claims (batch 10, completing each batch) and the time
        /// until that one is in a worker's hands, without keys ("unkeyed") and with fair keys ("fair").
        package var fair_backlog = 0
        package var fair_small_claims: [String: Int] = [:]
        package var fair_small_ms: [String: Double] = [:]
    }

    let url: String
    let options: Options
    let say: @Sendable (String) -> Void
    let ns: Namespace
    let lane: Lane

    package init(url: String, options: Options, say: @escaping @Sendable (String) -> Void) throws {
        self.url = url
        self.options = options
        self.say = say
        self.ns = try Namespace("bench")
        self.lane = try Lane("l")
    }

    package func run() async throws -> Report {
        let config = try ConnectionConfiguration(url)
        let boot = try await Boot(options: .init(database: config, actor: "bench")).run()
        let pool = boot.pool
        var f = Report()
        f.jobs = options.jobs
        f.workers = options.workers
        do {
            try await registerWorkers(pool)
            if options.flow { try await flowPhase(config, pool: pool, into: &f) }
            if options.onlyFlow {
                await pool.shutdown()
                return f
            }

            say("▶ enqueue: \(options.jobs) executions, 1000 per statement (raw libpq, then Regent)")
            try await reset(pool)
            f.raw_enqueue_per_s = try await runOffThePool { [url, ns, lane, options] in try RawQueue.enqueue(url: url, namespace: ns.value, lane: lane.value, jobs: options.jobs) }
            try await reset(pool)
            f.enqueue_per_s = try await enqueue(pool, count: options.jobs)
            say(String(format: "  raw %.0f/s, Regent %.0f/s", f.raw_enqueue_per_s, f.enqueue_per_s))

            for batch in [1, 10, 100] {
                say("▶ drain \(options.jobs) with \(options.workers) workers, batch \(batch)")
                try await reset(pool)
                _ = try await enqueue(pool, count: options.jobs)
                try await analyze(pool)
                let raw = try await runOffThePool { [options, ns, url] in
                    try RawQueue.drain(url: url, namespace: ns.value, lanes: ["l"], workers: options.workers, batch: batch)
                }
                try await reset(pool)
                _ = try await enqueue(pool, count: options.jobs)
                try await analyze(pool)
                let regent = try await drain(config, batch: batch, stopAfter: nil)
                f.raw_drain_per_s["\(batch)"] = raw
                f.drain_per_s["\(batch)"] = regent
                say(String(format: "  raw %.0f/s, Regent %.0f/s", raw, regent))
            }

            for batch in [1, 10] {
                say("▶ drain \(options.jobs) with \(options.workers) workers, batch \(batch), completing and claiming in one call")
                try await reset(pool)
                _ = try await enqueue(pool, count: options.jobs)
                try await analyze(pool)
                let raw = try await runOffThePool { [options, ns, url] in
                    try RawQueue.drain(url: url, namespace: ns.value, lanes: ["l"], workers: options.workers, batch: batch, combined: true)
                }
                try await reset(pool)
                _ = try await enqueue(pool, count: options.jobs)
                try await analyze(pool)
                let regent = try await drain(config, batch: batch, stopAfter: nil, combined: true)
                f.raw_drain_combined_per_s["\(batch)"] = raw
                f.drain_combined_per_s["\(batch)"] = regent
                say(String(format: "  raw %.0f/s, Regent %.0f/s", raw, regent))
            }

            say("▶ drain at 1,000 queued and at \(options.bigBacklog) queued (batch 10, the first \(min(options.jobs, options.bigBacklog)) taken)")
            try await reset(pool)
            _ = try await enqueue(pool, count: 1000)
            try await analyze(pool)
            f.drain_1k_per_s = try await drain(config, batch: 10, stopAfter: nil)
            try await reset(pool)
            _ = try await enqueue(pool, count: options.bigBacklog)
            try await analyze(pool)
            f.drain_100k_per_s = try await drain(config, batch: 10, stopAfter: min(options.jobs, options.bigBacklog))
            say(String(format: "  1,000 queued: %.0f/s; %d queued: %.0f/s", f.drain_1k_per_s, options.bigBacklog, f.drain_100k_per_s))

            say("▶ wake-up: \(options.wakeSamples) single enqueues to an idle worker waiting in claim")
            try await reset(pool)
            let wake = try await wakeUp(config, pool: pool, samples: options.wakeSamples)
            f.wake_p50_ms = wake.median.milliseconds
            f.wake_p99_ms = wake.p99.milliseconds
            say(String(format: "  p50 %.2f ms, p99 %.2f ms", f.wake_p50_ms, f.wake_p99_ms))
        } catch {
            await pool.shutdown()
            throw error
        }
        await pool.shutdown()
        return f
    }

    private func worker(_ w: Int) throws -> WorkerInstanceID { try WorkerInstanceID("bench-w\(w)") }

    /// Drains under flow control, alternating the variants round after round (medians).
    private func flowPhase(_ config: ConnectionConfiguration, pool: ConnectionPool, into f: inout Report) async throws {
        let hotJobs = max(1000, options.jobs / 10)
        f.flow_hot_key_jobs = hotJobs
        let variants: [(String, Int, (Int) -> FlowGate?)] = [
            ("unkeyed", options.jobs, { _ in nil }),
            ("1000 keys, limit 1", options.jobs, { .concurrency(key: "k\($0 % 1000)", limit: 1) }),
            ("1000 fair keys, window 10", options.jobs, { .fair(key: "t\($0 % 1000)", window: 10) }),
            ("one hot key, limit 1", hotJobs, { _ in .concurrency(key: "hot", limit: 1) }),
        ]
        var drains: [String: [Double]] = [:], enqueues: [String: [Double]] = [:]
        for round in 1...options.flowRounds {
            for (name, jobs, gate) in variants {
                try await reset(pool)
                let enq = try await enqueue(pool, count: jobs, gate: gate)
                try await analyze(pool)
                // A limit-1 key drains one at a time whatever the workers: two show its serial rate
                // (sixteen would only spin on empty claims and take the CPU from the one at work).
                let n = name.hasPrefix("one hot key") ? min(2, options.workers) : options.workers
                let rate = try await drainQueue(
                    config, namespace: ns, lane: lane, workers: (0..<n).map(worker), batch: 10, until: jobs, waitForMore: true)
                drains[name, default: []].append(rate)
                enqueues[name, default: []].append(enq)
                say(String(format: "  round %d, %@ (%d): enqueue %.0f/s, drain %.0f/s", round, name, jobs, enq, rate))
            }
        }
        func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
        for (name, v) in drains { f.flow_drain_per_s[name] = median(v) }
        for (name, v) in enqueues { f.flow_enqueue_per_s[name] = median(v) }
        f.fair_backlog = options.bigBacklog
        for fair in [false, true] {
            let (claims, ms) = try await smallTenantWait(pool, fair: fair)
            f.fair_small_claims[fair ? "fair" : "unkeyed"] = claims
            f.fair_small_ms[fair ? "fair" : "unkeyed"] = ms
            say(String(format: "  a small tenant behind %d of a big one (%@): claimed after %d claims, %.1f ms", options.bigBacklog, fair ? "fair keys" : "no keys", claims, ms))
        }
    }

    /// One tenant's backlog, then one execution of another: the claims of ten (each completed)
    /// and the time until the small tenant's is claimed.
    private func smallTenantWait(_ pool: ConnectionPool, fair: Bool) async throws -> (Int, Double) {
        try await reset(pool)
        _ = try await enqueue(pool, count: options.bigBacklog, gate: fair ? { _ in .fair(key: "big", window: 10) } : nil)
        let store = LeaseStore()
        var small = EnqueueRequest(lane: lane, payload: #"{"tenant":"small"}"#)
        if fair { small.flow = .fair(key: "small", window: 10) }
        try await analyze(pool)
        let w = try worker(0)
        return try await pool.withConnection { conn in
            _ = try await store.enqueue(namespace: ns, [small], on: conn)
            let started = ContinuousClock.now
            var claims = 0
            while true {
                let leases = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w, capabilities: [], leaseDuration: .seconds(60), limit: 10, on: conn)
                claims += 1
                if leases.isEmpty || leases.contains(where: { $0.payload.contains("small") }) { break }
                _ = try await store.complete(leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch) }, on: conn)
            }
            return (claims, started.duration(to: .now).inSeconds * 1000)
        }
    }

    private func registerWorkers(_ pool: ConnectionPool) async throws {
        try await pool.withConnection { conn in
            for w in 0..<(options.workers + 1) {
                _ = try await WorkerRegistry().register(
                    namespace: ns, workerInstanceID: try worker(w), workerID: try WorkerID("bench"), lanes: [lane], capabilities: [],
                    livenessTTL: .seconds(3600), on: conn)
            }
        }
    }

    private func reset(_ pool: ConnectionPool) async throws {
        try await pool.withConnection { conn in
            try await conn.query("DELETE FROM workflow.ready WHERE namespace = 'bench'")
            try await conn.query("DELETE FROM workflow.unique_keys WHERE namespace = 'bench'")
            if try await conn.query("SELECT to_regclass('workflow.flow_waiting') IS NOT NULL AS ok").single().decode("ok", as: Bool.self) {
                try await conn.query("DELETE FROM workflow.flow_waiting WHERE namespace = 'bench'")
                try await conn.query("DELETE FROM workflow.flow_keys WHERE namespace = 'bench'")
            }
            try await conn.query("DELETE FROM workflow.executions WHERE namespace = 'bench'")
            try await conn.query("VACUUM ANALYZE workflow.ready")
            try await conn.query("VACUUM ANALYZE workflow.executions")
            try await conn.query("VACUUM ANALYZE workflow.attempts")
            try await conn.query("VACUUM ANALYZE workflow.leases")
        }
    }

    private func analyze(_ pool: ConnectionPool) async throws {
        try await pool.withConnection { conn in
            try await conn.query("ANALYZE workflow.ready")
            try await conn.query("ANALYZE workflow.executions")
        }
    }

    private func enqueue(_ pool: ConnectionPool, count: Int, gate: ((Int) -> FlowGate?)? = nil) async throws -> Double {
        let store = LeaseStore()
        let request = EnqueueRequest(lane: lane, payload: #"{"n":1}"#)
        return try await pool.withConnection { conn in
            let started = ContinuousClock.now
            var left = count
            while left > 0 {
                let n = min(left, 1000)
                var batch = Array(repeating: request, count: n)
                if let gate { for i in batch.indices { batch[i].flow = gate(count - left + i) } }
                _ = try await store.enqueue(namespace: ns, batch, on: conn)
                left -= n
            }
            return Double(count) / started.duration(to: .now).inSeconds
        }
    }

    /// `workers` connections claim `batch` at a time and complete what they claimed, until
    /// the queue is empty (or `stopAfter` are done); returns executions per second.
    private func drain(_ config: ConnectionConfiguration, batch: Int, stopAfter: Int?, combined: Bool = false) async throws -> Double {
        try await drainQueue(
            config, namespace: ns, lane: lane, workers: (0..<options.workers).map(worker), batch: batch, until: stopAfter, combined: combined)
    }

    /// Times enqueue → claimed by a worker that waits in `claim(wait:)`.
    private func wakeUp(_ config: ConnectionConfiguration, pool: ConnectionPool, samples: Int) async throws -> Figures {
        let store = LeaseStore()
        return try await timeToClaim(
            config, namespace: ns, lane: lane, worker: try worker(options.workers), samples: samples,
            act: { producer, _ in _ = try await store.enqueue(namespace: ns, [EnqueueRequest(lane: lane)], on: producer) },
            settle: { producer, _, leases in
                _ = try await store.complete(leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch) }, on: producer)
            })
    }
}

/// Each of `workers` (its own connection) claims up to `batch` of `lane` and completes what it
/// claimed (with `combined`, in one complete-and-claim call per batch); returns completions per
/// second. It stops at the first empty claim, or, with `waitForMore`, only once `until`
/// completions were accepted (the next work appears when another worker's completion commits,
/// as a run's next step does); without it, also once `until` were accepted.
func drainQueue(
    _ config: ConnectionConfiguration, namespace: Namespace, lane: Lane, workers: [WorkerInstanceID], batch: Int, until: Int?,
    waitForMore: Bool = false, combined: Bool = false
) async throws -> Double {
    let store = LeaseStore()
    var conns: [PostgresConnection] = []
    for _ in workers { conns.append(try await PostgresConnection.connect(config)) }
    let done = Counter()
    let started = ContinuousClock.now
    let deadline = started + .seconds(600)
    try await withThrowingTaskGroup(of: Void.self) { group in
        for (me, conn) in zip(workers, conns) {
            group.addTask {
                if combined {
                    // Each call completes the previous batch and claims the next: one round trip per batch.
                    var held: [Completion] = []
                    while true {
                        let (outcome, leases) = try await store.completeAndClaim(
                            held, namespace: namespace, lanes: [lane], workerInstanceID: me, capabilities: [], leaseDuration: .seconds(300),
                            limit: batch, on: conn)
                        done.add(outcome.done.count)
                        if leases.isEmpty { return }
                        held = leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch, runID: $0.step?.runID) }
                    }
                }
                while until.map({ done.value < $0 }) ?? true {
                    guard ContinuousClock.now < deadline else { throw RegentError(.timeout, "the drain did not finish in 600 s") }
                    let leases = try await store.claim(
                        namespace: namespace, lanes: [lane], workerInstanceID: me, capabilities: [], leaseDuration: .seconds(300), limit: batch,
                        on: conn)
                    if leases.isEmpty {
                        guard waitForMore else { return }
                        try await Task.sleep(for: .microseconds(200))
                        continue
                    }
                    let outcome = try await store.complete(leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch, runID: $0.step?.runID) }, on: conn)
                    done.add(outcome.done.count)
                }
            }
        }
        try await group.waitForAll()
    }
    let elapsed = started.duration(to: .now)
    for conn in conns { await conn.close() }
    return Double(done.value) / elapsed.inSeconds
}

/// For each sample, a claim of `lane` by `worker` waits (LISTEN-woken, no connection held);
/// `act` runs on a connection of its own and is timed until that claim returns; `settle` then
/// checks and finishes what was claimed.
package func timeToClaim<T>(
    _ config: ConnectionConfiguration, namespace: Namespace, lane: Lane, worker: WorkerInstanceID, samples: Int,
    act: (PostgresConnection, Int) async throws -> T, settle: (PostgresConnection, T, [Lease]) async throws -> Void
) async throws -> Figures {
    let waker = QueueWaker(configuration: config)
    let store = LeaseStore()
    let claimPool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
    var latencies: [Duration] = []
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await waker.run() }
        while !waker.isListening { try await Task.sleep(for: .milliseconds(5)) }
        let conn = try await PostgresConnection.connect(config)
        for i in 0..<samples {
            async let claimed = store.claim(
                namespace: namespace, lanes: [lane], workerInstanceID: worker, capabilities: [], leaseDuration: .seconds(60), limit: 1,
                wait: .seconds(5), waker: waker, pool: claimPool)
            // Let the worker reach its wait (an empty claim first), then act.
            try await Task.sleep(for: .milliseconds(10))
            let sent = ContinuousClock.now
            let value = try await act(conn, i)
            let leases = try await claimed
            latencies.append(sent.duration(to: .now))
            try await settle(conn, value, leases)
        }
        await conn.close()
        group.cancelAll()
    }
    await claimPool.shutdown()
    return Figures(latencies)
}

/// A count shared by worker tasks.
final class Counter: Sendable {
    private let count = Atomic<Int>(0)
    func add(_ n: Int) { count.add(n, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

extension Duration {
    var inSeconds: Double { milliseconds / 1000 }
}

/// The queue's statements through plain libpq, one thread per worker: the baseline.
enum RawQueue {
    /// Runs `q` as Regent runs it: a statement marked `prepared()` is prepared once on the
    /// connection (`statements` remembers it) and executed by name from then on.
    static func exec(_ conn: OpaquePointer, _ q: PostgresQuery, _ statements: inout [String: String]) throws -> [[String?]] {
        let texts: [UnsafeMutablePointer<CChar>?] = q.binds.map { bind in
            if case .text(let s) = bind { return strdup(s) }
            return nil
        }
        defer { texts.forEach { free($0) } }
        var values: [UnsafePointer<CChar>?] = texts.map { $0.map { UnsafePointer($0) } }
        let result: OpaquePointer?
        if q.reusesPlan {
            let name: String
            if let known = statements[q.sql] {
                name = known
            } else {
                name = "raw_\(statements.count + 1)"
                guard let prepared = PQprepare(conn, name, q.sql, Int32(q.binds.count), nil) else { throw RegentError(.invalidInput, "raw bench: no result") }
                defer { PQclear(prepared) }
                guard PQresultStatus(prepared) == PGRES_COMMAND_OK else {
                    throw RegentError(.invalidInput, "raw bench: \(String(cString: PQresultErrorMessage(prepared)))")
                }
                statements[q.sql] = name
            }
            result = PQexecPrepared(conn, name, Int32(q.binds.count), &values, nil, nil, 0)
        } else {
            result = PQexecParams(conn, q.sql, Int32(q.binds.count), nil, &values, nil, nil, 0)
        }
        guard let r = result else { throw RegentError(.invalidInput, "raw bench: no result") }
        defer { PQclear(r) }
        let status = PQresultStatus(r)
        guard status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK else {
            throw RegentError(.invalidInput, "raw bench: \(String(cString: PQresultErrorMessage(r)))")
        }
        var rows: [[String?]] = []
        for i in 0..<PQntuples(r) {
            rows.append((0..<PQnfields(r)).map { j in PQgetisnull(r, i, j) == 1 ? nil : String(cString: PQgetvalue(r, i, j)) })
        }
        return rows
    }

    static func connect(_ url: String) throws -> OpaquePointer {
        guard let conn = PQconnectdb(url), PQstatus(conn) == CONNECTION_OK else { throw RegentError(.invalidInput, "raw bench: cannot connect") }
        return conn
    }

    static func enqueue(url: String, namespace: String, lane: String, jobs: Int) throws -> Double {
        let conn = try connect(url)
        defer { PQfinish(conn) }
        var statements: [String: String] = [:]
        let item = #"{"n":0,"lane":"\#(lane)","payload":{"n":1},"max_attempts":3,"priority":0,"required_capabilities":[]}"#
        let started = ContinuousClock.now
        var left = jobs
        while left > 0 {
            let n = min(left, 1000)
            // The items differ only in `n` (the statement orders its answer by it).
            let items = (0..<n).map { item.replacingOccurrences(of: #""n":0,"#, with: #""n":\#($0),"#) }.joined(separator: ",")
            _ = try exec(conn, LeaseQueries.enqueue(namespace: namespace, itemsJSON: "[" + items + "]"), &statements)
            left -= n
        }
        return Double(jobs) / started.duration(to: .now).inSeconds
    }

    static func drain(url: String, namespace: String, lanes: [String], workers: Int, batch: Int, combined: Bool = false) throws -> Double {
        let done = Atomic<Int>(0)
        let failure = Mutex<(any Error)?>(nil)
        let group = DispatchGroup()
        let started = ContinuousClock.now
        for w in 0..<workers {
            group.enter()
            Thread {
                defer { group.leave() }
                do {
                    let conn = try connect(url)
                    defer { PQfinish(conn) }
                    var statements: [String: String] = [:]
                    var held: [String] = []  // combined: the completions the next call carries
                    while true {
                        let rows: [[String?]]
                        if combined {
                            rows = try exec(
                                conn,
                                LeaseQueries.completeAndClaim(
                                    itemsJSON: "[" + held.joined(separator: ",") + "]", namespace: namespace, lanes: lanes, worker: "bench-w\(w)",
                                    capabilities: [], lease: .seconds(300), limit: batch),
                                &statements)
                            // Column 0 is the accepted completions, `{id,id,…}`.
                            if let first = rows.first, let text = first[0], text != "{}" { done.add(text.split(separator: ",").count, ordering: .relaxed) }
                            held = rows.compactMap { row -> String? in
                                guard let id = row[2], let epoch = row[5] else { return nil }
                                return #"{"execution_id":"\#(id)","epoch":\#(epoch),"result":{}}"#
                            }
                            if held.isEmpty { return }
                            continue
                        }
                        rows = try exec(
                            conn,
                            LeaseQueries.claim(
                                namespace: namespace, lanes: lanes, worker: "bench-w\(w)", capabilities: [], lease: .seconds(300), limit: batch),
                            &statements)
                        let items = rows.compactMap { row -> String? in
                            guard let id = row[1], let epoch = row[4] else { return nil }
                            return #"{"execution_id":"\#(id)","epoch":\#(epoch),"result":{}}"#
                        }
                        if items.isEmpty { return }
                        let completed = try exec(conn, LeaseQueries.complete(itemsJSON: "[" + items.joined(separator: ",") + "]"), &statements)
                        done.add(completed.count, ordering: .relaxed)
                    }
                } catch {
                    failure.withLock { $0 = error }
                }
            }.start()
        }
        group.wait()
        if let error = failure.withLock({ $0 }) { throw error }
        return Double(done.load(ordering: .relaxed)) / started.duration(to: .now).inSeconds
    }
}
