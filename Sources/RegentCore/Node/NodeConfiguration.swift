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
    /// Events older than this are pruned from the outbox by the leader.
    public var eventRetention: Duration = .seconds(86_400)

    public init(database: ConnectionConfiguration) {
        self.database = database
    }

    /// Refuses combinations that cannot work, naming the flags.
    public func validate() throws(RegentError) {
        if let nodeName { try NodeIdentity.validateNodeName(nodeName) }
        guard staleAfter > heartbeatInterval * 2 else {
            throw RegentError(
                .invalidInput,
                "--stale-after (\(staleAfter)) must be more than twice --heartbeat-interval (\(heartbeatInterval)), or live nodes get swept")
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
