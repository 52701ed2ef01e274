-- workflow.create_runs: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0019_run_concurrency.sql.
--
-- workflow.create_run for many top-level runs of one version at once, set by set: their rows,
-- their steps, their `run.started` events and their roots' executions, in a few statements
-- instead of a dozen per run. For versions whose roots are all worker steps without a step
-- key and that have no run concurrency key (the caller checks: workflow.fire_schedules falls
-- back to start_run for the others). `p_items`: [{"n", "input", "idempotency_key"}]. Returns one row per item: its
-- run and whether this call created it (false: the idempotency key had started it already).

CREATE OR REPLACE FUNCTION workflow.create_runs(p_type text, p_hash text, p_manifest jsonb, p_items jsonb, p_actor text, p_namespace text, p_publisher uuid)
 RETURNS TABLE(n integer, run_id text, created boolean)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
-- Locks: inserts only (the run rows are new; a key taken by a concurrent start is skipped);
-- ready's foreign key takes KEY SHARE on the new executions.
DECLARE
    v_created text[];
    v_lanes text[];
    v_namespace text := COALESCE(p_namespace, 'runs');
    -- Ids as workflow.ulid() writes them, its time part taken once for the page and 16 random
    -- characters of the alphabet's hex subset per id (62 random bits): a fifth of the cost of a
    -- full ulid() per id, which was the largest single cost of a page.
    v_time text := left(workflow.ulid(), 10);
BEGIN
    WITH items AS (
        SELECT x.n, x.input, x.idempotency_key FROM jsonb_to_recordset(p_items) AS x(n integer, input jsonb, idempotency_key text)
    ), made AS (
        INSERT INTO workflow.runs AS nr (run_id, workflow_type, package_hash, input, idempotency_key, budget_limit, budget_unit, started_by, namespace, depth)
        SELECT 'run_' || v_time || translate(substr(gen_random_uuid()::text, 20), '-', ''), p_type, p_hash, i.input, i.idempotency_key, (p_manifest -> 'budget' ->> 'limit')::numeric,
               p_manifest -> 'budget' ->> 'unit', p_actor, p_namespace, 0
        FROM items i ORDER BY i.n
        ON CONFLICT (workflow_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING nr.run_id
    )
    SELECT array_agg(m.run_id) INTO v_created FROM made m;
    IF v_created IS NOT NULL THEN
        -- The steps; the roots made queued with their executions in the same statement (what
        -- enqueue_steps does for one run, without reading back what was just written).
        WITH steps AS (
            INSERT INTO workflow.run_steps (step_id, run_id, name, position, after_steps, lane, capabilities, max_attempts, timeout_ms,
                                            backoff_base_ms, backoff_max_ms, kind, wait, flow, state, execution_id, queued_at)
            SELECT 'step_' || v_time || translate(substr(gen_random_uuid()::text, 20), '-', ''), r.run_id, s ->> 'name', (ord - 1)::integer, ARRAY(SELECT jsonb_array_elements_text(s -> 'after')),
                   s ->> 'lane', CASE WHEN s ? 'capabilities' THEN ARRAY(SELECT jsonb_array_elements_text(s -> 'capabilities')) END,
                   (s ->> 'max_attempts')::integer, (s ->> 'timeout_ms')::bigint, (s ->> 'backoff_base_ms')::bigint, (s ->> 'backoff_max_ms')::bigint,
                   COALESCE(s ->> 'kind', 'worker'), CASE WHEN COALESCE(s ->> 'kind', 'worker') <> 'worker' THEN s END, s -> 'flow',
                   CASE WHEN jsonb_array_length(s -> 'after') = 0 THEN 'queued' ELSE 'pending' END,
                   CASE WHEN jsonb_array_length(s -> 'after') = 0 THEN gen_random_uuid() END,
                   CASE WHEN jsonb_array_length(s -> 'after') = 0 THEN clock_timestamp() END
            FROM unnest(v_created) AS r(run_id) CROSS JOIN jsonb_array_elements(p_manifest -> 'steps') WITH ORDINALITY AS t(s, ord)
            RETURNING workflow.run_steps.step_id, workflow.run_steps.run_id, workflow.run_steps.name, workflow.run_steps.lane,
                      workflow.run_steps.capabilities, workflow.run_steps.max_attempts, workflow.run_steps.timeout_ms,
                      workflow.run_steps.backoff_base_ms, workflow.run_steps.backoff_max_ms, workflow.run_steps.execution_id
        ), inserted AS (
            INSERT INTO workflow.executions (
                execution_id, namespace, lane, payload, max_attempts, required_capabilities, priority, run_at, retry_base_ms, retry_max_ms, step_id,
                step_lease_ms, run_id)
            SELECT st.execution_id, v_namespace, st.lane, jsonb_build_object('run_id', st.run_id, 'step', st.name, 'package_hash', p_hash),
                   st.max_attempts, st.capabilities, 0, clock_timestamp(), st.backoff_base_ms, st.backoff_max_ms, st.step_id, st.timeout_ms, st.run_id
            FROM steps st WHERE st.execution_id IS NOT NULL
            RETURNING workflow.executions.execution_id, workflow.executions.lane, workflow.executions.priority, workflow.executions.run_at,
                      workflow.executions.required_capabilities
        ), readied AS (
            INSERT INTO workflow.ready (namespace, lane, priority, run_at, execution_id, required_capabilities)
            SELECT v_namespace, i.lane, i.priority, i.run_at, i.execution_id, i.required_capabilities FROM inserted i
            RETURNING workflow.ready.lane
        )
        SELECT array_agg(DISTINCT rd.lane::text) INTO v_lanes FROM readied rd;
        PERFORM engine.publish_event('run.started',
                    jsonb_build_object('run_id', r.run_id, 'workflow_type', p_type, 'package_hash', p_hash, 'version_chosen', false), p_publisher)
        FROM unnest(v_created) AS r(run_id);
        PERFORM workflow.notify_queue(v_namespace, v_lanes);
    END IF;
    RETURN QUERY
        SELECT x.n, r.run_id, c.run_id IS NOT NULL
        FROM jsonb_to_recordset(p_items) AS x(n integer, input jsonb, idempotency_key text)
        JOIN workflow.runs r ON r.workflow_type = p_type AND r.idempotency_key = x.idempotency_key
        LEFT JOIN unnest(v_created) AS c(run_id) ON c.run_id = r.run_id;
END
$function$;
