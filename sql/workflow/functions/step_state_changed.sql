-- workflow.step_state_changed: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0024_one_execution_trigger.sql (new: the step's part of the trigger on an
-- execution's state, which was workflow.step_execution_changed's body; see that file's history).
--
-- A workflow step's execution reached a final state (`p_new`: its row after the change, as its
-- trigger saw it): its run advances (enqueue, or succeed), through advance_run when a
-- step of another kind becomes ready; a step that failed fails its run; a run that finished
-- first fences a completion that was in flight. Called by workflow.step_execution_changed only.
-- Returns 0 (a value, so that its caller calls it as an expression, not as a query).

CREATE OR REPLACE FUNCTION workflow.step_state_changed(p_new workflow.executions)
 RETURNS integer
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_bitmapscan TO 'off'
AS $function$
-- Locks: the run row (already held by every caller that follows the lock order), run_steps,
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
    SELECT * INTO v_run FROM workflow.runs WHERE run_id = COALESCE(p_new.run_id, p_new.payload ->> 'run_id') FOR UPDATE;
    IF NOT FOUND THEN RETURN 0; END IF;
    IF v_run.state <> 'running' THEN
        -- The run finished first: nothing advances; a completion that was in flight is fenced.
        IF p_new.state = 'cancelled' THEN
            NULL;  -- a fence of this run's own finish
        ELSIF p_new.state = 'completed' THEN
            PERFORM workflow.fence_execution(p_new.execution_id);
            UPDATE workflow.run_steps SET state = 'cancelled', finished_at = clock_timestamp()
            WHERE step_id = p_new.step_id AND state IN ('queued', 'running');
        ELSE
            UPDATE workflow.run_steps SET state = 'failed', error = p_new.last_error, finished_at = clock_timestamp()
            WHERE step_id = p_new.step_id AND state IN ('queued', 'running');
        END IF;
        RETURN 0;
    END IF;

    IF p_new.state = 'completed' THEN
        UPDATE workflow.run_steps SET state = 'succeeded', finished_at = clock_timestamp() WHERE step_id = p_new.step_id
        RETURNING * INTO v_step;
        v_spent := v_run.budget_spent;
        IF p_new.cost IS NOT NULL AND jsonb_array_length(p_new.cost) > 0 THEN
            INSERT INTO workflow.budget_ledger (entry_id, run_id, step_name, amount, unit)
            SELECT 'budget_' || workflow.ulid(), v_run.run_id, v_step.name, (c ->> 'amount')::numeric,
                   COALESCE(c ->> 'unit', v_run.budget_unit, 'units')
            FROM jsonb_array_elements(p_new.cost) AS c;
            SELECT v_spent + COALESCE(sum((c ->> 'amount')::numeric), 0) INTO v_spent
            FROM jsonb_array_elements(p_new.cost) AS c
            WHERE COALESCE(c ->> 'unit', v_run.budget_unit, 'units') = COALESCE(v_run.budget_unit, 'units');
            UPDATE workflow.runs SET budget_spent = v_spent WHERE run_id = v_run.run_id;
        END IF;
        -- Assigned, not PERFORMed: an assignment is an expression, a PERFORM a query with an
        -- executor of its own (on every step's completion).
        v_event := engine.publish_event('step.succeeded',
            jsonb_build_object('run_id', v_run.run_id, 'step', v_step.name, 'execution_id', p_new.execution_id, 'epoch', p_new.lease_epoch), NULL);
        IF v_run.budget_limit IS NOT NULL AND v_spent >= v_run.budget_limit THEN
            PERFORM workflow.finish_run(v_run.run_id, 'failed', 'budget_exceeded',
                format('the run spent %s %s of its budget of %s', v_spent, v_run.budget_unit, v_run.budget_limit), 'engine', NULL);
            RETURN 0;
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
            v_enqueued := workflow.enqueue_steps(v_run.run_id, v_ready, p_new.namespace);
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
    ELSIF p_new.state IN ('failed', 'dead_lettered', 'cancelled') THEN
        UPDATE workflow.run_steps SET state = 'failed', error = p_new.last_error, finished_at = clock_timestamp() WHERE step_id = p_new.step_id
        RETURNING * INTO v_step;
        PERFORM engine.publish_event('step.failed',
            jsonb_build_object('run_id', v_run.run_id, 'step', v_step.name, 'execution_id', p_new.execution_id, 'error', left(p_new.last_error, 1024)),
            NULL);
        PERFORM workflow.finish_run(v_run.run_id, 'failed', 'step_failed',
            format('step %s failed after %s attempt(s): %s', v_step.name, p_new.attempts, p_new.last_error), 'engine', NULL);
    END IF;
    RETURN 0;
END
$function$;
