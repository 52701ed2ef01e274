import CoreMetrics
import Foundation
import Logging
import ServiceLifecycle
import PostgresClient

/// This node's row in `engine.instances`: inserted at boot, heartbeated on a timer,
/// re-inserted (loudly) if a leader swept it while the node was alive, deleted on
/// graceful shutdown. Times are the database's `now()`.
public actor Membership: Service {
    public let identity: NodeIdentity
    let pool: ConnectionPool
    let heartbeatInterval: Duration
    let logger: Logger
    /// Since when heartbeats have succeeded without a gap (nil while failing).
    public private(set) var healthySince: ContinuousClock.Instant?
    /// The same instant in database time: the `now()` of the first heartbeat (or join) of the
    /// current run of successes (nil while failing). Leader duties measure lapses from it.
    public private(set) var healthySinceDatabase: Date?
    public private(set) var heartbeatFailures = 0
    public private(set) var reinsertions = 0

    let metrics: RegentMetrics

    /// Heartbeats run on the leadership thread, never on the cooperative pool.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
    public nonisolated let executor: DedicatedExecutor

    public init(
        identity: NodeIdentity, pool: ConnectionPool, heartbeatInterval: Duration, metrics: RegentMetrics = .discarded,
        logger: Logger = Logger(label: "regent.membership"), executor: DedicatedExecutor = DedicatedExecutor(name: "regent.membership")
    ) {
        self.executor = executor
        self.metrics = metrics
        self.identity = identity
        self.pool = pool
        self.heartbeatInterval = heartbeatInterval
        self.logger = logger
    }

    static func insertInstance(_ n: NodeIdentity) -> PostgresQuery {
        """
        INSERT INTO engine.instances (instance_id, node_name, host, pid, version, modules, http_address, can_signal_backends)
        VALUES (\(n.instanceID), \(n.nodeName), \(n.host), \(Int(n.pid)), \(n.version), \(n.modules)::text[], \(n.httpAddress),
                (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'))
        ON CONFLICT (instance_id) DO UPDATE SET last_heartbeat = now()
        RETURNING last_heartbeat AS at, can_signal_backends
        """
    }
    static func heartbeat(_ id: InstanceID) -> PostgresQuery {
        "UPDATE engine.instances SET last_heartbeat = now() WHERE instance_id = \(id) RETURNING last_heartbeat AS at"
    }
    static func deleteInstance(_ id: InstanceID) -> PostgresQuery {
        """
        WITH gone AS (DELETE FROM engine.instances WHERE instance_id = \(id) RETURNING instance_id, node_name)
        SELECT engine.publish_event('instance.left', jsonb_build_object('instance_id', instance_id::text, 'node_name', node_name), instance_id)
        FROM gone
        """
    }
    static func announceJoin(_ n: NodeIdentity, reinserted: Bool) -> PostgresQuery {
        """
        SELECT engine.publish_event('instance.joined',
            jsonb_build_object('instance_id', \(n.instanceID.uuidString.lowercased())::text, 'node_name', \(n.nodeName)::text,
                               'host', \(n.host)::text, 'pid', \(Int(n.pid))::int, 'reinserted', \(reinserted)::boolean), \(n.instanceID)::uuid)
        """
    }

    /// Inserts the row (boot).
    public func join() async throws {
        let row = try await pool.withTransaction { tx in
            let row = try await tx.query(Self.insertInstance(identity), purpose: "membership: insert instance row").single()
            try await tx.query(Self.announceJoin(identity, reinserted: false), purpose: "membership: announce join")
            return row
        }
        healthySince = .now
        healthySinceDatabase = try row.decode("at", as: Date.self)
        if try !row.decode("can_signal_backends", as: Bool.self) {
            logger.warning(
                "this node's database role is neither superuser nor a member of pg_signal_backend: it can end a frozen leader's session only when that leader runs as a role it belongs to; otherwise failover from a frozen leader waits until PostgreSQL drops the session (GRANT pg_signal_backend TO <role>)")
        }
        logger.info("joined the cluster", metadata: ["instance_id": "\(identity.instanceID)", "node_name": "\(identity.nodeName)"])
    }

    static func canSignal(_ id: InstanceID) -> PostgresQuery {
        "SELECT COALESCE(can_signal_backends, false) AS can FROM engine.instances WHERE instance_id = \(id)"
    }

    /// Whether this node's role may end other roles' sessions (as recorded when it joined).
    public func canSignalBackends() async throws -> Bool {
        try await pool.query(Self.canSignal(identity.instanceID), purpose: "membership: signal privilege").first?.decode("can", as: Bool.self) ?? false
    }

    /// One heartbeat; re-inserts the row if it was swept.
    public func beat() async {
        do {
            let rows = try await pool.query(Self.heartbeat(identity.instanceID), purpose: "membership: heartbeat")
            var at = try rows.first?.decode("at", as: Date.self)
            if rows.isEmpty {
                reinsertions += 1
                logger.error(
                    "this node's instance row was swept while it was alive; re-inserting it (was the database unreachable, or the stale cutoff too short?)",
                    metadata: ["instance_id": "\(identity.instanceID)"])
                at = try await pool.withTransaction { tx in
                    let row = try await tx.query(Self.insertInstance(identity), purpose: "membership: re-insert instance row").single()
                    try await tx.query(Self.announceJoin(identity, reinserted: true), purpose: "membership: announce re-join")
                    return try row.decode("at", as: Date.self)
                }
            }
            if healthySince == nil {
                healthySince = .now
                healthySinceDatabase = at
            }
        } catch {
            heartbeatFailures += 1
            metrics.heartbeatFailures.increment()
            healthySince = nil
            healthySinceDatabase = nil
            logger.warning("heartbeat failed", metadata: ["error": "\(error)"])
        }
    }

    /// Heartbeats until graceful shutdown, then deletes its row; cancelled, it just stops.
    public func run() async {
        try? await cancelWhenGracefulShutdown { [self] in await self.heartbeats() }
        if !Task.isCancelled { await leave() }
    }

    /// Heartbeats until cancelled.
    public func heartbeats() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: heartbeatInterval)
            if Task.isCancelled { break }
            await beat()
        }
    }

    /// Deletes the row (graceful shutdown).
    public func leave() async {
        do {
            try await pool.query(Self.deleteInstance(identity.instanceID), purpose: "membership: delete instance row")
            logger.info("left the cluster", metadata: ["instance_id": "\(identity.instanceID)"])
        } catch {
            logger.warning("could not delete the instance row; the leader will sweep it", metadata: ["error": "\(error)"])
        }
    }

    /// True when heartbeats have succeeded continuously for at least `duration`.
    public func continuouslyHealthy(for duration: Duration) -> Bool {
        guard let healthySince else { return false }
        return ContinuousClock.now - healthySince >= duration
    }
}
