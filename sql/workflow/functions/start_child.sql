-- workflow.start_child: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql.
--
-- A child step begins: its type's routed version is recorded in the step row with the child's
-- run id (the version pinned from here on), then the child run is made on exactly that version
-- in the same transaction. Refused (the step fails, saying why): depth beyond 8, a type already
-- among the run's ancestors (a cycle), a type with no routed version, an input path that reads
-- no object.

CREATE OR REPLACE FUNCTION workflow.start_child(p_run workflow.runs, p_step workflow.run_steps)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
-- Locks: the child type's version row (KEY SHARE, as a start), then inserts.
DECLARE
    v_type text := p_step.wait ->> 'child';
    v_chain text[];
    v_hash text;
    v_manifest jsonb;
    v_input jsonb;
    v_child text;
BEGIN
    IF p_run.depth >= 8 THEN
        PERFORM workflow.fail_wait_step(p_run.run_id, p_step.step_id,
            format('child workflow %s would be nested 9 deep; runs nest at most 8 children deep', v_type), 'engine', NULL);
        RETURN;
    END IF;
    WITH RECURSIVE chain AS (
        SELECT r.run_id, r.parent_run_id, r.workflow_type, 0 AS n FROM workflow.runs r WHERE r.run_id = p_run.run_id
        UNION ALL
        SELECT r.run_id, r.parent_run_id, r.workflow_type, c.n + 1 FROM workflow.runs r JOIN chain c ON r.run_id = c.parent_run_id WHERE c.n < 9
    )
    SELECT array_agg(workflow_type ORDER BY n DESC) INTO v_chain FROM chain;
    IF v_type = ANY (v_chain) THEN
        PERFORM workflow.fail_wait_step(p_run.run_id, p_step.step_id,
            format('child workflow %s would start a cycle of types: %s → %s', v_type, array_to_string(v_chain, ' → '), v_type), 'engine', NULL);
        RETURN;
    END IF;
    SELECT p.content_hash, p.manifest INTO v_hash, v_manifest
    FROM workflow.package_routes rt JOIN workflow.packages p ON p.content_hash = rt.content_hash
    WHERE rt.workflow_type = v_type
    FOR KEY SHARE OF p;
    IF NOT FOUND THEN
        PERFORM workflow.fail_wait_step(p_run.run_id, p_step.step_id,
            format('child workflow type %s has no routed version (regent packages deploy)', v_type), 'engine', NULL);
        RETURN;
    END IF;
    IF p_step.wait ? 'input' THEN
        v_input := workflow.run_value(p_run.run_id, ARRAY(SELECT jsonb_array_elements_text(p_step.wait -> 'input')));
        IF v_input IS NULL OR jsonb_typeof(v_input) <> 'object' THEN
            PERFORM workflow.fail_wait_step(p_run.run_id, p_step.step_id,
                format('child input %s is %s, not a JSON object', workflow.path_text(p_step.wait -> 'input'), COALESCE(left(v_input::text, 200), 'absent')),
                'engine', NULL);
            RETURN;
        END IF;
    ELSE
        v_input := p_run.input;
    END IF;
    v_child := 'run_' || workflow.ulid();
    -- Recorded: the version and the run id, before the child run exists.
    UPDATE workflow.run_steps
    SET state = 'waiting', waiting_since = clock_timestamp(), child_type = v_type, child_hash = v_hash, child_run_id = v_child
    WHERE step_id = p_step.step_id;
    PERFORM workflow.create_run(v_child, v_type, v_hash, v_manifest, v_input, NULL, NULL, NULL, NULL, 'run:' || p_run.run_id,
                                p_run.namespace, NULL, false, p_run.run_id, p_step.step_id, p_run.depth + 1);
END
$function$;
