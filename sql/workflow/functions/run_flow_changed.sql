-- workflow.run_flow_changed: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0019_run_concurrency.sql (with its triggers, run_flow_changed and flow_settle_runs), sql/workflow/0021_cheaper_row_checks.sql (the trigger's WHEN tests for a key only; an unchanged state returns here).

-- A keyed run's state changed. Ending while queued, it leaves its key's waiting list (it held
-- no slot); ending while running, it notes the slot it frees for the commit's settling.
-- Admission (queued → running) and a retry's return to the list (failed → queued, with its
-- waiting row) note nothing here.
CREATE OR REPLACE FUNCTION workflow.run_flow_changed()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
-- Locks: the run's own run_waiting row only.
BEGIN
    -- The trigger fires on any UPDATE OF state of a keyed row (its WHEN is kept short: every
    -- statement that may fire it reads it); only a change of state means anything here.
    IF OLD.state IS NOT DISTINCT FROM NEW.state THEN RETURN NULL; END IF;
    IF NEW.state IN ('succeeded', 'failed', 'cancelled') THEN
        IF OLD.state = 'queued' THEN
            DELETE FROM workflow.run_waiting w WHERE w.run_id = NEW.run_id;
        ELSIF OLD.state = 'running' THEN
            PERFORM workflow.flow_note(COALESCE(NEW.namespace, 'runs'), NEW.flow_key, 1);
        END IF;
    END IF;
    RETURN NULL;
END
$function$;
