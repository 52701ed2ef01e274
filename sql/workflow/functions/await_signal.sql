-- workflow.await_signal: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql.
--
-- A signal step begins to wait; a signal of its name that came first (the earliest unconsumed)
-- is consumed at once. True when it was (the step succeeded: the run advances again).

CREATE OR REPLACE FUNCTION workflow.await_signal(p_run_id text, p_step workflow.run_steps)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_due timestamptz;
    v_seq bigint;
    v_payload jsonb;
BEGIN
    UPDATE workflow.run_steps
    SET state = 'waiting', waiting_since = clock_timestamp(),
        due_at = clock_timestamp() + (p_step.wait ->> 'timeout_ms')::bigint * interval '1 millisecond'
    WHERE step_id = p_step.step_id
    RETURNING due_at INTO v_due;
    SELECT g.seq, g.payload INTO v_seq, v_payload FROM workflow.signals g
    WHERE g.run_id = p_run_id AND g.name = p_step.wait ->> 'signal' AND g.consumed_at IS NULL
    ORDER BY g.seq LIMIT 1;
    IF FOUND THEN
        UPDATE workflow.signals SET consumed_by = p_step.name, consumed_at = clock_timestamp() WHERE seq = v_seq;
        RETURN workflow.wait_step_succeeded(p_run_id, p_step.step_id, v_payload);
    END IF;
    IF v_due IS NOT NULL THEN
        PERFORM workflow.add_wakeup(p_run_id, p_step.step_id, v_due, 'signal_timeout');
    END IF;
    RETURN false;
END
$function$;
