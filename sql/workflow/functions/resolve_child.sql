-- workflow.resolve_child: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql.
--
-- A parent's child step, once its child run finished (the caller holds the parent's row):
-- succeeded with the child's output, or failed naming the child's failure. Only the child the
-- step recorded counts (a retried parent's step records a new one).

CREATE OR REPLACE FUNCTION workflow.resolve_child(p_parent_id text, p_step_id text, p_child_id text, p_actor text, p_term bigint)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_child workflow.runs%ROWTYPE;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM workflow.runs WHERE run_id = p_parent_id AND state = 'running') THEN RETURN; END IF;
    IF NOT EXISTS (SELECT 1 FROM workflow.run_steps WHERE step_id = p_step_id AND state = 'waiting' AND kind = 'child' AND child_run_id = p_child_id) THEN
        RETURN;
    END IF;
    SELECT * INTO v_child FROM workflow.runs WHERE run_id = p_child_id;
    IF NOT FOUND OR v_child.state = 'running' THEN RETURN; END IF;
    IF v_child.state = 'succeeded' THEN
        IF workflow.wait_step_succeeded(p_parent_id, p_step_id, v_child.output) THEN
            PERFORM workflow.advance_run(p_parent_id, p_actor, p_term);
        END IF;
    ELSE
        PERFORM workflow.fail_wait_step(p_parent_id, p_step_id,
            format('child run %s (%s) %s (%s): %s', p_child_id, v_child.workflow_type, v_child.state, v_child.reason, COALESCE(v_child.error, '')),
            p_actor, p_term);
    END IF;
END
$function$;
