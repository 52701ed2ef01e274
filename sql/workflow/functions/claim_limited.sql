-- workflow.claim_limited: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0020_step_path_cost.sql (the limited half of workflow.claim, of
-- sql/workflow/0018_flow_control.sql), sql/workflow/0023_fewer_plan_nodes.sql (a step's payload
-- read as the claim reads it), sql/workflow/0024_one_execution_trigger.sql (this line mended).
--
-- The claim of lanes of which one or more has a limit (sql/workflow/0018,
-- moved into a function of its own by sql/workflow/0020 so that the claim of unlimited lanes,
-- by far the most frequent, pays for none of it). Called by workflow.claim only.

CREATE OR REPLACE FUNCTION workflow.claim_limited(p_namespace text, p_worker text, p_lanes text[], p_capabilities text[], p_lease_ms bigint, p_limit integer, p_token text)
 RETURNS TABLE(alive boolean, execution_id uuid, lane text, attempt_index integer, lease_epoch bigint, payload text, lease_expires_at timestamp with time zone, run_id text, step text, package_hash text)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET plan_cache_mode TO 'force_generic_plan'
 SET jit TO 'off'
AS $function$
-- Locks: lane_limits (the limited lanes among p_lanes, in lane order), then ready (SKIP LOCKED) →
-- executions; then inserts attempts and leases. An attempt's start is the claim's own clock (after
-- any wait for a lane's lock, after its snapshot). No JIT: with sequential scans priced out
-- (before the leader has built leases_lane_limited_idx, say), a plan's cost can pass the JIT
-- threshold, and compiling it costs a claim 200 ms.
#variable_conflict use_column
DECLARE
    v_lanes text[];
    v_allow integer[];
    v_limited boolean[];
BEGIN
    -- Limited lanes: lock their rows in lane order (claimers of overlapping lanes queue here, not
    -- in a cycle), refill each token bucket to now, then (a new snapshot, after the locks) count
    -- each lane's running leases. A lane's allowance is what its bucket and its max-running leave.
    PERFORM 1 FROM workflow.lane_limits ll WHERE ll.namespace = p_namespace AND ll.lane = ANY (p_lanes) ORDER BY ll.lane FOR UPDATE;
    UPDATE workflow.lane_limits ll
    SET tokens = LEAST(ll.burst, ll.tokens + ll.rate * extract(epoch FROM clock_timestamp() - ll.refilled_at)), refilled_at = clock_timestamp()
    WHERE ll.namespace = p_namespace AND ll.lane = ANY (p_lanes) AND ll.rate IS NOT NULL;
    SELECT array_agg(l.lane ORDER BY l.ord),
           array_agg(LEAST(p_limit,
                           CASE WHEN ll.rate IS NULL THEN p_limit ELSE floor(ll.tokens)::integer END,
                           CASE WHEN ll.max_running IS NULL THEN p_limit
                                ELSE ll.max_running - (SELECT count(*) FROM workflow.leases s
                                                       WHERE s.namespace = p_namespace AND s.lane = l.lane AND s.lane_limited)::integer END) ORDER BY l.ord),
           array_agg(ll.max_running IS NOT NULL ORDER BY l.ord)
    INTO v_lanes, v_allow, v_limited
    FROM unnest(p_lanes) WITH ORDINALITY AS l(lane, ord)
    LEFT JOIN workflow.lane_limits ll ON ll.namespace = p_namespace AND ll.lane = l.lane;
    RETURN QUERY
    WITH alive AS (
        SELECT EXISTS (
            SELECT 1 FROM workflow.workers w
            WHERE w.namespace = p_namespace AND w.worker_instance_id = p_worker AND NOT w.dead AND w.expires_at > now()
              AND (p_token IS NULL OR w.token_id = p_token)) AS ok
    ), picked AS (
        SELECT r.rid, r.execution_id, l.limited FROM unnest(v_lanes, v_allow, v_limited) AS l(lane, allow, limited)
        CROSS JOIN LATERAL (
            SELECT q.ctid AS rid, q.execution_id, q.priority, q.run_at FROM workflow.ready q
            WHERE q.namespace = p_namespace AND q.lane = l.lane AND q.run_at <= now() AND q.required_capabilities <@ p_capabilities
            ORDER BY q.priority, q.run_at, q.execution_id
            LIMIT GREATEST(l.allow, 0)
            FOR UPDATE SKIP LOCKED
        ) AS r
        WHERE (SELECT ok FROM alive)
        ORDER BY r.priority, r.run_at, r.execution_id
        LIMIT p_limit
    ), taken AS (
        DELETE FROM workflow.ready q WHERE q.ctid = ANY (ARRAY(SELECT rid FROM picked)) RETURNING q.execution_id
    ), claimed AS (
        UPDATE workflow.executions e
        SET state = 'running', attempts = e.attempts + 1, lease_epoch = e.lease_epoch + 1, updated_at = now(),
            lane_limited = (SELECT p.limited FROM picked p WHERE p.execution_id = e.execution_id)
        FROM taken t WHERE e.execution_id = t.execution_id AND e.state = 'queued'
        RETURNING e.execution_id, e.namespace, e.lane, e.attempts, e.lease_epoch, e.payload, e.step_id, e.lane_limited,
                  COALESCE(e.run_id, e.payload ->> 'run_id') AS run_id, COALESCE(p_lease_ms, e.step_lease_ms, 30000) AS lease_ms
    ), attempt AS (
        INSERT INTO workflow.attempts AS a (execution_id, attempt_index, lease_epoch, worker_instance_id, state, lease_expires_at, lease_ms, started_at)
        SELECT c.execution_id, c.attempts, c.lease_epoch, p_worker, 'leased', now() + c.lease_ms * interval '1 millisecond', c.lease_ms,
               clock_timestamp()
        FROM claimed c
    ), leased AS (
        INSERT INTO workflow.leases AS s (execution_id, namespace, attempt_index, lease_epoch, worker_instance_id, lease_expires_at, lease_ms, token_id,
                                          lane, lane_limited)
        SELECT c.execution_id, c.namespace, c.attempts, c.lease_epoch, p_worker, now() + c.lease_ms * interval '1 millisecond', c.lease_ms, p_token,
               c.lane, c.lane_limited
        FROM claimed c
        RETURNING s.execution_id, s.lease_expires_at
    ), spent AS (
        -- Tokens taken, and claims held back (a lane with work ready that its limits refused).
        UPDATE workflow.lane_limits ll
        SET tokens = CASE WHEN ll.rate IS NULL THEN ll.tokens ELSE ll.tokens - COALESCE(n.taken, 0) END,
            blocked = ll.blocked + CASE WHEN COALESCE(n.taken, 0) < p_limit AND n.allow < p_limit
                                             AND EXISTS (SELECT 1 FROM workflow.ready q WHERE q.namespace = p_namespace AND q.lane = ll.lane
                                                         AND q.run_at <= now()) THEN 1 ELSE 0 END
        FROM (SELECT l.lane, l.allow, (SELECT count(*) FROM claimed c WHERE c.lane = l.lane) AS taken
              FROM unnest(v_lanes, v_allow) AS l(lane, allow)) AS n
        WHERE ll.namespace = p_namespace AND ll.lane = n.lane
    )
    SELECT a.ok, c.execution_id, c.lane::text, c.attempts, c.lease_epoch,
           -- As in workflow.claim: step_input from the names the execution carries (0023),
           -- step_payload for an execution enqueued before.
           CASE WHEN c.step_id IS NULL THEN c.payload::text
                WHEN NOT (c.payload ? 'after') THEN (c.payload || workflow.step_payload(c.step_id))::text
                ELSE (c.payload || workflow.step_input(c.run_id, c.payload -> 'after'))::text END,
           l.lease_expires_at,
           CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'run_id' END,
           CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'step' END,
           CASE WHEN c.step_id IS NOT NULL THEN c.payload ->> 'package_hash' END
    FROM alive a LEFT JOIN (claimed c JOIN leased l ON l.execution_id = c.execution_id) ON true
    ORDER BY c.execution_id;
END
$function$;
