-- workflow.fence_execution: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0007_run_engine.sql.
--
-- Cancels one execution as the fence of a finished run: out of the queue, its epoch moved on
-- (its worker's renew, complete or fail is refused), its lease and attempt ended. Also takes
-- an execution its own completion just marked completed (the run had finished meanwhile):
-- its result is dropped and `workflow.complete` reports it as stale.

CREATE OR REPLACE FUNCTION workflow.fence_execution(p_execution_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
BEGIN
    DELETE FROM workflow.ready WHERE execution_id = p_execution_id;
    DELETE FROM workflow.leases WHERE execution_id = p_execution_id;
    UPDATE workflow.attempts a SET state = 'cancelled', ended_at = now()
    FROM workflow.executions e
    WHERE e.execution_id = p_execution_id AND a.execution_id = e.execution_id AND a.attempt_index = e.attempts
      AND a.state IN ('leased', 'completed');
    UPDATE workflow.executions
    SET state = 'cancelled', lease_epoch = lease_epoch + 1, finished_at = now(), updated_at = now(), result = NULL, cost = NULL,
        last_error = 'cancelled: its run finished'
    WHERE execution_id = p_execution_id AND state IN ('queued', 'running', 'completed');
END
$function$;
