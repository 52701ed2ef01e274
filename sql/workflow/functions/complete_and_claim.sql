-- workflow.complete_and_claim: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0008_complete_and_claim.sql, sql/workflow/0012_lock_order_and_trust.sql, sql/workflow/0025_drop_pre_0012_signatures.sql (dropped the signature kept for binaries before 0012).

CREATE OR REPLACE FUNCTION workflow.complete_and_claim(p_items jsonb, p_namespace text, p_worker text, p_lanes text[], p_capabilities text[], p_lease_ms bigint, p_limit integer, p_token text)
 RETURNS TABLE(completed uuid[], alive boolean, execution_id uuid, lane text, attempt_index integer, lease_epoch bigint, payload text, lease_expires_at timestamp with time zone, run_id text, step text, package_hash text)
 LANGUAGE plpgsql
AS $function$
-- Locks: the completion's (runs → executions → leases → attempts), then the claim's (ready → executions).
DECLARE
    v_done uuid[];
BEGIN
    IF jsonb_array_length(p_items) > 0 THEN
        SELECT array_agg(c.execution_id) INTO v_done FROM workflow.complete(p_items, p_token) AS c;
    END IF;
    RETURN QUERY
    SELECT COALESCE(v_done, '{}'::uuid[]), c.alive, c.execution_id, c.lane, c.attempt_index, c.lease_epoch, c.payload, c.lease_expires_at,
           c.run_id, c.step, c.package_hash
    FROM workflow.claim(p_namespace, p_worker, p_lanes, p_capabilities, p_lease_ms, p_limit, p_token) AS c;
END
$function$;
