import ArgumentParser
import AsyncHTTPClient
import EmbeddedPostgres
import Foundation
import NIOCore
import NIOHTTP1
import RegentDrill
import PostgresClient
import RegentCore

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run Regent on its embedded default: a private PostgreSQL and a local cluster of three nodes.",
        discussion: """
            Starts a throwaway PostgreSQL, three `regent serve` nodes as child processes, shows who \
            leads, kills the leader with SIGKILL, shows the new leader and the measured failover \
            time, then hands over gracefully once more with SIGTERM and stops everything.
            """
    )
    @Option(help: "Nodes to start (2-9).") var nodes = 3
    @Flag(name: [.customLong("console"), .customLong("keep")],
          help: "After the demo, leave the cluster running with two nodes serving the browser console (their addresses and an admin token are printed) until Ctrl-C.")
    var console = false
    @OptionGroup var log: LogOptions

    func validate() throws {
        guard (2...9).contains(nodes) else { throw ValidationError("--nodes must be 2 to 9, got \(nodes)") }
    }

    func run() async throws {
        try log.bootstrap()
        let env = try await DrillEnvironment.start(databaseURL: nil, nodes: nodes) { print($0) }
        do {
            try await show(env)
            if console { try await keepForTheConsole(env) }
        } catch {
            await env.close()
            throw error
        }
        print("\n■ stopping the nodes (SIGTERM: each hands over and deletes its row) and PostgreSQL")
        await env.close()
        print("■ done")
    }

    /// Two more nodes with the HTTP API, an admin token, the console's addresses: a newcomer
    /// clicks through the runs and packages and watches a failover (the Resign button, or a
    /// `kill -9` of the leader's pid) until Ctrl-C stops everything.
    private func keepForTheConsole(_ env: DrillEnvironment) async throws {
        let config = try ConnectionConfiguration(env.databaseURL)
        let urls = try await spawnAPINodes(env)
        let token = try await PostgresConnection.withConnection(config) {
            try await TokenStore().create(name: "demo-console-\(UInt32.random(in: 0...UInt32.max))", role: .admin, actor: "demo", on: $0).1
        }
        print("""

            ── the console ─────────────────────────────────────────────
               open \(urls[0])/console/ (or \(urls[1])/console/) and paste this admin token:
               \(token)
               Watch a failover on the Cluster page: press Resign leader, or kill -9 the leader's pid
               (regent status --database-url '\(env.databaseURL)').
               The cluster keeps running until Ctrl-C.
            """)
        // Shown now even when the output goes into a pipe or a file (`regent demo --console | tee`):
        // the process is about to wait.
        fflush(nil)
        // Ctrl-C (or SIGTERM) ends the wait; the demo then stops the nodes and PostgreSQL as usual.
        let (stopped, stop) = AsyncStream<Void>.makeStream()
        let signals = SignalHandler(signals: [SIGINT, SIGTERM]) { stop.yield() }
        defer { signals.cancel() }
        for await _ in stopped { break }
    }

    /// Two more nodes serving the HTTP API on free loopback ports, once ready; their base URLs.
    private func spawnAPINodes(_ env: DrillEnvironment) async throws -> [String] {
        let ports = [try EmbeddedPostgres.freeLoopbackPort(), try EmbeddedPostgres.freeLoopbackPort()]
        for port in ports { try env.cluster.spawn(arguments: ["--http-address", "127.0.0.1:\(port)"]) }
        let urls = ports.map { "http://127.0.0.1:\($0)" }
        for url in urls { try await waitUntilReady(url) }
        return urls
    }

    private func show(_ env: DrillEnvironment) async throws {
        let config = try ConnectionConfiguration(env.databaseURL)
        guard let first = try await env.probe.waitForLeader(after: 0, timeout: .seconds(30)) else {
            throw RegentError(.timeout, "no leader within 30 s; node logs are in \(env.cluster.logDirectory)")
        }
        _ = first
        // Wait until every node has joined.
        try await PostgresConnection.withConnection(config) { statusConn in
            var status = try await ClusterStatus.read(on: statusConn)
            for _ in 0..<100 where status.instances.count < nodes {
                try await Task.sleep(for: .milliseconds(50))
                status = try await ClusterStatus.read(on: statusConn)
            }
            print("\n── the cluster ─────────────────────────────────────────────")
            print(renderStatus(status))
            let workers = try await showPackages(on: statusConn, env: env)
            defer {
                for pid in workers { kill(pid, SIGTERM) }
                for pid in workers { _ = ChildProcess.exitStatus(pid, wait: true) }
            }

            let listener = try await PostgresListener.connect(config, channels: [try SQLIdentifier("regent_events")])
            defer { listener.stop() }
            var announcements = listener.notifications.makeAsyncIterator()
            for (signal, label) in [(SIGKILL, "SIGKILL (a crash)"), (SIGTERM, "SIGTERM (a graceful handover)")] {
                guard let leader = status.leader, let pid = leader.pid, let node = env.cluster.node(pid: pid) else { break }
                print("\n── \(label) to the leader \(node.name), pid \(pid) ──")
                let started = ContinuousClock.now
                env.cluster.kill(node, signal: signal)
                guard try await FailoverDrill.awaitElection(&announcements, after: leader.term, timeout: .seconds(15)) else {
                    throw RegentError(.timeout, "no new leader within 15 s; node logs are in \(env.cluster.logDirectory)")
                }
                let took = started.duration(to: .now)
                _ = try await env.probe.waitForLeader(after: leader.term, timeout: .seconds(5))
                status = try await ClusterStatus.read(on: statusConn)
                let newName = status.leader?.nodeName ?? "?"
                print(String(format: "   new leader %@ under term %lld, %.1f ms after the signal", newName, status.term.value, took.milliseconds))
                env.cluster.reap()
            }
            try await Task.sleep(for: .milliseconds(100))
            status = try await ClusterStatus.read(on: statusConn, staleAfter: .seconds(2))
            print("\n── the cluster now ──")
            print("   (for comparison: River re-elects after ~15 s, Oban after 30 s, a Kubernetes Lease after 15 s;")
            print("    the crashed node's row stays until it is 2 s stale and the leader sweeps it)")
            print(renderStatus(status))
            if !workers.isEmpty {
                try await awaitRuns(env, on: statusConn)
                try await showWorkersOverHTTP(env, on: statusConn)
            }
        }
    }

    /// The example shop.checkout (examples/workers): each run's steps carried by a Swift worker
    /// (RegentWorker) and a Python worker (regent-client) through two nodes' HTTP API with a
    /// worker token; one run fails for good (a NonRetryable error); SIGTERM stops both
    /// workers gracefully.
    private func showWorkersOverHTTP(_ env: DrillEnvironment, on conn: PostgresConnection) async throws {
        guard let package = Self.example("workers/greeting") else { return }
        let root = URL(fileURLWithPath: package).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let swiftWorker = URL(fileURLWithPath: env.cluster.executablePath).deletingLastPathComponent().appendingPathComponent("regent-example-worker").path
        print("\n── workers over the HTTP API: a Swift worker and a Python worker carry the steps of one run ──")
        guard FileManager.default.isExecutableFile(atPath: swiftWorker) else {
            print("   (skipped: \(swiftWorker) is not built; swift build --product regent-example-worker)")
            return
        }
        guard let python = ["/usr/bin/python3", "/usr/local/bin/python3"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            print("   (skipped: python3 is not installed)")
            return
        }
        let urls = try await spawnAPINodes(env)
        print("   two more nodes serve the API at \(urls.joined(separator: " and "))")
        let token = try await TokenStore().create(name: "demo-workers", role: .worker, actor: "demo", on: conn).1
        let contents = try PackageContents(path: package, limits: .default)
        _ = try await PackageStore().deploy(contents, actor: .named("demo"), on: conn)
        let environment = ["REGENT_URLS": urls.joined(separator: ","), "REGENT_TOKEN": token]
        let logs = env.cluster.logDirectory
        let swiftPID = try ChildProcess.spawn(
            [swiftWorker], outputPath: logs + "/swift-worker.log", environment: environment.merging(["REGENT_WORKER_NAME": "swift-worker"]) { $1 })
        let pythonPID = try ChildProcess.spawn(
            [python, root + "/examples/workers/python/worker.py"], outputPath: logs + "/python-worker.log",
            environment: environment.merging(["REGENT_WORKER_NAME": "python-worker", "PYTHONPATH": root + "/clients/python/src"]) { $1 })
        print("   regent-example-worker (Swift, lane swift: quote, receipt) and examples/workers/python/worker.py (Python, lane python: charge)")
        var runs: [String] = []
        for (customer, items) in [("ana", 3), ("bo", 1), ("mallory", 2)] {
            runs.append(try await RunStore().start(
                .init(workflowType: contents.manifest.workflowType, input: #"{"customer": "\#(customer)", "items": \#(items)}"#), actor: .named("demo"), on: conn).runID)
        }
        let deadline = ContinuousClock.now + .seconds(60)
        var shown: [RunStore.Run] = []
        while ContinuousClock.now < deadline {
            shown = []
            for id in runs { if let run = try await RunStore().get(id, on: conn) { shown.append(run) } }
            if shown.allSatisfy({ $0.state != "running" }) { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        for run in shown {
            print("   \(run.runID) \(run.state): " + run.steps.map { "\($0.name) \($0.worker.map { "by \($0)" } ?? "(\($0.state))")" }.joined(separator: ", "))
            if let receipt = run.steps.last?.output { print("     receipt \(receipt)") }
            if let error = run.error { print("     \(error)") }
        }
        kill(swiftPID, SIGTERM)
        kill(pythonPID, SIGTERM)
        _ = ChildProcess.exitStatus(swiftPID, wait: true)
        _ = ChildProcess.exitStatus(pythonPID, wait: true)
        let left = try await conn.query("SELECT worker_instance_id FROM workflow.workers WHERE dead_reason = 'deregistered' ORDER BY 1")
            .map { try $0.decode("worker_instance_id", as: String.self) }
        print("   SIGTERM to both: they finished, then deregistered (\(left.joined(separator: ", ")))")
        guard shown.count == 3, shown.filter({ $0.state == "succeeded" }).count == 2, shown.contains(where: { $0.state == "failed" }) else {
            throw RegentError(.timeout, "the workers over HTTP did not finish the checkout runs as expected; logs in \(logs)")
        }
    }

    /// Every run of the demo finishes, whatever happened to the leaders meanwhile.
    private func awaitRuns(_ env: DrillEnvironment, on conn: PostgresConnection) async throws {
        print("\n── the runs, carried by the workers through both failovers ──")
        try await approveWaitingRuns(on: conn)
        let open = try await env.waitForRuns(timeout: .seconds(60))
        guard open == 0 else { throw RegentError(.timeout, "\(open) runs still unfinished after 60 s") }
        let page = try await RunStore().list(limit: 1000, on: conn)
        let rows = page.runs.reversed().map { r in
            [r.runID, r.workflowType, r.state, r.parentRunID.map { "child of \($0)" } ?? "", r.finishedAt.map { took(from: r.startedAt, to: $0) } ?? ""]
        }
        print(table(["run", "type", "state", "", "took"], rows).split(separator: "\n").map { "   " + $0 }.joined(separator: "\n"))
        if let waited = page.runs.first(where: { $0.workflowType == "orders.approval" }), let run = try await RunStore().get(waited.runID, on: conn) {
            print("\n   \(run.runID) (orders.approval), its steps:")
            for s in run.steps {
                let wait = s.wait.map { w in
                    [w.signal.map { "signal \($0)" }, w.childRunID.map { "child \($0) on \(w.childVersion.map { String($0.prefix(12)) } ?? "?")" },
                     s.kind == "timer" ? w.dueAt.map { "due \(ISO8601DateFormatter().string(from: $0))" } : nil,
                     w.waitedMs.map { "waited \(compact(.milliseconds($0)))" }].compactMap { $0 }.joined(separator: ", ")
                } ?? (s.worker.map { "by \($0)" } ?? "")
                print("     \(s.name) (\(s.kind)): \(s.state)\(wait.isEmpty ? "" : " — \(wait)")")
            }
        }
        if let last = page.runs.first(where: { $0.workflowType == "orders.fulfil" }), let run = try await RunStore().get(last.runID, on: conn) {
            print("\n   \(run.runID): " + run.steps.map { "\($0.name) by \($0.worker ?? "?") (attempt \($0.attempts))" }.joined(separator: ", "))
            if let limit = run.budgetLimit { print("   budget: \(number(run.budgetSpent)) of \(number(limit)) \(run.budgetUnit ?? "") spent") }
        }
    }

    /// The example packages: deployed (content-hashed, routed), runs started pinned to them, an
    /// unload refused because they pin it; and runs that wait: for an approval signal, a timer,
    /// a child workflow.
    /// Returns the pids of the worker processes it started.
    static func example(_ name: String) -> String? {
        [
            FileManager.default.currentDirectoryPath + "/examples/\(name)",
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("../../examples/\(name)").standardized.path,
        ].first { FileManager.default.fileExists(atPath: $0 + "/workflow.json") }
    }

    private func showPackages(on conn: PostgresConnection, env: DrillEnvironment) async throws -> [pid_t] {
        let example = Self.example
        guard let path = example("order-fulfilment") else {
            print("\n(the example package examples/order-fulfilment was not found from here; skipping the package part)")
            return []
        }
        try await env.waitForWorkflowSchema()
        let contents = try PackageContents(path: path, limits: .default)
        let deployed = try await PackageStore().deploy(contents, actor: .named("demo"), on: conn)
        print("\n── a workflow package: \(contents.manifest.workflowType), \(contents.manifest.steps.count) steps, \(contents.files.count) files ──")
        print("   deployed from \(path)")
        print("   content hash \(deployed.contentHash) (sha256 of its canonical tar)")
        print("   stored: \(deployed.freshlyStored), route moved: \(deployed.routeChanged)")
        var runs: [String] = []
        for order in 1...8 {
            let run = try await RunStore().start(
                .init(workflowType: contents.manifest.workflowType, input: #"{"order_id": \#(order), "items": [{"sku": "tea", "quantity": \#(order)}]}"#,
                      idempotencyKey: "demo-order-\(order)"), actor: .named("demo"), on: conn)
            runs.append(run.runID)
        }
        print("   started \(runs.count) runs (\(runs[0]) …), each pinned to that version")
        do {
            try await PackageStore().unload(type: contents.manifest.workflowType, hash: deployed.contentHash, actor: .named("demo"), on: conn)
        } catch let error as RegentError {
            print("   unload refused, as it must be: \(error.message)")
        }
        if let approval = example("approval"), let shipping = example("shipping-dispatch") {
            try await showWaits(approval: approval, shipping: shipping, on: conn)
        }
        // Two demo workers (`regent worker`), each step taking 150 ms: the runs are in flight when the leader dies.
        var pids: [pid_t] = []
        for n in 1...2 {
            pids.append(try env.spawnWorker(
                name: "demo-worker-\(n)",
                arguments: ["--lane", "orders", "--lane", "warehouse", "--lane", "payments", "--lane", "pricing", "--lane", "mail",
                            "--capability", "stock", "--work", "150ms", "--log-level", "warning"]))
        }
        print("   two workers (regent worker --lane orders --lane warehouse --lane payments --lane pricing --lane mail --capability stock) carry them")
        return pids
    }

    /// orders.approval (a worker step, an approval signal, a timer, a child workflow, a worker
    /// step) with shipping.dispatch as its child: two runs, one approved before it reaches the
    /// wait (the signal is kept), one approved later (`approveWaitingRuns`).
    private func showWaits(approval: String, shipping: String, on conn: PostgresConnection) async throws {
        let child = try await PackageStore().deploy(try PackageContents(path: shipping, limits: .default), actor: .named("demo"), on: conn)
        let contents = try PackageContents(path: approval, limits: .default)
        let deployed = try await PackageStore().deploy(contents, actor: .named("demo"), on: conn)
        print("\n── runs that wait: \(contents.manifest.workflowType) (\(contents.manifest.steps.map { "\($0.name): \($0.kind.label)" }.joined(separator: ", "))) ──")
        print("   deployed \(String(deployed.contentHash.prefix(12)))…, and its child type shipping.dispatch \(String(child.contentHash.prefix(12)))…")
        for order in 1...2 {
            let run = try await RunStore().start(
                .init(workflowType: contents.manifest.workflowType, input: #"{"order_id": \#(100 + order)}"#, idempotencyKey: "demo-approval-\(order)"),
                actor: .named("demo"), on: conn)
            if order == 1 {
                let sent = try await RunStore().signal(
                    run.runID, name: "approval", payloadJSON: #"{"by": "ana", "early": true}"#, signalID: "demo-approval-1", actor: .named("demo"), on: conn)
                print("   \(run.runID): approved before it reached the wait (signal \(sent.consumedBy == nil ? "kept" : "consumed"))")
            } else {
                print("   \(run.runID): waits for its approval, sent after the failovers")
            }
        }
    }

    /// Approves the demo's approval runs that wait for it (the signal advances each in its own transaction).
    private func approveWaitingRuns(on conn: PostgresConnection) async throws {
        let page = try await RunStore().list(type: try WorkflowType("orders.approval"), state: "running", limit: 100, on: conn)
        for r in page.runs {
            guard let run = try await RunStore().get(r.runID, on: conn), run.signals.isEmpty else { continue }
            // Wait until it reaches the wait (its quote step done), then approve it.
            for _ in 0..<300 {
                if try await RunStore().get(r.runID, on: conn)?.steps.first(where: { $0.name == "approve" })?.state == "waiting" { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            let sent = try await RunStore().signal(r.runID, name: "approval", payloadJSON: #"{"by": "bo"}"#, signalID: nil, actor: .named("demo"), on: conn)
            print("   approved \(r.runID): consumed by \(sent.consumedBy ?? "nothing yet (kept)")")
        }
    }
}

