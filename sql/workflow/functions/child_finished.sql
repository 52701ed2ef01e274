-- workflow.child_finished: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql.
--
-- A child run finished (the caller holds its row): its parent's step resolves now when the
-- parent's row is free; otherwise a `child_done` wakeup resolves it (never waiting for the parent).

CREATE OR REPLACE FUNCTION workflow.child_finished(p_child_id text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_parent text;
    v_step text;
BEGIN
    SELECT parent_run_id, parent_step_id INTO v_parent, v_step FROM workflow.runs WHERE run_id = p_child_id;
    IF v_parent IS NULL THEN RETURN; END IF;
    PERFORM 1 FROM workflow.runs WHERE run_id = v_parent FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        PERFORM workflow.resolve_child(v_parent, v_step, p_child_id, 'engine', NULL);
    ELSIF EXISTS (SELECT 1 FROM workflow.runs WHERE run_id = v_parent AND state = 'running') THEN
        PERFORM workflow.add_wakeup(v_parent, v_step, clock_timestamp(), 'child_done');
    END IF;
END
$function$;
