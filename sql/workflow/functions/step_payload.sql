-- workflow.step_payload: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0013_hot_path_cost.sql.
--
-- A claimed step's input and the outputs of the steps it runs after, read where each is stored
-- once. Called by the claim only for a step execution's row (a plain execution's claim runs
-- none of it).

CREATE OR REPLACE FUNCTION workflow.step_payload(p_step_id text)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
-- Locks: none (reads). No SET clause: a function with one saves and restores its settings at
-- every call (here, every claimed step); its only caller, the claim, plans with sequential
-- scans off already, and so are the plans made here under it.
BEGIN
    RETURN (SELECT jsonb_build_object(
        'input', r.input,
        'after', CASE WHEN cardinality(st.after_steps) = 0 THEN '{}'::jsonb ELSE COALESCE(
            (SELECT jsonb_object_agg(d.name, COALESCE(d.output, de.result))
             FROM workflow.run_steps d LEFT JOIN workflow.executions de ON de.execution_id = d.execution_id
             WHERE d.run_id = st.run_id AND d.name = ANY (st.after_steps)), '{}'::jsonb) END)
    FROM workflow.run_steps st JOIN workflow.runs r ON r.run_id = st.run_id
    WHERE st.step_id = p_step_id);
END
$function$;
