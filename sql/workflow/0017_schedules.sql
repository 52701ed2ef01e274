-- regent:expand
-- Cron schedules (issue 31): a schedule starts a run of its workflow type at every slot of a
-- five-field cron expression read in a time zone's wall clock. Only the leader fires, in a
-- fenced transaction per page that starts the slots' runs and moves each schedule to its next
-- slot together; each run carries the idempotency key `schedule:<name>:<slot>`, so no slot can
-- start two runs whatever fails in between. The next due time of every schedule is stored and
-- indexed: the leader sleeps until the earliest (one index probe), woken early by a
-- `regent_schedules` notification when a schedule changes. Only new tables: nothing an earlier
-- binary reads changes.

CREATE TABLE workflow.schedules (
    name          text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    workflow_type text        NOT NULL CHECK (length(workflow_type) BETWEEN 1 AND 128),
    cron          text        NOT NULL CHECK (length(cron) BETWEEN 1 AND 256),
    timezone      text        NOT NULL CHECK (length(timezone) BETWEEN 1 AND 64),
    input         jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(input) = 'object'),
    -- After missed slots (an outage, a long leaderless time): skip the ones later than the
    -- grace, fire only the latest, or fire them all (the latest 100 at most).
    catch_up      text        NOT NULL DEFAULT 'skip' CHECK (catch_up IN ('skip', 'latest', 'all')),
    -- Each slot fires at slot + a delay in [0, jitter_ms], a function of (name, slot): every
    -- leader computes the same one.
    jitter_ms     bigint      NOT NULL DEFAULT 0 CHECK (jitter_ms BETWEEN 0 AND 3600000),
    paused        boolean     NOT NULL DEFAULT false,
    -- The next slot not yet fired or skipped, and when it is due (slot + its jitter).
    next_slot     timestamptz NOT NULL,
    next_fire_at  timestamptz NOT NULL,
    last_slot     timestamptz,
    last_run_id   text,
    last_fired_at timestamptz,
    last_error    text        CHECK (last_error IS NULL OR length(last_error) <= 2000),
    fired         bigint      NOT NULL DEFAULT 0,
    skipped       bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text        NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text        NOT NULL
);
-- The leader's one probe: the earliest due time among schedules not paused.
CREATE INDEX schedules_due_idx ON workflow.schedules (next_fire_at) WHERE NOT paused;

-- What each slot became, for `schedules show` and the drills: one row per fired slot, one per
-- run of skipped slots (first and last slot, how many), one per manual trigger. No foreign
-- key: a deleted schedule's history stays until its retention (7 days, pruned by the leader).
CREATE TABLE workflow.schedule_fires (
    id           bigserial   PRIMARY KEY,
    schedule     text        NOT NULL,
    slot         timestamptz NOT NULL,
    through_slot timestamptz,
    slots        integer     NOT NULL DEFAULT 1 CHECK (slots >= 1),
    outcome      text        NOT NULL CHECK (outcome IN ('started', 'existing', 'skipped', 'failed', 'triggered')),
    run_id       text,
    error        text,
    term         bigint,
    due_at       timestamptz,
    fired_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX schedule_fires_schedule_idx ON workflow.schedule_fires (schedule, slot);
CREATE INDEX schedule_fires_at_idx ON workflow.schedule_fires (fired_at);

-- workflow.fire_schedules (sql/workflow/functions/fire_schedules.sql) is new with this version.
