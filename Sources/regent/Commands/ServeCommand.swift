import ArgumentParser
import Dispatch
import Foundation
import PostgresClient
import RegentCore
import Logging
import Prometheus
import RegentHTTP
import ServiceLifecycle
import UnixSignals

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run a node: boot, heartbeat, join the leader election, run leader duties.",
        discussion: """
            Runs until SIGTERM or SIGINT, then hands over gracefully: claims are refused, leader \
            duties stop, the leadership lock is released (and announced), the instance row is \
            deleted, connections close, exit 0 — within --shutdown-timeout. \
            The node migrates the engine schema itself; module schemas are migrated by the leader.
            """
    )

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var log: LogOptions
    @OptionGroup var packageLimits: PackageLimitOptions
    @OptionGroup var vaultKeys: VaultKeyOptions
    @Option(help: "Name shown in status (default: HOST-PID).") var nodeName: String?
    @Option(help: "How often to heartbeat engine.instances (e.g. 3s, 500ms).") var heartbeatInterval = "3s"
    @Option(help: "A node whose heartbeat is older than this is swept by the leader.") var staleAfter = "10s"
    @Option(help: "How long a leader trusts its lock without a fresh confirmation; below tcp_user_timeout.") var leaseWindow = "5s"
    @Option(help: "How long a follower waits for the leader to migrate module schemas before complaining.") var schemaWait = "60s"
    @Option(help: "Serve the admin HTTP API on HOST:PORT (e.g. 0.0.0.0:8080); off when not given.") var httpAddress: String?
    @Option(help: ArgumentHelp("Serve the admin API over HTTPS with this PEM certificate chain (with --tls-key-file); reloaded on SIGHUP.", valueName: "path"))
    var tlsCertFile: String?
    @Option(help: ArgumentHelp("The PEM private key of --tls-cert-file.", valueName: "path")) var tlsKeyFile: String?
    @Option(help: ArgumentHelp("Require HTTPS clients to present a certificate signed by this PEM CA (workers' client-certificate auth).", valueName: "path"))
    var tlsClientCaFile: String?
    @Option(help: "How long the event outbox keeps events (the leader prunes older ones).") var eventRetention = "24h"
    @Option(help: "How long finished executions, worker events and lease decisions are kept (the leader prunes older ones).")
    var executionRetention = "168h"
    @Flag(help: "Exit at once when the database is unreachable at boot, instead of retrying with backoff.") var failFast = false
    @Option(help: "How long finished workflow runs (their steps, ledger and executions) are kept; the leader prunes older ones.")
    var runRetention = "168h"
    @Option(help: "How long a graceful shutdown (SIGTERM) may take before the process exits anyway.") var shutdownTimeout = "20s"
    @Flag(help: "Require a bearer token (any role) for GET /metrics; it is open by default, as scrapers expect.") var metricsRequireToken = false
    @Option(help: "Close an HTTP connection with no request in progress after this long (silent clients, slowloris).") var httpIdleTimeout = "30s"
    @Option(help: "Most HTTP connections open at once; more are closed as they arrive (1-100000).") var httpMaxConnections = 512
    @Option(help: "Failed authentications from one address within 10 s before it gets 429 (1-1000000).") var httpAuthFailureLimit = 50
    @Option(help: "The node's pool of database connections, shared by its duties and its HTTP API (2-1000); the lock session and the event listener come on top.") var maxConnections = 8

    func validate() throws {
        guard (1...100_000).contains(httpMaxConnections) else {
            throw ValidationError("--http-max-connections must be 1 to 100000, got \(httpMaxConnections)")
        }
        _ = try parseDuration(httpIdleTimeout, flag: "--http-idle-timeout")
        _ = try packageLimits.limits()
        _ = try vaultKeys.keyring()
        guard (1...1_000_000).contains(httpAuthFailureLimit) else {
            throw ValidationError("--http-auth-failure-limit must be 1 to 1000000, got \(httpAuthFailureLimit)")
        }
    }

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
        config.executionRetention = try parseDuration(executionRetention, flag: "--execution-retention")
        config.runRetention = try parseDuration(runRetention, flag: "--run-retention")
        config.maxConnections = maxConnections
        try config.validate()
        return config
    }

    /// The HTTPS files, checked and loaded (nil: plain HTTP); throws naming the flag at fault.
    func loadTLS() throws -> AdminTLS? {
        switch (tlsCertFile, tlsKeyFile) {
        case (nil, nil):
            if tlsClientCaFile != nil { throw ValidationError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file") }
            return nil
        case (.some, nil): throw ValidationError("--tls-cert-file needs --tls-key-file")
        case (nil, .some): throw ValidationError("--tls-key-file needs --tls-cert-file")
        case let (cert?, key?):
            guard httpAddress != nil else { throw ValidationError("--tls-cert-file and --tls-key-file need --http-address (they serve the admin API)") }
            return try AdminTLS(files: .init(certificate: cert, key: key, clientCA: tlsClientCaFile))
        }
    }

    func run() async throws {
        let config = try makeConfiguration()
        let tls = try loadTLS()
        let vaultKeyring = try vaultKeys.keyring()
        let shutdownTimeout = try parseDuration(self.shutdownTimeout, flag: "--shutdown-timeout")
        try log.bootstrap(defaultLevel: "info")
        let logger = Logger(label: "regent.serve")
        let registry = PrometheusCollectorRegistry()
        let node = RegentNode(configuration: config, metrics: AdminAPI.nodeMetrics(registry: registry))
        // Every long-lived part runs under one service group: SIGTERM/SIGINT start a graceful
        // shutdown in reverse order — first the node drains (no claims, duties stop,
        // leadership handed over, instance row deleted), then the HTTP server stops.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let address = config.httpAddress {
            let (host, port) = try NodeConfiguration.parseHTTPAddress(address)
            // One pool for the node and its API (issue 17: an idle follower holds few backends).
            let api = AdminAPI(
                pool: node.pool, node: node, registry: registry,
                options: .init(
                    staleAfter: config.staleAfter, metricsRequireToken: metricsRequireToken, authFailureLimit: httpAuthFailureLimit,
                    idleTimeout: try parseDuration(httpIdleTimeout, flag: "--http-idle-timeout"), maxConnections: httpMaxConnections,
                    packageLimits: try packageLimits.limits(), vaultKeyring: vaultKeyring))
            if let vaultKeyring {
                logger.notice("vault keys loaded", metadata: ["key_ids": "\(vaultKeyring.ids.joined(separator: ","))"])
            } else {
                logger.notice("the vault is sealed on this node: no --vault-key-file or REGENT_VAULT_KEY; vault routes answer 503 vault_sealed")
            }
            services.append(.init(
                service: api.application(host: host, port: port, tls: tls), successTerminationBehavior: .gracefullyShutdownGroup,
                failureTerminationBehavior: .gracefullyShutdownGroup, serviceName: "http"))
        }
        services.append(.init(
            service: node, successTerminationBehavior: .gracefullyShutdownGroup,
            failureTerminationBehavior: .gracefullyShutdownGroup, serviceName: "node"))
        var groupConfig = ServiceGroupConfiguration(
            services: services, gracefulShutdownSignals: [.sigterm, .sigint], cancellationSignals: [], logger: logger)
        groupConfig.maximumGracefulShutdownDuration = shutdownTimeout
        let watchdog = shutdownWatchdog(timeout: shutdownTimeout, logger: logger)
        defer { watchdog.cancel() }
        // SIGHUP: read the TLS files again (new connections get them; a bad file keeps the old).
        let reloader = Task {
            guard let tls else { return }
            for await _ in await UnixSignalsSequence(trapping: .sighup) {
                do {
                    try tls.reload()
                    logger.notice("TLS certificate reloaded", metadata: ["cert_file": "\(tls.files.certificate)", "loads": "\(tls.loadCount)"])
                } catch {
                    logger.error("TLS reload failed; still serving the previous certificate", metadata: ["error": "\(error)"])
                }
            }
        }
        defer { reloader.cancel() }
        try await ServiceGroup(configuration: groupConfig).run()
    }
}

/// Bounds the whole shutdown: once SIGTERM or SIGINT arrived, the process exits (status 1)
/// if it is still alive `timeout` plus a short grace later, whatever is stuck.
func shutdownWatchdog(timeout: Duration, logger: Logger) -> SignalHandler {
    let deadline = timeout + .seconds(2)
    return SignalHandler(signals: [SIGTERM, SIGINT]) {
        DispatchQueue.global().asyncAfter(deadline: .now() + deadline.milliseconds / 1000) {
            logger.critical("shutdown took longer than --shutdown-timeout; exiting now", metadata: ["timeout": "\(timeout)"])
            exit(1)
        }
    }
}
