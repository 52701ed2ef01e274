-- workflow.fire_schedules: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0018_schedules.sql.

-- One page of the leader's schedule firing (docs/flow-control.md), called inside the leader's
-- fenced transaction that locked the page's schedule rows (FOR UPDATE SKIP LOCKED). The slot
-- arithmetic (cron, time zone, jitter, catch-up) is the caller's; this starts the runs and
-- records what became of every slot, in one round trip.
--   p_fires: [{"schedule", "slot", "due_at", "skip": bool, "through", "slots"}], in order:
--     a fire starts a run of the schedule's type with its input and the idempotency key
--     `schedule:<name>:<slot, UTC, RFC 3339>`; a skip records a run of skipped slots.
--   p_moves: [{"schedule", "next_slot", "next_fire_at"}]: where each schedule of the page goes.
-- Returns one row per fire: the slot, 'started' / 'existing' (the key had started it: a slot is
-- never started twice) / 'failed' (no routed version, or the token scope refused it), the run,
-- and how late it started against its due time (seconds).
CREATE OR REPLACE FUNCTION workflow.fire_schedules(p_fires jsonb, p_moves jsonb, p_actor text, p_term bigint, p_publisher uuid)
 RETURNS TABLE(schedule text, slot timestamptz, outcome text, run_id text, error text, late double precision)
 LANGUAGE plpgsql
AS $function$
-- Locks: the schedule rows (held by the caller), then what start_run takes (package KEY SHARE, inserts).
DECLARE
    f record;
    s record;
    r record;
BEGIN
    FOR f IN SELECT * FROM ROWS FROM (jsonb_to_recordset(p_fires)
                 AS (schedule text, slot timestamptz, due_at timestamptz, skip boolean, through timestamptz, slots integer)) WITH ORDINALITY
                 AS x(schedule, slot, due_at, skip, through, slots, n)
             ORDER BY n
    LOOP
        IF f.skip THEN
            INSERT INTO workflow.schedule_fires (schedule, slot, through_slot, slots, outcome, term, due_at)
            VALUES (f.schedule, f.slot, f.through, f.slots, 'skipped', p_term, f.due_at);
            UPDATE workflow.schedules sc SET skipped = sc.skipped + f.slots WHERE sc.name = f.schedule;
            CONTINUE;
        END IF;
        SELECT sc.workflow_type, sc.input INTO s FROM workflow.schedules sc WHERE sc.name = f.schedule;
        IF NOT FOUND THEN CONTINUE; END IF;
        schedule := f.schedule;
        slot := f.slot;
        run_id := NULL;
        error := NULL;
        SELECT st.run_id, st.created, st.refused INTO r
        FROM workflow.start_run(s.workflow_type, s.input,
                                'schedule:' || f.schedule || ':' || to_char(f.slot AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                NULL, NULL, NULL, p_actor, 'runs', p_publisher, NULL, NULL) AS st;
        IF NOT FOUND THEN
            outcome := 'failed';
            error := format('workflow type %s has no routed package version: deploy one (regent packages deploy)', s.workflow_type);
        ELSIF r.refused IS NOT NULL THEN
            outcome := 'failed';
            error := r.refused;
        ELSE
            outcome := CASE WHEN r.created THEN 'started' ELSE 'existing' END;
            run_id := r.run_id;
        END IF;
        late := extract(epoch FROM clock_timestamp() - f.due_at);
        INSERT INTO workflow.schedule_fires (schedule, slot, outcome, run_id, error, term, due_at)
        VALUES (f.schedule, f.slot, outcome, run_id, error, p_term, f.due_at);
        UPDATE workflow.schedules sc
        SET fired = sc.fired + CASE WHEN outcome = 'started' THEN 1 ELSE 0 END,
            last_slot = f.slot, last_run_id = COALESCE(fire_schedules.run_id, sc.last_run_id), last_fired_at = clock_timestamp(),
            last_error = fire_schedules.error
        WHERE sc.name = f.schedule;
        RETURN NEXT;
    END LOOP;
    UPDATE workflow.schedules sc SET next_slot = m.next_slot, next_fire_at = m.next_fire_at
    FROM jsonb_to_recordset(p_moves) AS m(schedule text, next_slot timestamptz, next_fire_at timestamptz)
    WHERE sc.name = m.schedule;
END
$function$;
