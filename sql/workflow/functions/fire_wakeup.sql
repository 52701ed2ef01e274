-- workflow.fire_wakeup: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql, sql/workflow/0019_run_concurrency.sql (queued runs).
--
-- One wakeup, its run's row held and the wakeup row deleted.

CREATE OR REPLACE FUNCTION workflow.fire_wakeup(p_run_id text, p_step_id text, p_reason text, p_actor text, p_term bigint)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_step workflow.run_steps%ROWTYPE;
    v_parent text;
BEGIN
    IF p_reason = 'parent_finished' THEN
        SELECT parent_run_id INTO v_parent FROM workflow.runs WHERE run_id = p_run_id AND state IN ('running', 'queued');
        IF FOUND AND NOT EXISTS (SELECT 1 FROM workflow.runs WHERE run_id = v_parent AND state = 'running') THEN
            PERFORM workflow.finish_run(p_run_id, 'cancelled', 'cancelled', format('its parent run %s finished', v_parent), p_actor, p_term);
        END IF;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM workflow.runs WHERE run_id = p_run_id AND state = 'running') THEN RETURN; END IF;
    SELECT * INTO v_step FROM workflow.run_steps WHERE step_id = p_step_id AND state = 'waiting';
    IF NOT FOUND THEN RETURN; END IF;
    IF p_reason = 'timer' AND v_step.kind = 'timer' THEN
        IF workflow.wait_step_succeeded(p_run_id, p_step_id, jsonb_build_object('due_at', v_step.due_at, 'fired_at', clock_timestamp())) THEN
            PERFORM workflow.advance_run(p_run_id, p_actor, p_term);
        END IF;
    ELSIF p_reason = 'signal_timeout' AND v_step.kind = 'signal' THEN
        IF v_step.wait ->> 'on_timeout' = 'continue' THEN
            IF workflow.wait_step_succeeded(p_run_id, p_step_id, 'null'::jsonb) THEN
                PERFORM workflow.advance_run(p_run_id, p_actor, p_term);
            END IF;
        ELSE
            PERFORM workflow.fail_wait_step(p_run_id, p_step_id,
                format('no %s signal arrived within %s ms', v_step.wait ->> 'signal', v_step.wait ->> 'timeout_ms'), p_actor, p_term);
        END IF;
    ELSIF p_reason = 'child_done' AND v_step.kind = 'child' THEN
        PERFORM workflow.resolve_child(p_run_id, p_step_id, v_step.child_run_id, p_actor, p_term);
    END IF;
END
$function$;
