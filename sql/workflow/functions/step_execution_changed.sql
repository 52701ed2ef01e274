-- workflow.step_execution_changed: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0007_run_engine.sql, sql/workflow/0012_lock_order_and_trust.sql, sql/workflow/0016_step_kinds.sql, sql/workflow/0021_cheaper_row_checks.sql (calls on every step are assignments, not PERFORMs), sql/workflow/0022_one_comparison_step_trigger.sql (the WHEN tests only for a final state, the function for a change; no bitmap scans), sql/workflow/0024_one_execution_trigger.sql (the one trigger on an execution's state, its WHEN three column tests: flow control's part, workflow.flow_changed before it, first; the step's part moved to workflow.step_state_changed).
--
-- The trigger on an execution's state (since 0024 the only row trigger of executions' updates).
-- Its WHEN passes only a step's, a keyed or a lane-limited execution's rows, and is kept short:
-- PostgreSQL reads a trigger's WHEN back from its stored node text at every statement that may
-- fire it, and the state tests are here instead. No SET clause (a call saves and restores it).
-- Two parts, in this order:
--   * flow control (a keyed or lane-limited execution; docs/flow-control.md): it takes no
--     key's lock, it notes the slots to free (workflow.flow_note), and the commit settles
--     every key it noted in key order (workflow.flow_settle):
--       - concurrency key (`c:`): when it ends (completed, failed, dead-lettered, cancelled),
--         its slot frees; one that ended while still waiting leaves the waiting list instead;
--       - fair key (`f:`): when a claim takes it (queued → running), its window slot frees; one
--         that ended before any claim frees its slot, or leaves the waiting list. A retry
--         (running → queued) goes straight back to `ready`, outside the window;
--       - an execution claimed under a lane's max-running limit that stops running announces
--         its lane: a claim held back by the limit can take the freed slot at once;
--   * a workflow step reaching a final state: workflow.step_state_changed (its run advances).

CREATE OR REPLACE FUNCTION workflow.step_execution_changed()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
-- Locks: flow control's part, the execution's own flow_waiting row only (by its unique
-- execution id); the step's part, see workflow.step_state_changed.
DECLARE
    v_done integer;
BEGIN
    -- A state set to itself changes nothing. A step's claim passes the three tests and leaves.
    IF OLD.state = NEW.state THEN RETURN NULL; END IF;
    IF NEW.flow_key IS NOT NULL OR NEW.lane_limited THEN
        IF OLD.lane_limited AND OLD.state = 'running' AND NEW.state <> 'running' THEN
            PERFORM workflow.notify_queue(NEW.namespace, ARRAY[NEW.lane::text]);
        END IF;
        IF NEW.flow_key IS NULL THEN
            NULL;
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
    END IF;
    IF NEW.step_id IS NOT NULL AND NEW.state IN ('completed', 'failed', 'dead_lettered', 'cancelled') THEN
        v_done := workflow.step_state_changed(NEW);
    END IF;
    RETURN NULL;
END
$function$;
