-- Complete and claim in one statement (issue 18): a worker that works one job (or one batch)
-- at a time reports what it finished and takes its next work in a single round trip and a
-- single transaction, instead of two. The completions are exactly `workflow.complete`'s (epoch
-- fenced; a workflow step's run advances in this same transaction), the claim exactly
-- `workflow.claim`'s; `completed` (the same on every row) lists the completions accepted.
CREATE FUNCTION workflow.complete_and_claim(
    p_items jsonb, p_namespace text, p_worker text, p_lanes text[], p_capabilities text[], p_lease_ms bigint, p_limit integer)
RETURNS TABLE (completed uuid[], alive boolean, execution_id uuid, lane text, attempt_index integer, lease_epoch bigint, payload text,
               lease_expires_at timestamptz, run_id text, step text, package_hash text)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_done uuid[];
BEGIN
    IF jsonb_array_length(p_items) > 0 THEN
        SELECT array_agg(c.execution_id) INTO v_done FROM workflow.complete(p_items) AS c;
    END IF;
    RETURN QUERY
    SELECT COALESCE(v_done, '{}'::uuid[]), c.alive, c.execution_id, c.lane, c.attempt_index, c.lease_epoch, c.payload, c.lease_expires_at,
           c.run_id, c.step, c.package_hash
    FROM workflow.claim(p_namespace, p_worker, p_lanes, p_capabilities, p_lease_ms, p_limit) AS c;
END
$$;
