-- workflow.enqueue_steps: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0006_runs.sql, sql/workflow/0012_lock_order_and_trust.sql, sql/workflow/0018_flow_control.sql (keyed steps join their key's waiting list), sql/workflow/0019_run_concurrency.sql (the key's text through flow_value), sql/workflow/0020_step_path_cost.sql (a statement of its own for steps with no key), sql/workflow/0022_one_comparison_step_trigger.sql (the notification by an assignment; no bitmap scans), sql/workflow/0023_fewer_plan_nodes.sql (the count from the readied lanes' array).
--
-- A step's execution payload names its run, step and version, and the steps it runs after
-- (`after`, since 0023); the claim adds the run's input and those steps' outputs (read where
-- they are stored, once, by step_input).

CREATE OR REPLACE FUNCTION workflow.enqueue_steps(p_run_id text, p_names text[], p_namespace text)
 RETURNS integer
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_bitmapscan TO 'off'
AS $function$
DECLARE
    n integer;
    v_lanes text[];
    v_sent text;
BEGIN
    -- No step key among these steps (the usual case): a statement with no key and no waiting
    -- list. A plan's every write node opens its table and indexes at each call even when it
    -- writes nothing, so the keyed statement below is paid for only where a key is.
    IF NOT EXISTS (SELECT 1 FROM workflow.run_steps s WHERE s.run_id = p_run_id AND s.name = ANY (p_names) AND s.flow IS NOT NULL) THEN
        WITH spec AS (
            SELECT s.step_id, s.lane, s.capabilities, s.max_attempts, s.timeout_ms, s.backoff_base_ms, s.backoff_max_ms,
                   jsonb_build_object('run_id', r.run_id, 'step', s.name, 'package_hash', r.package_hash, 'after', to_jsonb(s.after_steps))
                       AS payload,
                   gen_random_uuid() AS execution_id
            FROM workflow.runs r
            JOIN workflow.run_steps s ON s.run_id = r.run_id AND s.name = ANY (p_names) AND s.state = 'pending'
            WHERE r.run_id = p_run_id
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
        -- Every step of spec is inserted, readied and marked: the readied lanes count them (an
        -- array, not count(*) and array_agg: an aggregate is set up again at every call).
        SELECT ARRAY(SELECT lane::text FROM readied) INTO v_lanes;
        v_sent := workflow.notify_queue(p_namespace, v_lanes)::text;  -- an expression, not a query (void reads as '')
        RETURN cardinality(v_lanes);
    END IF;
    WITH run AS (
        SELECT r.run_id, r.package_hash, r.workflow_type FROM workflow.runs r WHERE r.run_id = p_run_id
    ), spec AS (
        SELECT s.step_id, s.lane, s.capabilities, s.max_attempts, s.timeout_ms, s.backoff_base_ms, s.backoff_max_ms,
               jsonb_build_object('run_id', run.run_id, 'step', s.name, 'package_hash', run.package_hash, 'after', to_jsonb(s.after_steps))
                   AS payload,
               gen_random_uuid() AS execution_id,
               -- A keyed step's key: its kind, the key's value read from the run (workflow.flow_value),
               -- scoped by the type and step (a concurrency key) or by the lane (a fair key).
               CASE WHEN s.flow IS NOT NULL THEN
                   (s.flow ->> 'kind') || ':' || CASE WHEN s.flow ->> 'kind' = 'c' THEN run.workflow_type || '/' || s.name ELSE s.lane END || ':'
                   || workflow.flow_value(workflow.run_value(run.run_id, ARRAY(SELECT jsonb_array_elements_text(s.flow -> 'key'))))
               END AS flow_key,
               (s.flow ->> 'limit')::integer AS flow_limit
        FROM run
        JOIN workflow.run_steps s ON s.run_id = run.run_id AND s.name = ANY (p_names) AND s.state = 'pending'
    ), inserted AS (
        INSERT INTO workflow.executions (
            execution_id, namespace, lane, payload, max_attempts, required_capabilities, priority, run_at, retry_base_ms, retry_max_ms, step_id,
            step_lease_ms, run_id, flow_key)
        SELECT execution_id, p_namespace, lane, payload, max_attempts, capabilities, 0, clock_timestamp(), backoff_base_ms, backoff_max_ms,
               step_id, timeout_ms, p_run_id, flow_key
        FROM spec
        RETURNING execution_id, lane, priority, run_at, required_capabilities, flow_key
    ), readied AS (
        INSERT INTO workflow.ready (namespace, lane, priority, run_at, execution_id, required_capabilities)
        SELECT p_namespace, lane, priority, run_at, execution_id, required_capabilities FROM inserted WHERE flow_key IS NULL
        RETURNING lane
    ), waiting AS (
        -- Keyed steps join their key's waiting list; the commit admits them (sql/workflow/0018).
        INSERT INTO workflow.flow_waiting (namespace, flow_key, execution_id, lane, priority, run_at, required_capabilities, max_admitted)
        SELECT p_namespace, i.flow_key, i.execution_id, i.lane, i.priority, i.run_at, i.required_capabilities, spec.flow_limit
        FROM inserted i JOIN spec ON spec.execution_id = i.execution_id WHERE i.flow_key IS NOT NULL
    ), marked AS (
        UPDATE workflow.run_steps s SET state = 'queued', execution_id = spec.execution_id, queued_at = clock_timestamp()
        FROM spec WHERE s.step_id = spec.step_id
        RETURNING 1
    )
    SELECT count(*), (SELECT array_agg(lane::text) FROM readied) INTO n, v_lanes FROM marked;
    v_sent := workflow.notify_queue(p_namespace, v_lanes)::text;  -- an expression, not a query (void reads as '')
    RETURN n;
END
$function$;
