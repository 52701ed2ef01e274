import PostgresClient

/// Everything `regent serve` is configured with, validated as a whole.
public struct NodeConfiguration: Sendable {
    public var database: ConnectionConfiguration
    public var nodeName: String?
    public var heartbeatInterval: Duration = .seconds(3)
    public var staleAfter: Duration = .seconds(10)
    public var leaseWindow: Duration = .seconds(5)
    /// How long a follower waits for the leader to bring module schemas current.
    public var schemaWaitTimeout: Duration = .seconds(60)
    /// Exit at once when the database is unreachable at boot instead of retrying.
    public var failFast = false
    /// Where this node serves its admin HTTP API (`host:port`), recorded in engine.instances.
    public var httpAddress: String?
    /// Events older than this are pruned from the outbox by the leader.
    public var eventRetention: Duration = .seconds(86_400)
    /// How long finished executions (and worker events, lease decisions) are kept.
    public var executionRetention: Duration = .seconds(7 * 86_400)
    /// How long finished workflow runs are kept (the leader prunes older ones).
    public var runRetention: Duration = .seconds(7 * 86_400)
    /// The node's pool of database connections, shared by its duties, heartbeats, event
    /// publishing and its HTTP API; the lock session and the event listener come on top.
    public var maxConnections = 8
    /// Pooled connections idle this long are closed (one is kept): an idle follower holds the
    /// lock session, the listener and about one pooled connection.
    public var poolIdleTimeout: Duration = .seconds(30)

    public init(database: ConnectionConfiguration) {
        self.database = database
    }

    /// Splits `host:port`; the port must be 1-65535 and the host non-empty.
    public static func parseHTTPAddress(_ text: String) throws(RegentError) -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port),
            !text[..<colon].isEmpty, !text.unicodeScalars.contains(where: { $0.value < 0x21 || $0.value == 0x7f })
        else {
            throw RegentError(.invalidInput, "invalid --http-address \(quoted(text)): use HOST:PORT, e.g. 0.0.0.0:8080")
        }
        return (String(text[..<colon]), port)
    }

    /// Refuses combinations that cannot work, naming the flags.
    public func validate() throws(RegentError) {
        guard runRetention >= .seconds(60) else {
            throw RegentError(.invalidInput, "--run-retention must be at least 1m, got \(runRetention)")
        }
        guard executionRetention >= .seconds(60) else {
            throw RegentError(.invalidInput, "--execution-retention must be at least 1m, got \(executionRetention)")
        }
        guard (2...1000).contains(maxConnections) else {
            throw RegentError(.invalidInput, "--max-connections must be 2 to 1000, got \(maxConnections)")
        }
        if let nodeName { try NodeIdentity.validateNodeName(nodeName) }
        if let httpAddress { _ = try Self.parseHTTPAddress(httpAddress) }
        guard staleAfter >= heartbeatInterval * 2 else {
            throw RegentError(
                .invalidInput,
                "--stale-after (\(staleAfter)) must be at least twice --heartbeat-interval (\(heartbeatInterval)), or live nodes get swept and a live leader's session terminated")
        }
        guard leaseWindow <= staleAfter else {
            throw RegentError(
                .invalidInput,
                "--lease-window (\(leaseWindow)) must not be longer than --stale-after (\(staleAfter)): a frozen leader's session is ended once its heartbeat is stale-after old, and it must have stopped trusting its leadership by then")
        }
        guard leaseWindow >= heartbeatInterval else {
            throw RegentError(
                .invalidInput, "--lease-window (\(leaseWindow)) must not be shorter than --heartbeat-interval (\(heartbeatInterval))")
        }
        guard leaseWindow >= .milliseconds(200) else {
            throw RegentError(.invalidInput, "--lease-window (\(leaseWindow)) must be at least 200ms: confirmations need a few round trips")
        }
        let serverDropsDeadSessionAfter = Duration.milliseconds(database.tcpUserTimeoutMilliseconds)
        if leaseWindow >= serverDropsDeadSessionAfter {
            throw RegentError(
                .invalidInput,
                "--lease-window (\(leaseWindow)) must be shorter than tcp_user_timeout (\(serverDropsDeadSessionAfter)), so a cut-off leader steps down before a successor can be elected")
        }
    }
}
