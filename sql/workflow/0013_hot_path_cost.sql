-- The hot path's cost, back to what it was before 0012 (issue 26: `bench queue` and `bench runs`
-- no slower). Measured per statement (pg_stat_statements; pgbench running the 0011 functions and
-- these side by side in one database, so both see the same tables at the same moment), 0012
-- made the claim of one plain execution about 13% dearer and its completion about 35% dearer.
-- Nearly all of it was executor start-up, paid by every call whatever it did: plan nodes that
-- a plain execution never runs (a lateral join, the run-row lock's scans, a holder probe) are
-- still initialised, relations opened and locked, expressions compiled. So:
--   * the claim reads a step's payload in a function called only for a step's row;
--   * a completion runs a statement for plain executions (the 0011 plan, which touches no run)
--     and, only when items are left, one for step executions that locks their run rows first
--     (lock order) and reads them again afterwards, so a step fenced by its own trigger (a
--     sibling's budget stop in the same batch) is reported stale;
--   * the holder check (a token, or an item's worker) filters the items before either, and
--     only when there is a holder to check: who claimed an execution at an epoch never changes.
-- Same results, same locks in the same order (sql/workflow/0012's header).

-- A claimed step's input and the outputs of the steps it runs after, read where each is stored
-- once. Called by the claim only for a step execution's row (a plain execution's claim runs
-- none of it).
CREATE FUNCTION workflow.step_payload(p_step_id text) RETURNS jsonb LANGUAGE plpgsql STABLE
AS $$
-- Locks: none (reads). No SET clause: a function with one saves and restores its settings at
-- every call (here, every claimed step); its only caller, the claim, plans with sequential
-- scans off already, and so are the plans made here under it.
BEGIN
    RETURN (SELECT jsonb_build_object(
        'input', r.input,
        'after', CASE WHEN cardinality(st.after_steps) = 0 THEN '{}'::jsonb ELSE COALESCE(
            (SELECT jsonb_object_agg(d.name, COALESCE(d.output, de.result))
             FROM workflow.run_steps d LEFT JOIN workflow.executions de ON de.execution_id = d.execution_id
             WHERE d.run_id = st.run_id AND d.name = ANY (st.after_steps)), '{}'::jsonb) END)
    FROM workflow.run_steps st JOIN workflow.runs r ON r.run_id = st.run_id
    WHERE st.step_id = p_step_id);
END
$$;

CREATE OR REPLACE FUNCTION workflow.claim(
    p_namespace text, p_worker text, p_lanes text[], p_capabilities text[], p_lease_ms bigint, p_limit integer, p_token text)
RETURNS TABLE (alive boolean, execution_id uuid, lane text, attempt_index integer, lease_epoch bigint, payload text,
               lease_expires_at timestamptz, run_id text, step text, package_hash text)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
-- Locks: ready (SKIP LOCKED) → executions; then inserts attempts and leases.
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH alive AS (
        SELECT EXISTS (
            SELECT 1 FROM workflow.workers w
            WHERE w.namespace = p_namespace AND w.worker_instance_id = p_worker AND NOT w.dead AND w.expires_at > now()
              AND (p_token IS NULL OR w.token_id = p_token)) AS ok
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
        RETURNING e.execution_id, e.namespace, e.lane, e.attempts, e.lease_epoch, e.payload, e.step_id,
                  COALESCE(p_lease_ms, e.step_lease_ms, 30000) AS lease_ms
    ), attempt AS (
        INSERT INTO workflow.attempts AS a (execution_id, attempt_index, lease_epoch, worker_instance_id, state, lease_expires_at, lease_ms)
        SELECT c.execution_id, c.attempts, c.lease_epoch, p_worker, 'leased', now() + c.lease_ms * interval '1 millisecond', c.lease_ms
        FROM claimed c
    ), leased AS (
        INSERT INTO workflow.leases AS s (execution_id, namespace, attempt_index, lease_epoch, worker_instance_id, lease_expires_at, lease_ms, token_id)
        SELECT c.execution_id, c.namespace, c.attempts, c.lease_epoch, p_worker, now() + c.lease_ms * interval '1 millisecond', c.lease_ms, p_token
        FROM claimed c
        RETURNING s.execution_id, s.lease_expires_at
    )
    SELECT a.ok, c.execution_id, c.lane::text, c.attempts, c.lease_epoch,
           CASE WHEN c.step_id IS NULL THEN c.payload::text ELSE (c.payload || workflow.step_payload(c.step_id))::text END,
           l.lease_expires_at,
           CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'run_id' END,
           CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'step' END,
           CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'package_hash' END
    FROM alive a LEFT JOIN (claimed c JOIN leased l ON l.execution_id = c.execution_id) ON true
    ORDER BY c.execution_id;
END
$$;

-- The items of a completion or failure whose lease at the item's epoch was claimed by this
-- holder: with `p_token`, with that token; with an item's `worker`, by that worker instance.
-- The others are dropped (the caller reports them stale and says why). A lease epoch's holder
-- is fixed when it is claimed, so filtering first and updating after is as good as one statement.
CREATE FUNCTION workflow.held_items(p_items jsonb, p_token text) RETURNS jsonb LANGUAGE plpgsql STABLE
AS $$
-- Locks: none (reads leases). No SET clause: its callers (complete, fail) plan with
-- sequential scans off already (see step_payload).
BEGIN
    RETURN COALESCE((
        SELECT jsonb_agg(j.item ORDER BY j.n) FROM jsonb_array_elements(p_items) WITH ORDINALITY AS j(item, n)
        WHERE EXISTS (
            SELECT 1 FROM workflow.leases h
            WHERE h.execution_id = (j.item ->> 'execution_id')::uuid AND h.lease_epoch = (j.item ->> 'epoch')::bigint
              AND (p_token IS NULL OR h.token_id = p_token)
              AND (j.item ->> 'worker' IS NULL OR h.worker_instance_id = j.item ->> 'worker'))), '[]'::jsonb);
END
$$;

-- Completion bound to the lease's holder (see held_items). Plain executions, then step
-- executions with their run rows locked first.
CREATE OR REPLACE FUNCTION workflow.complete(p_items jsonb, p_token text)
RETURNS TABLE (execution_id uuid)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
-- Locks: plain executions → leases → attempts; then runs (run_id order) → step executions →
-- leases → attempts → (trigger) run_steps. Holding a plain execution while waiting for a run
-- row cannot close a cycle: nothing that holds a run row waits for a plain execution.
#variable_conflict use_column
DECLARE
    v_count bigint;
    v_steps uuid[];
    v_final boolean;
BEGIN
    IF p_token IS NOT NULL OR p_items @? '$[*].worker' THEN
        p_items := workflow.held_items(p_items, p_token);
    END IF;
    -- Plain executions first, unless every item names its run (`run_id`, as the claim gave it:
    -- a step's worker saves the statement). An item that names a run but is a plain execution
    -- is not completed by the step statement: it is reported stale.
    IF p_items @? '$[*] ? (!(exists(@.run_id ? (@.type() == "string"))))' THEN
        RETURN QUERY
        WITH input AS (
            SELECT * FROM jsonb_to_recordset(p_items) AS i(execution_id uuid, epoch bigint, result jsonb, cost jsonb)
        ), done AS (
            UPDATE workflow.executions e
            SET state = 'completed', result = i.result, cost = i.cost, updated_at = now(), finished_at = now()
            FROM input i
            WHERE e.execution_id = i.execution_id AND e.lease_epoch = i.epoch AND e.state = 'running' AND e.step_id IS NULL
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
        GET DIAGNOSTICS v_count = ROW_COUNT;
        IF v_count = jsonb_array_length(p_items) THEN RETURN; END IF;
    ELSIF jsonb_array_length(p_items) = 0 THEN
        RETURN;
    END IF;

    -- Step executions (they never carry a unique key).
    WITH input AS (
        SELECT * FROM jsonb_to_recordset(p_items) AS i(execution_id uuid, epoch bigint, result jsonb, cost jsonb)
    ), runs_locked AS (
        -- Lock order: the run rows of the batch's step executions, in run_id order, before any
        -- of them (an uncorrelated condition of the update: evaluated once, before its scan).
        SELECT r.run_id, r.state FROM workflow.runs r
        WHERE r.run_id = ANY (ARRAY(
            SELECT COALESCE(x.run_id, x.payload ->> 'run_id') FROM workflow.executions x
            WHERE x.execution_id = ANY (ARRAY(SELECT (j ->> 'execution_id')::uuid FROM jsonb_array_elements(p_items) AS j))
              AND x.step_id IS NOT NULL))
        ORDER BY r.run_id
        FOR UPDATE OF r
    ), done AS (
        UPDATE workflow.executions e
        SET state = 'completed', result = i.result, cost = i.cost, updated_at = now(), finished_at = now()
        FROM input i
        WHERE (SELECT count(*) FROM runs_locked) >= 0
          AND e.execution_id = i.execution_id AND e.lease_epoch = i.epoch AND e.state = 'running' AND e.step_id IS NOT NULL
        RETURNING e.execution_id, COALESCE(e.run_id, e.payload ->> 'run_id') AS run_id
    ), unleased AS (
        DELETE FROM workflow.leases l USING done d WHERE l.execution_id = d.execution_id RETURNING l.execution_id, l.attempt_index
    ), ended AS (
        UPDATE workflow.attempts a SET state = 'completed', ended_at = now()
        FROM unleased u WHERE a.execution_id = u.execution_id AND a.attempt_index = u.attempt_index
    )
    SELECT array_agg(d.execution_id), count(DISTINCT d.run_id) = count(*) AND (SELECT bool_and(r.state = 'running') FROM runs_locked r)
    INTO v_steps, v_final FROM done d;
    IF v_steps IS NULL THEN RETURN; END IF;
    -- Each run once in the batch and running when locked: no trigger of this statement can
    -- have fenced another's completion (a finish fences only its own run's executions, and a
    -- completed one only through its own trigger when its run had finished before). Otherwise
    -- the triggers may have: what a sibling's finish fenced is no longer completed.
    IF v_final THEN
        FOREACH execution_id IN ARRAY v_steps LOOP RETURN NEXT; END LOOP;
    ELSE
        RETURN QUERY SELECT e.execution_id FROM workflow.executions e WHERE e.execution_id = ANY (v_steps) AND e.state = 'completed';
    END IF;
END
$$;

-- Failure bound to the lease's holder (see held_items), run rows first.
CREATE OR REPLACE FUNCTION workflow.fail(p_items jsonb, p_default_base_ms bigint, p_default_max_ms bigint, p_token text)
RETURNS TABLE (execution_id uuid, state text, run_at timestamptz)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
-- Locks: runs (run_id order) → executions → leases → attempts → ready (insert) → (trigger) run_steps.
#variable_conflict use_column
BEGIN
    IF p_token IS NOT NULL OR p_items @? '$[*].worker' THEN
        p_items := workflow.held_items(p_items, p_token);
    END IF;
    RETURN QUERY
    WITH input AS (
        SELECT * FROM jsonb_to_recordset(p_items) AS i(execution_id uuid, epoch bigint, error text, retryable boolean)
    ), runs_locked AS (
        -- Lock order: as in complete.
        SELECT r.run_id FROM workflow.runs r
        WHERE r.run_id = ANY (ARRAY(
            SELECT COALESCE(x.run_id, x.payload ->> 'run_id') FROM workflow.executions x
            WHERE x.execution_id = ANY (ARRAY(SELECT (j ->> 'execution_id')::uuid FROM jsonb_array_elements(p_items) AS j))
              AND x.step_id IS NOT NULL))
        ORDER BY r.run_id
        FOR UPDATE OF r
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
        FROM input i
        WHERE (SELECT count(*) FROM runs_locked) >= 0
          AND e.execution_id = i.execution_id AND e.lease_epoch = i.epoch AND e.state = 'running'
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
    SELECT f.execution_id, f.state::text, f.run_at FROM failed f;
END
$$;
