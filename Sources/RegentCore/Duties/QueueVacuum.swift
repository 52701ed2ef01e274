import Logging
import PostgresClient

/// Keeps the queue's churning tables vacuumed at the pace of the queue, not of autovacuum.
///
/// A claim deletes the `workflow.ready` rows it takes, and an ended attempt its `workflow.leases`
/// row. Until a VACUUM removes them, their index entries stay where the next claim starts to
/// walk: PostgreSQL marks them dead as it meets them, but still reads every page they fill, so
/// each claim costs more as a drain goes on (measured on this machine: a claim read 1,644
/// buffers, 8.8 ms, after 100,000 claims; a 30 s drain at 16 workers ran 34 % faster with these
/// tables vacuumed every second). Autovacuum visits a database at most once per
/// `autovacuum_naptime` (a server setting, one minute by default), whatever the tables'
/// thresholds say; this duty looks every `interval` and vacuums a table once its dead rows pass
/// `max(minimumDeadRows, live rows · deadFraction)`, so a large backlog is not vacuumed whole
/// every second. `INDEX_CLEANUP ON` because the dead rows of a queue sit at the head of a large
/// table: PostgreSQL's default would skip the indexes when few heap pages hold dead rows, and the
/// indexes are the point. `SKIP_LOCKED`: when autovacuum is already on a table, this round
/// leaves it alone instead of waiting.
///
/// Not fenced: a VACUUM changes no data (it cannot run inside the fence's transaction either),
/// so a round that outlives its term by a moment does no harm.
public struct QueueVacuum: LeaderDuty {
    public let name = "queue-vacuum"
    let pool: ConnectionPool
    public let interval: Duration
    let minimumDeadRows: Int
    let deadFraction: Double
    let logger: Logger

    public init(
        pool: ConnectionPool, interval: Duration = .seconds(1), minimumDeadRows: Int = 1000, deadFraction: Double = 0.02,
        logger: Logger = Logger(label: "regent.duty.queue-vacuum")
    ) {
        self.pool = pool
        self.interval = interval
        self.minimumDeadRows = minimumDeadRows
        self.deadFraction = deadFraction
        self.logger = logger
    }

    /// The tables this duty keeps, each with its own constant statement (no name is ever
    /// interpolated into SQL).
    static let tables: [(name: String, vacuum: PostgresQuery)] = [
        ("ready", "VACUUM (INDEX_CLEANUP ON, SKIP_LOCKED) workflow.ready"),
        ("leases", "VACUUM (INDEX_CLEANUP ON, SKIP_LOCKED) workflow.leases"),
    ]

    /// The tables due now: dead rows past the threshold, by the server's statistics (which lag
    /// a busy backend's deletes by at most about a second).
    func due() async throws -> [String] {
        let rows = try await pool.query(
            """
            SELECT relname::text AS name, n_dead_tup AS dead, n_live_tup AS live FROM pg_stat_user_tables
            WHERE schemaname = 'workflow' AND relname IN ('ready', 'leases')
            """, purpose: "queue tables' dead rows")
        var due: [String] = []
        for row in rows {
            let dead: Int = try row.decode("dead")
            let live: Int = try row.decode("live")
            if dead >= max(minimumDeadRows, Int(Double(live) * deadFraction)) { due.append(try row.decode("name")) }
        }
        return due
    }

    /// Vacuums the tables that are due; returns their names.
    @discardableResult
    public func vacuumDue() async throws -> [String] {
        // No rows while the workflow tables do not exist (module off, migration pending): nothing due.
        let due = try await due()
        for table in Self.tables where due.contains(table.name) {
            let start = ContinuousClock.now
            try await pool.query(table.vacuum, purpose: "vacuum workflow.\(table.name)")
            logger.debug("vacuumed a queue table", metadata: ["table": "\(table.name)", "took": "\(ContinuousClock.now - start)"])
        }
        return due
    }

    /// A failed vacuum (a `statement_timeout` shorter than a large table's vacuum, a session
    /// ended by an outage) is logged and tried again next round, but never counts against
    /// the leader: the duty runner resigns a leader whose duties keep failing, and a slow
    /// maintenance statement is no reason to move leadership.
    public func runOnce(fence: LeaderFence) async throws -> Bool {
        do {
            try await vacuumDue()
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            if Task.isCancelled { throw CancellationError() }
            logger.warning("could not vacuum the queue tables; trying again next round", metadata: [
                "error": "\(error)", "term": "\(fence.term)",
            ])
        }
        return false
    }
}
