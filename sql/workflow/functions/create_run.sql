-- workflow.create_run: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql, sql/workflow/0018_flow_control.sql (a step's flow key), sql/workflow/0019_run_concurrency.sql (a run's own key).
--
-- A run's row and steps, made from a stored version's manifest, then advanced (its roots made
-- ready, whatever their kind). A manifest with a run concurrency key (`flow` at its top)
-- makes the run `queued` on its key's waiting list instead: the commit admits it while the key
-- has a free slot (workflow.flow_settle_runs), and admission advances it. False when the
-- idempotency key is taken (nothing made).

CREATE OR REPLACE FUNCTION workflow.create_run(p_run_id text, p_type text, p_hash text, p_manifest jsonb, p_input jsonb, p_idempotency_key text, p_deadline_ms bigint, p_budget_limit numeric, p_budget_unit text, p_actor text, p_namespace text, p_publisher uuid, p_version_chosen boolean, p_parent_run_id text, p_parent_step_id text, p_depth integer)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
-- Locks: inserts only (the run row is new), then advance_run's.
DECLARE
    v_roots text[];
    v_others boolean;
    v_flow jsonb := p_manifest -> 'flow';
    v_key text;
    v_deadline timestamptz := clock_timestamp() + p_deadline_ms * interval '1 millisecond';
BEGIN
    IF v_flow IS NOT NULL THEN
        v_key := 'r:' || p_type || '/' || workflow.flow_value(p_input #> (ARRAY(SELECT jsonb_array_elements_text(v_flow -> 'key')))[2:]);
    END IF;
    INSERT INTO workflow.runs (run_id, workflow_type, package_hash, input, idempotency_key, deadline, budget_limit, budget_unit, started_by,
                               namespace, parent_run_id, parent_step_id, depth, state, flow_key)
    VALUES (p_run_id, p_type, p_hash, p_input, p_idempotency_key, v_deadline,
            COALESCE(p_budget_limit, (p_manifest -> 'budget' ->> 'limit')::numeric),
            CASE WHEN p_budget_limit IS NOT NULL THEN p_budget_unit ELSE p_manifest -> 'budget' ->> 'unit' END, p_actor, p_namespace,
            p_parent_run_id, p_parent_step_id, p_depth, CASE WHEN v_key IS NULL THEN 'running' ELSE 'queued' END, v_key)
    ON CONFLICT (workflow_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;
    IF NOT FOUND THEN RETURN false; END IF;
    INSERT INTO workflow.run_steps (step_id, run_id, name, position, after_steps, lane, capabilities, max_attempts, timeout_ms,
                                    backoff_base_ms, backoff_max_ms, kind, wait, flow)
    SELECT 'step_' || workflow.ulid(), p_run_id, s ->> 'name', (ord - 1)::integer, ARRAY(SELECT jsonb_array_elements_text(s -> 'after')),
           s ->> 'lane', CASE WHEN s ? 'capabilities' THEN ARRAY(SELECT jsonb_array_elements_text(s -> 'capabilities')) END,
           (s ->> 'max_attempts')::integer, (s ->> 'timeout_ms')::bigint, (s ->> 'backoff_base_ms')::bigint, (s ->> 'backoff_max_ms')::bigint,
           COALESCE(s ->> 'kind', 'worker'), CASE WHEN COALESCE(s ->> 'kind', 'worker') <> 'worker' THEN s END, s -> 'flow'
    FROM jsonb_array_elements(p_manifest -> 'steps') WITH ORDINALITY AS t(s, ord);
    IF v_key IS NOT NULL THEN
        INSERT INTO workflow.run_waiting (namespace, flow_key, run_id, max_admitted, deadline)
        VALUES (COALESCE(p_namespace, 'runs'), v_key, p_run_id, (v_flow ->> 'limit')::integer, v_deadline);
        PERFORM engine.publish_event('run.queued',
            jsonb_strip_nulls(jsonb_build_object('run_id', p_run_id, 'workflow_type', p_type, 'package_hash', p_hash, 'version_chosen', p_version_chosen,
                                                 'parent_run_id', p_parent_run_id, 'concurrency_key', substr(v_key, length(p_type) + 4))),
            p_publisher);
        RETURN true;
    END IF;
    PERFORM engine.publish_event('run.started',
        jsonb_strip_nulls(jsonb_build_object('run_id', p_run_id, 'workflow_type', p_type, 'package_hash', p_hash, 'version_chosen', p_version_chosen,
                                             'parent_run_id', p_parent_run_id)),
        p_publisher);
    -- Roots that are all worker steps (most workflows) are enqueued as before 0016; any other
    -- kind among them goes through advance_run.
    SELECT array_agg(s ->> 'name'), bool_or(COALESCE(s ->> 'kind', 'worker') <> 'worker') INTO v_roots, v_others
    FROM jsonb_array_elements(p_manifest -> 'steps') AS s
    WHERE jsonb_array_length(s -> 'after') = 0;
    IF v_others THEN
        PERFORM workflow.advance_run(p_run_id, 'engine', NULL);
    ELSE
        PERFORM workflow.enqueue_steps(p_run_id, v_roots, COALESCE(p_namespace, 'runs'));
    END IF;
    RETURN true;
END
$function$;
