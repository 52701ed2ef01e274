-- workflow.add_wakeup: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql.
--
-- Records a wakeup and rings the timer duty (identical notifications of one transaction are
-- delivered once).

CREATE OR REPLACE FUNCTION workflow.add_wakeup(p_run_id text, p_step_id text, p_due timestamp with time zone, p_reason text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO workflow.wakeups (run_id, step_id, due_at, reason) VALUES (p_run_id, p_step_id, p_due, p_reason);
    PERFORM pg_notify('regent_wakeups', '');
END
$function$;
