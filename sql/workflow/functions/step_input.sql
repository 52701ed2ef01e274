-- workflow.step_input: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0023_fewer_plan_nodes.sql (new).
--
-- A claimed step's input and the outputs of the steps it runs after (`p_after`, their names as
-- the execution carries them since 0023), read where each is stored once. Called by the claim
-- only for a step execution's row: a function, not subqueries of the claim's own statement,
-- because a subquery's plan nodes are set up at every claim, a plain execution's included.
-- A step with no dependencies reads no run_steps.

CREATE OR REPLACE FUNCTION workflow.step_input(p_run_id text, p_after jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
BEGIN
    IF p_after = '[]'::jsonb THEN
        RETURN jsonb_build_object('input', (SELECT r.input FROM workflow.runs r WHERE r.run_id = p_run_id), 'after', '{}'::jsonb);
    END IF;
    RETURN jsonb_build_object(
        'input', (SELECT r.input FROM workflow.runs r WHERE r.run_id = p_run_id),
        'after', COALESCE(
            (SELECT jsonb_object_agg(d.name, COALESCE(d.output, de.result))
             FROM workflow.run_steps d LEFT JOIN workflow.executions de ON de.execution_id = d.execution_id
             WHERE d.run_id = p_run_id AND p_after ? d.name), '{}'::jsonb));
END
$function$;
