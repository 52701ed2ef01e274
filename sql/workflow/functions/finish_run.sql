-- workflow.finish_run: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0007_run_engine.sql, sql/workflow/0011_run_strays.sql, sql/workflow/0012_lock_order_and_trust.sql, sql/workflow/0016_step_kinds.sql, sql/workflow/0019_run_concurrency.sql (a queued run finishes too), sql/workflow/0022_one_comparison_step_trigger.sql (no bitmap scans: its lookups by key are index scans).
--
-- A run's finish (0012's, extended): its running children are cancelled, its waiting steps
-- cancelled, its wakeups dropped, and its parent (if a child) learns of it.

CREATE OR REPLACE FUNCTION workflow.finish_run(p_run_id text, p_state text, p_reason text, p_error text, p_actor text, p_term bigint)
 RETURNS boolean
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_bitmapscan TO 'off'
AS $function$
-- Locks: the caller holds the run row; then children's run rows (SKIP LOCKED), ready →
-- executions (SKIP LOCKED) → leases → attempts → run_steps; its parent's run row (SKIP LOCKED).
DECLARE
    v_type text;
    v_parent text;
    v_execution uuid;
BEGIN
    UPDATE workflow.runs SET state = p_state, reason = p_reason, error = left(p_error, 4096), finished_by = p_actor, term = p_term,
                             finished_at = clock_timestamp()
    WHERE run_id = p_run_id AND state IN ('running', 'queued')
    RETURNING workflow_type, parent_run_id INTO v_type, v_parent;
    IF NOT FOUND THEN RETURN false; END IF;
    UPDATE workflow.run_steps SET state = 'skipped' WHERE run_id = p_run_id AND state = 'pending';
    PERFORM workflow.cancel_children(p_run_id, p_actor, p_term);
    UPDATE workflow.run_steps SET state = 'cancelled', finished_at = clock_timestamp() WHERE run_id = p_run_id AND state = 'waiting';
    DELETE FROM workflow.wakeups WHERE run_id = p_run_id;
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
    IF v_parent IS NOT NULL THEN PERFORM workflow.child_finished(p_run_id); END IF;
    RETURN true;
END
$function$;
