-- workflow.enqueue_steps: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0006_runs.sql, sql/workflow/0012_lock_order_and_trust.sql.
--
-- A step's execution payload names its run, step and version only; the claim adds the run's
-- input and the outputs of the steps it runs after (read where they are stored, once).

CREATE OR REPLACE FUNCTION workflow.enqueue_steps(p_run_id text, p_names text[], p_namespace text)
 RETURNS integer
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
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
$function$;
