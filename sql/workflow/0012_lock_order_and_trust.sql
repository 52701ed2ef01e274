-- One lock order, leases bound to their holder, each document stored once (issue 26).
--
-- LOCK ORDER. Every statement that locks more than one of these takes them in this order, or
-- takes the later ones only with SKIP LOCKED (never waiting):
--
--     runs  →  ready  →  executions  →  leases  →  attempts  →  run_steps
--
-- (then budget_ledger, unique_keys, run_strays, which nothing holds while it waits.) Several
-- rows of one table are taken in key order (runs by run_id). So:
--   * a claim takes `ready` (SKIP LOCKED), then `executions`; it never touches `runs`;
--   * a completion or failure (single or batch) locks the run rows of its step executions
--     first, in run_id order (`lock_runs`), then its executions (whose trigger finds its run
--     locked already), leases, attempts, run steps;
--   * a run's finish (cancel, failure, deadline, budget) holds its run row, then takes each
--     step execution's `ready` row and then the execution, both SKIP LOCKED (`try_lock_execution`):
--     what another transaction holds is recorded as a stray for the deadline duty;
--   * the lease scanner takes the run row, the lease and the execution of each expired step
--     all with SKIP LOCKED, so it never waits; the stray sweep takes the run row, then the
--     `ready` row and the execution, all SKIP LOCKED;
--   * a plain cancel of a step execution locks its run first, then `ready`, then the execution;
--   * retention takes finished runs SKIP LOCKED, then deletes their executions (waiting only
--     for holders that took the run first, or never wait on it).
-- docs/workers-and-leases.md has the same list; tests in LockOrderTests hold each pair at a
-- barrier and check no 40P01.

-- The run a step execution belongs to, as a column (it was only inside the payload, which
-- also carried the run's whole input). NULL on plain executions, and on step executions made
-- before this file (their payload still names the run).
ALTER TABLE workflow.executions ADD COLUMN run_id text;
-- The token a lease was claimed with (NULL: claimed by a database client, not over HTTP).
ALTER TABLE workflow.leases ADD COLUMN token_id text;
-- The token that registered a worker instance (NULL: registered by a database client). A
-- worker instance is bound to it: another token can neither re-register it nor claim as it.
ALTER TABLE workflow.workers ADD COLUMN token_id text;
-- The namespace a run's steps are enqueued in: the scope of the token that started it
-- (NULL before this file: `runs`).
ALTER TABLE workflow.runs ADD COLUMN namespace text CHECK (namespace IS NULL OR namespace ~ '^[A-Za-z0-9_.:-]{1,128}$');

-- Every queue notification is built here: `<namespace> <lane> <lane> …`, or `<namespace> *`
-- when that would not fit in a notification's 8000 bytes (a waiter on `*` claims in all its lanes).
CREATE FUNCTION workflow.notify_queue(p_namespace text, p_lanes text[]) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_payload text;
BEGIN
    IF p_lanes IS NULL OR cardinality(p_lanes) = 0 THEN RETURN; END IF;
    v_payload := p_namespace || ' ' || array_to_string(ARRAY(SELECT DISTINCT l FROM unnest(p_lanes) AS l ORDER BY l), ' ');
    IF octet_length(v_payload) > 7000 THEN v_payload := p_namespace || ' *'; END IF;
    PERFORM pg_notify('regent_queue', v_payload);
END
$$;

-- Lock order, first step of a completion or failure: the run rows of the step executions among
-- `p_executions`, in run_id order (waiting for them).
CREATE FUNCTION workflow.lock_runs(p_executions uuid[]) RETURNS void LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    PERFORM 1 FROM workflow.runs r
    WHERE r.run_id = ANY (ARRAY(
        SELECT COALESCE(e.run_id, e.payload ->> 'run_id') FROM workflow.executions e
        WHERE e.execution_id = ANY (p_executions) AND e.step_id IS NOT NULL))
    ORDER BY r.run_id
    FOR UPDATE OF r;
END
$$;

-- Lock order inside a run's finish or the stray sweep (the run row held): the execution's
-- `ready` row, then the execution, both without waiting. False when another transaction holds
-- either (a claim holds the `ready` row it picked until it commits), or when the execution is
-- no longer queued or running.
CREATE FUNCTION workflow.try_lock_execution(p_execution_id uuid) RETURNS boolean LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
BEGIN
    PERFORM 1 FROM workflow.ready WHERE execution_id = p_execution_id FOR UPDATE SKIP LOCKED;
    IF NOT FOUND AND EXISTS (SELECT 1 FROM workflow.ready WHERE execution_id = p_execution_id) THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM workflow.executions WHERE execution_id = p_execution_id AND state IN ('queued', 'running') FOR UPDATE SKIP LOCKED;
    RETURN FOUND;
END
$$;

-- A run's finish: as in 0011, with each execution taken in lock order (ready, then execution).
CREATE OR REPLACE FUNCTION workflow.finish_run(p_run_id text, p_state text, p_reason text, p_error text, p_actor text, p_term bigint)
RETURNS boolean LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
-- Locks: the caller holds the run row; then ready → executions (SKIP LOCKED) → leases → attempts → run_steps.
DECLARE
    v_type text;
    v_execution uuid;
BEGIN
    UPDATE workflow.runs SET state = p_state, reason = p_reason, error = left(p_error, 4096), finished_by = p_actor, term = p_term,
                             finished_at = clock_timestamp()
    WHERE run_id = p_run_id AND state = 'running'
    RETURNING workflow_type INTO v_type;
    IF NOT FOUND THEN RETURN false; END IF;
    UPDATE workflow.run_steps SET state = 'skipped' WHERE run_id = p_run_id AND state = 'pending';
    FOR v_execution IN
        SELECT s.execution_id FROM workflow.run_steps s
        WHERE s.run_id = p_run_id AND s.state IN ('queued', 'running') AND s.execution_id IS NOT NULL
        ORDER BY s.execution_id
    LOOP
        IF workflow.try_lock_execution(v_execution) THEN
            PERFORM workflow.fence_execution(v_execution);
            UPDATE workflow.run_steps SET state = 'cancelled', finished_at = clock_timestamp() WHERE execution_id = v_execution;
        END IF;
    END LOOP;
    INSERT INTO workflow.run_strays (execution_id, run_id)
    SELECT s.execution_id, s.run_id FROM workflow.run_steps s
    WHERE s.run_id = p_run_id AND s.state IN ('queued', 'running') AND s.execution_id IS NOT NULL
    ON CONFLICT DO NOTHING;
    PERFORM engine.publish_event(
        CASE p_state WHEN 'cancelled' THEN 'run.cancelled' ELSE 'run.failed' END,
        jsonb_build_object('run_id', p_run_id, 'workflow_type', v_type, 'reason', p_reason, 'error', left(p_error, 1024), 'actor', p_actor,
                           'term', p_term),
        NULL);
    RETURN true;
END
$$;

-- The deadline duty's page: overdue runs fail (as before); then the recorded strays, each
-- taken in lock order (its run, its ready row, its execution; none waited for).
CREATE OR REPLACE FUNCTION workflow.expire_runs(p_limit integer, p_actor text, p_term bigint) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
-- Locks: runs (SKIP LOCKED) → ready → executions (SKIP LOCKED) → leases → attempts → run_steps.
DECLARE
    v_run text;
    v_execution uuid;
    n integer := 0;
BEGIN
    FOR v_run IN
        SELECT run_id FROM workflow.runs WHERE state = 'running' AND deadline <= now() ORDER BY deadline LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        IF workflow.finish_run(v_run, 'failed', 'deadline_exceeded', 'the run passed its deadline', p_actor, p_term) THEN
            n := n + 1;
        END IF;
    END LOOP;
    FOR v_execution, v_run IN
        SELECT st.execution_id, st.run_id FROM workflow.run_strays st ORDER BY st.recorded_at, st.execution_id LIMIT p_limit
    LOOP
        PERFORM 1 FROM workflow.runs WHERE run_id = v_run FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        IF NOT EXISTS (SELECT 1 FROM workflow.executions e WHERE e.execution_id = v_execution AND e.state IN ('queued', 'running')) THEN
            DELETE FROM workflow.run_strays WHERE execution_id = v_execution;
        ELSIF workflow.try_lock_execution(v_execution) THEN
            PERFORM workflow.fence_execution(v_execution);
            UPDATE workflow.run_steps SET state = 'cancelled', finished_at = clock_timestamp()
            WHERE execution_id = v_execution AND state IN ('queued', 'running');
            DELETE FROM workflow.run_strays WHERE execution_id = v_execution;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

-- A step's execution payload names its run, step and version only; the claim adds the run's
-- input and the outputs of the steps it runs after (read where they are stored, once).
CREATE OR REPLACE FUNCTION workflow.enqueue_steps(p_run_id text, p_names text[], p_namespace text) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
DECLARE
    n integer;
    v_lanes text[];
BEGIN
    WITH run AS (
        SELECT r.run_id, r.package_hash FROM workflow.runs r WHERE r.run_id = p_run_id
    ), spec AS (
        SELECT s.step_id, s.lane, s.capabilities, s.max_attempts, s.timeout_ms, s.backoff_base_ms, s.backoff_max_ms,
               jsonb_build_object('run_id', run.run_id, 'step', s.name, 'package_hash', run.package_hash) AS payload,
               gen_random_uuid() AS execution_id
        FROM run
        JOIN workflow.run_steps s ON s.run_id = run.run_id AND s.name = ANY (p_names) AND s.state = 'pending'
    ), inserted AS (
        INSERT INTO workflow.executions (
            execution_id, namespace, lane, payload, max_attempts, required_capabilities, priority, run_at, retry_base_ms, retry_max_ms, step_id,
            step_lease_ms, run_id)
        SELECT execution_id, p_namespace, lane, payload, max_attempts, capabilities, 0, clock_timestamp(), backoff_base_ms, backoff_max_ms,
               step_id, timeout_ms, p_run_id
        FROM spec
        RETURNING execution_id, lane, priority, run_at, required_capabilities
    ), readied AS (
        INSERT INTO workflow.ready (namespace, lane, priority, run_at, execution_id, required_capabilities)
        SELECT p_namespace, lane, priority, run_at, execution_id, required_capabilities FROM inserted
        RETURNING lane
    ), marked AS (
        UPDATE workflow.run_steps s SET state = 'queued', execution_id = spec.execution_id, queued_at = clock_timestamp()
        FROM spec WHERE s.step_id = spec.step_id
        RETURNING 1
    )
    SELECT count(*), (SELECT array_agg(lane::text) FROM readied) INTO n, v_lanes FROM marked;
    PERFORM workflow.notify_queue(p_namespace, v_lanes);
    RETURN n;
END
$$;

-- A step's output is stored once, in its execution's `result` (run_steps.output stays for
-- steps finished before this file); the run's output is read from there when it succeeds.
CREATE OR REPLACE FUNCTION workflow.step_execution_changed() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
-- Locks: the run row (already held by every caller that follows the lock order), run_steps,
-- budget_ledger; a finish from here takes ready → executions SKIP LOCKED.
DECLARE
    v_step workflow.run_steps%ROWTYPE;
    v_run workflow.runs%ROWTYPE;
    v_spent numeric;
    v_ready text[];
    v_all_done boolean;
BEGIN
    SELECT * INTO v_run FROM workflow.runs WHERE run_id = COALESCE(NEW.run_id, NEW.payload ->> 'run_id') FOR UPDATE;
    IF NOT FOUND THEN RETURN NULL; END IF;
    IF v_run.state <> 'running' THEN
        -- The run finished first: nothing advances; a completion that was in flight is fenced.
        IF NEW.state = 'cancelled' THEN
            NULL;  -- a fence of this run's own finish
        ELSIF NEW.state = 'completed' THEN
            PERFORM workflow.fence_execution(NEW.execution_id);
            UPDATE workflow.run_steps SET state = 'cancelled', finished_at = clock_timestamp()
            WHERE step_id = NEW.step_id AND state IN ('queued', 'running');
        ELSE
            UPDATE workflow.run_steps SET state = 'failed', error = NEW.last_error, finished_at = clock_timestamp()
            WHERE step_id = NEW.step_id AND state IN ('queued', 'running');
        END IF;
        RETURN NULL;
    END IF;

    IF NEW.state = 'completed' THEN
        UPDATE workflow.run_steps SET state = 'succeeded', finished_at = clock_timestamp() WHERE step_id = NEW.step_id
        RETURNING * INTO v_step;
        v_spent := v_run.budget_spent;
        IF NEW.cost IS NOT NULL AND jsonb_array_length(NEW.cost) > 0 THEN
            INSERT INTO workflow.budget_ledger (entry_id, run_id, step_name, amount, unit)
            SELECT 'budget_' || workflow.ulid(), v_run.run_id, v_step.name, (c ->> 'amount')::numeric,
                   COALESCE(c ->> 'unit', v_run.budget_unit, 'units')
            FROM jsonb_array_elements(NEW.cost) AS c;
            SELECT v_spent + COALESCE(sum((c ->> 'amount')::numeric), 0) INTO v_spent
            FROM jsonb_array_elements(NEW.cost) AS c
            WHERE COALESCE(c ->> 'unit', v_run.budget_unit, 'units') = COALESCE(v_run.budget_unit, 'units');
            UPDATE workflow.runs SET budget_spent = v_spent WHERE run_id = v_run.run_id;
        END IF;
        PERFORM engine.publish_event('step.succeeded',
            jsonb_build_object('run_id', v_run.run_id, 'step', v_step.name, 'execution_id', NEW.execution_id, 'epoch', NEW.lease_epoch), NULL);
        IF v_run.budget_limit IS NOT NULL AND v_spent >= v_run.budget_limit THEN
            PERFORM workflow.finish_run(v_run.run_id, 'failed', 'budget_exceeded',
                format('the run spent %s %s of its budget of %s', v_spent, v_run.budget_unit, v_run.budget_limit), 'engine', NULL);
            RETURN NULL;
        END IF;
        SELECT array_agg(s.name ORDER BY s.position) FILTER (
                   WHERE s.state = 'pending' AND NOT EXISTS (
                       SELECT 1 FROM workflow.run_steps d WHERE d.run_id = s.run_id AND d.name = ANY (s.after_steps) AND d.state <> 'succeeded')),
               bool_and(s.state = 'succeeded')
        INTO v_ready, v_all_done
        FROM workflow.run_steps s WHERE s.run_id = v_run.run_id;
        IF v_ready IS NOT NULL THEN
            PERFORM workflow.enqueue_steps(v_run.run_id, v_ready, NEW.namespace);
        ELSIF v_all_done THEN
            -- The output: each final step's output (a step no other runs after), by name.
            UPDATE workflow.runs SET state = 'succeeded', finished_at = clock_timestamp(), finished_by = 'engine',
                output = (SELECT jsonb_object_agg(s.name, COALESCE(s.output, e.result)) FROM workflow.run_steps s
                          LEFT JOIN workflow.executions e ON e.execution_id = s.execution_id
                          WHERE s.run_id = v_run.run_id
                            AND NOT EXISTS (SELECT 1 FROM workflow.run_steps t WHERE t.run_id = s.run_id AND s.name = ANY (t.after_steps)))
            WHERE run_id = v_run.run_id;
            PERFORM engine.publish_event('run.succeeded',
                jsonb_build_object('run_id', v_run.run_id, 'workflow_type', v_run.workflow_type), NULL);
        END IF;
    ELSIF NEW.state IN ('failed', 'dead_lettered', 'cancelled') THEN
        UPDATE workflow.run_steps SET state = 'failed', error = NEW.last_error, finished_at = clock_timestamp() WHERE step_id = NEW.step_id
        RETURNING * INTO v_step;
        PERFORM engine.publish_event('step.failed',
            jsonb_build_object('run_id', v_run.run_id, 'step', v_step.name, 'execution_id', NEW.execution_id, 'error', left(NEW.last_error, 1024)),
            NULL);
        PERFORM workflow.finish_run(v_run.run_id, 'failed', 'step_failed',
            format('step %s failed after %s attempt(s): %s', v_step.name, NEW.attempts, NEW.last_error), 'engine', NULL);
    END IF;
    RETURN NULL;
END
$$;

-- The claim, bound to a token: the worker instance must be registered and alive, and (with a
-- token) registered by that token; the lease records the token. `p_lease_ms` NULL: a step's
-- execution gets its step's timeout, a plain one 30 s; given: that length, for both.
-- A step's payload is its run's input and the outputs of the steps it runs after, read here.
CREATE FUNCTION workflow.claim(
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
           CASE WHEN c.step_id IS NULL THEN c.payload::text ELSE (c.payload || sp.extra)::text END,
           l.lease_expires_at,
           CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'run_id' END,
           CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'step' END,
           CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'package_hash' END
    FROM alive a LEFT JOIN (claimed c JOIN leased l ON l.execution_id = c.execution_id
                            -- A step's input and earlier outputs, read where each is stored once
                            -- (planned with the claim; nothing runs for a plain execution).
                            LEFT JOIN LATERAL (
                                SELECT jsonb_build_object(
                                    'input', r.input,
                                    'after', CASE WHEN cardinality(st.after_steps) = 0 THEN '{}'::jsonb ELSE COALESCE(
                                        (SELECT jsonb_object_agg(d.name, COALESCE(d.output, de.result))
                                         FROM workflow.run_steps d LEFT JOIN workflow.executions de ON de.execution_id = d.execution_id
                                         WHERE d.run_id = st.run_id AND d.name = ANY (st.after_steps)), '{}'::jsonb) END) AS extra
                                FROM workflow.run_steps st JOIN workflow.runs r ON r.run_id = st.run_id
                                WHERE c.step_id IS NOT NULL AND st.step_id = c.step_id) sp ON true) ON true
    ORDER BY c.execution_id;
END
$$;

-- The old claim (no token): the same claim, as a database client.
CREATE OR REPLACE FUNCTION workflow.claim(
    p_namespace text, p_worker text, p_lanes text[], p_capabilities text[], p_lease_ms bigint, p_limit integer)
RETURNS TABLE (alive boolean, execution_id uuid, lane text, attempt_index integer, lease_epoch bigint, payload text,
               lease_expires_at timestamptz, run_id text, step text, package_hash text)
LANGUAGE sql VOLATILE AS $$
    SELECT * FROM workflow.claim(p_namespace, p_worker, p_lanes, p_capabilities, p_lease_ms, p_limit, NULL::text)
$$;

-- Completion bound to the lease's holder: with a token, only a lease claimed with that token;
-- with an item's `worker`, only that worker instance's lease. Run rows first (lock order).
CREATE FUNCTION workflow.complete(p_items jsonb, p_token text)
RETURNS TABLE (execution_id uuid)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
-- Locks: runs (run_id order) → executions → leases → attempts → (trigger) run_steps.
#variable_conflict use_column
DECLARE
    v_plain uuid[];
    v_steps uuid[];
BEGIN
    WITH input AS (
        SELECT * FROM jsonb_to_recordset(p_items) AS i(execution_id uuid, epoch bigint, result jsonb, cost jsonb, worker text)
    ), runs_locked AS (
        -- Lock order: the run rows of the batch's step executions, in run_id order, before any
        -- execution (an uncorrelated condition of the update: evaluated once, before its scan).
        SELECT r.run_id FROM workflow.runs r
        WHERE r.run_id = ANY (ARRAY(
            SELECT COALESCE(x.run_id, x.payload ->> 'run_id') FROM workflow.executions x
            WHERE x.execution_id = ANY (ARRAY(SELECT execution_id FROM input)) AND x.step_id IS NOT NULL))
        ORDER BY r.run_id
        FOR UPDATE OF r
    ), done AS (
        UPDATE workflow.executions e
        SET state = 'completed', result = i.result, cost = i.cost, updated_at = now(), finished_at = now()
        FROM input i
        WHERE (SELECT count(*) FROM runs_locked) >= 0
          AND e.execution_id = i.execution_id AND e.lease_epoch = i.epoch AND e.state = 'running'
          -- The holder: only when a token or a worker instance is given (a database client's
          -- completion skips the probe).
          AND ((p_token IS NULL AND i.worker IS NULL) OR EXISTS (
                SELECT 1 FROM workflow.leases h
                WHERE h.execution_id = i.execution_id AND h.lease_epoch = i.epoch
                  AND (p_token IS NULL OR h.token_id = p_token) AND (i.worker IS NULL OR h.worker_instance_id = i.worker)))
        RETURNING e.execution_id, e.namespace, e.unique_key, e.step_id
    ), unleased AS (
        DELETE FROM workflow.leases l USING done d WHERE l.execution_id = d.execution_id RETURNING l.execution_id, l.attempt_index
    ), ended AS (
        UPDATE workflow.attempts a SET state = 'completed', ended_at = now()
        FROM unleased u WHERE a.execution_id = u.execution_id AND a.attempt_index = u.attempt_index
    ), unkeyed AS (
        DELETE FROM workflow.unique_keys k USING done d
        WHERE d.unique_key IS NOT NULL AND k.namespace = d.namespace AND k.unique_key = d.unique_key AND k.execution_id = d.execution_id
    )
    SELECT array_agg(d.execution_id) FILTER (WHERE d.step_id IS NULL), array_agg(d.execution_id) FILTER (WHERE d.step_id IS NOT NULL)
    INTO v_plain, v_steps FROM done d;
    IF v_plain IS NOT NULL THEN RETURN QUERY SELECT unnest(v_plain); END IF;
    IF v_steps IS NOT NULL THEN
        RETURN QUERY SELECT e.execution_id FROM workflow.executions e WHERE e.execution_id = ANY (v_steps) AND e.state = 'completed';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION workflow.complete(p_items jsonb)
RETURNS TABLE (execution_id uuid)
LANGUAGE sql VOLATILE AS $$
    SELECT * FROM workflow.complete(p_items, NULL::text)
$$;

CREATE FUNCTION workflow.fail(p_items jsonb, p_default_base_ms bigint, p_default_max_ms bigint, p_token text)
RETURNS TABLE (execution_id uuid, state text, run_at timestamptz)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
-- Locks: runs (run_id order) → executions → leases → attempts → ready (insert) → (trigger) run_steps.
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT * FROM jsonb_to_recordset(p_items) AS i(execution_id uuid, epoch bigint, error text, retryable boolean, worker text)
    ), runs_locked AS (
        -- Lock order: as in complete.
        SELECT r.run_id FROM workflow.runs r
        WHERE r.run_id = ANY (ARRAY(
            SELECT COALESCE(x.run_id, x.payload ->> 'run_id') FROM workflow.executions x
            WHERE x.execution_id = ANY (ARRAY(SELECT execution_id FROM input)) AND x.step_id IS NOT NULL))
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
          AND ((p_token IS NULL AND i.worker IS NULL) OR EXISTS (
                SELECT 1 FROM workflow.leases h
                WHERE h.execution_id = i.execution_id AND h.lease_epoch = i.epoch
                  AND (p_token IS NULL OR h.token_id = p_token) AND (i.worker IS NULL OR h.worker_instance_id = i.worker)))
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

CREATE OR REPLACE FUNCTION workflow.fail(p_items jsonb, p_default_base_ms bigint, p_default_max_ms bigint)
RETURNS TABLE (execution_id uuid, state text, run_at timestamptz)
LANGUAGE sql VOLATILE AS $$
    SELECT * FROM workflow.fail(p_items, p_default_base_ms, p_default_max_ms, NULL::text)
$$;

CREATE FUNCTION workflow.complete_and_claim(
    p_items jsonb, p_namespace text, p_worker text, p_lanes text[], p_capabilities text[], p_lease_ms bigint, p_limit integer, p_token text)
RETURNS TABLE (completed uuid[], alive boolean, execution_id uuid, lane text, attempt_index integer, lease_epoch bigint, payload text,
               lease_expires_at timestamptz, run_id text, step text, package_hash text)
LANGUAGE plpgsql VOLATILE
AS $$
-- Locks: the completion's (runs → executions → leases → attempts), then the claim's (ready → executions).
DECLARE
    v_done uuid[];
BEGIN
    IF jsonb_array_length(p_items) > 0 THEN
        SELECT array_agg(c.execution_id) INTO v_done FROM workflow.complete(p_items, p_token) AS c;
    END IF;
    RETURN QUERY
    SELECT COALESCE(v_done, '{}'::uuid[]), c.alive, c.execution_id, c.lane, c.attempt_index, c.lease_epoch, c.payload, c.lease_expires_at,
           c.run_id, c.step, c.package_hash
    FROM workflow.claim(p_namespace, p_worker, p_lanes, p_capabilities, p_lease_ms, p_limit, p_token) AS c;
END
$$;

CREATE OR REPLACE FUNCTION workflow.complete_and_claim(
    p_items jsonb, p_namespace text, p_worker text, p_lanes text[], p_capabilities text[], p_lease_ms bigint, p_limit integer)
RETURNS TABLE (completed uuid[], alive boolean, execution_id uuid, lane text, attempt_index integer, lease_epoch bigint, payload text,
               lease_expires_at timestamptz, run_id text, step text, package_hash text)
LANGUAGE sql VOLATILE AS $$
    SELECT * FROM workflow.complete_and_claim(p_items, p_namespace, p_worker, p_lanes, p_capabilities, p_lease_ms, p_limit, NULL::text)
$$;

-- Renewal bound to the holder. `p_lease_ms` NULL: by the step's timeout, or the lease's own
-- length (as last granted). The attempt records the new length and expiry too.
CREATE FUNCTION workflow.renew(p_execution_id uuid, p_epoch bigint, p_lease_ms bigint, p_token text, p_worker text)
RETURNS TABLE (lease_expires_at timestamptz, lease_ms bigint)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
-- Locks: leases → attempts.
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH renewed AS (
        UPDATE workflow.leases l
        SET lease_ms = COALESCE(p_lease_ms, e.step_lease_ms, l.lease_ms),
            lease_expires_at = now() + COALESCE(p_lease_ms, e.step_lease_ms, l.lease_ms) * interval '1 millisecond'
        FROM workflow.executions e
        WHERE l.execution_id = p_execution_id AND l.lease_epoch = p_epoch AND e.execution_id = l.execution_id
          AND (p_token IS NULL OR l.token_id = p_token) AND (p_worker IS NULL OR l.worker_instance_id = p_worker)
        RETURNING l.execution_id, l.attempt_index, l.lease_expires_at, l.lease_ms
    ), recorded AS (
        UPDATE workflow.attempts a SET lease_ms = r.lease_ms, lease_expires_at = r.lease_expires_at
        FROM renewed r WHERE a.execution_id = r.execution_id AND a.attempt_index = r.attempt_index
    )
    SELECT r.lease_expires_at, r.lease_ms::bigint FROM renewed r;
END
$$;

-- Starting a run: the deadline is computed here, with the database's clock (the deadline duty
-- compares it with the database's now()); the steps go to `p_namespace` (a scoped token's),
-- recorded on the run; with `p_allowed_lanes`, a manifest with a lane outside them is refused
-- (`refused` says why, nothing is written). An idempotency key already used for the type
-- returns that run with `same_input` saying whether this start's input is the one it had.
DROP FUNCTION workflow.start_run(text, jsonb, text, timestamptz, numeric, text, text, text, uuid);
CREATE FUNCTION workflow.start_run(
    p_type text, p_input jsonb, p_idempotency_key text, p_deadline_ms bigint, p_budget_limit numeric, p_budget_unit text,
    p_actor text, p_namespace text, p_publisher uuid, p_allowed_lanes text[])
RETURNS TABLE (run_id text, created boolean, package_hash text, same_input boolean, refused text)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
-- Locks: the version's package row (KEY SHARE), then inserts only.
DECLARE
    v_hash text;
    v_manifest jsonb;
    v_run text;
    v_roots text[];
    v_outside text;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        RETURN QUERY SELECT r.run_id, false, r.package_hash, r.input = p_input, NULL::text FROM workflow.runs r
                     WHERE r.workflow_type = p_type AND r.idempotency_key = p_idempotency_key;
        IF FOUND THEN RETURN; END IF;
    END IF;
    SELECT p.content_hash, p.manifest INTO v_hash, v_manifest
    FROM workflow.package_routes rt JOIN workflow.packages p ON p.content_hash = rt.content_hash
    WHERE rt.workflow_type = p_type
    FOR KEY SHARE OF p;
    IF NOT FOUND THEN RETURN; END IF;
    IF p_allowed_lanes IS NOT NULL THEN
        SELECT s ->> 'lane' INTO v_outside FROM jsonb_array_elements(v_manifest -> 'steps') AS s
        WHERE NOT (s ->> 'lane') = ANY (p_allowed_lanes) LIMIT 1;
        IF v_outside IS NOT NULL THEN
            RETURN QUERY SELECT NULL::text, false, v_hash, NULL::boolean, format('step lane %s is outside the token''s lanes', v_outside);
            RETURN;
        END IF;
    END IF;
    v_run := 'run_' || workflow.ulid();
    INSERT INTO workflow.runs (run_id, workflow_type, package_hash, input, idempotency_key, deadline, budget_limit, budget_unit, started_by, namespace)
    VALUES (v_run, p_type, v_hash, p_input, p_idempotency_key, clock_timestamp() + p_deadline_ms * interval '1 millisecond',
            COALESCE(p_budget_limit, (v_manifest -> 'budget' ->> 'limit')::numeric),
            CASE WHEN p_budget_limit IS NOT NULL THEN p_budget_unit ELSE v_manifest -> 'budget' ->> 'unit' END, p_actor, p_namespace)
    ON CONFLICT (workflow_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT r.run_id, false, r.package_hash, r.input = p_input, NULL::text FROM workflow.runs r
                     WHERE r.workflow_type = p_type AND r.idempotency_key = p_idempotency_key;
        RETURN;
    END IF;
    INSERT INTO workflow.run_steps (step_id, run_id, name, position, after_steps, lane, capabilities, max_attempts, timeout_ms,
                                    backoff_base_ms, backoff_max_ms)
    SELECT 'step_' || workflow.ulid(), v_run, s ->> 'name', (ord - 1)::integer, ARRAY(SELECT jsonb_array_elements_text(s -> 'after')),
           s ->> 'lane', ARRAY(SELECT jsonb_array_elements_text(s -> 'capabilities')), (s ->> 'max_attempts')::integer,
           (s ->> 'timeout_ms')::bigint, (s ->> 'backoff_base_ms')::bigint, (s ->> 'backoff_max_ms')::bigint
    FROM jsonb_array_elements(v_manifest -> 'steps') WITH ORDINALITY AS t(s, ord);
    SELECT array_agg(s ->> 'name') INTO v_roots FROM jsonb_array_elements(v_manifest -> 'steps') AS s
    WHERE jsonb_array_length(s -> 'after') = 0;
    PERFORM workflow.enqueue_steps(v_run, v_roots, p_namespace);
    PERFORM engine.publish_event('run.started', jsonb_build_object('run_id', v_run, 'workflow_type', p_type, 'package_hash', v_hash), p_publisher);
    RETURN QUERY SELECT v_run, true, v_hash, true, NULL::text;
END
$$;
