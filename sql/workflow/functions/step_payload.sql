-- workflow.step_payload: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0013_hot_path_cost.sql, sql/workflow/0023_fewer_plan_nodes.sql (the input and outputs read by step_input).
--
-- A claimed step's input and the outputs of the steps it runs after, for a step execution
-- enqueued before 0023 (its payload does not name the steps it runs after): called by the claims
-- only for such a row.

CREATE OR REPLACE FUNCTION workflow.step_payload(p_step_id text)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
-- Locks: none (reads). No SET clause: a function with one saves and restores its settings at
-- every call (here, every claimed step); its only caller, the claim, plans with sequential
-- scans off already, and so are the plans made here under it.
BEGIN
    -- The dependencies' names from the step's row; step_input reads the input and the outputs
    -- (its one home since 0023). For executions enqueued before 0023, which carry no names.
    RETURN (SELECT workflow.step_input(st.run_id, to_jsonb(st.after_steps)) FROM workflow.run_steps st WHERE st.step_id = p_step_id);
END
$function$;
