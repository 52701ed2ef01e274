-- workflow.flow_settle: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0018_flow_control.sql (with its deferred triggers, flow_settle_*), sql/workflow/0019_run_concurrency.sql (run keys first), sql/workflow/0024_one_execution_trigger.sql (fired by the hook row the first note inserts, which it deletes; no longer by a deferred trigger on executions).

-- At commit (deferred constraint triggers: the hook row workflow.flow_note inserts, a run's state
-- change, a waiting row's insert), settles every key the transaction noted, all at
-- once and in (namespace, flow_key) order, so that two transactions never take two keys in
-- opposite orders: frees the noted slots, then admits waiting executions (oldest first) while
-- each key has free slots, into `ready` (a fair key's at the tail of its lane: `run_at` = now),
-- and announces their lanes. Waiting rows another transaction holds are skipped (it is
-- cancelling them). A key with nothing admitted and nothing waiting is forgotten. The first
-- firing of a commit does all the work; the others find nothing noted.
-- Run keys (`r:`) are settled first, by workflow.flow_settle_runs: a run it admits begins its
-- roots, which may note step keys; those are settled here right after, with the others. So the
-- order is run keys (in key order), then step keys (in key order), in every transaction. Run
-- keys noted while admitting (a child run queued by an admitted parent) are left for the
-- firing of the child's waiting row, which comes later in the same commit.
CREATE OR REPLACE FUNCTION workflow.flow_settle()
 RETURNS trigger
 LANGUAGE plpgsql
 SET jit TO 'off'
AS $function$
-- Locks: run keys' (flow_settle_runs); then flow_keys rows in (namespace, flow_key) order (new
-- ones inserted in that order); their waiting rows (SKIP LOCKED); then inserts into ready.
DECLARE
    v_pending text := current_setting('regent.flow_pending', true);
    v_runs text;
    v_more text;
    v_announced bigint;
BEGIN
    -- A hook row is this transaction's own, read by nothing else: gone with its firing.
    IF TG_TABLE_NAME = 'flow_settle_hooks' THEN
        DELETE FROM workflow.flow_settle_hooks h WHERE h.xact = NEW.xact;
    END IF;
    IF v_pending IS NULL OR v_pending = '' THEN RETURN NULL; END IF;
    PERFORM set_config('regent.flow_pending', '', true);
    IF strpos(v_pending, chr(31) || 'r:') > 0 THEN
        SELECT string_agg(r, chr(30)) FILTER (WHERE split_part(r, chr(31), 2) LIKE 'r:%') || chr(30),
               string_agg(r, chr(30)) FILTER (WHERE split_part(r, chr(31), 2) NOT LIKE 'r:%') || chr(30)
        INTO v_runs, v_pending
        FROM string_to_table(v_pending, chr(30)) AS r WHERE r <> '';
        PERFORM workflow.flow_settle_runs(v_runs);
        -- What admitting noted: step keys are settled below; run keys go back for a later firing.
        v_more := current_setting('regent.flow_pending', true);
        IF v_more <> '' THEN
            SELECT COALESCE(v_pending, '') || COALESCE(string_agg(r, chr(30)) FILTER (WHERE split_part(r, chr(31), 2) NOT LIKE 'r:%') || chr(30), ''),
                   COALESCE(string_agg(r, chr(30)) FILTER (WHERE split_part(r, chr(31), 2) LIKE 'r:%') || chr(30), '')
            INTO v_pending, v_more
            FROM string_to_table(v_more, chr(30)) AS r WHERE r <> '';
            PERFORM set_config('regent.flow_pending', v_more, true);
        END IF;
        IF v_pending IS NULL OR v_pending = '' THEN RETURN NULL; END IF;
    END IF;
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
