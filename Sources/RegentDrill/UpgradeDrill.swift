import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore
import Synchronization

/// A rolling upgrade of a live cluster from an older `regent` binary to a newer one, and a
/// rollback, as `kubectl rollout` and `rollout undo` do it: three nodes and two workers start on
/// the old binary with runs in flight; nodes are replaced one at a time (SIGTERM, start the new
/// one, which migrates expand-only); mid-rollout an old node is SIGKILLed and restarted **on the
/// old binary**; one node is rolled back and forward again; the workers are rolled too; at the
/// end the contract migrations are applied explicitly. Every run is started by the **old**
/// binary's CLI, so the old release's statements run against the new schema throughout.
///
/// Invariants: at most one leader per term (the term invariants of every drill); every run
/// finishes exactly once (the workflow drill's checks); no HTTP 5xx but 503s with Retry-After;
/// the old binary never refuses to start while the floor allows it; no migration waits for a
/// table lock longer than the nodes' lock timeout (1 s; reported from the nodes' logs).
package struct UpgradeDrill {
    package let oldBinary: String
    package let newBinary: String
    package let runs: Int
    package let say: (String) -> Void

    package init(oldBinary: String, newBinary: String, runs: Int, say: @escaping (String) -> Void) {
        self.oldBinary = oldBinary
        self.newBinary = newBinary
        self.runs = runs
        self.say = say
    }

    package struct Result {
        package var violations: [String] = []
        package var timeline: [(at: Duration, what: String)] = []
        package var states: [String: Int] = [:]
        package var httpRequests = 0
        package var http503 = 0
        package var migrationsApplied: [String] = []
        package var lockGiveUps = 0
        package var oldStarts = 0
        /// Plain executions the old binary's CLI enqueued through the rollout, and how many of
        /// them this process (the new binary's code) completed.
        package var queueEnqueued = 0
        package var queueCompleted = 0
        package var took: Duration = .zero
    }

    /// What the HTTP poller saw, and the live nodes' ports and a read token it asks with.
    final class HTTPTally: Sendable {
        struct State {
            var requests = 0
            var unavailable = 0
            var violations: [String] = []
            var ports: [String: Int] = [:]
            var token: String?
        }
        let state = Mutex(State())
    }

    package func run() async throws -> Result {
        var result = Result()
        let started = ContinuousClock.now
        func mark(_ what: String) {
            let at = started.duration(to: .now)
            result.timeline.append((at, what))
            say(String(format: "  %8.1f s  ", at.milliseconds / 1000) + what)
        }
        let oldVersion = try await Self.command([oldBinary, "--version"]).output.trimmingCharacters(in: .whitespacesAndNewlines)
        let newVersion = try await Self.command([newBinary, "--version"]).output.trimmingCharacters(in: .whitespacesAndNewlines)
        say("▶ old binary \(oldBinary) (\(oldVersion)); new binary \(newBinary) (\(newVersion))")
        say("▶ starting a private PostgreSQL …")
        let pg = try await runOffThePool { try EmbeddedPostgres.start(maxConnections: 200) }
        let url = pg.url()
        let logs = NSTemporaryDirectory() + "regent-upgrade-drill-\(getpid())"
        let cluster = LocalCluster(databaseURL: url, logDirectory: logs, extraArguments: DrillEnvironment.nodeArguments, executable: oldBinary)
        let http = HTTPTally()
        var workers: [(pid: pid_t, binary: String)] = []
        let poller = Task { await Self.poll(http) }
        defer {
            poller.cancel()
            for w in workers { kill(w.pid, SIGTERM) }
            cluster.stopAll()
            for w in workers { _ = ChildProcess.exitStatus(w.pid, wait: true) }
            pg.destroy()
        }
        say("  nodes' and workers' logs in \(logs)")
        let config = try drillConfiguration(url)
        let conn = try await PostgresConnection.connect(config)
        defer { Task { await conn.close() } }
        let probe = LeadershipProbe(connection: conn)

        // Starts a node on `binary` and waits for it to answer /readyz 200: the old binary must
        // start (and be ready) whenever the floor allows it.
        func start(_ binary: String, _ why: String) async throws -> LocalCluster.Node {
            let port = try EmbeddedPostgres.freeLoopbackPort()
            let node = try cluster.spawn(executable: binary, arguments: ["--http-address", "127.0.0.1:\(port)"])
            let label = binary == oldBinary ? "old" : "new"
            if binary == oldBinary { result.oldStarts += 1 }
            let deadline = ContinuousClock.now + .seconds(60)
            while true {
                if let code = ChildProcess.exitStatus(node.pid, wait: false) {
                    let tail = (try? String(contentsOfFile: "\(logs)/\(node.name).log", encoding: .utf8))?.suffix(600) ?? ""
                    result.violations.append("\(label) node \(node.name) exited with \(code) at start (\(why)): \(tail)")
                    throw RegentError(.bootFailed, "the \(label) binary refused to start (\(why)); see \(logs)/\(node.name).log")
                }
                if let answer = try? await runOffThePool({ try Self.get(port: port, path: "/readyz") }), answer.status == 200 { break }
                guard ContinuousClock.now < deadline else {
                    result.violations.append("\(label) node \(node.name) was not ready within 60 s (\(why))")
                    break
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            http.state.withLock { $0.ports[node.name] = port }
            mark("\(label) node \(node.name) started and ready (\(why))")
            // As a rollout's minReadySeconds: the cluster works with this node a while before the next step.
            try await Task.sleep(for: .milliseconds(700))
            return node
        }
        func stop(_ node: LocalCluster.Node, signal: Int32, _ why: String) {
            if let code = ChildProcess.exitStatus(node.pid, wait: false) {
                result.violations.append("node \(node.name) had exited (\(code)) before it was stopped")
            }
            http.state.withLock { _ = $0.ports.removeValue(forKey: node.name) }
            cluster.kill(node, signal: signal)
            if signal == SIGTERM {
                let deadline = ContinuousClock.now + .seconds(25)
                while ContinuousClock.now < deadline, ChildProcess.exitStatus(node.pid, wait: false) == nil { usleep(20_000) }
            }
            cluster.reap()
            let label = node.executable == oldBinary ? "old" : "new"
            mark("\(signal == SIGKILL ? "SIGKILL" : "SIGTERM") \(label) node \(node.name) (\(why))")
        }
        var spawnedWorkers = 0
        func worker(_ binary: String) throws -> pid_t {
            // A new name for every process: a replacement must not share its predecessor's
            // (or another replacement's) worker identity.
            spawnedWorkers += 1
            let name = "up-w\(spawnedWorkers)"
            return try ChildProcess.spawn(
                [binary, "worker", "--database-url", url, "--name", name, "--lane", "drill", "--work", "150ms", "--batch", "4", "--log-level", "warning"],
                outputPath: "\(logs)/\(name).log")
        }
        /// SIGTERMs worker `index`, waits for it to end, and starts its replacement on the new binary.
        func rollWorker(_ index: Int) async throws {
            let pid = workers[index].pid
            kill(pid, SIGTERM)
            _ = try await runOffThePool { ChildProcess.exitStatus(pid, wait: true) }
            workers[index] = (try worker(newBinary), newBinary)
            mark("worker \(index + 1) rolled to the new binary")
        }
        var started_runs = 0
        /// Starts `count` runs with `binary`'s CLI (the old one's, unless said otherwise).
        func startRuns(_ count: Int, _ why: String, with binary: String? = nil) async throws {
            let binary = binary ?? oldBinary
            let label = binary == oldBinary ? "old" : "new"
            for _ in 0..<count {
                let i = started_runs
                let out = try await Self.command([
                    binary, "runs", "start", WorkflowDrill.type, "--input", #"{"n": \#(i)}"#, "--idempotency-key", "upgrade-\(i)",
                    "--database-url", url, "--actor", "drill",
                ])
                if out.status != 0 { result.violations.append("the \(label) binary's `runs start` failed (\(why)): \(out.output.suffix(400))") }
                started_runs += 1
            }
            mark("\(label) CLI started \(count) runs (\(why))")
        }

        // 1. Three nodes and two workers on the old binary, runs in flight.
        var nodes: [LocalCluster.Node] = []
        for _ in 0..<3 { nodes.append(try await start(oldBinary, "initial cluster")) }
        _ = try await probe.waitForLeader(after: 0, timeout: .seconds(30))
        let packageDir = logs + "/package"
        try FileManager.default.createDirectory(atPath: packageDir, withIntermediateDirectories: true)
        try Data(WorkflowDrill.manifest(version: 1).utf8).write(to: URL(fileURLWithPath: packageDir + "/workflow.json"))
        let deployed = try await Self.command([oldBinary, "packages", "deploy", packageDir, "--database-url", url, "--actor", "drill"])
        guard deployed.status == 0 else { throw RegentError(.invalidInput, "the old binary could not deploy the drill package: \(deployed.output)") }
        let token = try await Self.command([oldBinary, "tokens", "create", "--role", "read", "--name", "upgrade-drill", "--database-url", url])
        if token.status == 0, let secret = token.output.split(separator: "\n").last.map(String.init) { http.state.withLock { $0.token = secret } }
        let before = Set(try await MigrationRunner(appliedBy: "").applied(on: conn).map { "\($0.schema) \($0.version)" })
        for _ in 0..<2 { workers.append((try worker(oldBinary), oldBinary)) }
        mark("old workers started; drill package deployed by the old CLI")
        let queue = QueueLoad(oldBinary: oldBinary, url: url)
        mark("queue load started: the old CLI enqueues plain executions, this process claims and completes them")
        let perBatch = max(1, runs / 3)
        try await startRuns(perBatch, "before the rollout")

        // 2-3. Replace the nodes one at a time; mid-rollout, SIGKILL an old node and bring it back on the old binary.
        stop(nodes.removeFirst(), signal: SIGTERM, "rollout 1/3")
        nodes.append(try await start(newBinary, "rollout 1/3"))
        try await startRuns(perBatch, "mid-rollout: old statements, expanded schema")
        let victim = nodes.removeFirst()
        stop(victim, signal: SIGKILL, "mid-rollout crash of an old node")
        nodes.append(try await start(oldBinary, "the crashed old node comes back on the old binary"))
        try await rollWorker(0)
        for i in 2...3 {
            guard let old = nodes.firstIndex(where: { $0.executable == oldBinary }) else { break }
            stop(nodes.remove(at: old), signal: SIGTERM, "rollout \(i)/3")
            nodes.append(try await start(newBinary, "rollout \(i)/3"))
        }

        // 4. Roll one node back to the old binary (rollout undo), then forward again.
        stop(nodes.removeFirst(), signal: SIGTERM, "rollout undo")
        nodes.append(try await start(oldBinary, "rollout undo: the old binary against the new schema"))
        try await startRuns(runs - 2 * perBatch, "after the undo")
        stop(nodes.removeLast(), signal: SIGTERM, "roll forward again")
        nodes.append(try await start(newBinary, "roll forward again"))
        try await rollWorker(1)

        // The old CLI stops enqueueing before the contract (after it, the old release is done).
        let (enqueued, enqueueFailures) = await queue.stopProducing()
        result.queueEnqueued = enqueued
        result.violations += enqueueFailures.prefix(5)

        // 5. The contract migrations, explicitly, once every node runs the new binary.
        let contract = try await Self.command([newBinary, "migrate", "--contract", "--database-url", url])
        if contract.status != 0 { result.violations.append("migrate --contract failed: \(contract.output.suffix(400))") }
        let contracted = contract.output.split(separator: "\n").filter { $0.hasPrefix("  ") }.map { $0.trimmingCharacters(in: .whitespaces) }
        mark("new CLI: migrate --contract: " + (contracted.isEmpty ? "nothing to contract" : contracted.joined(separator: ", ")))
        let oldAfter = try await Self.command([oldBinary, "migrate", "--plan", "--database-url", url])
        if oldAfter.status == 0 {
            mark("the old binary after the contract: still allowed (no contract between these releases)")
            if !contracted.isEmpty { result.violations.append("the old binary still ran after contract migrations raised the floor: \(oldAfter.output.suffix(300))") }
        } else {
            mark("the old binary after the contract: refused, as the floor says")
            if !oldAfter.output.contains("needs a binary that knows") {
                result.violations.append("the old binary failed after the contract, but not for the floor: \(oldAfter.output.suffix(400))")
            }
            if contracted.isEmpty { result.violations.append("the old binary was refused though nothing was contracted") }
        }
        // The new release keeps working once contracted: a last few runs, started by its own CLI.
        try await startRuns(3, "after the contract", with: newBinary)

        // What the queue load enqueued is drained, each exactly once.
        let drainDeadline = ContinuousClock.now + .seconds(60)
        while try await conn.query("SELECT count(*) AS n FROM workflow.executions WHERE namespace = 'drillq' AND state <> 'completed'").single()
            .decode("n", as: Int.self) > 0, ContinuousClock.now < drainDeadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        result.queueCompleted = await queue.stopConsuming()
        let queueRows = try await conn.query(
            "SELECT count(*) AS n, count(*) FILTER (WHERE state = 'completed') AS done FROM workflow.executions WHERE namespace = 'drillq'"
        ).single()
        let (rows, done) = (try queueRows.decode("n", as: Int.self), try queueRows.decode("done", as: Int.self))
        if rows != enqueued || done != enqueued || result.queueCompleted != enqueued {
            result.violations.append(
                "queue: the old CLI enqueued \(enqueued), the table holds \(rows) (\(done) completed), this process completed \(result.queueCompleted)")
        }
        mark("queue load: \(enqueued) enqueued by the old CLI, \(result.queueCompleted) completed once each")

        // The runs finish, exactly once each.
        let deadline = ContinuousClock.now + .seconds(120)
        while try await conn.query("SELECT count(*) AS n FROM workflow.runs WHERE state = 'running'").single().decode("n", as: Int.self) > 0,
              ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(200))
        }
        for row in try await conn.query("SELECT state, count(*) AS n FROM workflow.runs GROUP BY state") {
            result.states[try row.decode("state", as: String.self)] = try row.decode("n", as: Int.self)
        }
        mark("runs: \(result.states.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", "))")
        if result.states["succeeded", default: 0] != started_runs {
            result.violations.append("\(started_runs) runs started, \(result.states["succeeded", default: 0]) succeeded: \(result.states)")
        }
        result.violations += try await WorkflowDrill.check(conn)
        result.violations += try await DrillInvariants.check(databaseURL: url)
        for row in try await MigrationRunner(appliedBy: "").applied(on: conn) where !before.contains("\(row.schema) \(row.version)") {
            let took = row.durationMs.map { String(format: ", %.1f ms", $0) } ?? ""
            result.migrationsApplied.append("\(row.schema) \(zeroPadded(row.version))_\(row.name) (\(row.kind.rawValue)\(took), by \(row.appliedBy))")
        }
        if try await conn.query("SELECT to_regclass('engine.function_files') IS NOT NULL AS p").single().decode("p", as: Bool.self) {
            for row in try await conn.query("SELECT schema_name, binary_level, applied_by FROM engine.function_files ORDER BY schema_name") {
                result.migrationsApplied.append(
                    "\(try row.decode("schema_name", as: String.self)) function files (binary level \(try row.decode("binary_level", as: Int.self)), by \(try row.decode("applied_by", as: String.self)))")
            }
        }
        let logText = ((try? FileManager.default.contentsOfDirectory(atPath: logs)) ?? []).filter { $0.hasSuffix(".log") }
            .compactMap { try? String(contentsOfFile: "\(logs)/\($0)", encoding: .utf8) }
        result.lockGiveUps = logText.reduce(0) { $0 + $1.components(separatedBy: "for a table lock").count - 1 }
        if logText.contains(where: { $0.contains("needs a binary that knows") }) {
            result.violations.append("a node refused the database's floor during the rollout (see \(logs))")
        }
        poller.cancel()
        http.state.withLock {
            result.httpRequests = $0.requests
            result.http503 = $0.unavailable
            result.violations += $0.violations.prefix(10)
        }
        result.took = started.duration(to: .now)
        return result
    }
}

extension UpgradeDrill {
    /// A command's exit status and its output (stdout and stderr), run to its end.
    static func command(_ argv: [String]) async throws -> (status: Int32, output: String) {
        let path = try ChildProcess.temporaryFile(prefix: "regent-upgrade-cmd")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let pid = try ChildProcess.spawn(argv, outputPath: path)
        let status = try await runOffThePool { ChildProcess.exitStatus(pid, wait: true) ?? -1 }
        return (status, (try? String(contentsOfFile: path, encoding: .utf8)) ?? "")
    }

    /// One HTTP/1.1 GET on 127.0.0.1:`port`, blocking (run it off the cooperative pool): the
    /// status and whether a Retry-After header came with it.
    static func get(port: Int, path: String, token: String? = nil, timeout: Int32 = 3000) throws -> (status: Int, retryAfter: Bool) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RegentError(.invalidInput, "cannot open a socket") }
        defer { close(fd) }
        var tv = timeval(tv_sec: Int(timeout / 1000), tv_usec: Int(timeout % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard connected else { throw RegentError(.timeout, "connection refused on port \(port)") }
        let request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + (token.map { "Authorization: Bearer \($0)\r\n" } ?? "") + "\r\n"
        _ = request.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        var head = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !head.contains(13) || String(decoding: head, as: UTF8.self).range(of: "\r\n\r\n") == nil {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            head += buffer[0..<n]
        }
        let text = String(decoding: head, as: UTF8.self)
        let parts = text.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, let status = Int(parts[1]) else { throw RegentError(.timeout, "no HTTP answer on port \(port)") }
        return (status, text.lowercased().contains("\r\nretry-after:"))
    }

    /// Every 100 ms, each live node's readiness, its leader view and a runs listing (the
    /// workflow module of whichever binary it runs, against whatever schema is there now).
    static func poll(_ tally: HTTPTally) async {
        while !Task.isCancelled {
            let (ports, token) = tally.state.withLock { ($0.ports, $0.token) }
            for (name, port) in ports {
                for path in ["/readyz", "/v1/leader", "/v1/runs?limit=5"] {
                    guard let answer = try? await runOffThePool({ try get(port: port, path: path, token: token) }) else { continue }
                    tally.state.withLock { state in
                        state.requests += 1
                        if answer.status == 503 { state.unavailable += 1 }
                        if answer.status >= 500, !(answer.status == 503 && answer.retryAfter) {
                            state.violations.append("\(name) answered \(answer.status) to GET \(path)" + (answer.status == 503 ? " without Retry-After" : ""))
                        }
                    }
                }
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}

private func zeroPadded(_ v: Int) -> String { String(repeating: "0", count: max(0, 4 - String(v).count)) + String(v) }

/// Plain executions through the rollout: the old binary's CLI enqueues a few every 300 ms, and
/// a consumer in this process (the new release's code) claims and completes them, whatever
/// node leads or migrates meanwhile.
final class QueueLoad: Sendable {
    let producer: Task<(Int, [String]), Never>
    let consumer: Task<Int, Never>

    init(oldBinary: String, url: String) {
        producer = Task {
            var enqueued = 0
            var failures: [String] = []
            while !Task.isCancelled {
                if let out = try? await UpgradeDrill.command(
                    [oldBinary, "executions", "enqueue", "--namespace", "drillq", "--lane", "q", "--count", "5", "--database-url", url])
                {
                    if out.status == 0 {
                        enqueued += out.output.split(separator: "\n").filter { $0.count == 36 && $0.contains("-") }.count
                    } else {
                        failures.append("the old binary's `executions enqueue` failed: \(out.output.suffix(300))")
                    }
                }
                try? await Task.sleep(for: .milliseconds(300))
            }
            return (enqueued, failures)
        }
        consumer = Task {
            var completed = 0
            let conn = DrillConnection(url)
            let ns = try! Namespace("drillq"), lane = try! Lane("q"), me = try! WorkerInstanceID("upgrade-queue")
            var registered = ContinuousClock.now - .seconds(60)
            while !Task.isCancelled {
                do {
                    let c = try await conn.get()
                    if registered.duration(to: .now) > .seconds(5) {
                        _ = try await WorkerRegistry().register(
                            namespace: ns, workerInstanceID: me, workerID: try WorkerID("upgrade-queue"), lanes: [lane], capabilities: [],
                            livenessTTL: .seconds(30), on: c)
                        registered = .now
                    }
                    let leases = try await LeaseStore().claim(
                        namespace: ns, lanes: [lane], workerInstanceID: me, capabilities: [], leaseDuration: .seconds(30), limit: 20, on: c)
                    if leases.isEmpty {
                        try? await Task.sleep(for: .milliseconds(50))
                        continue
                    }
                    let outcome = try await LeaseStore().complete(
                        leases.map { Completion(executionID: $0.executionID, epoch: $0.epoch, worker: me) }, on: c)
                    completed += outcome.done.count
                } catch {
                    conn.drop()
                    try? await Task.sleep(for: .milliseconds(100))
                }
            }
            await conn.close()
            return completed
        }
    }

    func stopProducing() async -> (Int, [String]) {
        producer.cancel()
        return await producer.value
    }

    func stopConsuming() async -> Int {
        consumer.cancel()
        return await consumer.value
    }
}
