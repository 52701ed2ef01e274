-- workflow.cancel_run: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0007_run_engine.sql, sql/workflow/0019_run_concurrency.sql (queued runs).
--
-- Cancels a running run (the actor and reason recorded). Returns the run's state before:
-- NULL when there is no such run.

CREATE OR REPLACE FUNCTION workflow.cancel_run(p_run_id text, p_reason text, p_actor text)
 RETURNS text
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
DECLARE
    v_state text;
BEGIN
    SELECT state INTO v_state FROM workflow.runs WHERE run_id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN RETURN NULL; END IF;
    IF v_state IN ('running', 'queued') THEN
        PERFORM workflow.finish_run(p_run_id, 'cancelled', 'cancelled', p_reason, p_actor, NULL);
    END IF;
    RETURN v_state;
END
$function$;
