-- workflow.wait_step_succeeded: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql.
--
-- A waiting step succeeded with `p_output` (the caller holds the run row and advances the run).
-- False when the step was not waiting.

CREATE OR REPLACE FUNCTION workflow.wait_step_succeeded(p_run_id text, p_step_id text, p_output jsonb)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_name text;
    v_kind text;
BEGIN
    UPDATE workflow.run_steps SET state = 'succeeded', output = p_output, finished_at = clock_timestamp()
    WHERE step_id = p_step_id AND state = 'waiting'
    RETURNING name, kind INTO v_name, v_kind;
    IF NOT FOUND THEN RETURN false; END IF;
    PERFORM engine.publish_event('step.succeeded', jsonb_build_object('run_id', p_run_id, 'step', v_name, 'kind', v_kind), NULL);
    RETURN true;
END
$function$;
