-- workflow.fail_wait_step: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql.
--
-- A timer, signal or child step failed (pending: it could not begin to wait; or waiting): the
-- run fails with step_failed. The caller holds the run row.

CREATE OR REPLACE FUNCTION workflow.fail_wait_step(p_run_id text, p_step_id text, p_error text, p_actor text, p_term bigint)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_name text;
    v_kind text;
BEGIN
    UPDATE workflow.run_steps SET state = 'failed', error = left(p_error, 4096), finished_at = clock_timestamp()
    WHERE step_id = p_step_id AND state IN ('pending', 'waiting')
    RETURNING name, kind INTO v_name, v_kind;
    IF NOT FOUND THEN RETURN; END IF;
    PERFORM engine.publish_event('step.failed',
        jsonb_build_object('run_id', p_run_id, 'step', v_name, 'kind', v_kind, 'error', left(p_error, 1024)), NULL);
    PERFORM workflow.finish_run(p_run_id, 'failed', 'step_failed', format('step %s failed: %s', v_name, p_error), p_actor, p_term);
END
$function$;
