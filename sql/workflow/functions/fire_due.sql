-- workflow.fire_due: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql.
--
-- The timer duty's page: due wakeups in due order, each under its run's row (SKIP LOCKED: a
-- run held elsewhere is left for the next page, counted in `skipped`). Pages fired side by side
-- split the due wakeups by id (`wakeup_id % p_parts = p_part`) rather than by row locks: a
-- wakeup row is only ever deleted by a transaction that holds its run's row (its page, or a
-- finish, signal or retry of that run), so no two transactions wait for each other over them. A wakeup that raises
-- fails its step (or run) with the error instead of failing the page forever; errors that a
-- retry cures (serialization, deadlock, lock or statement timeouts) fail the page. Returns
-- what it fired, what it skipped, and the milliseconds until the next due wakeup (NULL: none).
-- Pages stay under 64 wakeups so their subtransactions fit the server's per-backend cache.

CREATE OR REPLACE FUNCTION workflow.fire_due(p_limit integer, p_actor text, p_term bigint, p_part integer, p_parts integer)
 RETURNS TABLE(fired integer, skipped integer, next_due_ms bigint)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
-- Locks: runs (SKIP LOCKED), then what advancing each takes.
DECLARE
    w workflow.wakeups%ROWTYPE;
    v_fired integer := 0;
    v_skipped integer := 0;
    v_message text;
BEGIN
    IF p_limit NOT BETWEEN 1 AND 60 THEN
        RAISE EXCEPTION 'a timer page is 1 to 60 wakeups, not %', p_limit USING ERRCODE = '22023';
    END IF;
    IF p_parts NOT BETWEEN 1 AND 16 OR p_part NOT BETWEEN 0 AND p_parts - 1 THEN
        RAISE EXCEPTION 'a timer page is part 0 to % of 1 to 16 parts, not % of %', p_parts - 1, p_part, p_parts USING ERRCODE = '22023';
    END IF;
    FOR w IN
        SELECT * FROM workflow.wakeups WHERE due_at <= clock_timestamp() AND wakeup_id % p_parts = p_part ORDER BY due_at, wakeup_id LIMIT p_limit
    LOOP
        PERFORM 1 FROM workflow.runs WHERE run_id = w.run_id FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            IF EXISTS (SELECT 1 FROM workflow.runs WHERE run_id = w.run_id) THEN
                v_skipped := v_skipped + 1;
            ELSE
                DELETE FROM workflow.wakeups WHERE wakeup_id = w.wakeup_id;  -- its run was pruned
            END IF;
            CONTINUE;
        END IF;
        DELETE FROM workflow.wakeups WHERE wakeup_id = w.wakeup_id;
        CONTINUE WHEN NOT FOUND;
        BEGIN
            PERFORM workflow.fire_wakeup(w.run_id, w.step_id, w.reason, p_actor, p_term);
        EXCEPTION
            WHEN serialization_failure OR deadlock_detected OR lock_not_available OR query_canceled THEN RAISE;
            WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
                IF w.step_id IS NOT NULL THEN
                    PERFORM workflow.fail_wait_step(w.run_id, w.step_id, 'the engine could not advance it: ' || v_message, p_actor, p_term);
                ELSE
                    PERFORM workflow.finish_run(w.run_id, 'failed', 'step_failed', 'the engine could not advance it: ' || v_message, p_actor, p_term);
                END IF;
        END;
        v_fired := v_fired + 1;
    END LOOP;
    RETURN QUERY SELECT v_fired, v_skipped,
        (SELECT CASE WHEN min(k.due_at) IS NOT NULL THEN GREATEST(0, ceil(extract(epoch FROM (min(k.due_at) - clock_timestamp())) * 1000))::bigint END
         FROM workflow.wakeups k);
END
$function$;
