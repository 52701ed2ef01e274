-- regent:expand
-- Flow control (issue 31): concurrency keys, fair keys and lane limits.
--
-- Concurrency and fair keys are GATES in front of `ready`: an execution with a key is admitted
-- (inserted into `ready`) only while its key has a free slot, and otherwise waits in
-- `flow_waiting`, in arrival order, outside the claim's index. So the claim can only ever hand
-- out admitted executions, and a hot key's backlog costs the claim nothing (it never walks it).
--   * concurrency key (`c:` keys): a slot is held from admission until the execution ends
--     (completed, failed, dead-lettered, cancelled): at most `max_admitted` queued-or-running at
--     once, cluster-wide. A retry keeps its slot.
--   * fair key (`f:` keys): a slot is held from admission until a claim takes the execution: at
--     most `max_admitted` of one tenant sit in `ready` at a time, and the next one is admitted
--     at the tail (its ready `run_at` is the admission time), so tenants' executions interleave
--     in the claim's order whatever one tenant's backlog.
-- An enqueue puts a keyed execution on its key's waiting list; a keyed execution's state change
-- (a trigger on `executions`, keyed rows only) notes the slot it frees. Nothing takes a key's
-- lock then: at commit, deferred triggers settle every key the transaction noted, in key order
-- (free the slots, admit the oldest waiting while slots are free, announce their lanes: no poll).
-- So a batch completing executions of many keys, or an enqueue of many keys, never takes two
-- keys in an order another transaction reverses.
--
-- Lane limits (`lane_limits`, set by `regent lanes set`): a claim on a lane that has a row locks
-- it (lanes in name order), refills its token bucket, counts the lane's running leases (those
-- claimed under a max-running limit carry `lane_limited`, with a partial index), and takes at
-- most what both allow, in the same transaction. Lanes without a row pay one index probe.
--
-- LOCK ORDER (0012's, extended): ... → executions → flow_waiting (an execution's own row); and
-- at commit, flow_keys in (namespace, flow_key) order → flow_waiting (SKIP LOCKED) → ready
-- (inserts). A claim takes lane_limits (in lane order) before ready.

-- Nullable columns, and a check for new rows only (NOT VALID: nothing is scanned; no row has one yet).
ALTER TABLE workflow.executions
    ADD COLUMN flow_key text,
    ADD COLUMN lane_limited boolean,
    ADD CONSTRAINT executions_flow_key_check CHECK (flow_key IS NULL OR (flow_key ~ '^[cf]:' AND length(flow_key) <= 400)) NOT VALID;
-- A worker step's key, as its manifest says it (workflow.create_run copies it from the manifest;
-- workflow.enqueue_steps reads its value from the run when it enqueues the step).
ALTER TABLE workflow.run_steps ADD COLUMN flow jsonb;
ALTER TABLE workflow.leases
    ADD COLUMN lane text,
    ADD COLUMN lane_limited boolean;
-- The running count of a limited lane walks sql/workflow/indexes/leases_lane_limited_idx.sql
-- (built online by the leader, like every index on a hot table).

CREATE TABLE workflow.flow_keys (
    namespace    text    NOT NULL,
    flow_key     text    NOT NULL,
    max_admitted integer NOT NULL CHECK (max_admitted BETWEEN 1 AND 100000),
    admitted     integer NOT NULL DEFAULT 0 CHECK (admitted >= 0),
    PRIMARY KEY (namespace, flow_key)
);
ALTER TABLE workflow.flow_keys SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0);

CREATE TABLE workflow.flow_waiting (
    seq                   bigserial   PRIMARY KEY,
    namespace             text        NOT NULL,
    flow_key              text        NOT NULL,
    execution_id          uuid        NOT NULL UNIQUE,
    lane                  text        NOT NULL,
    priority              smallint    NOT NULL,
    run_at                timestamptz NOT NULL,
    required_capabilities text[]      NOT NULL,
    -- The limit (or fair window) this execution asked for: the newest waiting one's is the key's.
    max_admitted          integer     NOT NULL CHECK (max_admitted BETWEEN 1 AND 100000),
    since                 timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX flow_waiting_key_idx ON workflow.flow_waiting (namespace, flow_key, seq);
ALTER TABLE workflow.flow_waiting SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0);

CREATE TABLE workflow.lane_limits (
    namespace   text             NOT NULL,
    lane        text             NOT NULL,
    max_running integer          CHECK (max_running BETWEEN 1 AND 1000000),
    rate        double precision CHECK (rate > 0 AND rate <= 1000000),
    burst       integer          CHECK (burst BETWEEN 1 AND 1000000),
    tokens      double precision NOT NULL DEFAULT 0,
    refilled_at timestamptz      NOT NULL DEFAULT clock_timestamp(),
    -- Claims this limit held back (a counter for the metrics: regent_lane_blocked_total).
    blocked     bigint           NOT NULL DEFAULT 0,
    updated_at  timestamptz      NOT NULL DEFAULT now(),
    updated_by  text             NOT NULL,
    PRIMARY KEY (namespace, lane),
    CHECK (max_running IS NOT NULL OR rate IS NOT NULL),
    CHECK ((rate IS NULL) = (burst IS NULL))
);

-- The live definitions are in sql/workflow/functions/ (flow_note, flow_changed,
-- flow_waiting_added, flow_settle); stated here too because the triggers below need them.
CREATE OR REPLACE FUNCTION workflow.flow_note(p_namespace text, p_key text, p_releases integer)
 RETURNS void
 LANGUAGE sql
AS $function$
    SELECT set_config('regent.flow_pending',
                      (COALESCE(NULLIF(current_setting('regent.flow_pending', true), ''), '[]')::jsonb
                       || jsonb_build_array(jsonb_build_array(p_namespace, p_key, p_releases)))::text,
                      true);
$function$;

CREATE OR REPLACE FUNCTION workflow.flow_changed()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
-- Locks: the execution's own flow_waiting row only.
BEGIN
    IF OLD.lane_limited AND OLD.state = 'running' AND NEW.state <> 'running' THEN
        PERFORM workflow.notify_queue(NEW.namespace, ARRAY[NEW.lane::text]);
    END IF;
    IF NEW.flow_key IS NULL THEN
        RETURN NULL;
    ELSIF NEW.flow_key LIKE 'c:%' THEN
        IF NEW.state IN ('completed', 'failed', 'dead_lettered', 'cancelled') THEN
            DELETE FROM workflow.flow_waiting w WHERE w.execution_id = NEW.execution_id;
            IF NOT FOUND THEN PERFORM workflow.flow_note(NEW.namespace, NEW.flow_key, 1); END IF;
        END IF;
    ELSIF OLD.state = 'queued' AND NEW.state = 'running' THEN
        PERFORM workflow.flow_note(NEW.namespace, NEW.flow_key, 1);
    ELSIF OLD.state = 'queued' AND NEW.state IN ('completed', 'failed', 'dead_lettered', 'cancelled') THEN
        DELETE FROM workflow.flow_waiting w WHERE w.execution_id = NEW.execution_id;
        IF NOT FOUND THEN PERFORM workflow.flow_note(NEW.namespace, NEW.flow_key, 1); END IF;
    END IF;
    RETURN NULL;
END
$function$;

CREATE OR REPLACE FUNCTION workflow.flow_waiting_added()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM workflow.flow_note(NEW.namespace, NEW.flow_key, 0);
    RETURN NULL;
END
$function$;

CREATE OR REPLACE FUNCTION workflow.flow_settle()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
-- Locks: flow_keys rows in (namespace, flow_key) order; per key, its waiting rows (SKIP LOCKED); then inserts into ready.
DECLARE
    v_pending text := current_setting('regent.flow_pending', true);
    k record;
    v_admitted integer;
    v_max integer;
    v_limit integer;
    v_n integer;
    v_lanes text[];
BEGIN
    IF v_pending IS NULL OR v_pending = '' THEN RETURN NULL; END IF;
    PERFORM set_config('regent.flow_pending', '', true);
    FOR k IN SELECT e ->> 0 AS namespace, e ->> 1 AS flow_key, sum((e ->> 2)::integer)::integer AS releases
             FROM jsonb_array_elements(v_pending::jsonb) AS e GROUP BY 1, 2 ORDER BY 1, 2
    LOOP
        LOOP
            INSERT INTO workflow.flow_keys (namespace, flow_key, max_admitted, admitted) VALUES (k.namespace, k.flow_key, 1, 0)
            ON CONFLICT (namespace, flow_key) DO NOTHING;
            SELECT f.admitted, f.max_admitted INTO v_admitted, v_max FROM workflow.flow_keys f
            WHERE f.namespace = k.namespace AND f.flow_key = k.flow_key FOR UPDATE;
            EXIT WHEN FOUND;  -- (forgotten by another settling between the two statements: again)
        END LOOP;
        v_admitted := GREATEST(v_admitted - k.releases, 0);
        -- The newest waiting execution's limit is the key's limit.
        SELECT w.max_admitted INTO v_limit FROM workflow.flow_waiting w
        WHERE w.namespace = k.namespace AND w.flow_key = k.flow_key ORDER BY w.seq DESC LIMIT 1;
        IF FOUND THEN v_max := v_limit; END IF;
        WITH next AS (
            SELECT w.seq FROM workflow.flow_waiting w
            WHERE w.namespace = k.namespace AND w.flow_key = k.flow_key
            ORDER BY w.seq LIMIT GREATEST(v_max - v_admitted, 0)
            FOR UPDATE SKIP LOCKED
        ), taken AS (
            DELETE FROM workflow.flow_waiting w USING next WHERE w.seq = next.seq
            RETURNING w.execution_id, w.lane, w.priority, w.run_at, w.required_capabilities
        ), readied AS (
            INSERT INTO workflow.ready (namespace, lane, priority, run_at, execution_id, required_capabilities)
            SELECT k.namespace, t.lane, t.priority,
                   CASE WHEN k.flow_key LIKE 'f:%' THEN GREATEST(t.run_at, clock_timestamp()) ELSE t.run_at END,
                   t.execution_id, t.required_capabilities
            FROM taken t
            RETURNING lane
        )
        SELECT count(*), array_agg(lane::text) INTO v_n, v_lanes FROM readied;
        v_admitted := v_admitted + v_n;
        IF v_admitted = 0 AND NOT EXISTS (SELECT 1 FROM workflow.flow_waiting w WHERE w.namespace = k.namespace AND w.flow_key = k.flow_key) THEN
            DELETE FROM workflow.flow_keys f WHERE f.namespace = k.namespace AND f.flow_key = k.flow_key;
        ELSE
            UPDATE workflow.flow_keys f SET admitted = v_admitted, max_admitted = v_max
            WHERE f.namespace = k.namespace AND f.flow_key = k.flow_key;
        END IF;
        IF v_n > 0 THEN PERFORM workflow.notify_queue(k.namespace, v_lanes); END IF;
    END LOOP;
    RETURN NULL;
END
$function$;

CREATE TRIGGER execution_flow_changed
AFTER UPDATE OF state ON workflow.executions
FOR EACH ROW
WHEN ((NEW.flow_key IS NOT NULL OR NEW.lane_limited) AND OLD.state IS DISTINCT FROM NEW.state)
EXECUTE FUNCTION workflow.flow_changed();
CREATE CONSTRAINT TRIGGER flow_settle_executions
AFTER UPDATE OF state ON workflow.executions
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW
WHEN (NEW.flow_key IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)
EXECUTE FUNCTION workflow.flow_settle();
CREATE TRIGGER flow_waiting_added
AFTER INSERT ON workflow.flow_waiting
FOR EACH ROW EXECUTE FUNCTION workflow.flow_waiting_added();
CREATE CONSTRAINT TRIGGER flow_settle_waiting
AFTER INSERT ON workflow.flow_waiting
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION workflow.flow_settle();
