-- workflow.run_value: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql.
--
-- A value of a run for a path of the manifest: `{input, …}` into the run's input, or
-- `{steps, NAME, output, …}` into a finished step's output. NULL when absent.

CREATE OR REPLACE FUNCTION workflow.run_value(p_run_id text, p_path text[])
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
BEGIN
    IF p_path[1] = 'input' THEN
        RETURN (SELECT r.input #> p_path[2:] FROM workflow.runs r WHERE r.run_id = p_run_id);
    ELSIF p_path[1] = 'steps' AND p_path[3] = 'output' THEN
        RETURN (SELECT COALESCE(s.output, e.result) #> p_path[4:]
                FROM workflow.run_steps s LEFT JOIN workflow.executions e ON e.execution_id = s.execution_id
                WHERE s.run_id = p_run_id AND s.name = p_path[2]);
    END IF;
    RETURN NULL;
END
$function$;
