-- workflow.cancel_children: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql, sql/workflow/0019_run_concurrency.sql (queued runs).
--
-- A finished run's running children are cancelled: now when their rows are free, otherwise by
-- a `parent_finished` wakeup (never waiting for a child).

CREATE OR REPLACE FUNCTION workflow.cancel_children(p_run_id text, p_actor text, p_term bigint)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_child text;
BEGIN
    FOR v_child IN
        SELECT s.child_run_id FROM workflow.run_steps s
        WHERE s.run_id = p_run_id AND s.kind = 'child' AND s.state = 'waiting' AND s.child_run_id IS NOT NULL
        ORDER BY s.child_run_id
    LOOP
        PERFORM 1 FROM workflow.runs WHERE run_id = v_child AND state IN ('running', 'queued') FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            PERFORM workflow.finish_run(v_child, 'cancelled', 'cancelled', format('its parent run %s finished', p_run_id), p_actor, p_term);
        ELSIF EXISTS (SELECT 1 FROM workflow.runs WHERE run_id = v_child AND state IN ('running', 'queued')) THEN
            PERFORM workflow.add_wakeup(v_child, NULL, clock_timestamp(), 'parent_finished');
        END IF;
    END LOOP;
END
$function$;
