-- workflow.start_run: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0006_runs.sql, sql/workflow/0012_lock_order_and_trust.sql, sql/workflow/0014_start_on_version.sql, sql/workflow/0016_step_kinds.sql, sql/workflow/0025_drop_pre_0012_signatures.sql (dropped the signature kept for binaries before 0012 and 0014).
--
-- The start of 0014, making the run through create_run (so a root of any kind begins).

CREATE OR REPLACE FUNCTION workflow.start_run(p_type text, p_input jsonb, p_idempotency_key text, p_deadline_ms bigint, p_budget_limit numeric, p_budget_unit text, p_actor text, p_namespace text, p_publisher uuid, p_allowed_lanes text[], p_version text)
 RETURNS TABLE(run_id text, created boolean, package_hash text, same_input boolean, refused text)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
-- Locks: the version's package row (KEY SHARE), then inserts (and a child's version row, KEY SHARE).
DECLARE
    v_hash text;
    v_manifest jsonb;
    v_run text;
    v_outside text;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        RETURN QUERY SELECT r.run_id, false, r.package_hash, r.input = p_input AND (p_version IS NULL OR r.package_hash = p_version), NULL::text
                     FROM workflow.runs r WHERE r.workflow_type = p_type AND r.idempotency_key = p_idempotency_key;
        IF FOUND THEN RETURN; END IF;
    END IF;
    IF p_version IS NULL THEN
        SELECT p.content_hash, p.manifest INTO v_hash, v_manifest
        FROM workflow.package_routes rt JOIN workflow.packages p ON p.content_hash = rt.content_hash
        WHERE rt.workflow_type = p_type
        FOR KEY SHARE OF p;
    ELSE
        SELECT p.content_hash, p.manifest INTO v_hash, v_manifest
        FROM workflow.packages p WHERE p.content_hash = p_version AND p.workflow_type = p_type
        FOR KEY SHARE OF p;
    END IF;
    IF NOT FOUND THEN RETURN; END IF;
    IF p_allowed_lanes IS NOT NULL THEN
        SELECT s ->> 'lane' INTO v_outside FROM jsonb_array_elements(v_manifest -> 'steps') AS s
        WHERE NOT (s ->> 'lane') = ANY (p_allowed_lanes) LIMIT 1;
        IF v_outside IS NOT NULL THEN
            RETURN QUERY SELECT NULL::text, false, v_hash, NULL::boolean, format('step lane %s is outside the token''s lanes', v_outside);
            RETURN;
        END IF;
    END IF;
    v_run := 'run_' || workflow.ulid();
    IF NOT workflow.create_run(v_run, p_type, v_hash, v_manifest, p_input, p_idempotency_key, p_deadline_ms, p_budget_limit, p_budget_unit,
                               p_actor, p_namespace, p_publisher, p_version IS NOT NULL, NULL, NULL, 0) THEN
        RETURN QUERY SELECT r.run_id, false, r.package_hash, r.input = p_input AND (p_version IS NULL OR r.package_hash = p_version), NULL::text
                     FROM workflow.runs r WHERE r.workflow_type = p_type AND r.idempotency_key = p_idempotency_key;
        RETURN;
    END IF;
    RETURN QUERY SELECT v_run, true, v_hash, true, NULL::text;
END
$function$;
