-- workflow.step_execution_changed: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0007_run_engine.sql, sql/workflow/0012_lock_order_and_trust.sql, sql/workflow/0016_step_kinds.sql, sql/workflow/0021_cheaper_row_checks.sql (calls on every step are assignments, not PERFORMs), sql/workflow/0022_one_comparison_step_trigger.sql (the WHEN tests only for a final state, the function for a change; no bitmap scans), sql/workflow/0024_one_execution_trigger.sql (the one trigger on an execution's state: flow control's part, workflow.flow_changed before it, comes first).
--
-- The trigger on an execution's state (since 0024 the only row trigger of executions' updates:
-- each row trigger a table has costs every UPDATE statement of it some 20,000 instructions,
-- whether or not its WHEN holds). Two parts, in this order:
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
--   * a workflow step reaching a final state: its run advances (enqueue, or succeed), through
--     advance_run when a step of another kind becomes ready.

CREATE OR REPLACE FUNCTION workflow.step_execution_changed()
 RETURNS trigger
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_bitmapscan TO 'off'
AS $function$
-- Locks: flow control's part, the execution's own flow_waiting row only; the step's part, the
-- run row (already held by every caller that follows the lock order), run_steps,
-- budget_ledger; a finish from here takes ready → executions SKIP LOCKED.
DECLARE
    v_step workflow.run_steps%ROWTYPE;
    v_run workflow.runs%ROWTYPE;
    v_spent numeric;
    v_ready text[];
    v_others boolean;
    v_all_done boolean;
    v_event bigint;
    v_enqueued integer;
BEGIN
    -- The trigger's WHEN tests for a step's final state or a flow-controlled row (0024): a state
    -- set to itself changes nothing.
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
    IF NEW.step_id IS NULL OR NEW.state NOT IN ('completed', 'failed', 'dead_lettered', 'cancelled') THEN RETURN NULL; END IF;
    SELECT * INTO v_run FROM workflow.runs WHERE run_id = COALESCE(NEW.run_id, NEW.payload ->> 'run_id') FOR UPDATE;
    IF NOT FOUND THEN RETURN NULL; END IF;
    IF v_run.state <> 'running' THEN
        -- The run finished first: nothing advances; a completion that was in flight is fenced.
        IF NEW.state = 'cancelled' THEN
            NULL;  -- a fence of this run's own finish
        ELSIF NEW.state = 'completed' THEN
            PERFORM workflow.fence_execution(NEW.execution_id);
            UPDATE workflow.run_steps SET state = 'cancelled', finished_at = clock_timestamp()
            WHERE step_id = NEW.step_id AND state IN ('queued', 'running');
        ELSE
            UPDATE workflow.run_steps SET state = 'failed', error = NEW.last_error, finished_at = clock_timestamp()
            WHERE step_id = NEW.step_id AND state IN ('queued', 'running');
        END IF;
        RETURN NULL;
    END IF;

    IF NEW.state = 'completed' THEN
        UPDATE workflow.run_steps SET state = 'succeeded', finished_at = clock_timestamp() WHERE step_id = NEW.step_id
        RETURNING * INTO v_step;
        v_spent := v_run.budget_spent;
        IF NEW.cost IS NOT NULL AND jsonb_array_length(NEW.cost) > 0 THEN
            INSERT INTO workflow.budget_ledger (entry_id, run_id, step_name, amount, unit)
            SELECT 'budget_' || workflow.ulid(), v_run.run_id, v_step.name, (c ->> 'amount')::numeric,
                   COALESCE(c ->> 'unit', v_run.budget_unit, 'units')
            FROM jsonb_array_elements(NEW.cost) AS c;
            SELECT v_spent + COALESCE(sum((c ->> 'amount')::numeric), 0) INTO v_spent
            FROM jsonb_array_elements(NEW.cost) AS c
            WHERE COALESCE(c ->> 'unit', v_run.budget_unit, 'units') = COALESCE(v_run.budget_unit, 'units');
            UPDATE workflow.runs SET budget_spent = v_spent WHERE run_id = v_run.run_id;
        END IF;
        -- Assigned, not PERFORMed: an assignment is an expression, a PERFORM a query with an
        -- executor of its own (on every step's completion).
        v_event := engine.publish_event('step.succeeded',
            jsonb_build_object('run_id', v_run.run_id, 'step', v_step.name, 'execution_id', NEW.execution_id, 'epoch', NEW.lease_epoch), NULL);
        IF v_run.budget_limit IS NOT NULL AND v_spent >= v_run.budget_limit THEN
            PERFORM workflow.finish_run(v_run.run_id, 'failed', 'budget_exceeded',
                format('the run spent %s %s of its budget of %s', v_spent, v_run.budget_unit, v_run.budget_limit), 'engine', NULL);
            RETURN NULL;
        END IF;
        SELECT array_agg(x.name ORDER BY x.position) FILTER (WHERE x.ready AND x.kind = 'worker'),
               bool_or(x.ready AND x.kind <> 'worker'), bool_and(x.state = 'succeeded')
        INTO v_ready, v_others, v_all_done
        FROM (SELECT s.name, s.position, s.kind, s.state,
                     s.state = 'pending' AND NOT EXISTS (
                         SELECT 1 FROM workflow.run_steps d WHERE d.run_id = s.run_id AND d.name = ANY (s.after_steps) AND d.state <> 'succeeded') AS ready
              FROM workflow.run_steps s WHERE s.run_id = v_run.run_id) AS x;
        IF v_others THEN
            PERFORM workflow.advance_run(v_run.run_id, 'engine', NULL);
        ELSIF v_ready IS NOT NULL THEN
            v_enqueued := workflow.enqueue_steps(v_run.run_id, v_ready, NEW.namespace);
        ELSIF v_all_done THEN
            -- succeed_run's statements, inline: this is every run's last step (a call costs more).
            UPDATE workflow.runs SET state = 'succeeded', finished_at = clock_timestamp(), finished_by = 'engine',
                output = (SELECT jsonb_object_agg(s.name, COALESCE(s.output, e.result)) FROM workflow.run_steps s
                          LEFT JOIN workflow.executions e ON e.execution_id = s.execution_id
                          WHERE s.run_id = v_run.run_id
                            AND NOT EXISTS (SELECT 1 FROM workflow.run_steps t WHERE t.run_id = s.run_id AND s.name = ANY (t.after_steps)))
            WHERE run_id = v_run.run_id;
            v_event := engine.publish_event('run.succeeded',
                jsonb_build_object('run_id', v_run.run_id, 'workflow_type', v_run.workflow_type), NULL);
            IF v_run.parent_run_id IS NOT NULL THEN PERFORM workflow.child_finished(v_run.run_id); END IF;
        END IF;
    ELSIF NEW.state IN ('failed', 'dead_lettered', 'cancelled') THEN
        UPDATE workflow.run_steps SET state = 'failed', error = NEW.last_error, finished_at = clock_timestamp() WHERE step_id = NEW.step_id
        RETURNING * INTO v_step;
        PERFORM engine.publish_event('step.failed',
            jsonb_build_object('run_id', v_run.run_id, 'step', v_step.name, 'execution_id', NEW.execution_id, 'error', left(NEW.last_error, 1024)),
            NULL);
        PERFORM workflow.finish_run(v_run.run_id, 'failed', 'step_failed',
            format('step %s failed after %s attempt(s): %s', v_step.name, NEW.attempts, NEW.last_error), 'engine', NULL);
    END IF;
    RETURN NULL;
END
$function$;
