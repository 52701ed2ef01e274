import Foundation
import Logging
import PostgresClient

/// One `regent serve` process: boot, membership, leadership and leader duties, until
/// `shutdown()`.
///
/// Schema policy: the node bootstraps the engine schema itself (under the migration
/// lock, before the election, which needs its tables); module schemas are migrated by
/// the leader, fenced. A follower waits until the schemas it needs are current.
public actor RegentNode {
    public nonisolated let configuration: NodeConfiguration
    public private(set) var identity: NodeIdentity
    /// This process start's identity (fixed for the node's life).
    public nonisolated let instanceID: UUID
    let logger: Logger
    /// What this node records (elections, heartbeats, events, sweeps); read by `/metrics`.
    public nonisolated let metrics: RegentMetrics
    /// The node's one pool (duties, heartbeats, events, and the HTTP API when it serves one),
    /// created here so the API can share it before the node boots.
    public nonisolated let pool: ConnectionPool
    private var membership: Membership?
    private var elector: LeaderElector?
    private var duties: DutyRunner?
    private var bus: EventBus?
    private var hungLeaderWatch: HungLeaderWatch?
    private var shuttingDown = false
    private let stopped = Doorbell()

    public init(configuration: NodeConfiguration, metrics: RegentMetrics = .discarded, logger: Logger = Logger(label: "regent.node")) {
        self.metrics = metrics
        self.configuration = configuration
        let identity = NodeIdentity(nodeName: configuration.nodeName, httpAddress: configuration.httpAddress)
        self.identity = identity
        self.instanceID = identity.instanceID
        self.logger = logger
        self.pool = ConnectionPool(
            configuration: configuration.database,
            options: .init(maxConnections: configuration.maxConnections, idleTimeout: configuration.poolIdleTimeout, minIdle: 1))
    }

    /// True once `shutdown()` was called: the node is handing over and takes no new work.
    public var isDraining: Bool { shuttingDown }
    public var isLeader: Bool { get async { await elector?.isLeader ?? false } }
    public var currentFence: LeaderFence? { get async { await elector?.currentFence } }
    public var leaderElector: LeaderElector? { elector }
    public var connectionPool: ConnectionPool? { pool }
    public var membershipService: Membership? { membership }
    /// This node's event bus: one LISTEN connection shared by every subscription in the process.
    public var eventBus: EventBus? { bus }

    /// Boots, joins, and runs until `shutdown()`. Returns after a graceful stop.
    public func run() async throws {
        try configuration.validate()
        try await refuseTransactionPooling()
        let boot = try await bootWithRetry()
        // Connections open on demand (no prewarming: an idle follower holds as few as it can).
        identity.modules = boot.enabledSchemas
        // This node's leadership thread: its elector, heartbeats and frozen-leader watch.
        let leadership = DedicatedExecutor(name: "regent.leadership")
        let membership = Membership(
            identity: identity, pool: pool, heartbeatInterval: configuration.heartbeatInterval, metrics: metrics, executor: leadership)
        self.membership = membership
        try await membership.join()

        let staleCleanup = StaleInstanceCleanup(pool: pool, membership: membership, staleAfter: configuration.staleAfter, metrics: metrics)
        let migrations = ModuleMigrationDuty(pool: pool)
        let electorBox = ElectorBox()
        let pruning = EventOutboxPruning(pool: pool, retention: configuration.eventRetention)
        // Worker and lease lapses count only reachable database (see WorkerTTLSweep).
        let reachableSince: @Sendable () async -> Date? = { await membership.healthySinceDatabase }
        let duties = DutyRunner(duties: [
            migrations, staleCleanup, pruning, WorkerTTLSweep(pool: pool, reachableSince: reachableSince),
            LeaseExpiryScanner(pool: pool, reachableSince: reachableSince, metrics: metrics),
        ], metrics: metrics) { [logger] reason in
            logger.error("a leader duty keeps failing; resigning so another node can try", metadata: ["reason": "\(reason)"])
            _ = await electorBox.elector?.requestResign()
        }
        self.duties = duties
        let elector = LeaderElector(
            instanceID: identity.instanceID, configuration: configuration.database,
            options: .init(leaseWindow: configuration.leaseWindow),
            hooks: .init(
                elected: { fence in await duties.start(fence) },
                demoted: { _, _ in await duties.stop() }),
            metrics: metrics, executor: leadership)
        await electorBox.set(elector)
        self.elector = elector
        let watch = HungLeaderWatch(
            instanceID: identity.instanceID, pool: pool, staleAfter: configuration.staleAfter,
            isHealthy: { await membership.continuouslyHealthy(for: $0) }, isLeader: { await elector.isLeader }, metrics: metrics)
        self.hungLeaderWatch = watch
        let bus = EventBus(configuration: configuration.database, pool: pool, publisher: identity.instanceID, metrics: metrics)
        self.bus = bus
        logger.notice("node started", metadata: [
            "instance_id": "\(identity.instanceID)", "node_name": "\(identity.nodeName)", "pid": "\(identity.pid)",
        ])

        await withTaskGroup(of: Void.self) { group in
            // Leadership, heartbeats and the frozen-leader watch prefer the leadership thread, so
            // request handling that saturates the cooperative pool cannot delay them.
            group.addTask(executorPreference: leadership) { await membership.run() }
            group.addTask(executorPreference: leadership) { await elector.run() }
            group.addTask(executorPreference: leadership) { await watch.run() }
            group.addTask { [self] in await self.waitForSchemas() }
            group.addTask { await bus.run() }
            // Park here until shutdown() rings.
            _ = await stopped.wait(upTo: .seconds(86_400 * 365))
            // Let the elector resign and disconnect before anything is cancelled: cancelling
            // it would cancel the resignation statement itself.
            await elector.stop()
            await elector.waitUntilFinished()
            bus.stop()
            group.cancelAll()
        }
        await duties.stop()
        await membership.leave()
        await pool.shutdown()
        logger.notice("node stopped", metadata: ["instance_id": "\(identity.instanceID)"])
    }

    /// Graceful stop: duties off, leadership released (announced), instance row deleted.
    public func shutdown() async {
        guard !shuttingDown else { return }
        shuttingDown = true
        await stopped.ring()
    }

    /// Ends a frozen leader's session when this node is a follower (see ``HungLeaderWatch``).
    public var frozenLeaderWatch: HungLeaderWatch? { hungLeaderWatch }

    /// The lock session and the listener need one server session each: behind a
    /// transaction-mode pooler neither can work, so the node refuses to start, saying why.
    private func refuseTransactionPooling() async throws {
        var delay = Duration.milliseconds(200)
        while true {
            do {
                let probe = try await PostgresConnection.connect(configuration.database, requireSession: true)
                await probe.close()
                return
            } catch let error as PostgresError where error.code == .sessionNotPinned {
                logger.critical("refusing to start: the database URL goes through a transaction-mode pooler", metadata: ["error": "\(error)"])
                throw error
            } catch {
                if configuration.failFast || shuttingDown { throw error }
                logger.warning("cannot reach the database yet; retrying", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
    }

    /// Steps down as leader (if leading); another node takes over.
    public func resign() async -> Bool { await elector?.requestResign() ?? false }

    private func bootWithRetry() async throws -> BootResult {
        var delay = Duration.milliseconds(200)
        while true {
            do {
                var options = Boot.Options(
                    database: configuration.database, actor: AuditActor.instance(identity.instanceID).description, migrateModules: false)
                options.existingPool = pool
                return try await Boot(options: options).run()
            } catch let error as RegentError where error.code != .bootFailed {
                throw error  // newer database, changed checksum: retrying cannot help
            } catch {
                if configuration.failFast || shuttingDown { throw error }
                logger.warning("cannot boot yet; retrying", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
    }

    /// A follower waits for the leader to migrate the enabled module schemas.
    private func waitForSchemas() async {
        let pool = self.pool
        let deadline = ContinuousClock.now + configuration.schemaWaitTimeout
        var warned = false
        while !Task.isCancelled, !shuttingDown {
            do {
                let current = try await pool.withConnection { conn in
                    let schemas = try await ModuleRegistry().enabledSchemas(on: conn)
                    return try await MigrationRunner(appliedBy: "").status(on: conn, schemas: schemas).allSatisfy { $0.isCurrent }
                }
                if current {
                    logger.info("schemas current; node ready")
                    return
                }
            } catch {
                logger.warning("cannot check schema status", metadata: ["error": "\(error)"])
            }
            if ContinuousClock.now >= deadline, !warned {
                warned = true
                logger.error("module schemas are still not current after \(configuration.schemaWaitTimeout); is a leader running? (`regent status`)")
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
    }
}

/// Lets the duty runner reach the elector that is created after it.
actor ElectorBox {
    var elector: LeaderElector?
    func set(_ e: LeaderElector) { elector = e }
}
