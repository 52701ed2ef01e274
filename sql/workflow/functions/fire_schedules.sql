-- workflow.fire_schedules: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0017_schedules.sql, sql/workflow/0019_run_concurrency.sql (a page's runs started set by set).

-- One page of the leader's schedule firing (docs/flow-control.md), called inside the leader's
-- fenced transaction that locked the page's schedule rows (FOR UPDATE SKIP LOCKED). The slot
-- arithmetic (cron, time zone, jitter, catch-up) is the caller's; this starts the runs and
-- records what became of every slot, in one round trip.
--   p_fires: [{"schedule", "slot", "due_at", "skip": bool, "through", "slots"}], in order:
--     a fire starts a run of the schedule's type with its input and the idempotency key
--     `schedule:<name>:<slot, UTC, RFC 3339>`; a skip records a run of skipped slots.
--   p_moves: [{"schedule", "next_slot", "next_fire_at"}]: where each schedule of the page goes.
-- Slots of a type whose routed version has only worker steps without a step key at its roots
-- and no run concurrency key (most schedules) are started together, per type, by workflow.create_runs (a
-- few statements for the whole page instead of a dozen per run); the others one by one.
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
    t record;
    v_done integer[] := '{}';
    b_n integer[];
    b_schedule text[];
    b_slot timestamptz[];
    b_due timestamptz[];
    b_outcome text[];
    b_run text[];
    s record;
    r record;
    v_schedule text[] := '{}';
    v_slot timestamptz[] := '{}';
    v_due timestamptz[] := '{}';
    v_outcome text[] := '{}';
    v_run text[] := '{}';
    v_error text[] := '{}';
BEGIN
    -- Skipped runs of slots: one record each, and the counters.
    INSERT INTO workflow.schedule_fires (schedule, slot, through_slot, slots, outcome, term, due_at)
    SELECT x.schedule, x.slot, x.through, x.slots, 'skipped', p_term, x.due_at
    FROM jsonb_to_recordset(p_fires) AS x(schedule text, slot timestamptz, due_at timestamptz, skip boolean, through timestamptz, slots integer)
    WHERE x.skip;
    UPDATE workflow.schedules sc SET skipped = sc.skipped + k.n
    FROM (SELECT x.schedule, sum(x.slots) AS n
          FROM jsonb_to_recordset(p_fires) AS x(schedule text, skip boolean, slots integer) WHERE x.skip GROUP BY 1) AS k
    WHERE sc.name = k.schedule;
    -- Fired slots of batchable types, per type: their runs started together.
    FOR t IN
        SELECT sc.workflow_type, rt.content_hash,
               jsonb_agg(jsonb_build_object('n', x.n, 'input', sc.input, 'idempotency_key',
                                            'schedule:' || x.schedule || ':' || to_char(x.slot AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                         ORDER BY x.n) AS items
        FROM ROWS FROM (jsonb_to_recordset(p_fires) AS (schedule text, slot timestamptz, due_at timestamptz, skip boolean)) WITH ORDINALITY
             AS x(schedule, slot, due_at, skip, n)
        JOIN workflow.schedules sc ON sc.name = x.schedule
        JOIN workflow.package_routes rt ON rt.workflow_type = sc.workflow_type
        WHERE NOT x.skip
        GROUP BY 1, 2
    LOOP
        -- The version, key-share locked as start_run locks it (an unload waits), and batchable.
        SELECT p.manifest INTO r FROM workflow.packages p
        WHERE p.content_hash = t.content_hash AND NOT (p.manifest ? 'flow')
          AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p.manifest -> 'steps') AS st
                          WHERE jsonb_array_length(st -> 'after') = 0 AND (COALESCE(st ->> 'kind', 'worker') <> 'worker' OR st ? 'flow'))
        FOR KEY SHARE OF p;
        CONTINUE WHEN NOT FOUND;
        -- The type's slots and their runs, appended to the page's records array by array (not
        -- element by element: a page is hundreds of slots).
        WITH c AS (
            SELECT c.n, c.run_id, c.created, x.schedule, x.slot, x.due_at
            FROM workflow.create_runs(t.workflow_type, t.content_hash, r.manifest, t.items, p_actor, 'runs', p_publisher) AS c
            JOIN ROWS FROM (jsonb_to_recordset(p_fires) AS (schedule text, slot timestamptz, due_at timestamptz, skip boolean)) WITH ORDINALITY
                 AS x(schedule, slot, due_at, skip, n) ON x.n = c.n
        )
        SELECT array_agg(c.n ORDER BY c.n), array_agg(c.schedule ORDER BY c.n), array_agg(c.slot ORDER BY c.n), array_agg(c.due_at ORDER BY c.n),
               array_agg(CASE WHEN c.created THEN 'started' ELSE 'existing' END ORDER BY c.n), array_agg(c.run_id ORDER BY c.n)
        INTO b_n, b_schedule, b_slot, b_due, b_outcome, b_run
        FROM c;
        CONTINUE WHEN b_n IS NULL;
        v_done := v_done || b_n;
        v_schedule := v_schedule || b_schedule;
        v_slot := v_slot || b_slot;
        v_due := v_due || b_due;
        v_outcome := v_outcome || b_outcome;
        v_run := v_run || b_run;
        v_error := v_error || array_fill(NULL::text, ARRAY[cardinality(b_n)]);
        RETURN QUERY SELECT u.schedule, u.slot, u.outcome, u.run_id, NULL::text, extract(epoch FROM clock_timestamp() - u.due_at)::double precision
                     FROM unnest(b_schedule, b_slot, b_outcome, b_run, b_due) AS u(schedule, slot, outcome, run_id, due_at);
    END LOOP;
    -- The other fired slots, in order: each starts its run; the records are written together
    -- afterwards. (None, in a page of batchable types only.)
    IF cardinality(v_done) < (SELECT count(*) FROM jsonb_to_recordset(p_fires) AS x(skip boolean) WHERE NOT x.skip) THEN
    FOR f IN SELECT x.schedule, x.slot, x.due_at, sc.workflow_type, sc.input
             FROM ROWS FROM (jsonb_to_recordset(p_fires) AS (schedule text, slot timestamptz, due_at timestamptz, skip boolean)) WITH ORDINALITY
                  AS x(schedule, slot, due_at, skip, n)
             JOIN workflow.schedules sc ON sc.name = x.schedule
             WHERE NOT x.skip AND NOT EXISTS (SELECT 1 FROM unnest(v_done) AS d(n) WHERE d.n = x.n) ORDER BY x.n
    LOOP
        schedule := f.schedule;
        slot := f.slot;
        run_id := NULL;
        error := NULL;
        SELECT st.run_id, st.created, st.refused INTO r
        FROM workflow.start_run(f.workflow_type, f.input,
                                'schedule:' || f.schedule || ':' || to_char(f.slot AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                NULL, NULL, NULL, p_actor, 'runs', p_publisher, NULL, NULL) AS st;
        IF NOT FOUND THEN
            outcome := 'failed';
            error := format('workflow type %s has no routed package version: deploy one (regent packages deploy)', f.workflow_type);
        ELSIF r.refused IS NOT NULL THEN
            outcome := 'failed';
            error := r.refused;
        ELSE
            outcome := CASE WHEN r.created THEN 'started' ELSE 'existing' END;
            run_id := r.run_id;
        END IF;
        late := extract(epoch FROM clock_timestamp() - f.due_at);
        v_schedule := v_schedule || f.schedule;
        v_slot := v_slot || f.slot;
        v_due := v_due || f.due_at;
        v_outcome := v_outcome || outcome;
        v_run := v_run || run_id;
        v_error := v_error || error;
        RETURN NEXT;
    END LOOP;
    END IF;
    INSERT INTO workflow.schedule_fires (schedule, slot, outcome, run_id, error, term, due_at, fired_at)
    SELECT u.schedule, u.slot, u.outcome, u.run_id, u.error, p_term, u.due_at, clock_timestamp()
    FROM unnest(v_schedule, v_slot, v_outcome, v_run, v_error, v_due) AS u(schedule, slot, outcome, run_id, error, due_at);
    -- Each schedule's counters and last slot (its newest fire in this page), and where it goes next.
    UPDATE workflow.schedules sc
    SET fired = sc.fired + COALESCE(k.started, 0),
        last_slot = COALESCE(k.last_slot, sc.last_slot), last_run_id = COALESCE(k.last_run, sc.last_run_id),
        last_fired_at = CASE WHEN k.schedule IS NULL THEN sc.last_fired_at ELSE clock_timestamp() END,
        last_error = CASE WHEN k.schedule IS NULL THEN sc.last_error ELSE k.last_error END,
        next_slot = m.next_slot, next_fire_at = m.next_fire_at
    FROM jsonb_to_recordset(p_moves) AS m(schedule text, next_slot timestamptz, next_fire_at timestamptz)
    LEFT JOIN (
        SELECT u.schedule, count(*) FILTER (WHERE u.outcome = 'started') AS started, max(u.slot) AS last_slot,
               (array_agg(u.run_id ORDER BY u.slot DESC) FILTER (WHERE u.run_id IS NOT NULL))[1] AS last_run,
               (array_agg(u.error ORDER BY u.slot DESC))[1] AS last_error
        FROM unnest(v_schedule, v_slot, v_outcome, v_run, v_error) AS u(schedule, slot, outcome, run_id, error) GROUP BY 1
    ) AS k ON k.schedule = m.schedule
    WHERE sc.name = m.schedule;
END
$function$;
