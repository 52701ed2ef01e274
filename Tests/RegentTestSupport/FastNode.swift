import PostgresClient
import RegentCore

/// A node configuration with short intervals, so tests see elections and sweeps quickly.
public func fastNode(_ database: ConnectionConfiguration, name: String) -> NodeConfiguration {
    var c = NodeConfiguration(database: database)
    c.nodeName = name
    c.heartbeatInterval = .milliseconds(200)
    c.staleAfter = .seconds(1)
    c.leaseWindow = .seconds(1)
    c.poolIdleTimeout = .seconds(1)
    return c
}
