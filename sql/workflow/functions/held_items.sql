-- workflow.held_items: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0013_hot_path_cost.sql.
--
-- The items of a completion or failure whose lease at the item's epoch was claimed by this
-- holder: with `p_token`, with that token; with an item's `worker`, by that worker instance.
-- The others are dropped (the caller reports them stale and says why). A lease epoch's holder
-- is fixed when it is claimed, so filtering first and updating after is as good as one statement.

CREATE OR REPLACE FUNCTION workflow.held_items(p_items jsonb, p_token text)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
-- Locks: none (reads leases). No SET clause: its callers (complete, fail) plan with
-- sequential scans off already (see step_payload).
BEGIN
    RETURN COALESCE((
        SELECT jsonb_agg(j.item ORDER BY j.n) FROM jsonb_array_elements(p_items) WITH ORDINALITY AS j(item, n)
        WHERE EXISTS (
            SELECT 1 FROM workflow.leases h
            WHERE h.execution_id = (j.item ->> 'execution_id')::uuid AND h.lease_epoch = (j.item ->> 'epoch')::bigint
              AND (p_token IS NULL OR h.token_id = p_token)
              AND (j.item ->> 'worker' IS NULL OR h.worker_instance_id = j.item ->> 'worker'))), '[]'::jsonb);
END
$function$;
