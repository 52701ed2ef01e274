-- workflow.fail: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0004_queue.sql, sql/workflow/0009_queue_hot_path.sql, sql/workflow/0012_lock_order_and_trust.sql, sql/workflow/0013_hot_path_cost.sql, sql/workflow/0025_drop_pre_0012_signatures.sql (dropped the signature kept for binaries before 0012), sql/workflow/0021_cheaper_row_checks.sql (the batch's ids as an array, as in complete), sql/workflow/0022_one_comparison_step_trigger.sql (no bitmap scans: its lookups by key are index scans).
--
-- Failure bound to the lease's holder (see held_items), run rows first.

CREATE OR REPLACE FUNCTION workflow.fail(p_items jsonb, p_default_base_ms bigint, p_default_max_ms bigint, p_token text)
 RETURNS TABLE(execution_id uuid, state text, run_at timestamp with time zone)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_bitmapscan TO 'off'
 SET plan_cache_mode TO 'force_generic_plan'
AS $function$
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
          AND e.execution_id = ANY (ARRAY(SELECT (j ->> 'execution_id')::uuid FROM jsonb_array_elements(p_items) AS j))
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
$function$;
