-- workflow.flow_changed: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0018_flow_control.sql (with its trigger, execution_flow_changed), sql/workflow/0021_cheaper_row_checks.sql (the trigger's WHEN tests for a key only; an unchanged state returns here).

-- The trigger on a keyed (or lane-limited) execution's state change (docs/flow-control.md). It
-- takes no key's lock: it notes the slots to free (workflow.flow_note), and the transaction's
-- commit settles every key it noted, in key order (workflow.flow_settle).
--   * concurrency key (`c:`): when it ends (completed, failed, dead-lettered, cancelled), its
--     slot frees; one that ended while still waiting leaves the waiting list instead;
--   * fair key (`f:`): when a claim takes it (queued → running), its window slot frees; one that
--     ended before any claim frees its slot, or leaves the waiting list. A retry (running →
--     queued) goes straight back to `ready`, outside the window;
--   * an execution claimed under a lane's max-running limit that stops running announces its
--     lane: a claim held back by the limit can take the freed slot at once.
CREATE OR REPLACE FUNCTION workflow.flow_changed()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
-- Locks: the execution's own flow_waiting row only.
BEGIN
    -- The trigger fires on any UPDATE OF state of a keyed row (its WHEN is kept short: every
    -- statement that may fire it reads it); only a change of state means anything here.
    IF OLD.state IS NOT DISTINCT FROM NEW.state THEN RETURN NULL; END IF;
    IF OLD.lane_limited AND OLD.state = 'running' AND NEW.state <> 'running' THEN
        PERFORM workflow.notify_queue(NEW.namespace, ARRAY[NEW.lane::text]);
    END IF;
    IF NEW.flow_key IS NULL THEN
        RETURN NULL;
    ELSIF NEW.flow_key LIKE 'c:%' THEN
        IF NEW.state IN ('completed', 'failed', 'dead_lettered', 'cancelled') THEN
            DELETE FROM workflow.flow_waiting w WHERE w.execution_id = NEW.execution_id;
            IF NOT FOUND THEN PERFORM workflow.flow_note(NEW.namespace, NEW.flow_key, 1); END IF;
        END IF;
    ELSIF OLD.state = 'queued' AND NEW.state = 'running' THEN
        PERFORM workflow.flow_note(NEW.namespace, NEW.flow_key, 1);
    ELSIF OLD.state = 'queued' AND NEW.state IN ('completed', 'failed', 'dead_lettered', 'cancelled') THEN
        DELETE FROM workflow.flow_waiting w WHERE w.execution_id = NEW.execution_id;
        IF NOT FOUND THEN PERFORM workflow.flow_note(NEW.namespace, NEW.flow_key, 1); END IF;
    END IF;
    RETURN NULL;
END
$function$;
