-- workflow.lock_runs: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0012_lock_order_and_trust.sql.
--
-- Lock order, first step of a completion or failure: the run rows of the step executions among
-- `p_executions`, in run_id order (waiting for them).

CREATE OR REPLACE FUNCTION workflow.lock_runs(p_executions uuid[])
 RETURNS void
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET plan_cache_mode TO 'force_generic_plan'
AS $function$
BEGIN
    PERFORM 1 FROM workflow.runs r
    WHERE r.run_id = ANY (ARRAY(
        SELECT COALESCE(e.run_id, e.payload ->> 'run_id') FROM workflow.executions e
        WHERE e.execution_id = ANY (p_executions) AND e.step_id IS NOT NULL))
    ORDER BY r.run_id
    FOR UPDATE OF r;
END
$function$;
