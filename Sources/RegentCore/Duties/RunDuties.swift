import CoreMetrics
import Logging
import PostgresClient

/// Fails runs past their deadline with `deadline_exceeded`, page by page, fenced, with the
/// leader's term in each record and event (`workflow.expire_runs`, sql/workflow/0007 and 0011); and
/// fences step executions of finished runs that a run's finish could not take at the time
/// (recorded in `workflow.run_strays`).
public struct RunDeadlines: LeaderDuty {
    public let name = "run-deadlines"
    let pool: ConnectionPool
    public let interval: Duration
    let pageSize: Int
    let logger: Logger

    public init(pool: ConnectionPool, interval: Duration = .seconds(1), pageSize: Int = 500, logger: Logger = Logger(label: "regent.duty.run-deadlines")) {
        self.pool = pool
        self.interval = interval
        self.pageSize = pageSize
        self.logger = logger
    }

    /// Whether there is anything to do: a run past its deadline (`runs_deadline_idx`), or a
    /// step execution that a run's finish had to leave alone (`run_strays`, sql/workflow 0011).
    /// Two index probes, whatever the number of runs and steps in flight, so an idle cluster's
    /// leader neither scans nor opens a fenced transaction every second.
    static let pending: PostgresQuery = """
        SELECT EXISTS (SELECT 1 FROM workflow.runs WHERE state = 'running' AND deadline <= now())
            OR EXISTS (SELECT 1 FROM workflow.run_strays) AS pending
        """
    /// The same, and a queued run (waiting for its concurrency key) past its deadline
    /// (`run_waiting_deadline_idx`, sql/workflow 0019).
    static let pendingWithQueued: PostgresQuery = """
        SELECT EXISTS (SELECT 1 FROM workflow.runs WHERE state = 'running' AND deadline <= now())
            OR EXISTS (SELECT 1 FROM workflow.run_strays)
            OR EXISTS (SELECT 1 FROM workflow.run_waiting WHERE deadline <= now()) AS pending
        """

    /// One page: how many runs it failed.
    public func expireOnce(fence: LeaderFence) async throws -> Int {
        // Its migration comes after the runs' own (a node newer than the schema waits for it).
        // run_waiting (0019) implies run_strays (0011): one lookup on a current schema.
        let probe: PostgresQuery
        if try await WorkflowSchema.has("workflow.run_waiting", pool) {
            probe = Self.pendingWithQueued
        } else {
            guard try await WorkflowSchema.has("workflow.run_strays", pool) else { return 0 }
            probe = Self.pending
        }
        guard try await pool.query(probe, purpose: "runs: anything past its deadline?").single().decode("pending", as: Bool.self)
        else { return 0 }
        return try await fence.withTransaction(pool) { tx in
            try await tx.query(
                "SELECT workflow.expire_runs(\(pageSize), \(AuditActor.instance(fence.instanceID).description), \(fence.term)::bigint) AS n",
                purpose: "runs: expire deadlines"
            ).single().decode("n", as: Int.self)
        }
    }

    public func runOnce(fence: LeaderFence) async throws -> Bool {
        let n = try await expireOnce(fence: fence)
        if n > 0 { logger.info("failed runs past their deadline", metadata: ["runs": "\(n)", "term": "\(fence.term)"]) }
        return n == pageSize
    }
}

/// Deletes finished runs (with their steps, ledger rows and executions) that finished more
/// than `retention` ago, in pages, fenced. A run that has not finished is never touched.
public struct RunRetention: LeaderDuty {
    public let name = "run-retention"
    let pool: ConnectionPool
    let retention: Duration
    public let interval: Duration
    let pageSize: Int
    let logger: Logger

    public init(
        pool: ConnectionPool, retention: Duration = .seconds(7 * 86_400), interval: Duration = .seconds(30), pageSize: Int = 500,
        logger: Logger = Logger(label: "regent.duty.run-retention")
    ) {
        self.pool = pool
        self.retention = retention
        self.interval = interval
        self.pageSize = pageSize
        self.logger = logger
    }

    public func pruneOnce(fence: LeaderFence) async throws -> Int {
        guard try await WorkflowSchema.has("workflow.runs", pool) else { return 0 }
        let prunesFires = try await WorkflowSchema.has("workflow.schedule_fires", pool)
        return try await fence.withTransaction(pool) { tx in
            // Schedule history goes with the runs it started (same retention), a page at a time.
            if prunesFires {
                try await tx.query(
                    """
                    DELETE FROM workflow.schedule_fires WHERE id = ANY (ARRAY(
                        SELECT id FROM workflow.schedule_fires WHERE fired_at < now() - \(retention)::interval ORDER BY fired_at LIMIT \(pageSize)))
                    """, purpose: "schedules: history retention")
            }
            return try await tx.query("SELECT workflow.prune_runs(\(retention)::interval, \(pageSize)) AS n", purpose: "runs: retention").single()
                .decode("n", as: Int.self)
        }
    }

    public func runOnce(fence: LeaderFence) async throws -> Bool {
        let n = try await pruneOnce(fence: fence)
        if n > 0 { logger.info("pruned finished runs", metadata: ["runs": "\(n)", "term": "\(fence.term)"]) }
        return n == pageSize
    }
}

/// Fires what is due in `workflow.wakeups` (sql/workflow/0016): timers, signal timeouts, and
/// the parent/child hand-offs a transaction could not make at once. Between pages it sleeps
/// until the next due time, read with one index probe, or until a `regent_wakeups`
/// notification rings `bell` (every new wakeup sends one; a reconnected listener rings it too),
/// whichever comes first, and at most `idleProbe`. So a million sleeping runs cost one probe
/// per `idleProbe` while nothing is due, and a due timer fires within milliseconds of its time.
/// Each page is fenced: a deposed leader fires nothing. A run another transaction holds is
/// left for the next page (no waiting; nothing fires twice: the run row and the wakeup's delete
/// decide).
public struct RunTimers: LeaderDuty {
    public let name = "run-timers"
    let pool: ConnectionPool
    let bell: Doorbell?
    /// The runner's pause between rounds: none (a round waits for the next due time itself).
    public let interval = Duration.zero
    let idleProbe: Duration
    let pageSize: Int
    /// Pages fired side by side when wakeups are due.
    let firers: Int
    let metrics: RegentMetrics
    let logger: Logger

    public init(
        pool: ConnectionPool, bell: Doorbell?, idleProbe: Duration = .seconds(10), pageSize: Int = 50, firers: Int = 2,
        metrics: RegentMetrics = .discarded, logger: Logger = Logger(label: "regent.duty.run-timers")
    ) {
        self.metrics = metrics
        self.pool = pool
        self.bell = bell
        self.idleProbe = idleProbe
        self.pageSize = pageSize
        self.firers = min(16, max(1, firers))
        self.logger = logger
    }

    /// Every recorded wakeup notifies this channel (`workflow.add_wakeup`).
    public static let channel = "regent_wakeups"

    /// Milliseconds until the next wakeup is due (negative: overdue by that much), nil when
    /// there is none.
    static let probe: PostgresQuery = """
        SELECT ceil(extract(epoch FROM (min(due_at) - clock_timestamp())) * 1000)::bigint AS ms FROM workflow.wakeups
        """

    public struct Page: Sendable, Hashable {
        public let fired: Int
        /// Due, but their run was held by another transaction: left for the next page.
        public let skipped: Int
        public let nextDueMs: Int64?
    }

    /// The milliseconds until the next due wakeup (0: due now; nil: none, also before the
    /// schema has the table). Records how overdue the oldest due one is.
    public func nextDue() async throws -> Int64? {
        let ms: Int64?
        do {
            ms = try await pool.query(Self.probe, purpose: "runs: next wakeup").single().decodeOptional("ms", as: Int64.self)
        } catch let error as PostgresError where error.sqlState == "42P01" {
            ms = nil  // before sql/workflow/0016: nothing can be due
        }
        metrics.wakeupsOverdue.record(Double(max(0, -(ms ?? 0))) / 1000)
        return ms.map { max(0, $0) }
    }

    /// One fenced page of due wakeups: those of part `part` of `parts` (by wakeup id), so that
    /// pages fired side by side never pick the same ones.
    public func fireOnce(fence: LeaderFence, part: Int = 0, parts: Int = 1) async throws -> Page {
        try await fence.withTransaction(pool) { tx in
            let row = try await tx.query(
                """
                SELECT fired, skipped, next_due_ms FROM workflow.fire_due(
                    \(pageSize), \(AuditActor.instance(fence.instanceID).description), \(fence.term)::bigint, \(part), \(parts))
                """, purpose: "runs: fire due wakeups"
            ).single()
            return Page(fired: try row.decode("fired"), skipped: try row.decode("skipped"), nextDueMs: try row.decodeOptional("next_due_ms"))
        }
    }

    public func runOnce(fence: LeaderFence) async throws -> Bool {
        var next = try await nextDue()
        if next == 0 {
            // Pages side by side, each on its part of the wakeups: a burst of due timers is fired
            // on `firers` connections at once.
            let pages = try await DueTimeDuty.sideBySide(firers) { part in try await fireOnce(fence: fence, part: part, parts: firers) }
            let page = Page(
                fired: pages.map(\.fired).reduce(0, +), skipped: pages.map(\.skipped).reduce(0, +),
                nextDueMs: pages.compactMap(\.nextDueMs).min())
            if page.fired > 0 {
                metrics.wakeupsFired.increment(by: page.fired)
                logger.debug("fired due wakeups", metadata: ["fired": "\(page.fired)", "term": "\(fence.term)"])
            }
            if pages.contains(where: { $0.fired == pageSize }) { return true }
            // Runs held elsewhere (or nothing fired at all): give their holders a moment rather
            // than spin on a due time that cannot be served yet.
            next = page.skipped > 0 || page.fired == 0 ? max(page.nextDueMs ?? 20, 20) : page.nextDueMs
        }
        try await DueTimeDuty.sleep(untilDueIn: next, idleProbe: idleProbe, bell: bell)
        return true
    }
}
