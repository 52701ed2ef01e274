import CoreMetrics
import Foundation
import Logging
import ServiceLifecycle
import PostgresClient

/// Ends the lock session of a leader that stopped heartbeating but whose session lives on.
///
/// A frozen leader (SIGSTOP, a long pause, a stuck VM) keeps its TCP connection, so PostgreSQL
/// keeps its session and the advisory lock for ever and no follower can win. Every follower
/// looks every `checkInterval`: when the recorded leader's heartbeat in `engine.instances` is
/// older than `staleAfter` **by database time**, and the session recorded as the leader's still
/// holds the lock, one follower (the one that takes the `takeover` advisory lock for its
/// transaction) ends that session with `pg_terminate_backend` and audits `leader.terminated`
/// (who, which instance, which term, the heartbeat's age) in the same statement. It does not
/// wait for the session to exit (so the audit commits at once); a session already audited as
/// ended for that term is not ended twice. The
/// followers blocked on the lock then elect a successor as after a crash; the thawed leader
/// finds its session gone and its fence refused.
///
/// A follower acts only after it has itself heartbeated without a gap for `staleAfter`: its
/// own trouble reaching the database must never look like the leader's.
public actor HungLeaderWatch: Service {
    public struct Check: Sendable, Equatable {
        /// The frozen leader's term, instance and lock session.
        public let term: Term
        public let leaderInstance: InstanceID?
        public let backendPID: Int32
        public let heartbeatAgeMs: Int64
        /// This node's role may end that session.
        public let permitted: Bool
        /// This node ended it (nil: another follower was acting, or not permitted).
        public let terminated: Bool?
    }

    let instanceID: InstanceID
    let pool: ConnectionPool
    let staleAfter: Duration
    let checkInterval: Duration
    let isHealthy: @Sendable (Duration) async -> Bool
    let isLeader: @Sendable () async -> Bool
    let logger: Logger
    let takeovers: Counter
    private var warnedNotPermitted: Term?
    public private(set) var terminations = 0

    public init(
        instanceID: InstanceID, pool: ConnectionPool, staleAfter: Duration, checkInterval: Duration? = nil,
        isHealthy: @escaping @Sendable (Duration) async -> Bool, isLeader: @escaping @Sendable () async -> Bool,
        metrics: RegentMetrics = .discarded, logger: Logger = Logger(label: "regent.leadership.watch")
    ) {
        self.instanceID = instanceID
        self.pool = pool
        self.staleAfter = staleAfter
        self.checkInterval = checkInterval ?? min(.seconds(1), staleAfter / 4)
        self.isHealthy = isHealthy
        self.isLeader = isLeader
        self.logger = logger
        self.takeovers = Counter(label: "regent_leader_sessions_terminated_total", factory: metrics.factory)
    }

    static let takeoverLock = PostgresQuery(
        unsafeSQL: "SELECT pg_try_advisory_xact_lock(\(AdvisoryLockKey.classID), \(AdvisoryLockKey.takeover)) AS mine")

    static func check(self instance: InstanceID, staleAfter: Duration, actor: String) -> PostgresQuery {
        // $1 this instance, $2 the stale cutoff, $3 the audit actor, $4 stale-after in ms. The
        // lock filter is constant text (no input).
        PostgresQuery(
            unsafeSQL: """
                WITH l AS (SELECT term, leader_instance, leader_backend_pid, elected_at FROM engine.leadership WHERE id = 1),
                candidate AS (
                    SELECT l.term, l.leader_instance, l.leader_backend_pid AS pid,
                           (extract(epoch FROM now() - COALESCE(i.last_heartbeat, l.elected_at)) * 1000)::bigint AS age_ms,
                           COALESCE((SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                                    OR (pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')
                                        AND NOT COALESCE((SELECT rolsuper FROM pg_roles r WHERE r.oid = a.usesysid), false))
                                    OR pg_has_role(current_user, a.usesysid, 'MEMBER'), false) AS permitted
                    FROM l
                    LEFT JOIN engine.instances i ON i.instance_id = l.leader_instance
                    LEFT JOIN pg_stat_activity a ON a.pid = l.leader_backend_pid
                    WHERE l.leader_instance IS DISTINCT FROM $1::uuid
                      AND EXISTS (SELECT 1 FROM pg_locks WHERE \(LeadershipQueries.lockHolderFilter) AND pid = l.leader_backend_pid)
                      AND COALESCE(i.last_heartbeat, l.elected_at) < now() - $2::interval
                      AND NOT EXISTS (SELECT 1 FROM engine.audit x WHERE x.action = 'leader.terminated' AND x.term = l.term
                                      AND (x.detail->>'backend_pid')::int = l.leader_backend_pid)
                ), acted AS (
                    SELECT c.term, c.leader_instance, c.pid, c.age_ms, pg_terminate_backend(c.pid) AS terminated
                    FROM candidate c
                    WHERE c.permitted
                ), audited AS (
                    INSERT INTO engine.audit (actor, action, term, instance_id, detail)
                    SELECT $3::text, 'leader.terminated', term, leader_instance,
                           jsonb_build_object('backend_pid', pid, 'heartbeat_age_ms', age_ms, 'stale_after_ms', $4::bigint,
                                              'by_instance', $1::text, 'terminated', terminated)
                    FROM acted RETURNING id
                )
                SELECT c.term, c.leader_instance, c.pid, c.age_ms, c.permitted, a.terminated, (SELECT count(*) FROM audited) AS audited
                FROM candidate c LEFT JOIN acted a ON true
                """,
            binds: [instance.postgresBind, staleAfter.postgresBind, actor.postgresBind, Int64(staleAfter.milliseconds).postgresBind])
    }

    /// One look; returns what it found (nil: the leader is fine, or there is none, or this
    /// node is not in a position to judge).
    public func checkOnce() async throws -> Check? {
        guard await isHealthy(staleAfter), await !isLeader() else { return nil }
        // The takeover lock first, in a statement of its own: the check then reads a snapshot
        // taken after the lock was granted, so it sees the audit row of a follower that acted
        // and committed just before, and does not end the same session twice.
        let query = Self.check(self: instanceID, staleAfter: staleAfter, actor: AuditActor.instance(instanceID).description)
        let rows: PostgresRows? = try await pool.withTransaction { tx in
            guard try await tx.query(Self.takeoverLock, purpose: "take the takeover lock").single().decode("mine", as: Bool.self) else {
                return nil  // another follower is looking right now
            }
            return try await tx.query(query, purpose: "look for a frozen leader")
        }
        guard let row = rows?.first else { return nil }
        let found = Check(
            term: try row.decode("term"), leaderInstance: try row.decodeOptional("leader_instance"), backendPID: try row.decode("pid"),
            heartbeatAgeMs: try row.decode("age_ms"), permitted: try row.decode("permitted"), terminated: try row.decodeOptional("terminated"))
        let meta: Logger.Metadata = [
            "term": "\(found.term)", "leader_instance": "\(found.leaderInstance.map { "\($0)" } ?? "?")",
            "backend_pid": "\(found.backendPID)", "heartbeat_age_ms": "\(found.heartbeatAgeMs)",
        ]
        if found.terminated == true {
            terminations += 1
            takeovers.increment()
            logger.error("the leader stopped heartbeating but kept its lock session; ended that session so a successor can be elected", metadata: meta)
        } else if !found.permitted, warnedNotPermitted != found.term {
            warnedNotPermitted = found.term
            logger.error(
                "the leader stopped heartbeating but keeps its lock session, and this node's role may not end it; failover waits until PostgreSQL drops that session (GRANT pg_signal_backend TO <this role>)",
                metadata: meta)
        }
        return found
    }

    /// Looks on a period until graceful shutdown or cancellation.
    public func run() async {
        try? await cancelWhenGracefulShutdown { [self] in await self.watch() }
    }

    /// Looks on a period until cancelled.
    func watch() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: checkInterval)
            if Task.isCancelled { break }
            do { _ = try await checkOnce() } catch {
                if Task.isCancelled { break }
                logger.warning("frozen-leader check failed", metadata: ["error": "\(error)"])
            }
        }
    }
}
