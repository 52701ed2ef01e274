-- workflow.try_lock_execution: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0012_lock_order_and_trust.sql.
--
-- Lock order inside a run's finish or the stray sweep (the run row held): the execution's
-- `ready` row, then the execution, both without waiting. False when another transaction holds
-- either (a claim holds the `ready` row it picked until it commits), or when the execution is
-- no longer queued or running.

CREATE OR REPLACE FUNCTION workflow.try_lock_execution(p_execution_id uuid)
 RETURNS boolean
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
BEGIN
    PERFORM 1 FROM workflow.ready WHERE execution_id = p_execution_id FOR UPDATE SKIP LOCKED;
    IF NOT FOUND AND EXISTS (SELECT 1 FROM workflow.ready WHERE execution_id = p_execution_id) THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM workflow.executions WHERE execution_id = p_execution_id AND state IN ('queued', 'running') FOR UPDATE SKIP LOCKED;
    RETURN FOUND;
END
$function$;
