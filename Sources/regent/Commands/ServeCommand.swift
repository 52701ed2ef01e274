import ArgumentParser
import Dispatch
import Foundation
import PostgresClient
import RegentCore
import RegentHTTP

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run a node: boot, heartbeat, join the leader election, run leader duties.",
        discussion: """
            Runs until SIGTERM or SIGINT, then hands over gracefully: leader duties stop, the \
            leadership lock is released (and announced), the instance row is deleted, exit 0. \
            The node migrates the engine schema itself; module schemas are migrated by the leader.
            """
    )

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var log: LogOptions
    @Option(help: "Name shown in status (default: HOST-PID).") var nodeName: String?
    @Option(help: "How often to heartbeat engine.instances (e.g. 3s, 500ms).") var heartbeatInterval = "3s"
    @Option(help: "A node whose heartbeat is older than this is swept by the leader.") var staleAfter = "10s"
    @Option(help: "How long a leader trusts its lock without a fresh confirmation; below tcp_user_timeout.") var leaseWindow = "5s"
    @Option(help: "How long a follower waits for the leader to migrate module schemas before complaining.") var schemaWait = "60s"
    @Option(help: "Serve the admin HTTP API on HOST:PORT (e.g. 0.0.0.0:8080); off when not given.") var httpAddress: String?
    @Option(help: "How long the event outbox keeps events (the leader prunes older ones).") var eventRetention = "24h"
    @Flag(help: "Exit at once when the database is unreachable at boot, instead of retrying with backoff.") var failFast = false

    func makeConfiguration() throws -> NodeConfiguration {
        var config = NodeConfiguration(database: try database.configuration())
        config.nodeName = nodeName
        config.heartbeatInterval = try parseDuration(heartbeatInterval, flag: "--heartbeat-interval")
        config.staleAfter = try parseDuration(staleAfter, flag: "--stale-after")
        config.leaseWindow = try parseDuration(leaseWindow, flag: "--lease-window")
        config.schemaWaitTimeout = try parseDuration(schemaWait, flag: "--schema-wait")
        config.failFast = failFast
        config.httpAddress = httpAddress
        config.eventRetention = try parseDuration(eventRetention, flag: "--event-retention")
        try config.validate()
        return config
    }

    func run() async throws {
        let config = try makeConfiguration()
        try log.bootstrap(defaultLevel: "info")
        let node = RegentNode(configuration: config)
        let signals = SignalHandler(signals: [SIGTERM, SIGINT]) { Task { await node.shutdown() } }
        defer { signals.cancel() }
        guard let address = config.httpAddress else { return try await node.run() }
        let (host, port) = try NodeConfiguration.parseHTTPAddress(address)
        let apiPool = ConnectionPool(configuration: config.database, options: .init(maxConnections: 4))
        let api = AdminAPI(pool: apiPool, node: node, staleAfter: config.staleAfter)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await api.serve(host: host, port: port) }
            try await node.run()
            group.cancelAll()  // the node drained: stop serving
        }
        await apiPool.shutdown()
    }
}

/// Turns SIGTERM/SIGINT into a callback (the default action, exiting, is disabled).
final class SignalHandler {
    private let sources: [any DispatchSourceSignal]

    init(signals: [Int32], handler: @escaping @Sendable () -> Void) {
        sources = signals.map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler(handler: handler)
            source.resume()
            return source
        }
    }

    func cancel() { sources.forEach { $0.cancel() } }
}
