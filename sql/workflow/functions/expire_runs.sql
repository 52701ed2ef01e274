-- workflow.expire_runs: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0007_run_engine.sql, sql/workflow/0011_run_strays.sql, sql/workflow/0012_lock_order_and_trust.sql, sql/workflow/0019_run_concurrency.sql (queued runs past their deadline).
--
-- The deadline duty's page: overdue runs fail (as before); then the recorded strays, each
-- taken in lock order (its run, its ready row, its execution; none waited for).

CREATE OR REPLACE FUNCTION workflow.expire_runs(p_limit integer, p_actor text, p_term bigint)
 RETURNS integer
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
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
    -- Queued runs (on a key's waiting list) past their deadline fail too.
    FOR v_run IN
        SELECT w.run_id FROM workflow.run_waiting w JOIN workflow.runs r ON r.run_id = w.run_id
        WHERE w.deadline <= now() ORDER BY w.deadline LIMIT p_limit FOR UPDATE OF r SKIP LOCKED
    LOOP
        IF workflow.finish_run(v_run, 'failed', 'deadline_exceeded', 'the run passed its deadline while queued for its concurrency key', p_actor, p_term) THEN
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
$function$;
