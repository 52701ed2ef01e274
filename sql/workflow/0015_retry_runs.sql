-- Resume a finished run from where it stopped (issue 27): `regent runs retry`, POST
-- /v1/runs/{id}/retry. A failed or cancelled run (any reason: a step failed, its deadline or
-- budget, a cancel) runs again on its pinned version: succeeded steps keep their outputs; every
-- other step goes back to `pending` and those whose `after` steps have all succeeded are
-- enqueued at once, each as a new execution with fresh attempts (the old executions, their
-- attempts, the ledger and the events stay: history is kept). The run's deadline, when it had
-- one, starts again with its original allowance (or `p_deadline_ms` from now); the budget's
-- ledger continues, and `p_budget_limit` may raise its limit.
--
-- `p_mode`: 'failed' resumes only a run in which a step failed (a cancelled or expired run
-- with no failed step is refused, saying so); 'all-unfinished' resumes any failed or
-- cancelled run.
--
-- Outcome: 'retried' with the steps requeued now and the steps reset; otherwise why not:
-- 'not_found', 'running', 'succeeded', 'no_failed_step', 'nothing_to_retry' (every step
-- succeeded: the run failed after its last step, on its budget), 'budget_exhausted' (the ledger reached
-- the limit; raise it), 'budget_too_low' (the new limit is not above what was spent),
-- 'executions_live' (a step execution of its last round is still queued or running: the
-- deadline duty fences it within seconds; retry then).
CREATE FUNCTION workflow.retry_run(
    p_run_id text, p_mode text, p_budget_limit numeric, p_deadline_ms bigint, p_actor text, p_publisher uuid)
RETURNS TABLE (outcome text, requeued text[], reset text[])
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
-- Locks: runs → run_steps → (enqueue) executions, ready.
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
    IF v_run.state IN ('running', 'succeeded') THEN RETURN QUERY SELECT v_run.state, NULL::text[], NULL::text[]; RETURN; END IF;
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
    -- An execution of the last round still queued or running would advance the run when it
    -- ends (the step trigger knows the step, not the round): none may be left.
    IF EXISTS (
        SELECT 1 FROM workflow.run_steps s JOIN workflow.executions e ON e.execution_id = s.execution_id
        WHERE s.run_id = p_run_id AND e.state IN ('queued', 'running')
    ) THEN
        RETURN QUERY SELECT 'executions_live', NULL::text[], NULL::text[]; RETURN;
    END IF;
    UPDATE workflow.runs
    SET state = 'running', reason = NULL, error = NULL, output = NULL, finished_at = NULL, finished_by = NULL, term = NULL,
        budget_limit = COALESCE(p_budget_limit, budget_limit),
        budget_unit = CASE WHEN p_budget_limit IS NOT NULL THEN COALESCE(budget_unit, 'units') ELSE budget_unit END,
        deadline = CASE WHEN p_deadline_ms IS NOT NULL THEN clock_timestamp() + p_deadline_ms * interval '1 millisecond'
                        WHEN deadline IS NOT NULL THEN clock_timestamp() + (deadline - started_at)
                        END
    WHERE run_id = p_run_id;
    WITH r AS (
        UPDATE workflow.run_steps
        SET state = 'pending', execution_id = NULL, output = NULL, error = NULL, queued_at = NULL, finished_at = NULL
        WHERE run_id = p_run_id AND state <> 'succeeded'
        RETURNING name, position
    )
    SELECT array_agg(name ORDER BY position) INTO v_reset FROM r;
    SELECT array_agg(s.name ORDER BY s.position) INTO v_ready FROM workflow.run_steps s
    WHERE s.run_id = p_run_id AND s.state = 'pending' AND NOT EXISTS (
        SELECT 1 FROM workflow.run_steps d WHERE d.run_id = s.run_id AND d.name = ANY (s.after_steps) AND d.state <> 'succeeded');
    IF v_ready IS NOT NULL THEN
        PERFORM workflow.enqueue_steps(p_run_id, v_ready, COALESCE(v_run.namespace, 'runs'));
    END IF;
    PERFORM engine.publish_event('run.retried',
        jsonb_build_object('run_id', p_run_id, 'workflow_type', v_run.workflow_type, 'package_hash', v_run.package_hash, 'mode', p_mode,
                           'previous_state', v_run.state, 'previous_reason', v_run.reason, 'requeued', to_jsonb(COALESCE(v_ready, '{}')),
                           'reset', to_jsonb(COALESCE(v_reset, '{}')), 'actor', p_actor),
        p_publisher);
    RETURN QUERY SELECT 'retried', COALESCE(v_ready, '{}'), COALESCE(v_reset, '{}');
END
$$;
