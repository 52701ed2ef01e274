-- workflow.flow_settle_runs: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0019_run_concurrency.sql.

-- The run keys (`r:<type>/<value>`) a commit noted, settled by workflow.flow_settle before
-- its step keys: per key, in (namespace, flow_key) order, the noted slots are freed and the
-- oldest queued runs admitted while the key has free slots (the newest waiting run's limit is
-- the key's): each leaves the waiting list, becomes `running` (`admitted_at`), is announced
-- (`run.started`) and advanced (its roots begin). A waiting run whose row another transaction
-- holds is skipped: that transaction is ending it (cancel, deadline) or noted the key itself
-- (a signal, a retry), so its own commit settles the key again. A key with nothing admitted
-- and nothing waiting is forgotten. `p_pending` holds records `namespace US key US releases RS`.
CREATE OR REPLACE FUNCTION workflow.flow_settle_runs(p_pending text)
 RETURNS void
 LANGUAGE plpgsql
 SET jit TO 'off'
AS $function$
-- Locks: flow_keys rows in (namespace, flow_key) order (new ones inserted in that order); per
-- key, its oldest waiting rows and their runs' rows (SKIP LOCKED); then what advance_run takes.
DECLARE
    k record;
    w record;
    v_admitted integer;
    v_max integer;
    v_type text;
    v_hash text;
    v_parent text;
    v_waited interval;
    v_message text;
BEGIN
    INSERT INTO workflow.flow_keys (namespace, flow_key, max_admitted, admitted)
    SELECT DISTINCT split_part(r, chr(31), 1), split_part(r, chr(31), 2), 1, 0
    FROM string_to_table(p_pending, chr(30)) AS r WHERE r <> '' ORDER BY 1, 2
    ON CONFLICT (namespace, flow_key) DO NOTHING;
    FOR k IN
        SELECT f.namespace, f.flow_key, f.admitted, f.max_admitted, p.releases
        FROM workflow.flow_keys f
        JOIN (SELECT split_part(r, chr(31), 1) AS namespace, split_part(r, chr(31), 2) AS flow_key,
                     sum(split_part(r, chr(31), 3)::integer)::integer AS releases
              FROM string_to_table(p_pending, chr(30)) AS r WHERE r <> '' GROUP BY 1, 2) AS p
          ON p.namespace = f.namespace AND p.flow_key = f.flow_key
        ORDER BY f.namespace, f.flow_key
        FOR UPDATE OF f
    LOOP
        v_admitted := GREATEST(k.admitted - k.releases, 0);
        v_max := COALESCE((SELECT x.max_admitted FROM workflow.run_waiting x
                           WHERE x.namespace = k.namespace AND x.flow_key = k.flow_key ORDER BY x.seq DESC LIMIT 1), k.max_admitted);
        FOR w IN
            SELECT x.seq, x.run_id FROM workflow.run_waiting x JOIN workflow.runs r ON r.run_id = x.run_id
            WHERE x.namespace = k.namespace AND x.flow_key = k.flow_key
            ORDER BY x.seq LIMIT GREATEST(v_max - v_admitted, 0)
            FOR UPDATE OF x, r SKIP LOCKED
        LOOP
            DELETE FROM workflow.run_waiting WHERE seq = w.seq;
            UPDATE workflow.runs SET state = 'running', admitted_at = clock_timestamp()
            WHERE run_id = w.run_id AND state = 'queued'
            RETURNING workflow_type, package_hash, parent_run_id, admitted_at - started_at INTO v_type, v_hash, v_parent, v_waited;
            CONTINUE WHEN NOT FOUND;
            PERFORM engine.publish_event('run.started',
                jsonb_strip_nulls(jsonb_build_object('run_id', w.run_id, 'workflow_type', v_type, 'package_hash', v_hash, 'parent_run_id', v_parent,
                                                     'concurrency_key', substr(k.flow_key, length(v_type) + 4),
                                                     'queued_ms', round(extract(epoch FROM v_waited) * 1000))),
                NULL);
            v_admitted := v_admitted + 1;
            -- A run that cannot begin (a child's start refused) fails alone: the commit that
            -- freed the slot (another run's completion, a cancel) is not undone by it.
            BEGIN
                PERFORM workflow.advance_run(w.run_id, 'engine', NULL);
            EXCEPTION
                WHEN serialization_failure OR deadlock_detected OR lock_not_available OR query_canceled THEN RAISE;
                WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
                    PERFORM workflow.finish_run(w.run_id, 'failed', 'step_failed', 'the engine could not begin it: ' || v_message, 'engine', NULL);
            END;
        END LOOP;
        IF v_admitted = 0 AND NOT EXISTS (SELECT 1 FROM workflow.run_waiting x WHERE x.namespace = k.namespace AND x.flow_key = k.flow_key) THEN
            DELETE FROM workflow.flow_keys f WHERE f.namespace = k.namespace AND f.flow_key = k.flow_key;
        ELSE
            UPDATE workflow.flow_keys f SET admitted = v_admitted, max_admitted = v_max WHERE f.namespace = k.namespace AND f.flow_key = k.flow_key;
        END IF;
    END LOOP;
END
$function$;
