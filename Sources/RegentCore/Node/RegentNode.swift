import Foundation
import Logging
import PostgresClient
import ServiceLifecycle

/// One `regent serve` process: boot, membership, leadership and leader duties, until
/// `shutdown()`.
///
/// Schema policy: the node bootstraps the engine schema itself (under the migration
/// lock, before the election, which needs its tables); module schemas are migrated by
/// the leader, fenced. A follower waits until the schemas it needs are current.
public actor RegentNode: Service {
    public nonisolated let configuration: NodeConfiguration
    public private(set) var identity: NodeIdentity
    /// This process start's identity (fixed for the node's life).
    public nonisolated let instanceID: InstanceID
    let logger: Logger
    /// What this node records (elections, heartbeats, events, sweeps); read by `/metrics`.
    public nonisolated let metrics: RegentMetrics
    /// The node's one pool (duties, heartbeats, events, and the HTTP API when it serves one),
    /// created here so the API can share it before the node boots.
    public nonisolated let pool: ConnectionPool
    private var membership: Membership?
    private var elector: LeaderElector?
    private var bus: EventBus?
    private var hungLeaderWatch: HungLeaderWatch?
    private var waker: QueueWaker?
    /// This node's verified package versions and routes, kept current by the bus.
    public nonisolated let packageCatalog: PackageCatalog
    private var shuttingDown = false
    /// The node's parts, once it has booted (see `run`).
    private var services: ServiceGroup?

    public init(configuration: NodeConfiguration, metrics: RegentMetrics = .discarded, logger: Logger = Logger(label: "regent.node")) {
        self.metrics = metrics
        self.configuration = configuration
        let identity = NodeIdentity(nodeName: configuration.nodeName, httpAddress: configuration.httpAddress)
        self.identity = identity
        self.instanceID = identity.instanceID
        self.logger = logger
        self.packageCatalog = PackageCatalog(logger: logger)
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

    /// Boots, joins, and runs until `shutdown()` or graceful shutdown of the service group it
    /// runs in (which then drains it the same way). Returns after a graceful stop.
    public func run() async throws {
        var failure: (any Error)?
        await runUntilGracefulShutdown(
            {
                do { try await runParts() } catch { failure = error }
            }, onShutdown: { [weak self] in await self?.shutdown() })
        if let failure { throw failure }
    }

    private func runParts() async throws {
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

        // Worker and lease lapses count only reachable database (see WorkerTTLSweep).
        let reachableSince: @Sendable () async -> Date? = { await membership.healthySinceDatabase }
        // Rung by the bus's `regent_wakeups` notifications: the timer duty's wake-up.
        let wakeupBell = Doorbell()
        // Rung by `regent_schedules` notifications: the schedule duty's wake-up.
        let scheduleBell = Doorbell()
        let duties = DutyRunner(duties: [
            ModuleMigrationDuty(pool: pool),
            StaleInstanceCleanup(pool: pool, membership: membership, staleAfter: configuration.staleAfter, metrics: metrics),
            EventOutboxPruning(pool: pool, retention: configuration.eventRetention),
            WorkerTTLSweep(pool: pool, reachableSince: reachableSince),
            LeaseExpiryScanner(pool: pool, reachableSince: reachableSince, metrics: metrics),
            QueueRetention(pool: pool, retention: configuration.executionRetention),
            QueueVacuum(pool: pool),
            RunDeadlines(pool: pool),
            RunTimers(pool: pool, bell: wakeupBell, metrics: metrics),
            ScheduleFiring(pool: pool, bell: scheduleBell, publisher: identity.instanceID.uuid, metrics: metrics),
            RunRetention(pool: pool, retention: configuration.runRetention),
        ], metrics: metrics)
        let elector = LeaderElector(
            instanceID: identity.instanceID, configuration: configuration.database,
            options: .init(leaseWindow: configuration.leaseWindow), duties: duties, metrics: metrics, executor: leadership)
        self.elector = elector
        let watch = HungLeaderWatch(
            instanceID: identity.instanceID, pool: pool, staleAfter: configuration.staleAfter,
            isHealthy: { await membership.continuouslyHealthy(for: $0) }, isLeader: { await elector.isLeader }, metrics: metrics)
        self.hungLeaderWatch = watch
        // The queue's announcements ride on the bus's LISTEN session: no extra backend.
        let waker = QueueWaker(configuration: configuration.database)
        self.waker = waker
        let bus = EventBus(
            configuration: configuration.database, pool: pool, publisher: identity.instanceID.uuid, metrics: metrics, queueWaker: waker,
            wakeupBell: wakeupBell, scheduleBell: scheduleBell)
        self.bus = bus

        // One ordered group: started in this order, shut down in reverse — the listener and
        // the watch stop, the elector resigns (its duties stop first), membership deletes the
        // instance row, and the pool closes last. Leadership, heartbeats and the watch prefer
        // the leadership thread, so request handling that saturates the cooperative pool
        // cannot delay them.
        func part(_ service: some Service, _ name: String, ignoreSuccess: Bool = false) -> ServiceGroupConfiguration.ServiceConfiguration {
            .init(
                service: service, successTerminationBehavior: ignoreSuccess ? .ignore : .gracefullyShutdownGroup,
                failureTerminationBehavior: .gracefullyShutdownGroup, serviceName: name)
        }
        let group = ServiceGroup(configuration: .init(
            services: [
                part(pool, "pool"),
                part(OnExecutor(service: membership, executor: leadership), "membership"),
                part(OnExecutor(service: elector, executor: leadership), "elector"),
                part(OnExecutor(service: watch, executor: leadership), "frozen-leader-watch"),
                part(bus.listenerService, "event-listener"),
                part(PackageCatalogService(catalog: packageCatalog, bus: bus, pool: pool), "package-catalog", ignoreSuccess: true),
                part(SchemaWait(node: self), "schema-wait", ignoreSuccess: true),
            ],
            logger: logger))
        services = group
        if shuttingDown { await group.triggerGracefulShutdown() }
        logger.notice("node started", metadata: [
            "instance_id": "\(identity.instanceID)", "node_name": "\(identity.nodeName)", "pid": "\(identity.pid)",
        ])
        try await group.run()
        logger.notice("node stopped", metadata: ["instance_id": "\(identity.instanceID)"])
    }

    /// Graceful stop: duties off, leadership released (announced), instance row deleted.
    public func shutdown() async {
        guard !shuttingDown else { return }
        shuttingDown = true
        await services?.triggerGracefulShutdown()
    }
    /// Wakes this node's waiting claims (long-polls) when work is enqueued (see ``QueueWaker``).
    public var queueWaker: QueueWaker? { waker }

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

    /// The release the current leader runs (no row: no leader).
    static let leaderRelease: PostgresQuery = """
        SELECT i.version FROM engine.leadership l JOIN engine.instances i ON i.instance_id = l.leader_instance WHERE l.id = 1
        """

    /// A follower waits for the leader to migrate the enabled module schemas.
    func waitForSchemas() async {
        let pool = self.pool
        let actor = AuditActor.instance(identity.instanceID).description
        let deadline = ContinuousClock.now + configuration.schemaWaitTimeout
        var warned = false
        var named = Set<String>()
        while !Task.isCancelled, !shuttingDown {
            do {
                let (current, manual) = try await pool.withConnection { conn in
                    let schemas = try await ModuleRegistry().enabledSchemas(on: conn)
                    let runner = MigrationRunner.node(appliedBy: actor)
                    if try await runner.status(on: conn, schemas: schemas).allSatisfy(\.isCurrent) { return (true, [Migration]()) }
                    // While the leader runs another release (a rollout: it may not know these
                    // files), a node applies a module schema's pending migrations itself when
                    // every one of them is an expand, or creates a schema that does not exist yet
                    // (docs/operations.md, "Rolling upgrades"); only when no runner holds the lock,
                    // never queued behind one. A leader of this release migrates on its own.
                    let leaderRelease = try await conn.query(Self.leaderRelease, purpose: "schemas: the leader's release").first?
                        .decodeOptional("version", as: String.self)
                    var applied = try await runner.applied(on: conn)
                    let expandable = leaderRelease.map { $0 != RegentVersion.current } == true
                        ? try runner.expandable(applied: applied, schemas: schemas.filter { $0 != "engine" }) : []
                    if !expandable.isEmpty, let ran = try await runner.migrateIfIdle(on: conn, schemas: expandable), !ran.isEmpty {
                        logger.notice(
                            "applied module schema migrations the leader's release does not know (expands, or a new schema)",
                            metadata: ["schemas": "\(expandable.joined(separator: ","))", "files": "\(ran.count)"])
                        if try await runner.status(on: conn, schemas: schemas).allSatisfy(\.isCurrent) { return (true, []) }
                        applied = try await runner.applied(on: conn)
                    }
                    return (false, try runner.heldForOperator(applied: applied, schemas: schemas))
                }
                if current {
                    logger.info("schemas current; node ready")
                    return
                }
                // A file no node applies to a live database: say once which, and what to run.
                for file in manual where named.insert(file.description).inserted {
                    let effect = file.effects.first { $0.onHotTable && ($0.rewrites || $0.scans) }.map { "\($0)" } ?? "a hot table"
                    logger.error(
                        "migration \(file) waits for an operator: it holds \(effect), which nodes do not do to a live database; run `regent migrate --database-url …` at a quiet moment (docs/operations.md, \"Rolling upgrades\")",
                        metadata: ["migration": "\(file)"])
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

/// A follower waits for the leader to migrate the enabled module schemas, then ends (or
/// on graceful shutdown).
struct SchemaWait: Service {
    let node: RegentNode
    func run() async {
        try? await cancelWhenGracefulShutdown { [node] in await node.waitForSchemas() }
    }
}
