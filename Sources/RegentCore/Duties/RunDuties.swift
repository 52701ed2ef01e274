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

    /// One page: how many runs it failed.
    public func expireOnce(fence: LeaderFence) async throws -> Int {
        // Its migration comes after the runs' own (a node newer than the schema waits for it).
        guard try await WorkflowSchema.has("workflow.run_strays", pool),
            try await pool.query(Self.pending, purpose: "runs: anything past its deadline?").single().decode("pending", as: Bool.self)
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
        return try await fence.withTransaction(pool) { tx in
            try await tx.query("SELECT workflow.prune_runs(\(retention)::interval, \(pageSize)) AS n", purpose: "runs: retention").single()
                .decode("n", as: Int.self)
        }
    }

    public func runOnce(fence: LeaderFence) async throws -> Bool {
        let n = try await pruneOnce(fence: fence)
        if n > 0 { logger.info("pruned finished runs", metadata: ["runs": "\(n)", "term": "\(fence.term)"]) }
        return n == pageSize
    }
}
