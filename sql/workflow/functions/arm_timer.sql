-- workflow.arm_timer: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql.
--
-- A timer step begins to sleep: due after its `sleep_ms`, or at the RFC 3339 time its
-- `sleep_until` path reads (a time past is due at once). A path that reads no such time fails
-- the step, saying which path and what it found.

CREATE OR REPLACE FUNCTION workflow.arm_timer(p_run_id text, p_step workflow.run_steps)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_due timestamptz;
    v_value jsonb;
    v_text text;
BEGIN
    IF p_step.wait ? 'sleep_ms' THEN
        v_due := clock_timestamp() + (p_step.wait ->> 'sleep_ms')::bigint * interval '1 millisecond';
    ELSE
        v_value := workflow.run_value(p_run_id, ARRAY(SELECT jsonb_array_elements_text(p_step.wait -> 'sleep_until')));
        v_text := CASE WHEN jsonb_typeof(v_value) = 'string' THEN v_value #>> '{}' END;
        IF v_text IS NULL OR v_text !~ '^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$' THEN
            PERFORM workflow.fail_wait_step(p_run_id, p_step.step_id,
                format('sleep_until %s is %s, not an RFC 3339 time (e.g. 2027-01-31T09:00:00Z)',
                       workflow.path_text(p_step.wait -> 'sleep_until'), COALESCE(left(v_value::text, 200), 'absent')), 'engine', NULL);
            RETURN;
        END IF;
        BEGIN
            v_due := v_text::timestamptz;
        EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
            PERFORM workflow.fail_wait_step(p_run_id, p_step.step_id,
                format('sleep_until %s is %s, not a valid time', workflow.path_text(p_step.wait -> 'sleep_until'), left(v_text, 200)), 'engine', NULL);
            RETURN;
        END;
    END IF;
    UPDATE workflow.run_steps SET state = 'waiting', waiting_since = clock_timestamp(), due_at = v_due WHERE step_id = p_step.step_id;
    PERFORM workflow.add_wakeup(p_run_id, p_step.step_id, v_due, 'timer');
END
$function$;
