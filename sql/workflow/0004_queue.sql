-- The execution queue at peer speed (issue 18).
--
-- Hot path: enqueue, claim, complete/fail. Each touches as few index entries as it can:
--   * `workflow.ready` holds one row per runnable execution. Its primary key is the order a
--     claim walks for one lane: (namespace, lane, priority, run_at, execution_id). A claim
--     deletes what it takes; a requeue inserts again. No other table's index mentions state.
--   * `workflow.executions` and `workflow.attempts` keep only indexes on columns the hot path
--     never changes (their keys, `created_at`), so claim/complete/fail updates are HOT-eligible;
--     a fillfactor of 70 leaves room on each page for the new row versions.
--   * `workflow.leases` holds the live leases alone (inserted at claim, deleted at the end of
--     the attempt, moved by renew); the expiry scanner walks its `lease_expires_at` index.
--   * `workflow.unique_keys` holds the uniqueness keys of unfinished executions (written in the
--     enqueue statement before the execution row, so no foreign key; finishing deletes the key).

ALTER TABLE workflow.executions
    ADD COLUMN priority      smallint    NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 1000),
    ADD COLUMN run_at        timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN unique_key    text        CHECK (unique_key IS NULL OR length(unique_key) BETWEEN 1 AND 255),
    ADD COLUMN retry_base_ms bigint      CHECK (retry_base_ms BETWEEN 1 AND 86400000),
    ADD COLUMN retry_max_ms  bigint      CHECK (retry_max_ms BETWEEN 1 AND 604800000),
    ADD COLUMN finished_at   timestamptz;
ALTER TABLE workflow.executions DROP CONSTRAINT executions_state_check;
ALTER TABLE workflow.executions ADD CONSTRAINT executions_state_check
    CHECK (state IN ('queued', 'running', 'completed', 'failed', 'dead_lettered', 'cancelled'));
-- Its predicate mentions `state`: every claim would have written new index entries.
DROP INDEX workflow.executions_runnable_idx;
-- Never updated: retention walks it (finished rows among the oldest), listings too.
CREATE INDEX executions_created_idx ON workflow.executions (created_at, execution_id);
-- Statistics follow a burst quickly: an emptied table (retention, a drained backlog) that
-- fills again must not keep the plans of an empty one for long.
ALTER TABLE workflow.executions SET (fillfactor = 70, autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000);

CREATE TABLE workflow.ready (
    namespace             text        NOT NULL,
    lane                  text        NOT NULL,
    priority              smallint    NOT NULL,
    run_at                timestamptz NOT NULL,
    execution_id          uuid        NOT NULL,
    required_capabilities text[]      NOT NULL,
    PRIMARY KEY (namespace, lane, priority, run_at, execution_id)
);
CREATE UNIQUE INDEX ready_execution_idx ON workflow.ready (execution_id);
-- A queue table churns: vacuum it after every thousand dead rows, whatever its size, without
-- the cost-based pauses (a claim walks past dead index entries until they are vacuumed).
ALTER TABLE workflow.ready SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0);

INSERT INTO workflow.ready (namespace, lane, priority, run_at, execution_id, required_capabilities)
SELECT namespace, lane, priority, run_at, execution_id, required_capabilities FROM workflow.executions WHERE state = 'queued';

CREATE TABLE workflow.leases (
    execution_id       uuid        PRIMARY KEY REFERENCES workflow.executions (execution_id) ON DELETE CASCADE,
    namespace          text        NOT NULL,
    attempt_index      integer     NOT NULL,
    lease_epoch        bigint      NOT NULL,
    worker_instance_id text        NOT NULL,
    lease_expires_at   timestamptz NOT NULL,
    lease_ms           bigint      NOT NULL CHECK (lease_ms > 0),
    started_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX leases_expiry_idx ON workflow.leases (lease_expires_at, execution_id);
ALTER TABLE workflow.leases SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0);

INSERT INTO workflow.leases (execution_id, namespace, attempt_index, lease_epoch, worker_instance_id, lease_expires_at, lease_ms, started_at)
SELECT a.execution_id, e.namespace, a.attempt_index, a.lease_epoch, a.worker_instance_id, a.lease_expires_at,
       COALESCE(a.lease_ms, GREATEST(1, (extract(epoch FROM a.lease_expires_at - a.started_at) * 1000)::bigint)), a.started_at
FROM workflow.attempts a JOIN workflow.executions e USING (execution_id) WHERE a.state = 'leased';

-- Its predicate mentions `state`: ending an attempt would have written new index entries.
DROP INDEX workflow.attempts_live_lease_expiry_idx;
ALTER TABLE workflow.attempts DROP CONSTRAINT attempts_state_check;
ALTER TABLE workflow.attempts ADD CONSTRAINT attempts_state_check
    CHECK (state IN ('leased', 'completed', 'failed', 'expired', 'cancelled'));
ALTER TABLE workflow.attempts SET (fillfactor = 70);

CREATE TABLE workflow.unique_keys (
    namespace    text NOT NULL,
    unique_key   text NOT NULL,
    execution_id uuid NOT NULL,
    PRIMARY KEY (namespace, unique_key)
);

-- Retention walks these by time.
CREATE INDEX worker_events_at_idx ON workflow.worker_events (at);
CREATE INDEX lease_decisions_at_idx ON workflow.lease_decisions (at);

-- The claim, as a function so that it is planned with sequential scans off: a queue that
-- drained to empty and was vacuumed has statistics that say "empty" until the next analyze,
-- and a claim planned from them would scan and sort the whole backlog of the next burst. With
-- sequential scans off it walks `ready`'s key in order (and the executions by their key)
-- whatever the statistics say; PL/pgSQL keeps the plan across calls on a session.
-- One row `alive = false` when the worker is not registered and alive; one row with NULLs
-- when nothing was runnable; else one row per lease.
CREATE FUNCTION workflow.claim(
    p_namespace text, p_worker text, p_lanes text[], p_capabilities text[], p_lease_ms bigint, p_limit integer)
RETURNS TABLE (alive boolean, execution_id uuid, lane text, attempt_index integer, lease_epoch bigint, payload text,
               lease_expires_at timestamptz)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH alive AS (
        SELECT EXISTS (
            SELECT 1 FROM workflow.workers w
            WHERE w.namespace = p_namespace AND w.worker_instance_id = p_worker AND NOT w.dead AND w.expires_at > now()) AS ok
    ), picked AS (
        SELECT r.rid, r.execution_id FROM unnest(p_lanes) AS l(lane)
        CROSS JOIN LATERAL (
            SELECT q.ctid AS rid, q.execution_id, q.priority, q.run_at FROM workflow.ready q
            WHERE q.namespace = p_namespace AND q.lane = l.lane AND q.run_at <= now() AND q.required_capabilities <@ p_capabilities
            ORDER BY q.priority, q.run_at, q.execution_id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ) AS r
        WHERE (SELECT ok FROM alive)
        ORDER BY r.priority, r.run_at, r.execution_id
        LIMIT p_limit
    ), taken AS (
        DELETE FROM workflow.ready q WHERE q.ctid = ANY (ARRAY(SELECT rid FROM picked)) RETURNING q.execution_id
    ), claimed AS (
        UPDATE workflow.executions e
        SET state = 'running', attempts = e.attempts + 1, lease_epoch = e.lease_epoch + 1, updated_at = now()
        FROM taken t WHERE e.execution_id = t.execution_id AND e.state = 'queued'
        RETURNING e.execution_id, e.namespace, e.lane, e.attempts, e.lease_epoch, e.payload
    ), attempt AS (
        INSERT INTO workflow.attempts AS a (execution_id, attempt_index, lease_epoch, worker_instance_id, state, lease_expires_at, lease_ms)
        SELECT c.execution_id, c.attempts, c.lease_epoch, p_worker, 'leased', now() + p_lease_ms * interval '1 millisecond', p_lease_ms
        FROM claimed c
    ), leased AS (
        INSERT INTO workflow.leases AS s (execution_id, namespace, attempt_index, lease_epoch, worker_instance_id, lease_expires_at, lease_ms)
        SELECT c.execution_id, c.namespace, c.attempts, c.lease_epoch, p_worker, now() + p_lease_ms * interval '1 millisecond', p_lease_ms
        FROM claimed c
        RETURNING s.execution_id, s.lease_expires_at
    )
    SELECT a.ok, c.execution_id, c.lane, c.attempts, c.lease_epoch, c.payload::text, l.lease_expires_at
    FROM alive a LEFT JOIN (claimed c JOIN leased l ON l.execution_id = c.execution_id) ON true
    ORDER BY c.execution_id;
END
$$;

-- Completion and failure of a batch (a JSON array), as functions for the same reason as the
-- claim: a session that kept a plan made while `executions` was small must not scan it whole
-- once it is large. Each returns the executions it finished (failure: and their new state and
-- run_at); the others' epochs were not current.
CREATE FUNCTION workflow.complete(p_items jsonb)
RETURNS TABLE (execution_id uuid)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT * FROM jsonb_to_recordset(p_items) AS i(execution_id uuid, epoch bigint, result jsonb)
    ), done AS (
        UPDATE workflow.executions e
        SET state = 'completed', result = i.result, updated_at = now(), finished_at = now()
        FROM input i WHERE e.execution_id = i.execution_id AND e.lease_epoch = i.epoch AND e.state = 'running'
        RETURNING e.execution_id, e.namespace, e.unique_key
    ), unleased AS (
        DELETE FROM workflow.leases l USING done d WHERE l.execution_id = d.execution_id RETURNING l.execution_id, l.attempt_index
    ), ended AS (
        UPDATE workflow.attempts a SET state = 'completed', ended_at = now()
        FROM unleased u WHERE a.execution_id = u.execution_id AND a.attempt_index = u.attempt_index
    ), unkeyed AS (
        DELETE FROM workflow.unique_keys k USING done d
        WHERE d.unique_key IS NOT NULL AND k.namespace = d.namespace AND k.unique_key = d.unique_key AND k.execution_id = d.execution_id
    )
    SELECT d.execution_id FROM done d;
END
$$;

-- Retryable with attempts left: queued again after min(max, base · 2^(attempt-1)) times a
-- jitter factor in [0.75, 1.25] (the execution's own base and max, else these defaults).
CREATE FUNCTION workflow.fail(p_items jsonb, p_default_base_ms bigint, p_default_max_ms bigint)
RETURNS TABLE (execution_id uuid, state text, run_at timestamptz)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT * FROM jsonb_to_recordset(p_items) AS i(execution_id uuid, epoch bigint, error text, retryable boolean)
    ), failed AS (
        UPDATE workflow.executions e
        SET state = CASE WHEN i.retryable AND e.attempts < e.max_attempts THEN 'queued'
                         WHEN i.retryable THEN 'dead_lettered' ELSE 'failed' END,
            run_at = CASE WHEN i.retryable AND e.attempts < e.max_attempts
                          THEN now() + LEAST(COALESCE(e.retry_max_ms, p_default_max_ms)::float8,
                                             COALESCE(e.retry_base_ms, p_default_base_ms) * power(2::float8, LEAST(e.attempts - 1, 40)))
                                       * (0.75 + random() * 0.5) * interval '1 millisecond'
                          ELSE e.run_at END,
            finished_at = CASE WHEN i.retryable AND e.attempts < e.max_attempts THEN NULL ELSE now() END,
            last_error = i.error, updated_at = now()
        FROM input i WHERE e.execution_id = i.execution_id AND e.lease_epoch = i.epoch AND e.state = 'running'
        RETURNING e.execution_id, e.namespace, e.lane, e.priority, e.run_at, e.required_capabilities, e.state, e.unique_key
    ), unleased AS (
        DELETE FROM workflow.leases l USING failed f WHERE l.execution_id = f.execution_id RETURNING l.execution_id, l.attempt_index
    ), ended AS (
        UPDATE workflow.attempts a SET state = 'failed', ended_at = now()
        FROM unleased u WHERE a.execution_id = u.execution_id AND a.attempt_index = u.attempt_index
    ), requeued AS (
        INSERT INTO workflow.ready (namespace, lane, priority, run_at, execution_id, required_capabilities)
        SELECT f.namespace, f.lane, f.priority, f.run_at, f.execution_id, f.required_capabilities FROM failed f WHERE f.state = 'queued'
    ), unkeyed AS (
        DELETE FROM workflow.unique_keys k USING failed f
        WHERE f.state <> 'queued' AND f.unique_key IS NOT NULL
          AND k.namespace = f.namespace AND k.unique_key = f.unique_key AND k.execution_id = f.execution_id
    )
    SELECT f.execution_id, f.state, f.run_at FROM failed f;
END
$$;
