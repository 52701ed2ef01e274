-- workflow.retry_run: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0015_retry_runs.sql, sql/workflow/0016_step_kinds.sql, sql/workflow/0019_run_concurrency.sql (a keyed run rejoins its key's waiting list).
--
-- Resume (0015's), for every kind: a waiting or failed timer, signal or child step begins
-- again (a child step records a new child on the type's route at that moment). Refused also
-- while a child run of the last round still runs ('children_live': its parent's finish
-- cancels it within moments).

CREATE OR REPLACE FUNCTION workflow.retry_run(p_run_id text, p_mode text, p_budget_limit numeric, p_deadline_ms bigint, p_actor text, p_publisher uuid)
 RETURNS TABLE(outcome text, requeued text[], reset text[])
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
-- Locks: runs → run_steps → (advance) executions, ready; a child's version row (KEY SHARE).
DECLARE
    v_run workflow.runs%ROWTYPE;
    v_reset text[];
    v_ready text[];
BEGIN
    IF p_mode NOT IN ('failed', 'all-unfinished') THEN
        RAISE EXCEPTION 'retry mode must be failed or all-unfinished, not %', p_mode USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_run FROM workflow.runs WHERE run_id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN RETURN QUERY SELECT 'not_found', NULL::text[], NULL::text[]; RETURN; END IF;
    IF v_run.state IN ('running', 'succeeded', 'queued') THEN
        IF v_run.state = 'queued' THEN PERFORM workflow.flow_note(COALESCE(v_run.namespace, 'runs'), v_run.flow_key, 0); END IF;
        RETURN QUERY SELECT v_run.state, NULL::text[], NULL::text[]; RETURN;
    END IF;
    IF p_mode = 'failed' AND NOT EXISTS (SELECT 1 FROM workflow.run_steps WHERE run_id = p_run_id AND state = 'failed') THEN
        RETURN QUERY SELECT 'no_failed_step', NULL::text[], NULL::text[]; RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM workflow.run_steps WHERE run_id = p_run_id AND state <> 'succeeded') THEN
        RETURN QUERY SELECT 'nothing_to_retry', NULL::text[], NULL::text[]; RETURN;
    END IF;
    IF p_budget_limit IS NOT NULL AND p_budget_limit <= v_run.budget_spent THEN
        RETURN QUERY SELECT 'budget_too_low', NULL::text[], NULL::text[]; RETURN;
    END IF;
    IF p_budget_limit IS NULL AND v_run.budget_limit IS NOT NULL AND v_run.budget_spent >= v_run.budget_limit THEN
        RETURN QUERY SELECT 'budget_exhausted', NULL::text[], NULL::text[]; RETURN;
    END IF;
    IF EXISTS (
        SELECT 1 FROM workflow.run_steps s JOIN workflow.executions e ON e.execution_id = s.execution_id
        WHERE s.run_id = p_run_id AND e.state IN ('queued', 'running')
    ) THEN
        RETURN QUERY SELECT 'executions_live', NULL::text[], NULL::text[]; RETURN;
    END IF;
    IF EXISTS (
        SELECT 1 FROM workflow.run_steps s JOIN workflow.runs c ON c.run_id = s.child_run_id
        WHERE s.run_id = p_run_id AND s.state <> 'succeeded' AND c.state IN ('running', 'queued')
    ) THEN
        RETURN QUERY SELECT 'children_live', NULL::text[], NULL::text[]; RETURN;
    END IF;
    UPDATE workflow.runs
    SET state = CASE WHEN flow_key IS NULL THEN 'running' ELSE 'queued' END, admitted_at = NULL, reason = NULL, error = NULL, output = NULL, finished_at = NULL, finished_by = NULL, term = NULL,
        budget_limit = COALESCE(p_budget_limit, budget_limit),
        budget_unit = CASE WHEN p_budget_limit IS NOT NULL THEN COALESCE(budget_unit, 'units') ELSE budget_unit END,
        deadline = CASE WHEN p_deadline_ms IS NOT NULL THEN clock_timestamp() + p_deadline_ms * interval '1 millisecond'
                        WHEN deadline IS NOT NULL THEN clock_timestamp() + (deadline - started_at)
                        END
    WHERE run_id = p_run_id;
    DELETE FROM workflow.wakeups WHERE run_id = p_run_id;
    WITH r AS (
        UPDATE workflow.run_steps
        SET state = 'pending', execution_id = NULL, output = NULL, error = NULL, queued_at = NULL, finished_at = NULL,
            waiting_since = NULL, due_at = NULL, child_type = NULL, child_hash = NULL, child_run_id = NULL
        WHERE run_id = p_run_id AND state <> 'succeeded'
        RETURNING name, position
    )
    SELECT array_agg(name ORDER BY position) INTO v_reset FROM r;
    SELECT array_agg(s.name ORDER BY s.position) INTO v_ready FROM workflow.run_steps s
    WHERE s.run_id = p_run_id AND s.state = 'pending' AND NOT EXISTS (
        SELECT 1 FROM workflow.run_steps d WHERE d.run_id = s.run_id AND d.name = ANY (s.after_steps) AND d.state <> 'succeeded');
    PERFORM engine.publish_event('run.retried',
        jsonb_build_object('run_id', p_run_id, 'workflow_type', v_run.workflow_type, 'package_hash', v_run.package_hash, 'mode', p_mode,
                           'previous_state', v_run.state, 'previous_reason', v_run.reason, 'requeued', to_jsonb(COALESCE(v_ready, '{}')),
                           'reset', to_jsonb(COALESCE(v_reset, '{}')), 'actor', p_actor),
        p_publisher);
    IF v_run.flow_key IS NOT NULL THEN
        -- Back on its key's waiting list: admission advances it (workflow.flow_settle_runs).
        INSERT INTO workflow.run_waiting (namespace, flow_key, run_id, max_admitted, deadline)
        SELECT COALESCE(r.namespace, 'runs'), r.flow_key, r.run_id,
               COALESCE((SELECT (p.manifest -> 'flow' ->> 'limit')::integer FROM workflow.packages p WHERE p.content_hash = r.package_hash), 1), r.deadline
        FROM workflow.runs r WHERE r.run_id = p_run_id;
    ELSE
        PERFORM workflow.advance_run(p_run_id, p_actor, NULL);
    END IF;
    RETURN QUERY SELECT 'retried', COALESCE(v_ready, '{}'), COALESCE(v_reset, '{}');
END
$function$;
