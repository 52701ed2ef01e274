import Foundation
import PostgresClient

/// The execution queue's statements, one named value each. Each hot-path call is one
/// statement (no explicit transaction): a batch of enqueues, a claim of up to N with the
/// worker-alive check folded in, a batch of completions or failures.
///
/// Lock order, so that no two of them can deadlock: a claim locks `ready` rows, then
/// `executions`, then writes `attempts` and `leases`; a completion locks its plain
/// executions (no run involved), then the run rows of its step executions (in run_id order),
/// then those executions, `leases`, `attempts`; a failure locks the run rows first, then its
/// executions, `leases`, `attempts`; the expiry scanner takes runs, `leases` and `executions` rows together
/// with SKIP LOCKED (it never waits); a cancel locks the run row, then deletes the `ready` row,
/// each in a statement of its own, before it touches `executions`. The whole order is in
/// sql/workflow/0012 (0013 for the completion) and docs/workers-and-leases.md.
///
/// The hot statements are prepared on each session the first time they run there
/// (`prepared()`): planning one of these CTEs costs more than running it for a small batch.
package enum LeaseQueries {
    /// The channel an enqueue announces its lanes on: `<namespace> <lane> <lane> …`, or
    /// `<namespace> *` when the list would not fit in a notification.
    package static let channel = "regent_queue"

    /// Enqueues every item of `items` (a JSON array of objects with `n`, `lane`, `payload`,
    /// `max_attempts`, `required_capabilities`, `priority`, `run_at`, `unique_key`,
    /// `retry_base_ms`, `retry_max_ms`). One row per item, in `n` order: its execution id,
    /// and whether this statement created it. An item whose unique key belongs to an
    /// unfinished execution gets that execution's id (`created` false); nil when that
    /// execution committed after this statement began (run the item again).
    package static func enqueue(namespace: String, itemsJSON: String) -> PostgresQuery {
        let query: PostgresQuery = """
        WITH input AS (
            SELECT * FROM jsonb_to_recordset(\(itemsJSON)::jsonb) AS i(
                n integer, lane text, payload jsonb, max_attempts integer, required_capabilities text[], priority smallint,
                run_at timestamptz, unique_key text, retry_base_ms bigint, retry_max_ms bigint, flow_key text, flow_limit integer)
        ), keyed AS (
            INSERT INTO workflow.unique_keys (namespace, unique_key, execution_id)
            SELECT \(namespace), unique_key, gen_random_uuid() FROM input WHERE unique_key IS NOT NULL
            ON CONFLICT DO NOTHING
            RETURNING unique_key, execution_id
        ), fresh AS (
            SELECT i.*, COALESCE(k.execution_id, gen_random_uuid()) AS execution_id
            FROM input i LEFT JOIN keyed k ON k.unique_key = i.unique_key
            WHERE i.unique_key IS NULL
               OR (k.execution_id IS NOT NULL AND i.n = (SELECT min(j.n) FROM input j WHERE j.unique_key = i.unique_key))
        ), inserted AS (
            INSERT INTO workflow.executions (
                execution_id, namespace, lane, payload, max_attempts, required_capabilities, priority, run_at, unique_key,
                retry_base_ms, retry_max_ms, flow_key)
            SELECT execution_id, \(namespace), lane, payload, max_attempts, required_capabilities, priority,
                   COALESCE(run_at, clock_timestamp()), unique_key, retry_base_ms, retry_max_ms, flow_key
            FROM fresh ORDER BY n
            RETURNING execution_id, lane, priority, run_at, required_capabilities, flow_key
        ), readied AS (
            INSERT INTO workflow.ready (namespace, lane, priority, run_at, execution_id, required_capabilities)
            SELECT \(namespace), lane, priority, run_at, execution_id, required_capabilities FROM inserted WHERE flow_key IS NULL
            RETURNING lane
        ), waiting AS (
            -- Keyed items join their key's waiting list; the commit admits them (sql/workflow/0018).
            INSERT INTO workflow.flow_waiting (namespace, flow_key, execution_id, lane, priority, run_at, required_capabilities, max_admitted)
            SELECT \(namespace), x.flow_key, x.execution_id, x.lane, x.priority, x.run_at, x.required_capabilities, f.flow_limit
            FROM inserted x JOIN fresh f ON f.execution_id = x.execution_id
            WHERE x.flow_key IS NOT NULL
            ORDER BY f.n
        ), notified AS (
            SELECT workflow.notify_queue(\(namespace), lanes)
            FROM (SELECT array_agg(lane::text) AS lanes FROM readied) AS l WHERE lanes IS NOT NULL
        )
        SELECT i.n, COALESCE(f.execution_id, first.execution_id, u.execution_id) AS execution_id, f.execution_id IS NOT NULL AS created,
               (SELECT count(*) FROM notified) AS notified
        FROM input i
        LEFT JOIN fresh f ON f.n = i.n
        LEFT JOIN fresh first ON f.n IS NULL AND first.unique_key = i.unique_key
        LEFT JOIN workflow.unique_keys u ON f.n IS NULL AND first.n IS NULL AND u.namespace = \(namespace) AND u.unique_key = i.unique_key
        ORDER BY i.n
        """
        return query.prepared()
    }

    /// Claims up to `limit` runnable executions through `workflow.claim` (sql/workflow/0007):
    /// for each of the worker's lanes it walks `ready`'s key in order (priority, run_at, id)
    /// and takes at most `limit`, then keeps the best `limit` of those; planned with sequential
    /// scans off, so an emptied queue's statistics cannot turn it into a scan of the next
    /// burst. One row `alive = false` when the worker is not registered and alive; one row with
    /// NULLs when nothing was runnable.
    package static func claim(
        namespace: String, lanes: [String], worker: String, capabilities: [String], lease: Duration?, limit: Int, token: String? = nil
    ) -> PostgresQuery {
        let query: PostgresQuery = """
            SELECT alive, execution_id, lane, attempt_index, lease_epoch, payload, lease_expires_at, run_id, step, package_hash
            FROM workflow.claim(\(namespace), \(worker), \(lanes)::text[], \(capabilities)::text[], \(lease.map { Int64($0.milliseconds) })::bigint,
                                \(limit), \(token)::text)
            """
        return query.prepared()
    }

    /// Completes the batch (as ``complete(itemsJSON:)``) and claims (as ``claim``) in one
    /// statement and one transaction (`workflow.complete_and_claim`, sql/workflow/0008); every
    /// row carries the accepted completions in `completed`.
    package static func completeAndClaim(
        itemsJSON: String, namespace: String, lanes: [String], worker: String, capabilities: [String], lease: Duration?, limit: Int,
        token: String? = nil
    ) -> PostgresQuery {
        let query: PostgresQuery = """
            SELECT completed::text[] AS completed, alive, execution_id, lane, attempt_index, lease_epoch, payload, lease_expires_at, run_id,
                   step, package_hash
            FROM workflow.complete_and_claim(\(itemsJSON)::jsonb, \(namespace), \(worker), \(lanes)::text[], \(capabilities)::text[],
                                             \(lease.map { Int64($0.milliseconds) })::bigint, \(limit), \(token)::text)
            """
        return query.prepared()
    }

    /// Completes every execution of the batch (a JSON array of `execution_id`, `epoch`,
    /// `result` objects) whose epoch is current, through `workflow.complete` (planned with
    /// sequential scans off, as the claim is); returns their ids (the others' leases were
    /// reclaimed, cancelled or finished: stale).
    package static func complete(itemsJSON: String, token: String? = nil) -> PostgresQuery {
        let query: PostgresQuery = "SELECT execution_id FROM workflow.complete(\(itemsJSON)::jsonb, \(token)::text)"
        return query.prepared()
    }

    /// Fails every execution of the batch whose epoch is current: retryable with attempts
    /// left → queued again after a backoff (`min(max, base · 2^(attempt-1))`, times a jitter
    /// factor in [0.75, 1.25]; the execution's own base and max, else these defaults);
    /// retryable without → dead-lettered; not retryable → failed. The batch is a JSON array of
    /// `execution_id`, `epoch`, `error`, `retryable` objects. Returns id, new state and run_at.
    package static func fail(itemsJSON: String, defaultBaseMs: Int64, defaultMaxMs: Int64, token: String? = nil) -> PostgresQuery {
        let query: PostgresQuery = """
            SELECT execution_id, state, run_at FROM workflow.fail(\(itemsJSON)::jsonb, \(defaultBaseMs), \(defaultMaxMs), \(token)::text)
            """
        return query.prepared()
    }

    /// Cancelling, first statement (lock order, sql/workflow 0012): a step execution's run row.
    static func lockRun(_ id: UUID) -> PostgresQuery {
        "SELECT workflow.lock_runs(ARRAY[\(id)]::uuid[])"
    }

    /// Cancelling, second statement: takes the execution out of the queue (waiting for a
    /// claim that holds its `ready` row, which then owns it and it is running).
    static func unready(_ id: UUID) -> PostgresQuery {
        "DELETE FROM workflow.ready WHERE execution_id = \(id)"
    }

    /// Cancelling, third statement: a queued or running execution becomes `cancelled`; its
    /// epoch moves on, so its worker's renew, complete or fail is refused as stale.
    static func cancel(_ id: UUID) -> PostgresQuery {
        """
        WITH before AS (
            SELECT state FROM workflow.executions WHERE execution_id = \(id)
        ), cancelled AS (
            UPDATE workflow.executions e
            SET state = 'cancelled', lease_epoch = e.lease_epoch + 1, finished_at = now(), updated_at = now(), last_error = 'cancelled'
            WHERE e.execution_id = \(id) AND e.state IN ('queued', 'running')
            RETURNING e.execution_id, e.namespace, e.unique_key
        ), unleased AS (
            DELETE FROM workflow.leases l USING cancelled c WHERE l.execution_id = c.execution_id RETURNING l.execution_id, l.attempt_index
        ), ended AS (
            UPDATE workflow.attempts a SET state = 'cancelled', ended_at = now()
            FROM unleased u WHERE a.execution_id = u.execution_id AND a.attempt_index = u.attempt_index
        ), unkeyed AS (
            DELETE FROM workflow.unique_keys k USING cancelled c
            WHERE c.unique_key IS NOT NULL AND k.namespace = c.namespace AND k.unique_key = c.unique_key AND k.execution_id = c.execution_id
        )
        SELECT (SELECT state FROM before) AS before, (SELECT count(*) FROM cancelled) AS cancelled
        """
    }

    static func renew(_ id: UUID, _ epoch: LeaseEpoch, _ lease: Duration?, token: String?, worker: String?) -> PostgresQuery {
        """
        SELECT lease_expires_at, lease_ms FROM workflow.renew(\(id), \(epoch.value), \(lease.map { Int64($0.milliseconds) })::bigint, \(token)::text, \(worker)::text)
        """
    }

    /// Why a renew, completion or failure changed nothing: the execution's state and epoch, and
    /// its live lease's epoch, token and worker instance (read only on that path).
    /// Of the completions `ids`/`epochs`/`workers` (parallel arrays; "" for no worker), those
    /// that had landed already: the execution is completed at that epoch, by an attempt of that
    /// worker instance when one is named, and (for a token) by a worker registered with it. A
    /// completed execution never changes epoch again, so the answer is final.
    static func alreadyCompleted(ids: [UUID], epochs: [Int64], workers: [String], token: String?) -> PostgresQuery {
        """
        SELECT e.execution_id
        FROM unnest(\(ids.map(\.uuidString))::uuid[], \(epochs.map(String.init))::bigint[], \(workers)::text[]) AS i(execution_id, epoch, worker)
        JOIN workflow.executions e ON e.execution_id = i.execution_id AND e.lease_epoch = i.epoch AND e.state = 'completed'
        WHERE EXISTS (
            SELECT 1 FROM workflow.attempts a
            WHERE a.execution_id = e.execution_id AND a.lease_epoch = i.epoch AND a.state = 'completed'
              AND (i.worker = '' OR a.worker_instance_id = i.worker)
              AND (\(token)::text IS NULL OR EXISTS (
                  SELECT 1 FROM workflow.workers w WHERE w.worker_instance_id = a.worker_instance_id AND w.token_id = \(token)::text)))
        """
    }

    static func leaseStatus(_ id: UUID) -> PostgresQuery {
        """
        SELECT e.state, e.lease_epoch, l.lease_epoch AS live_epoch, l.token_id, l.worker_instance_id
        FROM workflow.executions e LEFT JOIN workflow.leases l ON l.execution_id = e.execution_id
        WHERE e.execution_id = \(id)
        """
    }

    static func listExpired(asOf: Date?, namespace: Namespace?, after: ExpiredLeaseCursor?, limit: Int) -> PostgresQuery {
        """
        SELECT l.execution_id, l.namespace, e.lane, l.attempt_index, l.lease_epoch, l.worker_instance_id, l.lease_expires_at
        FROM workflow.leases l JOIN workflow.executions e USING (execution_id)
        WHERE l.lease_expires_at <= COALESCE(\(asOf)::timestamptz, now())
          AND (\(namespace?.value)::text IS NULL OR l.namespace = \(namespace?.value)::text)
          AND (\(after?.expiresAt)::timestamptz IS NULL
               OR (l.lease_expires_at, l.execution_id) > (\(after?.expiresAt)::timestamptz, \(after?.executionID)::uuid))
        ORDER BY l.lease_expires_at, l.execution_id
        LIMIT \(limit)
        """
    }

    /// Every current lease, soonest expiry first, with the workflow step it carries (if any).
    static func listCurrent(namespace: Namespace?, after: ExpiredLeaseCursor?, limit: Int) -> PostgresQuery {
        """
        SELECT l.execution_id, l.namespace, e.lane, l.attempt_index, l.lease_epoch, l.worker_instance_id, l.lease_expires_at,
               l.started_at, l.lease_ms, s.run_id, s.name AS step, now() AS read_at
        FROM workflow.leases l JOIN workflow.executions e USING (execution_id)
        LEFT JOIN workflow.run_steps s ON s.execution_id = l.execution_id
        WHERE (\(namespace?.value)::text IS NULL OR l.namespace = \(namespace?.value)::text)
          AND (\(after?.expiresAt)::timestamptz IS NULL
               OR (l.lease_expires_at, l.execution_id) > (\(after?.expiresAt)::timestamptz, \(after?.executionID)::uuid))
        ORDER BY l.lease_expires_at, l.execution_id
        LIMIT \(limit)
        """
    }

    /// The lease-expiry scanner's decisions, newest first (`before`: an id cursor).
    static func decisions(before: Int64?, limit: Int) -> PostgresQuery {
        """
        SELECT d.id, d.execution_id, d.attempt_index, d.decision, d.term, d.at, e.namespace, e.lane, s.run_id, s.name AS step
        FROM workflow.lease_decisions d
        LEFT JOIN workflow.executions e ON e.execution_id = d.execution_id
        LEFT JOIN workflow.run_steps s ON s.execution_id = d.execution_id
        WHERE (\(before)::bigint IS NULL OR d.id < \(before)::bigint)
        ORDER BY d.id DESC LIMIT \(limit)
        """
    }

    static func listExecutions(_ ns: Namespace?, state: String?, limit: Int) -> PostgresQuery {
        """
        SELECT execution_id, namespace, lane, state, attempts, max_attempts, lease_epoch, created_at
        FROM workflow.executions
        WHERE (\(ns?.value)::text IS NULL OR namespace = \(ns?.value)::text) AND (\(state)::text IS NULL OR state = \(state)::text)
        ORDER BY created_at DESC, execution_id LIMIT \(limit)
        """
    }
}
