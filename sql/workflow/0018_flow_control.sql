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
                      COALESCE(current_setting('regent.flow_pending', true), '') || p_namespace || chr(31) || p_key || chr(31) || p_releases || chr(30),
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
 SET jit TO 'off'
AS $function$
-- Locks: flow_keys rows in (namespace, flow_key) order (new ones inserted in that order); their
-- waiting rows (SKIP LOCKED); then inserts into ready.
DECLARE
    v_pending text := current_setting('regent.flow_pending', true);
    v_announced bigint;
BEGIN
    IF v_pending IS NULL OR v_pending = '' THEN RETURN NULL; END IF;
    PERFORM set_config('regent.flow_pending', '', true);
    -- Keys seen for the first time, inserted in order.
    INSERT INTO workflow.flow_keys (namespace, flow_key, max_admitted, admitted)
    SELECT DISTINCT split_part(r, chr(31), 1), split_part(r, chr(31), 2), 1, 0
    FROM string_to_table(v_pending, chr(30)) AS r WHERE r <> '' ORDER BY 1, 2
    ON CONFLICT (namespace, flow_key) DO NOTHING;
    -- Every key locked in order; its noted slots freed; the oldest waiting admitted while slots
    -- are free (the newest waiting execution's limit is the key's limit); the counts written back.
    WITH pending AS (
        SELECT split_part(r, chr(31), 1) AS namespace, split_part(r, chr(31), 2) AS flow_key, sum(split_part(r, chr(31), 3)::integer)::integer AS releases
        FROM string_to_table(v_pending, chr(30)) AS r WHERE r <> '' GROUP BY 1, 2
    ), locked AS (
        SELECT f.namespace, f.flow_key, f.admitted, f.max_admitted FROM workflow.flow_keys f
        WHERE (f.namespace, f.flow_key) IN (SELECT namespace, flow_key FROM pending)
        ORDER BY f.namespace, f.flow_key
        FOR UPDATE
    ), keys AS (
        SELECT l.namespace, l.flow_key, GREATEST(l.admitted - p.releases, 0) AS admitted,
               COALESCE((SELECT w.max_admitted FROM workflow.flow_waiting w
                         WHERE w.namespace = l.namespace AND w.flow_key = l.flow_key ORDER BY w.seq DESC LIMIT 1), l.max_admitted) AS max_admitted
        FROM locked l JOIN pending p ON p.namespace = l.namespace AND p.flow_key = l.flow_key
    ), next AS (
        SELECT w.seq FROM keys k
        CROSS JOIN LATERAL (
            SELECT w.seq FROM workflow.flow_waiting w
            WHERE w.namespace = k.namespace AND w.flow_key = k.flow_key
            ORDER BY w.seq LIMIT GREATEST(k.max_admitted - k.admitted, 0)
            FOR UPDATE SKIP LOCKED) AS w
    ), taken AS (
        DELETE FROM workflow.flow_waiting w USING next WHERE w.seq = next.seq
        RETURNING w.namespace, w.flow_key, w.execution_id, w.lane, w.priority, w.run_at, w.required_capabilities
    ), readied AS (
        INSERT INTO workflow.ready (namespace, lane, priority, run_at, execution_id, required_capabilities)
        SELECT t.namespace, t.lane, t.priority, CASE WHEN t.flow_key LIKE 'f:%' THEN GREATEST(t.run_at, clock_timestamp()) ELSE t.run_at END,
               t.execution_id, t.required_capabilities
        FROM taken t
        RETURNING namespace, lane
    ), counted AS (
        UPDATE workflow.flow_keys f SET admitted = k.admitted + COALESCE(n.n, 0), max_admitted = k.max_admitted
        FROM keys k LEFT JOIN (SELECT t.namespace, t.flow_key, count(*)::integer AS n FROM taken t GROUP BY 1, 2) AS n
             ON n.namespace = k.namespace AND n.flow_key = k.flow_key
        WHERE f.namespace = k.namespace AND f.flow_key = k.flow_key
    )
    SELECT count(*) FROM (SELECT workflow.notify_queue(r.namespace, array_agg(r.lane::text)) FROM readied r GROUP BY r.namespace) AS announced
    INTO v_announced;
    -- Keys with nothing admitted and nothing waiting are forgotten (the table holds live keys).
    DELETE FROM workflow.flow_keys f
    WHERE f.admitted = 0
      AND (f.namespace, f.flow_key) IN (SELECT DISTINCT split_part(r, chr(31), 1), split_part(r, chr(31), 2)
                                        FROM string_to_table(v_pending, chr(30)) AS r WHERE r <> '')
      AND NOT EXISTS (SELECT 1 FROM workflow.flow_waiting w WHERE w.namespace = f.namespace AND w.flow_key = f.flow_key);
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
