-- workflow.flow_settle: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0019_flow_control.sql (with its deferred triggers, flow_settle_*).

-- At commit (deferred constraint triggers), settles every key the transaction noted, in
-- (namespace, key) order, so that two transactions never take two keys in opposite orders:
-- frees the noted slots, then admits waiting executions (oldest first) while the key has free
-- slots, into `ready` (a fair key's at the tail of its lane: `run_at` = now), and announces
-- their lanes. Waiting rows another transaction holds are skipped (it is cancelling them). A
-- key with nothing admitted and nothing waiting is forgotten. The first firing of a commit does
-- all the work; the others find nothing noted.
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
