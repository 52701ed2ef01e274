-- workflow.complete: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0004_queue.sql, sql/workflow/0007_run_engine.sql, sql/workflow/0012_lock_order_and_trust.sql, sql/workflow/0013_hot_path_cost.sql, sql/workflow/0025_drop_pre_0012_signatures.sql (dropped the signature kept for binaries before 0012), sql/workflow/0021_cheaper_row_checks.sql (the batch's ids as an array: index probes whatever the plan's statistics), sql/workflow/0022_one_comparison_step_trigger.sql (no bitmap scans: its lookups by key are index scans), sql/workflow/0023_fewer_plan_nodes.sql (arrays instead of aggregates for the runs lock and the batch's verdict).
--
-- Completion bound to the lease's holder (see held_items). Plain executions, then step
-- executions with their run rows locked first.

CREATE OR REPLACE FUNCTION workflow.complete(p_items jsonb, p_token text)
 RETURNS TABLE(execution_id uuid)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_bitmapscan TO 'off'
 SET plan_cache_mode TO 'force_generic_plan'
AS $function$
-- Locks: plain executions → leases → attempts; then runs (run_id order) → step executions →
-- leases → attempts → (trigger) run_steps. Holding a plain execution while waiting for a run
-- row cannot close a cycle: nothing that holds a run row waits for a plain execution.
-- No bitmap scans (here and in the step trigger and enqueue_steps it runs): every lookup is by
-- key, and a generic plan made before run_steps and runs had statistics chose a bitmap scan
-- for each (measured under 16 workers: most statements of a step's completion).
#variable_conflict use_column
DECLARE
    v_count bigint;
    v_ids uuid[];
    v_items jsonb;
    v_steps uuid[];
    v_runs text[];
    v_states text[];
    v_final boolean;
BEGIN
    IF p_token IS NOT NULL OR p_items @? '$[*].worker' THEN
        p_items := workflow.held_items(p_items, p_token);
    END IF;
    -- The batch as an array of ids and an object keyed by '<execution id> <epoch>' (uuid's and
    -- bigint's text forms), read by the statements below row by row through the row's own id and
    -- current epoch: no function scan of the items and no join to them, whose nodes (a hash join
    -- among them) were set up again at every call. An item whose epoch is not current has no
    -- row to match, as before. A batch of one, the usual case, needs no query for this.
    IF jsonb_array_length(p_items) = 1 THEN
        v_ids := ARRAY[(p_items -> 0 ->> 'execution_id')::uuid];
        v_items := jsonb_build_object(
            COALESCE(v_ids[1]::text || ' ' || ((p_items -> 0 ->> 'epoch')::bigint)::text, ''), p_items -> 0);
    ELSIF jsonb_array_length(p_items) > 1 THEN
        SELECT array_agg((j ->> 'execution_id')::uuid),
               jsonb_object_agg(COALESCE(((j ->> 'execution_id')::uuid)::text || ' ' || ((j ->> 'epoch')::bigint)::text, ''), j)
        INTO v_ids, v_items FROM jsonb_array_elements(p_items) AS j;
    END IF;
    -- Plain executions first, unless every item names its run (`run_id`, as the claim gave it:
    -- a step's worker saves the statement). An item that names a run but is a plain execution
    -- is not completed by the step statement: it is reported stale.
    IF p_items @? '$[*] ? (!(exists(@.run_id ? (@.type() == "string"))))' THEN
        RETURN QUERY
        WITH done AS (
            UPDATE workflow.executions e
            SET state = 'completed', result = NULLIF(v_items -> (e.execution_id::text || ' ' || e.lease_epoch::text) -> 'result', 'null'),
                cost = NULLIF(v_items -> (e.execution_id::text || ' ' || e.lease_epoch::text) -> 'cost', 'null'), updated_at = now(),
                finished_at = now()
            WHERE e.execution_id = ANY (v_ids)
              AND v_items ? (e.execution_id::text || ' ' || e.lease_epoch::text) AND e.state = 'running' AND e.step_id IS NULL
            RETURNING e.execution_id, e.namespace, e.unique_key
        ), unleased AS (
            DELETE FROM workflow.leases l USING done d WHERE l.execution_id = d.execution_id RETURNING l.execution_id, l.attempt_index
        ), ended AS (
            UPDATE workflow.attempts a SET state = 'completed', ended_at = now()
            FROM unleased u WHERE a.execution_id = u.execution_id AND a.attempt_index = u.attempt_index
        ), unkeyed AS (
            DELETE FROM workflow.unique_keys k USING done d
            WHERE d.unique_key IS NOT NULL AND k.namespace = d.namespace AND k.unique_key = d.unique_key AND k.execution_id = d.execution_id
        )
        SELECT d.execution_id FROM done d;
        GET DIAGNOSTICS v_count = ROW_COUNT;
        IF v_count = jsonb_array_length(p_items) THEN RETURN; END IF;
    ELSIF jsonb_array_length(p_items) = 0 THEN
        RETURN;
    END IF;

    -- Step executions (they never carry a unique key).
    WITH runs_locked AS (
        -- Lock order: the run rows of the batch's step executions, in run_id order, before any
        -- of them (an uncorrelated condition of the update: evaluated once, before its scan).
        SELECT r.run_id, r.state FROM workflow.runs r
        WHERE r.run_id = ANY (ARRAY(
            SELECT COALESCE(x.run_id, x.payload ->> 'run_id') FROM workflow.executions x
            WHERE x.execution_id = ANY (v_ids) AND x.step_id IS NOT NULL))
        ORDER BY r.run_id
        FOR UPDATE OF r
    ), done AS (
        UPDATE workflow.executions e
        SET state = 'completed', result = NULLIF(v_items -> (e.execution_id::text || ' ' || e.lease_epoch::text) -> 'result', 'null'),
            cost = NULLIF(v_items -> (e.execution_id::text || ' ' || e.lease_epoch::text) -> 'cost', 'null'), updated_at = now(),
            finished_at = now()
        -- (An array, not count(*): an aggregate is set up again at every call.)
        WHERE cardinality(ARRAY(SELECT r.run_id FROM runs_locked r)) >= 0
          AND e.execution_id = ANY (v_ids)
          AND v_items ? (e.execution_id::text || ' ' || e.lease_epoch::text) AND e.state = 'running' AND e.step_id IS NOT NULL
        RETURNING e.execution_id, COALESCE(e.run_id, e.payload ->> 'run_id') AS run_id
    ), unleased AS (
        DELETE FROM workflow.leases l USING done d WHERE l.execution_id = d.execution_id RETURNING l.execution_id, l.attempt_index
    ), ended AS (
        UPDATE workflow.attempts a SET state = 'completed', ended_at = now()
        FROM unleased u WHERE a.execution_id = u.execution_id AND a.attempt_index = u.attempt_index
    )
    SELECT array_agg(d.execution_id), array_agg(d.run_id), ARRAY(SELECT r.state::text FROM runs_locked r)
    INTO v_steps, v_runs, v_states FROM done d;
    IF v_steps IS NULL THEN RETURN; END IF;
    -- Expressions, not queries, for a batch of one (the common case); a larger batch counts its
    -- distinct runs.
    v_final := cardinality(v_states) > 0 AND 'running' = ALL (v_states);
    IF v_final AND cardinality(v_runs) > 1 THEN
        v_final := (SELECT count(DISTINCT x) FROM unnest(v_runs) AS x) = cardinality(v_runs);
    END IF;
    -- Each run once in the batch and running when locked: no trigger of this statement can
    -- have fenced another's completion (a finish fences only its own run's executions, and a
    -- completed one only through its own trigger when its run had finished before). Otherwise
    -- the triggers may have: what a sibling's finish fenced is no longer completed.
    IF v_final THEN
        FOREACH execution_id IN ARRAY v_steps LOOP RETURN NEXT; END LOOP;
    ELSE
        RETURN QUERY SELECT e.execution_id FROM workflow.executions e WHERE e.execution_id = ANY (v_steps) AND e.state = 'completed';
    END IF;
END
$function$;
