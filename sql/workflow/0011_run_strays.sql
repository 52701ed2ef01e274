-- Step executions a run's finish had to leave alone are recorded where they are left, so the
-- deadline duty finds them without a scan.
--
-- A finishing run fences its queued and running steps, skipping any execution another
-- transaction holds at that moment (a claim, a completion, the lease scanner). A completion
-- fences its own execution in its trigger once the run is finished; a claim or a requeue does
-- not fire the trigger, so its execution can stay claimable or running for a finished run. The
-- deadline duty used to look for such strays every second with a join of every queued step to
-- its run: O(steps in flight) per second on the leader (10 ms at 100,000 queued steps, a
-- sequential scan of `runs` when none had finished). Now the finish writes what it skipped to
-- `run_strays`, the duty's idle read is one probe of that (usually empty) table, and its sweep
-- reads only those rows.
CREATE TABLE workflow.run_strays (
    execution_id uuid        PRIMARY KEY,
    run_id       text        NOT NULL REFERENCES workflow.runs (run_id) ON DELETE CASCADE,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX run_strays_run_idx ON workflow.run_strays (run_id);

-- What the old sweep would have found at this moment, so none is forgotten by the upgrade.
INSERT INTO workflow.run_strays (execution_id, run_id)
SELECT s.execution_id, s.run_id FROM workflow.run_steps s
JOIN workflow.runs r ON r.run_id = s.run_id AND r.state <> 'running'
JOIN workflow.executions e ON e.execution_id = s.execution_id AND e.state IN ('queued', 'running')
WHERE s.state IN ('queued', 'running')
ON CONFLICT DO NOTHING;

-- As in 0007, and then: what is still queued or running among the run's steps (their
-- executions were held by another transaction) is recorded as a stray.
CREATE OR REPLACE FUNCTION workflow.finish_run(p_run_id text, p_state text, p_reason text, p_error text, p_actor text, p_term bigint)
RETURNS boolean LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
DECLARE
    v_type text;
    v_execution uuid;
BEGIN
    UPDATE workflow.runs SET state = p_state, reason = p_reason, error = left(p_error, 4096), finished_by = p_actor, term = p_term,
                             finished_at = clock_timestamp()
    WHERE run_id = p_run_id AND state = 'running'
    RETURNING workflow_type INTO v_type;
    IF NOT FOUND THEN RETURN false; END IF;
    UPDATE workflow.run_steps SET state = 'skipped' WHERE run_id = p_run_id AND state = 'pending';
    FOR v_execution IN
        SELECT e.execution_id FROM workflow.run_steps s JOIN workflow.executions e ON e.execution_id = s.execution_id
        WHERE s.run_id = p_run_id AND s.state IN ('queued', 'running') AND e.state IN ('queued', 'running')
        FOR UPDATE OF e SKIP LOCKED
    LOOP
        PERFORM workflow.fence_execution(v_execution);
        UPDATE workflow.run_steps SET state = 'cancelled', finished_at = clock_timestamp() WHERE execution_id = v_execution;
    END LOOP;
    INSERT INTO workflow.run_strays (execution_id, run_id)
    SELECT s.execution_id, s.run_id FROM workflow.run_steps s
    WHERE s.run_id = p_run_id AND s.state IN ('queued', 'running') AND s.execution_id IS NOT NULL
    ON CONFLICT DO NOTHING;
    PERFORM engine.publish_event(
        CASE p_state WHEN 'cancelled' THEN 'run.cancelled' ELSE 'run.failed' END,
        jsonb_build_object('run_id', p_run_id, 'workflow_type', v_type, 'reason', p_reason, 'error', left(p_error, 1024), 'actor', p_actor,
                           'term', p_term),
        NULL);
    RETURN true;
END
$$;

-- The deadline duty's page: runs past their deadline fail (as in 0007); then the recorded
-- strays: one whose execution is gone or no longer queued or running needs nothing more (its
-- own completion's trigger fenced it, or it ended); one still queued or running is fenced now,
-- unless another transaction holds it still (then it waits for the next round).
CREATE OR REPLACE FUNCTION workflow.expire_runs(p_limit integer, p_actor text, p_term bigint) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
DECLARE
    v_run text;
    v_execution uuid;
    n integer := 0;
BEGIN
    FOR v_run IN
        SELECT run_id FROM workflow.runs WHERE state = 'running' AND deadline <= now() ORDER BY deadline LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        IF workflow.finish_run(v_run, 'failed', 'deadline_exceeded', 'the run passed its deadline', p_actor, p_term) THEN
            n := n + 1;
        END IF;
    END LOOP;
    DELETE FROM workflow.run_strays st
    WHERE st.execution_id IN (
        SELECT x.execution_id FROM workflow.run_strays x
        WHERE NOT EXISTS (SELECT 1 FROM workflow.executions e WHERE e.execution_id = x.execution_id AND e.state IN ('queued', 'running'))
        ORDER BY x.recorded_at LIMIT p_limit);
    FOR v_execution IN
        SELECT e.execution_id FROM workflow.run_strays st
        JOIN workflow.executions e ON e.execution_id = st.execution_id AND e.state IN ('queued', 'running')
        ORDER BY st.recorded_at
        LIMIT p_limit
        FOR UPDATE OF e SKIP LOCKED
    LOOP
        PERFORM workflow.fence_execution(v_execution);
        UPDATE workflow.run_steps SET state = 'cancelled', finished_at = clock_timestamp()
        WHERE execution_id = v_execution AND state IN ('queued', 'running');
        DELETE FROM workflow.run_strays WHERE execution_id = v_execution;
    END LOOP;
    RETURN n;
END
$$;

-- Nothing reads `run_steps` by "still active" any more: the finish reads a run's steps by its
-- id, the sweep reads `run_strays`. Without this partial index (its predicate names `state`),
-- marking a step succeeded changes no indexed column and can be a HOT update, given room on
-- the page: new pages of `run_steps` keep some.
DROP INDEX workflow.run_steps_active_idx;
ALTER TABLE workflow.run_steps SET (fillfactor = 80);
