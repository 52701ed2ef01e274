-- workflow.renew: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0012_lock_order_and_trust.sql.
--
-- Renewal bound to the holder. `p_lease_ms` NULL: by the step's timeout, or the lease's own
-- length (as last granted). The attempt records the new length and expiry too.

CREATE OR REPLACE FUNCTION workflow.renew(p_execution_id uuid, p_epoch bigint, p_lease_ms bigint, p_token text, p_worker text)
 RETURNS TABLE(lease_expires_at timestamp with time zone, lease_ms bigint)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
-- Locks: leases → attempts.
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH renewed AS (
        UPDATE workflow.leases l
        SET lease_ms = COALESCE(p_lease_ms, e.step_lease_ms, l.lease_ms),
            lease_expires_at = now() + COALESCE(p_lease_ms, e.step_lease_ms, l.lease_ms) * interval '1 millisecond'
        FROM workflow.executions e
        WHERE l.execution_id = p_execution_id AND l.lease_epoch = p_epoch AND e.execution_id = l.execution_id
          AND (p_token IS NULL OR l.token_id = p_token) AND (p_worker IS NULL OR l.worker_instance_id = p_worker)
        RETURNING l.execution_id, l.attempt_index, l.lease_expires_at, l.lease_ms
    ), recorded AS (
        UPDATE workflow.attempts a SET lease_ms = r.lease_ms, lease_expires_at = r.lease_expires_at
        FROM renewed r WHERE a.execution_id = r.execution_id AND a.attempt_index = r.attempt_index
    )
    SELECT r.lease_expires_at, r.lease_ms::bigint FROM renewed r;
END
$function$;
