-- Start on an explicit version (issue 27): `p_version`, a stored package of the type, whether
-- it is routed or not (a canary); NULL: the routed version, as before. Nothing is returned when
-- that version is not stored for the type. An idempotency key already used for the type is the
-- same start only with the same input and (when given) the same version.
--
-- Beside the start of 0012 (binaries that call it keep working during a rollout), which now
-- is this one with no version.

CREATE FUNCTION workflow.start_run(
    p_type text, p_input jsonb, p_idempotency_key text, p_deadline_ms bigint, p_budget_limit numeric, p_budget_unit text,
    p_actor text, p_namespace text, p_publisher uuid, p_allowed_lanes text[], p_version text)
RETURNS TABLE (run_id text, created boolean, package_hash text, same_input boolean, refused text)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
-- Locks: the version's package row (KEY SHARE), then inserts only.
DECLARE
    v_hash text;
    v_manifest jsonb;
    v_run text;
    v_roots text[];
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
        -- An explicit version: stored, and of this type (routed or not).
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
    INSERT INTO workflow.runs (run_id, workflow_type, package_hash, input, idempotency_key, deadline, budget_limit, budget_unit, started_by, namespace)
    VALUES (v_run, p_type, v_hash, p_input, p_idempotency_key, clock_timestamp() + p_deadline_ms * interval '1 millisecond',
            COALESCE(p_budget_limit, (v_manifest -> 'budget' ->> 'limit')::numeric),
            CASE WHEN p_budget_limit IS NOT NULL THEN p_budget_unit ELSE v_manifest -> 'budget' ->> 'unit' END, p_actor, p_namespace)
    ON CONFLICT (workflow_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT r.run_id, false, r.package_hash, r.input = p_input AND (p_version IS NULL OR r.package_hash = p_version), NULL::text
                     FROM workflow.runs r WHERE r.workflow_type = p_type AND r.idempotency_key = p_idempotency_key;
        RETURN;
    END IF;
    INSERT INTO workflow.run_steps (step_id, run_id, name, position, after_steps, lane, capabilities, max_attempts, timeout_ms,
                                    backoff_base_ms, backoff_max_ms)
    SELECT 'step_' || workflow.ulid(), v_run, s ->> 'name', (ord - 1)::integer, ARRAY(SELECT jsonb_array_elements_text(s -> 'after')),
           s ->> 'lane', ARRAY(SELECT jsonb_array_elements_text(s -> 'capabilities')), (s ->> 'max_attempts')::integer,
           (s ->> 'timeout_ms')::bigint, (s ->> 'backoff_base_ms')::bigint, (s ->> 'backoff_max_ms')::bigint
    FROM jsonb_array_elements(v_manifest -> 'steps') WITH ORDINALITY AS t(s, ord);
    SELECT array_agg(s ->> 'name') INTO v_roots FROM jsonb_array_elements(v_manifest -> 'steps') AS s
    WHERE jsonb_array_length(s -> 'after') = 0;
    PERFORM workflow.enqueue_steps(v_run, v_roots, p_namespace);
    PERFORM engine.publish_event('run.started', jsonb_build_object('run_id', v_run, 'workflow_type', p_type, 'package_hash', v_hash, 'version_chosen', p_version IS NOT NULL), p_publisher);
    RETURN QUERY SELECT v_run, true, v_hash, true, NULL::text;
END
$$;

CREATE OR REPLACE FUNCTION workflow.start_run(
    p_type text, p_input jsonb, p_idempotency_key text, p_deadline_ms bigint, p_budget_limit numeric, p_budget_unit text,
    p_actor text, p_namespace text, p_publisher uuid, p_allowed_lanes text[])
RETURNS TABLE (run_id text, created boolean, package_hash text, same_input boolean, refused text)
LANGUAGE sql VOLATILE AS $$
    SELECT * FROM workflow.start_run(p_type, p_input, p_idempotency_key, p_deadline_ms, p_budget_limit, p_budget_unit, p_actor, p_namespace,
                                     p_publisher, p_allowed_lanes, NULL::text)
$$;
