-- workflow.succeed_run: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql.
--
-- Every step succeeded: the run succeeds with its final steps' outputs (a final step is one no
-- other step runs after), by name; a child's parent learns of it.

CREATE OR REPLACE FUNCTION workflow.succeed_run(p_run_id text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_type text;
    v_parent text;
BEGIN
    UPDATE workflow.runs SET state = 'succeeded', finished_at = clock_timestamp(), finished_by = 'engine',
        output = (SELECT jsonb_object_agg(s.name, COALESCE(s.output, e.result)) FROM workflow.run_steps s
                  LEFT JOIN workflow.executions e ON e.execution_id = s.execution_id
                  WHERE s.run_id = p_run_id
                    AND NOT EXISTS (SELECT 1 FROM workflow.run_steps t WHERE t.run_id = s.run_id AND s.name = ANY (t.after_steps)))
    WHERE run_id = p_run_id AND state = 'running'
    RETURNING workflow_type, parent_run_id INTO v_type, v_parent;
    IF NOT FOUND THEN RETURN; END IF;
    PERFORM engine.publish_event('run.succeeded', jsonb_build_object('run_id', p_run_id, 'workflow_type', v_type), NULL);
    IF v_parent IS NOT NULL THEN PERFORM workflow.child_finished(p_run_id); END IF;
END
$function$;
