import ArgumentParser
import Foundation
import Logging
import PostgresClient
import RegentCore
import RegentWorker
import UnixSignals

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run a demo step worker: claims workflow steps of its lanes, completes each with an output and a cost.",
        discussion: """
            For demos, drills and trying a package out: the "work" is a pause (--work). It registers in the \
            runs namespace, long-polls for steps, completes them in batches, drops a completion refused \
            as stale (its run was cancelled or its lease reclaimed), and stops on SIGTERM or SIGINT. A real \
            worker is the same loop with real work in the middle (docs/runs.md). With --api-url it talks \
            to a node's admin API (a worker token) instead of the database, over HTTPS verified with \
            --ca-file and, for nodes that require one, a client certificate.
            """)
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var log: LogOptions
    @Option(name: .customLong("lane"), help: "A lane to claim from (repeatable).") var lanes: [String]
    @Option(name: .customLong("capability"), help: "A capability this worker has (repeatable).") var capabilities: [String] = []
    @Option(help: "Worker instance id (default: worker-HOST-PID).") var name: String?
    @Option(help: "How long each step's work takes (e.g. 20ms).") var work = "0ms"
    @Option(help: "Steps claimed and completed at once (1-100).") var batch = 1
    @Option(help: "The cost each completion reports, in the run's budget unit.") var cost = 1.0
    @Flag(help: "Accepted for clarity: this worker only ever runs demo work.") var demo = false
    @Option(help: ArgumentHelp(
        "Work through this node's admin API (http:// or https://) instead of the database (repeatable: more nodes to fail over to).", valueName: "url"))
    var apiURL: [String] = []
    @Option(help: ArgumentHelp("The worker token for --api-url (default: $REGENT_TOKEN).", valueName: "token")) var token: String?
    @Option(help: ArgumentHelp("Trust this PEM CA for an https --api-url (default: the system's roots).", valueName: "path")) var caFile: String?
    @Option(help: ArgumentHelp("A PEM client certificate for nodes that require one (with --client-key).", valueName: "path")) var clientCert: String?
    @Option(help: ArgumentHelp("The PEM key of --client-cert.", valueName: "path")) var clientKey: String?

    var apiToken: String? { token ?? ProcessInfo.processInfo.environment["REGENT_TOKEN"] }

    func validate() throws {
        guard !lanes.isEmpty else { throw ValidationError("give at least one --lane") }
        for l in lanes { _ = try validated { try Lane(l) } }
        for c in capabilities { _ = try validated { try Capability(c) } }
        if let name { _ = try validated { try WorkerInstanceID(name) } }
        if work != "0ms" { _ = try validated { try parseDuration(work, flag: "--work") } }
        guard (1...100).contains(batch) else { throw ValidationError("--batch must be 1 to 100, got \(batch)") }
        for apiURL in apiURL {
            guard let url = URL(string: apiURL), ["http", "https"].contains(url.scheme ?? ""), url.host != nil, url.query == nil else {
                throw ValidationError("--api-url must be http://HOST[:PORT] or https://HOST[:PORT], got \(apiURL.debugDescription)")
            }
            guard apiToken != nil else { throw ValidationError("--api-url needs a worker token: --token or REGENT_TOKEN") }
            if url.scheme == "http", caFile != nil || clientCert != nil { throw ValidationError("--ca-file and --client-cert need an https --api-url") }
        }
        if !apiURL.isEmpty {
        } else if caFile != nil || clientCert != nil || clientKey != nil || token != nil {
            throw ValidationError("--token, --ca-file, --client-cert and --client-key need --api-url")
        }
        if (clientCert == nil) != (clientKey == nil) { throw ValidationError("--client-cert and --client-key go together") }
        _ = try validated { try Cost(amount: cost) }
    }

    func run() async throws {
        try log.bootstrap(defaultLevel: "info")
        let logger = Logger(label: "regent.worker")
        if !apiURL.isEmpty, let apiToken {
            try await runOverHTTP(apiURL, apiToken, logger: logger)
            return
        }
        let config = try database.configuration()
        var worker = StepWorker(
            instanceID: try instanceID(),
            lanes: try lanes.map { try Lane($0) }, capabilities: try capabilities.map { try Capability($0) })
        worker.batch = batch
        worker.work = work == "0ms" ? .zero : try parseDuration(work, flag: "--work")
        worker.costPerStep = cost
        let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 4))
        let waker = QueueWaker(configuration: config)
        logger.notice("worker started", metadata: ["worker": "\(worker.instanceID)", "lanes": "\(lanes.joined(separator: ","))"])
        let tally = await Self.untilSignal({ [worker] in await worker.run(pool: pool, waker: waker, logger: logger) }, beside: [pool.run, waker.run])
        await pool.shutdown()
        logger.notice("worker stopped", metadata: ["completed": "\(tally?.completed ?? 0)", "stale": "\(tally?.stale ?? 0)"])
    }
}

extension WorkerCommand {
    /// The same demo work through the nodes' admin API, with the RegentWorker library: every
    /// step is handled by one fallback handler that pauses for --work and reports --cost.
    /// SIGTERM/SIGINT shut it down gracefully (running steps finish, then it deregisters).
    func runOverHTTP(_ urls: [String], _ apiToken: String, logger: Logger) async throws {
        var configuration = WorkerConfiguration(urls: urls, token: apiToken)
        let instance = try instanceID().value
        configuration.instanceID = instance
        configuration.workerID = "step-worker"
        configuration.lanes = lanes
        configuration.capabilities = capabilities
        configuration.maxConcurrentSteps = batch
        configuration.tls = .init(caFile: caFile, clientCertificateFile: clientCert, clientKeyFile: clientKey)
        let work = work == "0ms" ? Duration.zero : try parseDuration(work, flag: "--work")
        let worker = RegentWorker(configuration: configuration, logger: logger)
        worker.fallback { [cost] ctx in
            if work > .zero { try await Task.sleep(for: work) }
            if cost > 0 { ctx.reportCost(cost) }
            return ["step": .string(ctx.step), "by": .string(instance), "attempt": .integer(Int64(ctx.attempt))]
        }
        // A signal begins the graceful shutdown; run() returns when it is done.
        let signals = Task {
            for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) {
                worker.shutdown()
                break
            }
        }
        defer { signals.cancel() }
        try await worker.run()
        logger.notice("worker stopped", metadata: ["completed": "\(worker.tally.completed)", "stale": "\(worker.tally.lost)"])
    }
}

extension WorkerCommand {
    /// This worker's instance id: --name, or worker-HOST-PID.
    func instanceID() throws -> WorkerInstanceID {
        try WorkerInstanceID(name ?? "worker-\(ProcessInfo.processInfo.hostName.prefix(40))-\(getpid())")
    }

    /// Runs `work` (and `beside` it, what it needs running) until it ends or SIGTERM/SIGINT
    /// arrives; then cancels everything and returns the work's tally.
    static func untilSignal(
        _ work: @escaping @Sendable () async -> StepWorker.Tally, beside: [@Sendable () async -> Void] = []
    ) async -> StepWorker.Tally? {
        await withTaskGroup(of: StepWorker.Tally?.self) { group in
            for task in beside { group.addTask { await task(); return nil } }
            group.addTask { await work() }
            group.addTask {
                for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) { break }
                return nil
            }
            // The first to end is the signal (or the worker failing); then everything stops.
            var result: StepWorker.Tally?
            if let first = await group.next() { result = first }
            group.cancelAll()
            for await r in group { if let r { result = r } }
            return result
        }
    }
}
