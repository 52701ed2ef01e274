-- workflow.create_runs: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0019_run_concurrency.sql.
--
-- workflow.create_run for many top-level runs of one version at once, set by set: their rows,
-- their steps, their `run.started` events and their roots' executions, in a few statements
-- instead of a dozen per run. For versions whose roots are all worker steps and that have no
-- run concurrency key (the caller checks: workflow.fire_schedules falls back to start_run for
-- the others). `p_items`: [{"n", "input", "idempotency_key"}]. Returns one row per item: its
-- run and whether this call created it (false: the idempotency key had started it already).

CREATE OR REPLACE FUNCTION workflow.create_runs(p_type text, p_hash text, p_manifest jsonb, p_items jsonb, p_actor text, p_namespace text, p_publisher uuid)
 RETURNS TABLE(n integer, run_id text, created boolean)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
-- Locks: inserts only (the run rows are new; a key taken by a concurrent start is skipped).
DECLARE
    v_created text[];
    v_roots text[];
BEGIN
    WITH items AS (
        SELECT x.n, x.input, x.idempotency_key FROM jsonb_to_recordset(p_items) AS x(n integer, input jsonb, idempotency_key text)
    ), made AS (
        INSERT INTO workflow.runs AS nr (run_id, workflow_type, package_hash, input, idempotency_key, budget_limit, budget_unit, started_by, namespace, depth)
        SELECT 'run_' || workflow.ulid(), p_type, p_hash, i.input, i.idempotency_key, (p_manifest -> 'budget' ->> 'limit')::numeric,
               p_manifest -> 'budget' ->> 'unit', p_actor, p_namespace, 0
        FROM items i ORDER BY i.n
        ON CONFLICT (workflow_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING nr.run_id
    )
    SELECT array_agg(m.run_id) INTO v_created FROM made m;
    IF v_created IS NOT NULL THEN
        INSERT INTO workflow.run_steps (step_id, run_id, name, position, after_steps, lane, capabilities, max_attempts, timeout_ms,
                                        backoff_base_ms, backoff_max_ms, kind, wait, flow)
        SELECT 'step_' || workflow.ulid(), r.run_id, s ->> 'name', (ord - 1)::integer, ARRAY(SELECT jsonb_array_elements_text(s -> 'after')),
               s ->> 'lane', CASE WHEN s ? 'capabilities' THEN ARRAY(SELECT jsonb_array_elements_text(s -> 'capabilities')) END,
               (s ->> 'max_attempts')::integer, (s ->> 'timeout_ms')::bigint, (s ->> 'backoff_base_ms')::bigint, (s ->> 'backoff_max_ms')::bigint,
               COALESCE(s ->> 'kind', 'worker'), CASE WHEN COALESCE(s ->> 'kind', 'worker') <> 'worker' THEN s END, s -> 'flow'
        FROM unnest(v_created) AS r(run_id) CROSS JOIN jsonb_array_elements(p_manifest -> 'steps') WITH ORDINALITY AS t(s, ord);
        PERFORM engine.publish_event('run.started',
                    jsonb_build_object('run_id', r.run_id, 'workflow_type', p_type, 'package_hash', p_hash, 'version_chosen', false), p_publisher)
        FROM unnest(v_created) AS r(run_id);
        SELECT array_agg(s ->> 'name') INTO v_roots FROM jsonb_array_elements(p_manifest -> 'steps') AS s WHERE jsonb_array_length(s -> 'after') = 0;
        PERFORM workflow.enqueue_runs_steps(v_created, v_roots, COALESCE(p_namespace, 'runs'));
    END IF;
    RETURN QUERY
        SELECT x.n, r.run_id, r.run_id = ANY (COALESCE(v_created, '{}'))
        FROM jsonb_to_recordset(p_items) AS x(n integer, input jsonb, idempotency_key text)
        JOIN workflow.runs r ON r.workflow_type = p_type AND r.idempotency_key = x.idempotency_key;
END
$function$;
