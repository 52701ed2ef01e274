import CoreMetrics
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import PostgresClient
import Prometheus
import RegentCore

/// The admin HTTP API of a node.
///
/// Every answer is JSON (except `/metrics`, Prometheus text, and the event stream, SSE);
/// errors are `{"error": {"code": "...", "message": "..."}}` with the right status. Every
/// `/v1` route needs a bearer token of a sufficient role (``TokenRole``); health and
/// readiness never do, `/metrics` only when `metricsRequireToken` is set. Leader status is
/// read from the database, so every node answers the same; the one leader-only action,
/// resign, is answered 409 with the leader's address on a follower (not forwarded).
/// The routes and their roles are ``routeTable()``; docs/openapi.yaml describes them.
public struct AdminAPI: Sendable {
    public struct Options: Sendable {
        public var staleAfter: Duration = .seconds(10)
        /// Put `/metrics` behind a token (role read) instead of leaving it open for scrapers.
        public var metricsRequireToken = false
        /// Failed authentications from one address within 10 s after which it gets 429 until the window ends.
        public var authFailureLimit = 50
        /// How often an idle event stream sends a keep-alive comment.
        public var eventStreamKeepAlive: Duration = .seconds(15)
        /// A connection with no request in progress for this long is closed (a silent client,
        /// or one that trickles a request head: slowloris).
        public var idleTimeout: Duration = .seconds(30)
        /// Open connections beyond this are closed at once.
        public var maxConnections = 512
        /// What a deployed package may hold (and so how large a deploy body may be).
        public var packageLimits = PackageLimits.default
        /// The vault's keys on this node; nil: vault routes that need a key answer 503 `vault_sealed`.
        public var vaultKeyring: VaultKeyring? = nil
        public init(
            staleAfter: Duration = .seconds(10), metricsRequireToken: Bool = false, authFailureLimit: Int = 50,
            idleTimeout: Duration = .seconds(30), maxConnections: Int = 512, packageLimits: PackageLimits = .default,
            vaultKeyring: VaultKeyring? = nil
        ) {
            self.packageLimits = packageLimits
            self.vaultKeyring = vaultKeyring
            self.staleAfter = staleAfter
            self.metricsRequireToken = metricsRequireToken
            self.authFailureLimit = authFailureLimit
            self.idleTimeout = idleTimeout
            self.maxConnections = maxConnections
        }
    }

    /// Request bodies above this size are refused (413).
    public static let maxBodyBytes = 256 * 1024

    public let pool: ConnectionPool
    public let node: RegentNode?
    public let options: Options
    /// Where this node's metrics live (the node's ``RegentMetrics`` must come from it too).
    public let registry: PrometheusCollectorRegistry
    let authFailures: AuthFailureLog
    let poolGauges: PoolGauges
    let flowGauges: FlowGauges
    let modules: ModuleGate
    let vaultModule: ModuleGate
    let connections: ConnectionCounter
    let sharedCluster: SharedRead<ClusterDocument>
    let sharedQueues: SharedRead<QueueOverview>
    let sharedRuns: SharedReads<String, RunStore.Run?>
    let sharedWorkers: SharedRead<WorkersSnapshot>

    public init(pool: ConnectionPool, node: RegentNode?, registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
                options: Options = Options()) {
        self.pool = pool
        self.node = node
        self.options = options
        self.registry = registry
        let factory = PrometheusMetricsFactory(registry: registry)
        self.authFailures = AuthFailureLog(
            pool: pool, throttleAfter: options.authFailureLimit,
            throttled: CoreMetrics.Counter(label: "regent_http_throttled_total", factory: factory))
        self.poolGauges = PoolGauges(factory: factory)
        self.flowGauges = FlowGauges(factory: factory)
        self.modules = ModuleGate(pool: pool, module: "workflow")
        self.vaultModule = ModuleGate(pool: pool, module: "vault")
        self.connections = ConnectionCounter(limit: options.maxConnections)
        let staleAfter = options.staleAfter
        self.sharedCluster = SharedRead(maxAge: Self.sharedReadMaxAge) {
            try await Self.readCluster(pool: pool, staleAfter: staleAfter, node: node)
        }
        self.sharedQueues = SharedRead(maxAge: Self.sharedReadMaxAge) {
            try await pool.withConnection { try await QueueOverview.read(on: $0) }
        }
        self.sharedWorkers = SharedRead(maxAge: Self.sharedReadMaxAge) {
            try await pool.withConnection { try await WorkersSnapshot.read(on: $0) }
        }
        self.sharedRuns = SharedReads(maxAge: Self.sharedReadMaxAge) { id in
            try await pool.withConnection { try await RunStore().get(id, on: $0) }
        }
    }

    var staleAfter: Duration { options.staleAfter }

    /// Metrics for a node served by an API built on `registry`.
    public static func nodeMetrics(registry: PrometheusCollectorRegistry) -> RegentMetrics {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets[RegentMetrics.Name.failoverSeconds] = [
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
            .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30),
        ]
        return RegentMetrics(factory: factory)
    }

    /// One served route: method, path in OpenAPI form, and the least role it needs (nil: open).
    public struct Route: Sendable, Hashable, CustomStringConvertible {
        public let method: String
        public let path: String
        public let role: TokenRole?
        public var description: String { "\(method) \(path)" }
    }

    /// Every route this API serves, from the same code that builds the router.
    public func routeTable() -> [Route] { build().routes }

    public func router() -> Router<RegentRequestContext> { build().router }

    private func build() -> RouteRegistrar {
        let index = RouteIndex()
        let r = RouteRegistrar(authenticator: Authenticator(pool: pool, failures: authFailures), index: index)
        r.router.add(middleware: JSONErrorMiddleware(routes: index))
        ConsoleFiles.register(on: r.router)
        r.add(.get, "/healthz", role: nil) { _, _ in try json(["status": "ok"]) }
        r.add(.get, "/readyz", role: nil) { _, _ in try await readiness() }
        r.add(.get, "/metrics", role: options.metricsRequireToken ? .read : nil) { _, _ in try await metrics() }
        r.add(.get, "/v1/leader", role: .read) { _, _ in try await leader() }
        r.add(.post, "/v1/leader/resign", role: .admin) { _, _ in try await resign() }
        r.add(.get, "/v1/whoami", role: .read) { _, context in try whoami(context) }
        r.add(.get, "/v1/cluster", role: .read) { _, _ in try await cluster() }
        r.add(.get, "/v1/migrations", role: .read) { _, _ in try await migrations() }
        r.add(.get, "/v1/instances", role: .read) { _, _ in
            try json(try await clusterStatus().instances)
        }
        r.add(.get, "/v1/modules", role: .read) { _, _ in
            try json(try await pool.withConnection { try await ModuleRegistry().list(on: $0) })
        }
        r.add(.post, "/v1/modules/{name}/enable", role: .admin) { _, context in try await setModule(context, enabled: true) }
        r.add(.post, "/v1/modules/{name}/disable", role: .admin) { _, context in try await setModule(context, enabled: false) }
        r.add(.get, "/v1/audit", role: .read) { request, _ in try await audit(request) }
        r.add(.get, "/v1/events", role: .read) { request, _ in try await eventStream(request) }
        r.add(.post, "/v1/events", role: .worker) { request, context in try await publishEvent(request, context) }
        // The workflow module's routes answer 503 module_disabled while it is disabled.
        let workflow = modules
        r.add(.get, "/v1/workers", role: .read) { request, _ in try await workflow.require(); return try await listWorkers(request) }
        r.add(.post, "/v1/workers/register", role: .worker) { request, context in try await workflow.require(); return try await registerWorker(request, context) }
        r.add(.post, "/v1/workers/heartbeat", role: .worker) { request, context in try await workflow.require(); return try await heartbeatWorker(request, context) }
        r.add(.post, "/v1/workers/deregister", role: .worker) { request, context in try await workflow.require(); return try await deregisterWorker(request, context) }
        r.add(.post, "/v1/leases/claim", role: .worker) { request, context in try await workflow.require(); return try await claim(request, context) }
        r.add(.post, "/v1/leases/renew", role: .worker) { request, context in try await workflow.require(); return try await renew(request, context) }
        r.add(.post, "/v1/leases/complete", role: .worker) { request, context in try await workflow.require(); return try await complete(request, context) }
        r.add(.post, "/v1/leases/fail", role: .worker) { request, context in try await workflow.require(); return try await fail(request, context) }
        r.add(.post, "/v1/leases/complete-batch", role: .worker) { request, context in try await workflow.require(); return try await completeBatch(request, context) }
        r.add(.post, "/v1/leases/complete-and-claim", role: .worker) { request, context in try await workflow.require(); return try await completeAndClaim(request, context) }
        r.add(.post, "/v1/leases/fail-batch", role: .worker) { request, context in try await workflow.require(); return try await failBatch(request, context) }
        r.add(.post, "/v1/executions", role: .worker) { request, context in try await workflow.require(); return try await enqueue(request, context) }
        r.add(.post, "/v1/executions/{id}/cancel", role: .worker) { _, context in try await workflow.require(); return try await cancel(context) }
        r.add(.post, "/v1/packages", role: .admin) { request, context in try await workflow.require(); return try await deployPackage(request, context) }
        r.add(.get, "/v1/packages", role: .read) { request, _ in try await workflow.require(); return try await listPackages(request) }
        r.add(.get, "/v1/packages/{hash}", role: .read) { request, context in try await workflow.require(); return try await showPackage(request, context) }
        r.add(.get, "/v1/packages/{hash}/archive", role: .worker) { request, context in try await workflow.require(); return try await fetchPackage(request, context) }
        r.add(.post, "/v1/packages/{hash}/route", role: .admin) { request, context in try await workflow.require(); return try await routePackage(request, context) }
        r.add(.post, "/v1/packages/{hash}/unload", role: .admin) { request, context in try await workflow.require(); return try await unloadPackage(request, context) }
        r.add(.post, "/v1/runs", role: .worker) { request, context in try await workflow.require(); return try await startRun(request, context) }
        r.add(.get, "/v1/runs", role: .read) { request, _ in try await workflow.require(); return try await listRuns(request) }
        r.add(.get, "/v1/runs/{id}", role: .read) { _, context in try await workflow.require(); return try await showRun(context) }
        r.add(.post, "/v1/runs/{id}/cancel", role: .worker) { request, context in try await workflow.require(); return try await cancelRun(request, context) }
        r.add(.post, "/v1/runs/{id}/retry", role: .worker) { request, context in try await workflow.require(); return try await retryRun(request, context) }
        r.add(.post, "/v1/runs/{id}/signals/{name}", role: .worker) { request, context in try await workflow.require(); return try await signalRun(request, context) }
        r.add(.get, "/v1/leases/expired", role: .read) { request, _ in try await workflow.require(); return try await expiredLeases(request) }
        r.add(.get, "/v1/leases", role: .read) { request, _ in try await workflow.require(); return try await currentLeases(request) }
        r.add(.get, "/v1/leases/decisions", role: .read) { request, _ in try await workflow.require(); return try await leaseDecisions(request) }
        r.add(.get, "/v1/queues", role: .read) { _, _ in try await workflow.require(); return try await queues() }
        r.add(.get, "/v1/schedules", role: .read) { request, _ in try await workflow.require(); return try await listSchedules(request) }
        r.add(.post, "/v1/schedules", role: .admin) { request, context in try await workflow.require(); return try await createSchedule(request, context) }
        r.add(.get, "/v1/schedules/{name}", role: .read) { _, context in try await workflow.require(); return try await showSchedule(context) }
        r.add(.delete, "/v1/schedules/{name}", role: .admin) { _, context in try await workflow.require(); return try await deleteSchedule(context) }
        r.add(.post, "/v1/schedules/{name}/pause", role: .admin) { _, context in try await workflow.require(); return try await pauseSchedule(context, paused: true) }
        r.add(.post, "/v1/schedules/{name}/resume", role: .admin) { _, context in try await workflow.require(); return try await pauseSchedule(context, paused: false) }
        r.add(.post, "/v1/schedules/{name}/trigger", role: .admin) { request, context in try await workflow.require(); return try await triggerSchedule(request, context) }
        r.add(.get, "/v1/lanes", role: .read) { _, _ in try await workflow.require(); return try await listLanes() }
        r.add(.put, "/v1/lanes/{namespace}/{lane}", role: .admin) { request, context in try await workflow.require(); return try await setLane(request, context) }
        r.add(.delete, "/v1/lanes/{namespace}/{lane}", role: .admin) { _, context in try await workflow.require(); return try await clearLane(context) }
        r.add(.post, "/v1/workers/mark-dead", role: .admin) { request, context in try await workflow.require(); return try await markWorkerDead(request, context) }
        let vault = vaultModule
        r.add(.get, "/v1/vault/status", role: .read) { _, _ in try await vault.require(); return try await vaultStatus() }
        r.add(.get, "/v1/vault/secrets", role: .read) { request, _ in try await vault.require(); return try await listSecrets(request) }
        r.add(.get, "/v1/vault/secret", role: .admin) { request, context in try await vault.require(); return try await getSecret(request, context) }
        r.add(.put, "/v1/vault/secret", role: .admin) { request, context in try await vault.require(); return try await putSecret(request, context) }
        r.add(.delete, "/v1/vault/secret", role: .admin) { request, context in try await vault.require(); return try await removeSecret(request, context) }
        r.add(.get, "/v1/vault/metadata", role: .read) { request, _ in try await vault.require(); return try await secretMetadata(request) }
        r.add(.post, "/v1/vault/versions/delete", role: .admin) { request, context in try await vault.require(); return try await changeSecretVersions(request, context, .delete) }
        r.add(.post, "/v1/vault/versions/undelete", role: .admin) { request, context in try await vault.require(); return try await changeSecretVersions(request, context, .undelete) }
        r.add(.post, "/v1/vault/versions/destroy", role: .admin) { request, context in try await vault.require(); return try await changeSecretVersions(request, context, .destroy) }
        r.add(.post, "/v1/vault/lease-read", role: .worker) { request, context in
            try await vault.require()
            try await workflow.require()
            return try await leaseReadSecret(request, context)
        }
        return r
    }

    /// Serves the API on `host:port` until the calling task is cancelled.
    public func serve(host: String, port: Int) async throws {
        try await application(host: host, port: port).runService(gracefulShutdownSignals: [])
    }

    /// An application serving the API on `host:port`, over HTTPS when `tls` is given.
    public func application(host: String, port: Int, tls: AdminTLS? = nil, logger: Logger = Logger(label: "regent.http")) -> some ApplicationProtocol {
        let connections = self.connections
        let idle = options.idleTimeout.components
        let http1 = HTTP1Channel.Configuration(
            additionalChannelHandlers: [connections.handler(), CloseAfterRefusal()],
            idleTimeout: .nanoseconds(idle.seconds * 1_000_000_000 + idle.attoseconds / 1_000_000_000))
        return Application(
            router: router(),
            server: tls.map { $0.serverBuilder(http1) } ?? .http1(configuration: http1),
            configuration: .init(address: .hostname(host, port: port), serverName: "regent"), logger: logger)
    }

    /// Each enabled module's schema: what is applied against what this binary knows.
    func schemaStatuses() async throws -> [SchemaStatus] {
        try await pool.withConnection { conn in
            let enabled = try await ModuleRegistry().enabledSchemas(on: conn)
            return try await MigrationRunner(appliedBy: "").status(on: conn, schemas: enabled)
        }
    }

    func readiness() async throws -> Response {
        do {
            let schemas = try await schemaStatuses()
            let behind = schemas.filter { !$0.isCurrent }
            guard behind.isEmpty else {
                let list = behind.map { "\($0.schema) at \($0.appliedVersion) of \($0.knownVersion)" + ($0.floor > $0.knownVersion ? " (floor \($0.floor))" : "") }
                    .joined(separator: ", ")
                return try unavailableResponse("schema_not_current", "schemas not current: \(list)")
            }
            return try json(["ready": true])
        } catch {
            return try unavailableResponse("database_unreachable", "database not reachable: \(error)")
        }
    }

    struct LeaderDocument: Encodable {
        let status: ClusterStatus
        let selfIsLeader: Bool
        func encode(to encoder: any Encoder) throws {
            try status.encode(to: encoder)
            var c = encoder.container(keyedBy: Key.self)
            try c.encode(selfIsLeader, forKey: .selfIsLeader)
        }
        enum Key: String, CodingKey { case selfIsLeader = "self_is_leader" }
    }

    func leader() async throws -> Response {
        let status = try await clusterStatus()
        let me = node?.instanceID
        return try json(LeaderDocument(status: status, selfIsLeader: me != nil && status.leader?.instanceID == me))
    }

    struct AuditRow: Encodable {
        let id: Int64
        let at: Date
        let actor: String
        let action: String
        let term: Term?
        let instanceID: InstanceID?
        let detail: AnyJSON
        enum CodingKeys: String, CodingKey { case id, at, actor, action, term, instanceID = "instance_id", detail }
    }

    /// Oldest first after `after`; with `before`, newest first (the console's paging), down to
    /// `after` when it is given too (a window).
    func audit(_ request: Request) async throws -> Response {
        let after = try afterID(request) ?? 0
        let limit = try limit(request)
        let page: [AuditLog.Row]
        if let before = try queryInt64(request, "before", range: 1...Int64.max, code: "invalid_cursor") {
            page = try await AuditLog.page(before: before, after: after, limit: limit, on: pool)
        } else {
            page = try await AuditLog.page(after: after, limit: limit, on: pool)
        }
        let rows = page.map { row in
            AuditRow(
                id: row.id, at: row.at, actor: row.actor, action: row.action, term: row.term, instanceID: row.instanceID,
                detail: AnyJSON(text: row.detailJSON))
        }
        return try json(["items": rows])
    }

    /// An operator's change through the API, in `engine.audit` under the token's name, after the
    /// change committed (the change is also recorded where it happened: the run's finished_by, the
    /// signal's sent_by, the route's routed_by, the worker's dead_reason).
    func recordAudit(_ action: String, _ context: RegentRequestContext, _ detail: [String: String]) async throws {
        try await AuditLog.record(action, actor: .named(context.actor), detail: detail, on: pool)
    }

    func resign() async throws -> Response {
        guard let node else { throw APIError.conflict("not_a_node", "this process runs no node") }
        if await node.resign() { return try json(["resigning": true], status: .accepted) }
        let status = try await clusterStatus()
        guard let leader = status.leader else {
            throw APIError.conflict("not_leader", "this node is not the leader and no leader is elected right now; retry shortly")
        }
        let whereTo = leader.httpAddress.map { "http://\($0)/v1/leader/resign" } ?? "that node (it serves no HTTP API: use SIGTERM or regent drill)"
        throw APIError.conflict(
            "not_leader", "this node is not the leader; the leader is \(leader.nodeName ?? leader.instanceID.uuidString.lowercased()): send the request to \(whereTo)")
    }
}
