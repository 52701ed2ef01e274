-- workflow.send_signal: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql, sql/workflow/0019_run_concurrency.sql (queued runs).
--
-- A signal for a run. Outcomes: 'consumed' (a step waited for it and succeeded with its
-- payload), 'kept' (no step waits for it yet: the first wait of that name consumes it),
-- 'duplicate' (this signal_id was delivered already, with the same name and payload: the first
-- delivery's answer), and refusals 'not_found' (no run), 'signal_conflict' (the signal_id was
-- used with another name or payload), 'run_finished', 'unknown_signal' (no step of the run
-- waits for that name).

CREATE OR REPLACE FUNCTION workflow.send_signal(p_run_id text, p_name text, p_payload jsonb, p_signal_id text, p_actor text, p_publisher uuid)
 RETURNS TABLE(outcome text, signal_id text, consumed_by text, run_state text)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
-- Locks: runs → signals → run_steps (then advance_run's).
DECLARE
    v_run workflow.runs%ROWTYPE;
    v_old workflow.signals%ROWTYPE;
    v_id text := COALESCE(p_signal_id, 'sig_' || workflow.ulid());
    v_seq bigint;
    v_step workflow.run_steps%ROWTYPE;
BEGIN
    SELECT * INTO v_run FROM workflow.runs WHERE run_id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN RETURN QUERY SELECT 'not_found', NULL::text, NULL::text, NULL::text; RETURN; END IF;
    IF p_signal_id IS NOT NULL THEN
        SELECT * INTO v_old FROM workflow.signals g WHERE g.run_id = p_run_id AND g.signal_id = p_signal_id;
        IF FOUND THEN
            IF v_old.name = p_name AND v_old.payload = p_payload THEN
                RETURN QUERY SELECT 'duplicate', v_old.signal_id, v_old.consumed_by, v_run.state;
            ELSE
                RETURN QUERY SELECT 'signal_conflict', v_old.signal_id, v_old.consumed_by, v_run.state;
            END IF;
            RETURN;
        END IF;
    END IF;
    IF v_run.state = 'queued' THEN
        -- Kept for the run's signal step; the key is noted, so that the commit settles it (this
        -- transaction held the run's row, which a settling admission skips).
        PERFORM workflow.flow_note(COALESCE(v_run.namespace, 'runs'), v_run.flow_key, 0);
    ELSIF v_run.state <> 'running' THEN RETURN QUERY SELECT 'run_finished', NULL::text, NULL::text, v_run.state; RETURN; END IF;
    IF NOT EXISTS (SELECT 1 FROM workflow.run_steps s WHERE s.run_id = p_run_id AND s.kind = 'signal' AND s.wait ->> 'signal' = p_name) THEN
        RETURN QUERY SELECT 'unknown_signal', NULL::text, NULL::text, v_run.state; RETURN;
    END IF;
    INSERT INTO workflow.signals (run_id, signal_id, name, payload, sent_by) VALUES (p_run_id, v_id, p_name, p_payload, p_actor)
    RETURNING seq INTO v_seq;
    SELECT * INTO v_step FROM workflow.run_steps s
    WHERE s.run_id = p_run_id AND s.kind = 'signal' AND s.wait ->> 'signal' = p_name AND s.state = 'waiting'
    ORDER BY s.position LIMIT 1;
    IF FOUND AND NOT EXISTS (SELECT 1 FROM workflow.signals g WHERE g.run_id = p_run_id AND g.name = p_name AND g.consumed_at IS NULL AND g.seq < v_seq) THEN
        UPDATE workflow.signals SET consumed_by = v_step.name, consumed_at = clock_timestamp() WHERE seq = v_seq;
        DELETE FROM workflow.wakeups WHERE step_id = v_step.step_id AND run_id = p_run_id;
        PERFORM engine.publish_event('run.signalled',
            jsonb_build_object('run_id', p_run_id, 'name', p_name, 'signal_id', v_id, 'consumed_by', v_step.name, 'actor', p_actor), p_publisher);
        IF workflow.wait_step_succeeded(p_run_id, v_step.step_id, p_payload) THEN
            PERFORM workflow.advance_run(p_run_id, p_actor, NULL);
        END IF;
        RETURN QUERY SELECT 'consumed', v_id, v_step.name, (SELECT r.state FROM workflow.runs r WHERE r.run_id = p_run_id);
        RETURN;
    END IF;
    PERFORM engine.publish_event('run.signalled',
        jsonb_build_object('run_id', p_run_id, 'name', p_name, 'signal_id', v_id, 'consumed_by', NULL, 'actor', p_actor), p_publisher);
    RETURN QUERY SELECT 'kept', v_id, NULL::text, v_run.state;
END
$function$;
