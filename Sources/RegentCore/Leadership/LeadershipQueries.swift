import Foundation
import PostgresClient

/// The statements of the leadership protocol, one named constant each.
package enum LeadershipQueries {
    static let tryLock: PostgresQuery =
        "SELECT pg_try_advisory_lock(\(AdvisoryLockKey.classID), \(AdvisoryLockKey.leadership)) AS locked"
    static let waitForLock: PostgresQuery =
        "SELECT pg_advisory_lock(\(AdvisoryLockKey.classID), \(AdvisoryLockKey.leadership))"
    static let releaseLock: PostgresQuery =
        "SELECT pg_advisory_unlock(\(AdvisoryLockKey.classID), \(AdvisoryLockKey.leadership)) AS released"

    /// A `pg_locks` predicate for the granted leadership lock in this database (advisory
    /// locks are per database). Constant text, no user input: safe to splice into SQL.
    package static let lockHolderFilter = """
        locktype = 'advisory' AND classid = \(UInt32(bitPattern: AdvisoryLockKey.classID)) AND objid = \(AdvisoryLockKey.leadership)
        AND objsubid = 2 AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """

    /// One statement, one round trip, one implicit transaction: bump the term, audit the
    /// election and publish `leader.elected` on the event bus; `since_resignation` is how long
    /// ago the previous term's leader resigned (NULL when it did not: it crashed or was cut off). Runs on the lock session, so it is fenced by construction.
    /// The audit row's detail says how the term began (`after`: `resignation` when the previous
    /// term's leader resigned within the last minute, `lock_released` when this node waited for the
    /// lock, `fresh` otherwise) and, for a takeover, `leaderless_ms` (from the resignation, or from
    /// the lock's release, to this statement), so a console can draw the failover timeline.
    static func recordElection(instance: InstanceID, actor: String, lockWaitedMs: Double?) -> PostgresQuery {
        """
        WITH r AS (
            SELECT (SELECT extract(epoch FROM now() - r.at)::float8
                    FROM (SELECT at, term FROM engine.audit WHERE action = 'leader.resigned' ORDER BY id DESC LIMIT 1) r
                    WHERE r.term = (SELECT term FROM engine.leadership WHERE id = 1)) AS since_resignation
        ), t AS (
            UPDATE engine.leadership SET term = term + 1, leader_instance = \(instance)::uuid,
                   leader_backend_pid = pg_backend_pid(), elected_at = now()
            WHERE id = 1 RETURNING term, elected_at
        ), a AS (
            INSERT INTO engine.audit (actor, action, term, instance_id, detail)
            SELECT \(actor)::text, 'leader.elected', term, \(instance)::uuid,
                   CASE WHEN r.since_resignation < 60
                            THEN jsonb_build_object('after', 'resignation', 'leaderless_ms', round((r.since_resignation * 1000)::numeric, 2))
                        WHEN \(lockWaitedMs)::float8 IS NOT NULL
                            THEN jsonb_build_object('after', 'lock_released', 'leaderless_ms', round(\(lockWaitedMs)::numeric, 2))
                        ELSE jsonb_build_object('after', 'fresh') END
            FROM t, r RETURNING id
        )
        SELECT t.term, t.elected_at, r.since_resignation,
               engine.publish_event('leader.elected',
                   jsonb_build_object('term', t.term, 'instance_id', \(instance.uuidString.lowercased())::text), \(instance)::uuid) AS event_id
        FROM t, a, r
        """
    }

    /// How long the new term's UPDATE waits for an earlier term's fenced transactions (they hold
    /// the leadership row FOR SHARE) before it ends them; set on the lock session around it only.
    static let termLockTimeout: PostgresQuery = "SET lock_timeout = '300ms'"
    static let noLockTimeout: PostgresQuery = "SET lock_timeout = 0"
    /// A follower's wait for the lock, in rounds (LeaderElector.waitForTheLock).
    static let boundedLockWait: PostgresQuery = "SET lock_timeout = '2s'"

    /// Ends the sessions whose transactions hold `engine.leadership` FOR SHARE (a RowShareLock on
    /// the table): fenced transactions, and only the lock holder may be leader, so once this
    /// session holds the lock they belong to an earlier term (a crashed or cut-off leader's
    /// migration or sweep still running). Rolled back, none of their writes land; without this
    /// the new term would wait for them, however long they run.
    static let endEarlierFencedTransactions: PostgresQuery = """
        SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS ended FROM pg_locks
        WHERE locktype = 'relation' AND relation = 'engine.leadership'::regclass AND mode = 'RowShareLock' AND granted
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND pid <> pg_backend_pid()
        """

    /// The server's identity and timeline, whether it is in recovery, and the highest timeline
    /// a leader was ever elected on for this system identifier (NULL before the first).
    /// A primary's current timeline is read from its current WAL file name (the checkpoint's
    /// lags a promotion until the next checkpoint); a standby's from its last checkpoint.
    static let serverTimeline: PostgresQuery = """
        SELECT pg_is_in_recovery() AS in_recovery, s.system_identifier::text AS system_id,
               CASE WHEN pg_is_in_recovery() THEN c.timeline_id
                    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END AS timeline,
               (SELECT max(t.timeline) FROM engine.server_timelines t WHERE t.system_identifier = s.system_identifier::text) AS highest
        FROM pg_control_system() s, pg_control_checkpoint() c
        """

    static func recordTimeline(systemID: String, timeline: Int, term: Term) -> PostgresQuery {
        """
        INSERT INTO engine.server_timelines (system_identifier, timeline, first_term)
        VALUES (\(systemID), \(timeline), \(term)) ON CONFLICT DO NOTHING
        """
    }

    static func recordResignation(term: Term, instance: InstanceID, actor: String) -> PostgresQuery {
        """
        WITH a AS (
            INSERT INTO engine.audit (actor, action, term, instance_id)
            VALUES (\(actor)::text, 'leader.resigned', \(term)::bigint, \(instance)::uuid) RETURNING term
        )
        SELECT engine.publish_event('leader.resigned',
               jsonb_build_object('term', a.term, 'instance_id', \(instance.uuidString.lowercased())::text), \(instance)::uuid) FROM a
        """
    }

    /// How many sessions hold the leadership lock right now (0 or 1, unless something is very wrong).
    package static let countLockHolders = PostgresQuery(unsafeSQL: "SELECT count(*) AS n FROM pg_locks WHERE \(lockHolderFilter)")

    /// Run on the lock session: do we still hold the lock, and is our term still current?
    static func confirm(term: Term) -> PostgresQuery {
        PostgresQuery(
            unsafeSQL: """
                SELECT EXISTS (SELECT 1 FROM pg_locks WHERE \(lockHolderFilter) AND pid = pg_backend_pid()) AS holds,
                       (SELECT term FROM engine.leadership WHERE id = 1) = $1 AS current
                """, binds: [term.postgresBind])
    }

    /// Run inside a fenced transaction: locks the leadership row (a successor's term bump
    /// waits for this transaction) and checks that our lock session still holds the lock.
    static func fenceCheck(term: Term, instance: InstanceID, lockBackendPID: Int32, idleTimeoutMs: Int) -> PostgresQuery {
        PostgresQuery(
            unsafeSQL: """
                WITH l AS (SELECT term, leader_instance FROM engine.leadership WHERE id = 1 FOR SHARE)
                SELECT l.term = $1 AND l.leader_instance = $2::uuid AS current,
                       EXISTS (SELECT 1 FROM pg_locks WHERE \(lockHolderFilter) AND pid = $3) AS holds,
                       l.term AS term,
                       set_config('idle_in_transaction_session_timeout', $4::text, true) AS idle_timeout
                FROM l
                """, binds: [term.postgresBind, instance.postgresBind, Int(lockBackendPID).postgresBind, "\(idleTimeoutMs)".postgresBind])
    }
}
