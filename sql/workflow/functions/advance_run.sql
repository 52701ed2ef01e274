-- workflow.advance_run: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql.
--
-- Advances a running run (the caller holds its row): every pending step whose `after` steps
-- all succeeded begins (workers enqueued; timers armed; signal waits begun, consuming a signal
-- already sent; children recorded and started); when every step succeeded, the run succeeds.
-- Repeats while a signal consumed at once made more steps ready.

CREATE OR REPLACE FUNCTION workflow.advance_run(p_run_id text, p_actor text, p_term bigint)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
-- Locks: the caller holds the run row; inserts; a child's version row (KEY SHARE).
DECLARE
    v_run workflow.runs%ROWTYPE;
    v_workers text[];
    v_others boolean;
    v_all_done boolean;
    v_step workflow.run_steps%ROWTYPE;
    v_progress boolean;
BEGIN
    LOOP
        SELECT * INTO v_run FROM workflow.runs WHERE run_id = p_run_id;
        IF NOT FOUND OR v_run.state <> 'running' THEN RETURN; END IF;
        SELECT array_agg(x.name ORDER BY x.position) FILTER (WHERE x.ready AND x.kind = 'worker'),
               bool_or(x.ready AND x.kind <> 'worker'), bool_and(x.state = 'succeeded')
        INTO v_workers, v_others, v_all_done
        FROM (SELECT s.name, s.position, s.kind, s.state,
                     s.state = 'pending' AND NOT EXISTS (
                         SELECT 1 FROM workflow.run_steps d WHERE d.run_id = s.run_id AND d.name = ANY (s.after_steps) AND d.state <> 'succeeded') AS ready
              FROM workflow.run_steps s WHERE s.run_id = p_run_id) AS x;
        IF v_all_done THEN
            PERFORM workflow.succeed_run(p_run_id);
            RETURN;
        END IF;
        IF v_workers IS NOT NULL THEN
            PERFORM workflow.enqueue_steps(p_run_id, v_workers, COALESCE(v_run.namespace, 'runs'));
        END IF;
        IF NOT COALESCE(v_others, false) THEN RETURN; END IF;
        v_progress := false;
        FOR v_step IN
            SELECT s.* FROM workflow.run_steps s
            WHERE s.run_id = p_run_id AND s.kind <> 'worker' AND s.state = 'pending' AND NOT EXISTS (
                SELECT 1 FROM workflow.run_steps d WHERE d.run_id = s.run_id AND d.name = ANY (s.after_steps) AND d.state <> 'succeeded')
            ORDER BY s.position
        LOOP
            -- A step that failed at its start finished the run: nothing more begins.
            IF (SELECT r.state FROM workflow.runs r WHERE r.run_id = p_run_id) <> 'running' THEN RETURN; END IF;
            IF v_step.kind = 'timer' THEN
                PERFORM workflow.arm_timer(p_run_id, v_step);
            ELSIF v_step.kind = 'signal' THEN
                IF workflow.await_signal(p_run_id, v_step) THEN v_progress := true; END IF;
            ELSE
                PERFORM workflow.start_child(v_run, v_step);
            END IF;
        END LOOP;
        EXIT WHEN NOT v_progress;
    END LOOP;
END
$function$;
