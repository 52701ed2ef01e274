-- Durable runs, advancing (issue 20). A run advances in the transaction that changes one of
-- its step executions, whoever changes it (a worker's complete or fail, the lease scanner):
-- a trigger on `workflow.executions` does it, so there is no second path to forget and no
-- leader in the loop. Everything that decides about a run locks its `runs` row first (sibling
-- completions of a join, failure, cancel, the deadline duty), so two of them never decide on
-- stale views. Executions of other runs' steps are only ever taken with SKIP LOCKED while a
-- run row is held: no lock cycle. docs/runs.md explains the state machines.

-- Cancels one execution as the fence of a finished run: out of the queue, its epoch moved on
-- (its worker's renew, complete or fail is refused), its lease and attempt ended. Also takes
-- an execution its own completion just marked completed (the run had finished meanwhile):
-- its result is dropped and `workflow.complete` reports it as stale.
CREATE FUNCTION workflow.fence_execution(p_execution_id uuid) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    DELETE FROM workflow.ready WHERE execution_id = p_execution_id;
    DELETE FROM workflow.leases WHERE execution_id = p_execution_id;
    UPDATE workflow.attempts a SET state = 'cancelled', ended_at = now()
    FROM workflow.executions e
    WHERE e.execution_id = p_execution_id AND a.execution_id = e.execution_id AND a.attempt_index = e.attempts
      AND a.state IN ('leased', 'completed');
    UPDATE workflow.executions
    SET state = 'cancelled', lease_epoch = lease_epoch + 1, finished_at = now(), updated_at = now(), result = NULL, cost = NULL,
        last_error = 'cancelled: its run finished'
    WHERE execution_id = p_execution_id AND state IN ('queued', 'running', 'completed');
END
$$;

-- Finishes a running run: `failed` (reason step_failed, deadline_exceeded, budget_exceeded)
-- or `cancelled`. Steps not started are skipped; queued and running ones are fenced and
-- cancelled (one whose execution another transaction holds right now is left to that
-- transaction's trigger, which finds the run finished and fences it; the deadline duty sweeps
-- any left over). The caller holds the run row. Returns false if the run was not running.
CREATE FUNCTION workflow.finish_run(p_run_id text, p_state text, p_reason text, p_error text, p_actor text, p_term bigint)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
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
        SELECT e.execution_id FROM workflow.run_steps s JOIN workflow.executions e ON e.execution_id = s.execution_id
        WHERE s.run_id = p_run_id AND s.state IN ('queued', 'running') AND e.state IN ('queued', 'running')
        FOR UPDATE OF e SKIP LOCKED
    LOOP
        PERFORM workflow.fence_execution(v_execution);
        UPDATE workflow.run_steps SET state = 'cancelled', finished_at = clock_timestamp() WHERE execution_id = v_execution;
    END LOOP;
    PERFORM engine.publish_event(
        CASE p_state WHEN 'cancelled' THEN 'run.cancelled' ELSE 'run.failed' END,
        jsonb_build_object('run_id', p_run_id, 'workflow_type', v_type, 'reason', p_reason, 'error', left(p_error, 1024), 'actor', p_actor,
                           'term', p_term),
        NULL);
    RETURN true;
END
$$;

-- What a change of a step execution's state means for its run. The run row is locked first
-- (its id is in the execution's payload, written by enqueue_steps).
CREATE FUNCTION workflow.step_execution_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_step workflow.run_steps%ROWTYPE;
    v_run workflow.runs%ROWTYPE;
    v_spent numeric;
    v_ready text[];
    v_all_done boolean;
BEGIN
    SELECT * INTO v_run FROM workflow.runs WHERE run_id = NEW.payload ->> 'run_id' FOR UPDATE;
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
        UPDATE workflow.run_steps SET state = 'succeeded', output = NEW.result, finished_at = clock_timestamp() WHERE step_id = NEW.step_id
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
        -- Every pending step whose `after` steps have all succeeded is enqueued now; with none
        -- pending and all succeeded, the run is done.
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
                output = (SELECT jsonb_object_agg(s.name, s.output) FROM workflow.run_steps s
                          WHERE s.run_id = v_run.run_id
                            AND NOT EXISTS (SELECT 1 FROM workflow.run_steps t WHERE t.run_id = s.run_id AND s.name = ANY (t.after_steps)))
            WHERE run_id = v_run.run_id;
            PERFORM engine.publish_event('run.succeeded',
                jsonb_build_object('run_id', v_run.run_id, 'workflow_type', v_run.workflow_type), NULL);
        END IF;
    ELSIF NEW.state IN ('failed', 'dead_lettered', 'cancelled') THEN
        -- A step execution cancelled on its own (POST /v1/executions/{id}/cancel) fails its run too:
        -- otherwise the run would wait for it forever.
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

-- Claims and retries (to running, back to queued) do not fire it: they decide nothing about the
-- run, and the claim stays as cheap as a plain one. A step's `running` is read from its
-- execution. A claim of a finished run's step that slipped past the fence is fenced when its
-- worker completes it, or by the deadline duty's sweep.
CREATE TRIGGER step_execution_changed
AFTER UPDATE OF state ON workflow.executions
FOR EACH ROW
WHEN (NEW.step_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state
      AND NEW.state IN ('completed', 'failed', 'dead_lettered', 'cancelled'))
EXECUTE FUNCTION workflow.step_execution_changed();

-- Completion now records the reported costs, and reports as done only what stayed completed
-- once the step triggers ran (an execution of a run that finished meanwhile is fenced).
CREATE OR REPLACE FUNCTION workflow.complete(p_items jsonb)
RETURNS TABLE (execution_id uuid)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    v_plain uuid[];
    v_steps uuid[];
BEGIN
    WITH input AS (
        SELECT * FROM jsonb_to_recordset(p_items) AS i(execution_id uuid, epoch bigint, result jsonb, cost jsonb)
    ), done AS (
        UPDATE workflow.executions e
        SET state = 'completed', result = i.result, cost = i.cost, updated_at = now(), finished_at = now()
        FROM input i WHERE e.execution_id = i.execution_id AND e.lease_epoch = i.epoch AND e.state = 'running'
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

-- The claim gives a step execution its step's timeout as its lease, and tells the worker which
-- run, step and package version the work belongs to.
DROP FUNCTION workflow.claim(text, text, text[], text[], bigint, integer);
CREATE FUNCTION workflow.claim(
    p_namespace text, p_worker text, p_lanes text[], p_capabilities text[], p_lease_ms bigint, p_limit integer)
RETURNS TABLE (alive boolean, execution_id uuid, lane text, attempt_index integer, lease_epoch bigint, payload text,
               lease_expires_at timestamptz, run_id text, step text, package_hash text)
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
        RETURNING e.execution_id, e.namespace, e.lane, e.attempts, e.lease_epoch, e.payload, e.step_id,
                  COALESCE(e.step_lease_ms, p_lease_ms) AS lease_ms
    ), attempt AS (
        INSERT INTO workflow.attempts AS a (execution_id, attempt_index, lease_epoch, worker_instance_id, state, lease_expires_at, lease_ms)
        SELECT c.execution_id, c.attempts, c.lease_epoch, p_worker, 'leased', now() + c.lease_ms * interval '1 millisecond', c.lease_ms
        FROM claimed c
    ), leased AS (
        INSERT INTO workflow.leases AS s (execution_id, namespace, attempt_index, lease_epoch, worker_instance_id, lease_expires_at, lease_ms)
        SELECT c.execution_id, c.namespace, c.attempts, c.lease_epoch, p_worker, now() + c.lease_ms * interval '1 millisecond', c.lease_ms
        FROM claimed c
        RETURNING s.execution_id, s.lease_expires_at
    )
    SELECT a.ok, c.execution_id, c.lane, c.attempts, c.lease_epoch, c.payload::text, l.lease_expires_at,
           CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'run_id' END,
           CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'step' END,
           CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'package_hash' END
    FROM alive a LEFT JOIN (claimed c JOIN leased l ON l.execution_id = c.execution_id) ON true
    ORDER BY c.execution_id;
END
$$;

-- Cancels a running run (the actor and reason recorded). Returns the run's state before:
-- NULL when there is no such run.
CREATE FUNCTION workflow.cancel_run(p_run_id text, p_reason text, p_actor text) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_state text;
BEGIN
    SELECT state INTO v_state FROM workflow.runs WHERE run_id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN RETURN NULL; END IF;
    IF v_state = 'running' THEN
        PERFORM workflow.finish_run(p_run_id, 'cancelled', 'cancelled', p_reason, p_actor, NULL);
    END IF;
    RETURN v_state;
END
$$;

-- The leader's deadline duty, one page: runs past their deadline fail with deadline_exceeded
-- (the term recorded); then step executions of finished runs that a fence had to skip (their
-- holder rolled back) are fenced. Returns how many runs it failed.
CREATE FUNCTION workflow.expire_runs(p_limit integer, p_actor text, p_term bigint) RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
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
    FOR v_execution IN
        SELECT e.execution_id FROM workflow.run_steps s
        JOIN workflow.runs r ON r.run_id = s.run_id AND r.state <> 'running'
        JOIN workflow.executions e ON e.execution_id = s.execution_id AND e.state IN ('queued', 'running')
        WHERE s.state IN ('queued', 'running')
        LIMIT p_limit
        FOR UPDATE OF r, e SKIP LOCKED
    LOOP
        PERFORM workflow.fence_execution(v_execution);
        UPDATE workflow.run_steps SET state = 'cancelled', finished_at = clock_timestamp() WHERE execution_id = v_execution;
    END LOOP;
    RETURN n;
END
$$;

-- Retention, one page: finished runs older than `p_age` with their steps, ledger rows and
-- executions. A run that has not finished is never touched.
CREATE FUNCTION workflow.prune_runs(p_age interval, p_limit integer) RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n integer;
BEGIN
    WITH doomed AS (
        SELECT run_id FROM workflow.runs WHERE finished_at < now() - p_age ORDER BY finished_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), executions AS (
        DELETE FROM workflow.executions e USING workflow.run_steps s, doomed d
        WHERE s.run_id = d.run_id AND e.execution_id = s.execution_id
    ), gone AS (
        DELETE FROM workflow.runs r USING doomed d WHERE r.run_id = d.run_id RETURNING 1
    )
    SELECT count(*) INTO n FROM gone;
    RETURN n;
END
$$;
