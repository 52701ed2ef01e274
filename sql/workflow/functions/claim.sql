-- workflow.claim: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0004_queue.sql, sql/workflow/0007_run_engine.sql, sql/workflow/0009_queue_hot_path.sql, sql/workflow/0012_lock_order_and_trust.sql, sql/workflow/0013_hot_path_cost.sql, sql/workflow/0025_drop_pre_0012_signatures.sql (dropped the signature kept for binaries before 0012), sql/workflow/0018_flow_control.sql (lane limits), sql/workflow/0020_step_path_cost.sql (the limited lanes' claim moved to claim_limited; no JIT setting to save and restore at every claim), sql/workflow/0021_cheaper_row_checks.sql (no bitmap scans: the ready queue walked in its order), sql/workflow/0022_one_comparison_step_trigger.sql (the alive and lane-limit probes in one CTE), sql/workflow/0023_fewer_plan_nodes.sql (no join back to the leases CTE: the expiry is the claimed row's expression).

CREATE OR REPLACE FUNCTION workflow.claim(p_namespace text, p_worker text, p_lanes text[], p_capabilities text[], p_lease_ms bigint, p_limit integer, p_token text)
 RETURNS TABLE(alive boolean, execution_id uuid, lane text, attempt_index integer, lease_epoch bigint, payload text, lease_expires_at timestamp with time zone, run_id text, step text, package_hash text)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_bitmapscan TO 'off'
 SET plan_cache_mode TO 'force_generic_plan'
AS $function$
-- No bitmap scans: the generic plan cannot know p_limit and guesses that few ready rows pass
-- the capability test, so with them allowed it often read and sorted a lane's whole queue to
-- take its first row (measured: every claim of a 3,000-step backlog). The ready index's order
-- is the claim's order; walked in order, the scan stops at the first row it can lock.
-- Locks: ready (SKIP LOCKED) → executions; then inserts attempts and leases; a limited lane
-- among p_lanes: workflow.claim_limited. An attempt's start is the claim's own clock (after its
-- snapshot), not its statement's start: the attempts' times alone then show how many ran at once
-- (the flow-control audit, docs/flow-control.md).
#variable_conflict use_column
BEGIN
    -- No lane of this claim limited (one index probe, inside the statement): the one statement of
    -- before. A limited lane among them: this statement takes and returns nothing, and the claim
    -- goes the limited way below.
    RETURN QUERY
        -- One row: the worker is alive (and the token's), and whether a lane is limited (one
        -- CTE for both: each plan node is set up again at every claim).
        WITH gate AS (
            SELECT EXISTS (
                       SELECT 1 FROM workflow.workers w
                       WHERE w.namespace = p_namespace AND w.worker_instance_id = p_worker AND NOT w.dead AND w.expires_at > now()
                         AND (p_token IS NULL OR w.token_id = p_token)) AS ok,
                   EXISTS (SELECT 1 FROM workflow.lane_limits ll WHERE ll.namespace = p_namespace AND ll.lane = ANY (p_lanes)) AS is_limited
        ), picked AS (
            SELECT r.rid, r.execution_id FROM unnest(p_lanes) AS l(lane)
            CROSS JOIN LATERAL (
                SELECT q.ctid AS rid, q.execution_id, q.priority, q.run_at FROM workflow.ready q
                WHERE q.namespace = p_namespace AND q.lane = l.lane AND q.run_at <= now() AND q.required_capabilities <@ p_capabilities
                ORDER BY q.priority, q.run_at, q.execution_id
                LIMIT p_limit
                FOR UPDATE SKIP LOCKED
            ) AS r
            WHERE (SELECT ok AND NOT is_limited FROM gate)
            ORDER BY r.priority, r.run_at, r.execution_id
            LIMIT p_limit
        ), taken AS (
            DELETE FROM workflow.ready q WHERE q.ctid = ANY (ARRAY(SELECT rid FROM picked)) RETURNING q.execution_id
        ), claimed AS (
            UPDATE workflow.executions e
            SET state = 'running', attempts = e.attempts + 1, lease_epoch = e.lease_epoch + 1, updated_at = now()
            FROM taken t WHERE e.execution_id = t.execution_id AND e.state = 'queued'
            RETURNING e.execution_id, e.namespace, e.lane, e.attempts, e.lease_epoch, e.payload, e.step_id,
                      COALESCE(e.run_id, e.payload ->> 'run_id') AS run_id,
                      COALESCE(p_lease_ms, e.step_lease_ms, 30000) AS lease_ms
        ), attempt AS (
            INSERT INTO workflow.attempts AS a (execution_id, attempt_index, lease_epoch, worker_instance_id, state, lease_expires_at, lease_ms, started_at)
            SELECT c.execution_id, c.attempts, c.lease_epoch, p_worker, 'leased', now() + c.lease_ms * interval '1 millisecond', c.lease_ms,
                   clock_timestamp()
            FROM claimed c
        ), leased AS (
            -- Not joined below: the expiry it writes is the claimed row's own expression (now()
            -- is the transaction's), and a join of two CTE scans was planned as a hash join,
            -- its hash table set up again at every claim (0023).
            INSERT INTO workflow.leases AS s (execution_id, namespace, attempt_index, lease_epoch, worker_instance_id, lease_expires_at, lease_ms, token_id)
            SELECT c.execution_id, c.namespace, c.attempts, c.lease_epoch, p_worker, now() + c.lease_ms * interval '1 millisecond', c.lease_ms, p_token
            FROM claimed c
        )
        SELECT a.ok, c.execution_id, c.lane::text, c.attempts, c.lease_epoch,
               -- A step's input and its dependencies' outputs (stored once: the run's input in
               -- runs, each output in its execution), read by step_input from the dependencies'
               -- names the execution carries (`after`, from enqueue_steps); executions enqueued
               -- before 0023 read them from run_steps (step_payload). Functions, so that a plain
               -- execution's claim sets up none of their plans.
               CASE WHEN c.step_id IS NULL THEN c.payload::text
                    WHEN NOT (c.payload ? 'after') THEN (c.payload || workflow.step_payload(c.step_id))::text
                    ELSE (c.payload || workflow.step_input(c.run_id, c.payload -> 'after'))::text END,
               now() + c.lease_ms * interval '1 millisecond',
               CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'run_id' END,
               CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'step' END,
               CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'package_hash' END
        FROM gate a LEFT JOIN claimed c ON true
        WHERE NOT a.is_limited
        ORDER BY c.execution_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT * FROM workflow.claim_limited(p_namespace, p_worker, p_lanes, p_capabilities, p_lease_ms, p_limit, p_token);
    END IF;
END
$function$;

