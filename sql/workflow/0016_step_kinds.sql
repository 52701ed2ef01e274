-- Runs that wait on the world (issue 27): besides a worker step, a step of a manifest may be
-- a timer (sleep for a duration, or until a time read from the run), a wait for a signal (a
-- person's approval, an outside system's answer), or a child workflow (a run of another type,
-- pinned to the version routed when the parent recorded it). They are advanced by the same
-- transactional engine as worker steps, with no leader in the path of a signal or a child's
-- finish; only a due time needs someone awake at that time: the leader's timer duty, which
-- sleeps until the next due `wakeups` row (one index probe) or a `regent_wakeups`
-- notification, whichever comes first.
--
-- LOCK ORDER (sql/workflow/0012's header, extended). Runs are still taken before everything
-- else and, when a statement waits for several, in run_id order. Between a parent and its
-- child, no transaction ever waits: a child's finish takes its parent's row with SKIP LOCKED
-- (and, when another transaction holds it, leaves a `child_done` wakeup the timer duty handles
-- within milliseconds); a parent's finish takes each running child's row with SKIP LOCKED (and
-- leaves a `parent_finished` wakeup for the ones it could not take). The timer duty takes every
-- run row it fires with SKIP LOCKED. So the parent/child edges add no wait at all, and the order
-- of 0012 stays the only order anything waits in. `wakeups` has no foreign key on purpose: an
-- insert would take a KEY SHARE lock on the run row, which waits for its holder.

-- Step kinds. A worker step keeps its columns; a timer, signal or child step has no lane,
-- capabilities, attempts or backoff (NULL), and its manifest entry in `wait`.
ALTER TABLE workflow.run_steps
    ADD COLUMN kind text NOT NULL DEFAULT 'worker' CHECK (kind IN ('worker', 'timer', 'signal', 'child')),
    ADD COLUMN wait jsonb,
    ADD COLUMN waiting_since timestamptz,
    ADD COLUMN due_at timestamptz,
    ADD COLUMN child_type text,
    ADD COLUMN child_hash text CHECK (child_hash IS NULL OR child_hash ~ '^[0-9a-f]{64}$'),
    ADD COLUMN child_run_id text,
    ALTER COLUMN lane DROP NOT NULL,
    ALTER COLUMN capabilities DROP NOT NULL,
    ALTER COLUMN max_attempts DROP NOT NULL,
    ALTER COLUMN timeout_ms DROP NOT NULL,
    ALTER COLUMN backoff_base_ms DROP NOT NULL,
    ALTER COLUMN backoff_max_ms DROP NOT NULL;
-- `waiting`: a timer sleeping, a signal awaited, a child run running.
ALTER TABLE workflow.run_steps DROP CONSTRAINT run_steps_state_check;
ALTER TABLE workflow.run_steps ADD CONSTRAINT run_steps_state_check
    CHECK (state IN ('pending', 'queued', 'running', 'waiting', 'succeeded', 'failed', 'skipped', 'cancelled'));
-- The unload rule: children recorded on a version and not finished pin it.
CREATE INDEX run_steps_child_pins_idx ON workflow.run_steps (child_hash) WHERE state = 'waiting' AND child_hash IS NOT NULL;

-- A child run names its parent and the parent's step; `depth` 0 is a run started by a client.
ALTER TABLE workflow.runs
    ADD COLUMN parent_run_id text,
    ADD COLUMN parent_step_id text,
    ADD COLUMN depth integer NOT NULL DEFAULT 0 CHECK (depth BETWEEN 0 AND 8);
CREATE INDEX runs_parent_idx ON workflow.runs (parent_run_id) WHERE parent_run_id IS NOT NULL;

-- What the timer duty does when: a timer due, a signal's timeout, a child's finish its parent
-- could not take at once, a parent's finish its running child could not take at once.
CREATE TABLE workflow.wakeups (
    wakeup_id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      text        NOT NULL,
    step_id     text,
    due_at      timestamptz NOT NULL,
    reason      text        NOT NULL CHECK (reason IN ('timer', 'signal_timeout', 'child_done', 'parent_finished')),
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX wakeups_due_idx ON workflow.wakeups (due_at, wakeup_id);
CREATE INDEX wakeups_run_idx ON workflow.wakeups (run_id);

-- Signals sent to a run, in arrival order (`seq`). One wait consumes one: the first unconsumed
-- of its name by arrival, whether it came before the run reached the wait or while it waited.
CREATE TABLE workflow.signals (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      text        NOT NULL REFERENCES workflow.runs (run_id) ON DELETE CASCADE,
    signal_id   text        NOT NULL CHECK (signal_id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    name        text        NOT NULL CHECK (name ~ '^[a-z][a-z0-9_-]{0,63}$'),
    payload     jsonb       NOT NULL,
    sent_by     text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    consumed_by text,
    consumed_at timestamptz,
    UNIQUE (run_id, signal_id)
);
CREATE INDEX signals_unconsumed_idx ON workflow.signals (run_id, name, seq) WHERE consumed_at IS NULL;

-- Records a wakeup and rings the timer duty (identical notifications of one transaction are
-- delivered once).
CREATE FUNCTION workflow.add_wakeup(p_run_id text, p_step_id text, p_due timestamptz, p_reason text) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO workflow.wakeups (run_id, step_id, due_at, reason) VALUES (p_run_id, p_step_id, p_due, p_reason);
    PERFORM pg_notify('regent_wakeups', '');
END
$$;

-- A value of a run for a path of the manifest: `{input, …}` into the run's input, or
-- `{steps, NAME, output, …}` into a finished step's output. NULL when absent.
CREATE FUNCTION workflow.run_value(p_run_id text, p_path text[]) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_path[1] = 'input' THEN
        RETURN (SELECT r.input #> p_path[2:] FROM workflow.runs r WHERE r.run_id = p_run_id);
    ELSIF p_path[1] = 'steps' AND p_path[3] = 'output' THEN
        RETURN (SELECT COALESCE(s.output, e.result) #> p_path[4:]
                FROM workflow.run_steps s LEFT JOIN workflow.executions e ON e.execution_id = s.execution_id
                WHERE s.run_id = p_run_id AND s.name = p_path[2]);
    END IF;
    RETURN NULL;
END
$$;

-- The manifest's spelling of a path, for errors: `$.steps.pack.output`.
CREATE FUNCTION workflow.path_text(p_path jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT '$.' || string_agg(p, '.' ORDER BY n) FROM jsonb_array_elements_text(p_path) WITH ORDINALITY AS t(p, n)
$$;

-- A waiting step succeeded with `p_output` (the caller holds the run row and advances the run).
-- False when the step was not waiting.
CREATE FUNCTION workflow.wait_step_succeeded(p_run_id text, p_step_id text, p_output jsonb) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_name text;
    v_kind text;
BEGIN
    UPDATE workflow.run_steps SET state = 'succeeded', output = p_output, finished_at = clock_timestamp()
    WHERE step_id = p_step_id AND state = 'waiting'
    RETURNING name, kind INTO v_name, v_kind;
    IF NOT FOUND THEN RETURN false; END IF;
    PERFORM engine.publish_event('step.succeeded', jsonb_build_object('run_id', p_run_id, 'step', v_name, 'kind', v_kind), NULL);
    RETURN true;
END
$$;

-- A timer, signal or child step failed (pending: it could not begin to wait; or waiting): the
-- run fails with step_failed. The caller holds the run row.
CREATE FUNCTION workflow.fail_wait_step(p_run_id text, p_step_id text, p_error text, p_actor text, p_term bigint) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_name text;
    v_kind text;
BEGIN
    UPDATE workflow.run_steps SET state = 'failed', error = left(p_error, 4096), finished_at = clock_timestamp()
    WHERE step_id = p_step_id AND state IN ('pending', 'waiting')
    RETURNING name, kind INTO v_name, v_kind;
    IF NOT FOUND THEN RETURN; END IF;
    PERFORM engine.publish_event('step.failed',
        jsonb_build_object('run_id', p_run_id, 'step', v_name, 'kind', v_kind, 'error', left(p_error, 1024)), NULL);
    PERFORM workflow.finish_run(p_run_id, 'failed', 'step_failed', format('step %s failed: %s', v_name, p_error), p_actor, p_term);
END
$$;

-- A timer step begins to sleep: due after its `sleep_ms`, or at the RFC 3339 time its
-- `sleep_until` path reads (a time past is due at once). A path that reads no such time fails
-- the step, saying which path and what it found.
CREATE FUNCTION workflow.arm_timer(p_run_id text, p_step workflow.run_steps) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_due timestamptz;
    v_value jsonb;
    v_text text;
BEGIN
    IF p_step.wait ? 'sleep_ms' THEN
        v_due := clock_timestamp() + (p_step.wait ->> 'sleep_ms')::bigint * interval '1 millisecond';
    ELSE
        v_value := workflow.run_value(p_run_id, ARRAY(SELECT jsonb_array_elements_text(p_step.wait -> 'sleep_until')));
        v_text := CASE WHEN jsonb_typeof(v_value) = 'string' THEN v_value #>> '{}' END;
        IF v_text IS NULL OR v_text !~ '^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$' THEN
            PERFORM workflow.fail_wait_step(p_run_id, p_step.step_id,
                format('sleep_until %s is %s, not an RFC 3339 time (e.g. 2027-01-31T09:00:00Z)',
                       workflow.path_text(p_step.wait -> 'sleep_until'), COALESCE(left(v_value::text, 200), 'absent')), 'engine', NULL);
            RETURN;
        END IF;
        BEGIN
            v_due := v_text::timestamptz;
        EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
            PERFORM workflow.fail_wait_step(p_run_id, p_step.step_id,
                format('sleep_until %s is %s, not a valid time', workflow.path_text(p_step.wait -> 'sleep_until'), left(v_text, 200)), 'engine', NULL);
            RETURN;
        END;
    END IF;
    UPDATE workflow.run_steps SET state = 'waiting', waiting_since = clock_timestamp(), due_at = v_due WHERE step_id = p_step.step_id;
    PERFORM workflow.add_wakeup(p_run_id, p_step.step_id, v_due, 'timer');
END
$$;

-- A signal step begins to wait; a signal of its name that came first (the earliest unconsumed)
-- is consumed at once. True when it was (the step succeeded: the run advances again).
CREATE FUNCTION workflow.await_signal(p_run_id text, p_step workflow.run_steps) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_due timestamptz;
    v_seq bigint;
    v_payload jsonb;
BEGIN
    UPDATE workflow.run_steps
    SET state = 'waiting', waiting_since = clock_timestamp(),
        due_at = clock_timestamp() + (p_step.wait ->> 'timeout_ms')::bigint * interval '1 millisecond'
    WHERE step_id = p_step.step_id
    RETURNING due_at INTO v_due;
    SELECT g.seq, g.payload INTO v_seq, v_payload FROM workflow.signals g
    WHERE g.run_id = p_run_id AND g.name = p_step.wait ->> 'signal' AND g.consumed_at IS NULL
    ORDER BY g.seq LIMIT 1;
    IF FOUND THEN
        UPDATE workflow.signals SET consumed_by = p_step.name, consumed_at = clock_timestamp() WHERE seq = v_seq;
        RETURN workflow.wait_step_succeeded(p_run_id, p_step.step_id, v_payload);
    END IF;
    IF v_due IS NOT NULL THEN
        PERFORM workflow.add_wakeup(p_run_id, p_step.step_id, v_due, 'signal_timeout');
    END IF;
    RETURN false;
END
$$;

-- A run's row and steps, made from a stored version's manifest, then advanced (its roots made
-- ready, whatever their kind). False when the idempotency key is taken (nothing made).
CREATE FUNCTION workflow.create_run(
    p_run_id text, p_type text, p_hash text, p_manifest jsonb, p_input jsonb, p_idempotency_key text, p_deadline_ms bigint,
    p_budget_limit numeric, p_budget_unit text, p_actor text, p_namespace text, p_publisher uuid, p_version_chosen boolean,
    p_parent_run_id text, p_parent_step_id text, p_depth integer)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
-- Locks: inserts only (the run row is new), then advance_run's.
DECLARE
    v_roots text[];
    v_others boolean;
BEGIN
    INSERT INTO workflow.runs (run_id, workflow_type, package_hash, input, idempotency_key, deadline, budget_limit, budget_unit, started_by,
                               namespace, parent_run_id, parent_step_id, depth)
    VALUES (p_run_id, p_type, p_hash, p_input, p_idempotency_key, clock_timestamp() + p_deadline_ms * interval '1 millisecond',
            COALESCE(p_budget_limit, (p_manifest -> 'budget' ->> 'limit')::numeric),
            CASE WHEN p_budget_limit IS NOT NULL THEN p_budget_unit ELSE p_manifest -> 'budget' ->> 'unit' END, p_actor, p_namespace,
            p_parent_run_id, p_parent_step_id, p_depth)
    ON CONFLICT (workflow_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;
    IF NOT FOUND THEN RETURN false; END IF;
    INSERT INTO workflow.run_steps (step_id, run_id, name, position, after_steps, lane, capabilities, max_attempts, timeout_ms,
                                    backoff_base_ms, backoff_max_ms, kind, wait)
    SELECT 'step_' || workflow.ulid(), p_run_id, s ->> 'name', (ord - 1)::integer, ARRAY(SELECT jsonb_array_elements_text(s -> 'after')),
           s ->> 'lane', CASE WHEN s ? 'capabilities' THEN ARRAY(SELECT jsonb_array_elements_text(s -> 'capabilities')) END,
           (s ->> 'max_attempts')::integer, (s ->> 'timeout_ms')::bigint, (s ->> 'backoff_base_ms')::bigint, (s ->> 'backoff_max_ms')::bigint,
           COALESCE(s ->> 'kind', 'worker'), CASE WHEN COALESCE(s ->> 'kind', 'worker') <> 'worker' THEN s END
    FROM jsonb_array_elements(p_manifest -> 'steps') WITH ORDINALITY AS t(s, ord);
    PERFORM engine.publish_event('run.started',
        jsonb_strip_nulls(jsonb_build_object('run_id', p_run_id, 'workflow_type', p_type, 'package_hash', p_hash, 'version_chosen', p_version_chosen,
                                             'parent_run_id', p_parent_run_id)),
        p_publisher);
    -- Roots that are all worker steps (most workflows) are enqueued as before 0016; any other
    -- kind among them goes through advance_run.
    SELECT array_agg(s ->> 'name'), bool_or(COALESCE(s ->> 'kind', 'worker') <> 'worker') INTO v_roots, v_others
    FROM jsonb_array_elements(p_manifest -> 'steps') AS s
    WHERE jsonb_array_length(s -> 'after') = 0;
    IF v_others THEN
        PERFORM workflow.advance_run(p_run_id, 'engine', NULL);
    ELSE
        PERFORM workflow.enqueue_steps(p_run_id, v_roots, COALESCE(p_namespace, 'runs'));
    END IF;
    RETURN true;
END
$$;

-- A child step begins: its type's routed version is recorded in the step row with the child's
-- run id (the version pinned from here on), then the child run is made on exactly that version
-- in the same transaction. Refused (the step fails, saying why): depth beyond 8, a type already
-- among the run's ancestors (a cycle), a type with no routed version, an input path that reads
-- no object.
CREATE FUNCTION workflow.start_child(p_run workflow.runs, p_step workflow.run_steps) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
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
$$;

-- Advances a running run (the caller holds its row): every pending step whose `after` steps
-- all succeeded begins (workers enqueued; timers armed; signal waits begun, consuming a signal
-- already sent; children recorded and started); when every step succeeded, the run succeeds.
-- Repeats while a signal consumed at once made more steps ready.
CREATE FUNCTION workflow.advance_run(p_run_id text, p_actor text, p_term bigint) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
-- Locks: the caller holds the run row; inserts; a child's version row (KEY SHARE).
DECLARE
    v_run workflow.runs%ROWTYPE;
    v_workers text[];
    v_others boolean;
    v_all_done boolean;
    v_step workflow.run_steps%ROWTYPE;
    v_progress boolean;
BEGIN
    LOOP
        SELECT * INTO v_run FROM workflow.runs WHERE run_id = p_run_id;
        IF NOT FOUND OR v_run.state <> 'running' THEN RETURN; END IF;
        SELECT array_agg(x.name ORDER BY x.position) FILTER (WHERE x.ready AND x.kind = 'worker'),
               bool_or(x.ready AND x.kind <> 'worker'), bool_and(x.state = 'succeeded')
        INTO v_workers, v_others, v_all_done
        FROM (SELECT s.name, s.position, s.kind, s.state,
                     s.state = 'pending' AND NOT EXISTS (
                         SELECT 1 FROM workflow.run_steps d WHERE d.run_id = s.run_id AND d.name = ANY (s.after_steps) AND d.state <> 'succeeded') AS ready
              FROM workflow.run_steps s WHERE s.run_id = p_run_id) AS x;
        IF v_all_done THEN
            PERFORM workflow.succeed_run(p_run_id);
            RETURN;
        END IF;
        IF v_workers IS NOT NULL THEN
            PERFORM workflow.enqueue_steps(p_run_id, v_workers, COALESCE(v_run.namespace, 'runs'));
        END IF;
        IF NOT COALESCE(v_others, false) THEN RETURN; END IF;
        v_progress := false;
        FOR v_step IN
            SELECT s.* FROM workflow.run_steps s
            WHERE s.run_id = p_run_id AND s.kind <> 'worker' AND s.state = 'pending' AND NOT EXISTS (
                SELECT 1 FROM workflow.run_steps d WHERE d.run_id = s.run_id AND d.name = ANY (s.after_steps) AND d.state <> 'succeeded')
            ORDER BY s.position
        LOOP
            -- A step that failed at its start finished the run: nothing more begins.
            IF (SELECT r.state FROM workflow.runs r WHERE r.run_id = p_run_id) <> 'running' THEN RETURN; END IF;
            IF v_step.kind = 'timer' THEN
                PERFORM workflow.arm_timer(p_run_id, v_step);
            ELSIF v_step.kind = 'signal' THEN
                IF workflow.await_signal(p_run_id, v_step) THEN v_progress := true; END IF;
            ELSE
                PERFORM workflow.start_child(v_run, v_step);
            END IF;
        END LOOP;
        EXIT WHEN NOT v_progress;
    END LOOP;
END
$$;

-- Every step succeeded: the run succeeds with its final steps' outputs (a final step is one no
-- other step runs after), by name; a child's parent learns of it.
CREATE FUNCTION workflow.succeed_run(p_run_id text) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_type text;
    v_parent text;
BEGIN
    UPDATE workflow.runs SET state = 'succeeded', finished_at = clock_timestamp(), finished_by = 'engine',
        output = (SELECT jsonb_object_agg(s.name, COALESCE(s.output, e.result)) FROM workflow.run_steps s
                  LEFT JOIN workflow.executions e ON e.execution_id = s.execution_id
                  WHERE s.run_id = p_run_id
                    AND NOT EXISTS (SELECT 1 FROM workflow.run_steps t WHERE t.run_id = s.run_id AND s.name = ANY (t.after_steps)))
    WHERE run_id = p_run_id AND state = 'running'
    RETURNING workflow_type, parent_run_id INTO v_type, v_parent;
    IF NOT FOUND THEN RETURN; END IF;
    PERFORM engine.publish_event('run.succeeded', jsonb_build_object('run_id', p_run_id, 'workflow_type', v_type), NULL);
    IF v_parent IS NOT NULL THEN PERFORM workflow.child_finished(p_run_id); END IF;
END
$$;

-- A parent's child step, once its child run finished (the caller holds the parent's row):
-- succeeded with the child's output, or failed naming the child's failure. Only the child the
-- step recorded counts (a retried parent's step records a new one).
CREATE FUNCTION workflow.resolve_child(p_parent_id text, p_step_id text, p_child_id text, p_actor text, p_term bigint) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_child workflow.runs%ROWTYPE;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM workflow.runs WHERE run_id = p_parent_id AND state = 'running') THEN RETURN; END IF;
    IF NOT EXISTS (SELECT 1 FROM workflow.run_steps WHERE step_id = p_step_id AND state = 'waiting' AND kind = 'child' AND child_run_id = p_child_id) THEN
        RETURN;
    END IF;
    SELECT * INTO v_child FROM workflow.runs WHERE run_id = p_child_id;
    IF NOT FOUND OR v_child.state = 'running' THEN RETURN; END IF;
    IF v_child.state = 'succeeded' THEN
        IF workflow.wait_step_succeeded(p_parent_id, p_step_id, v_child.output) THEN
            PERFORM workflow.advance_run(p_parent_id, p_actor, p_term);
        END IF;
    ELSE
        PERFORM workflow.fail_wait_step(p_parent_id, p_step_id,
            format('child run %s (%s) %s (%s): %s', p_child_id, v_child.workflow_type, v_child.state, v_child.reason, COALESCE(v_child.error, '')),
            p_actor, p_term);
    END IF;
END
$$;

-- A child run finished (the caller holds its row): its parent's step resolves now when the
-- parent's row is free; otherwise a `child_done` wakeup resolves it (never waiting for the parent).
CREATE FUNCTION workflow.child_finished(p_child_id text) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_parent text;
    v_step text;
BEGIN
    SELECT parent_run_id, parent_step_id INTO v_parent, v_step FROM workflow.runs WHERE run_id = p_child_id;
    IF v_parent IS NULL THEN RETURN; END IF;
    PERFORM 1 FROM workflow.runs WHERE run_id = v_parent FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        PERFORM workflow.resolve_child(v_parent, v_step, p_child_id, 'engine', NULL);
    ELSIF EXISTS (SELECT 1 FROM workflow.runs WHERE run_id = v_parent AND state = 'running') THEN
        PERFORM workflow.add_wakeup(v_parent, v_step, clock_timestamp(), 'child_done');
    END IF;
END
$$;

-- A finished run's running children are cancelled: now when their rows are free, otherwise by
-- a `parent_finished` wakeup (never waiting for a child).
CREATE FUNCTION workflow.cancel_children(p_run_id text, p_actor text, p_term bigint) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_child text;
BEGIN
    FOR v_child IN
        SELECT s.child_run_id FROM workflow.run_steps s
        WHERE s.run_id = p_run_id AND s.kind = 'child' AND s.state = 'waiting' AND s.child_run_id IS NOT NULL
        ORDER BY s.child_run_id
    LOOP
        PERFORM 1 FROM workflow.runs WHERE run_id = v_child AND state = 'running' FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            PERFORM workflow.finish_run(v_child, 'cancelled', 'cancelled', format('its parent run %s finished', p_run_id), p_actor, p_term);
        ELSIF EXISTS (SELECT 1 FROM workflow.runs WHERE run_id = v_child AND state = 'running') THEN
            PERFORM workflow.add_wakeup(v_child, NULL, clock_timestamp(), 'parent_finished');
        END IF;
    END LOOP;
END
$$;

-- A run's finish (0012's, extended): its running children are cancelled, its waiting steps
-- cancelled, its wakeups dropped, and its parent (if a child) learns of it.
CREATE OR REPLACE FUNCTION workflow.finish_run(p_run_id text, p_state text, p_reason text, p_error text, p_actor text, p_term bigint)
RETURNS boolean LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
-- Locks: the caller holds the run row; then children's run rows (SKIP LOCKED), ready →
-- executions (SKIP LOCKED) → leases → attempts → run_steps; its parent's run row (SKIP LOCKED).
DECLARE
    v_type text;
    v_parent text;
    v_execution uuid;
BEGIN
    UPDATE workflow.runs SET state = p_state, reason = p_reason, error = left(p_error, 4096), finished_by = p_actor, term = p_term,
                             finished_at = clock_timestamp()
    WHERE run_id = p_run_id AND state = 'running'
    RETURNING workflow_type, parent_run_id INTO v_type, v_parent;
    IF NOT FOUND THEN RETURN false; END IF;
    UPDATE workflow.run_steps SET state = 'skipped' WHERE run_id = p_run_id AND state = 'pending';
    PERFORM workflow.cancel_children(p_run_id, p_actor, p_term);
    UPDATE workflow.run_steps SET state = 'cancelled', finished_at = clock_timestamp() WHERE run_id = p_run_id AND state = 'waiting';
    DELETE FROM workflow.wakeups WHERE run_id = p_run_id;
    FOR v_execution IN
        SELECT s.execution_id FROM workflow.run_steps s
        WHERE s.run_id = p_run_id AND s.state IN ('queued', 'running') AND s.execution_id IS NOT NULL
        ORDER BY s.execution_id
    LOOP
        IF workflow.try_lock_execution(v_execution) THEN
            PERFORM workflow.fence_execution(v_execution);
            UPDATE workflow.run_steps SET state = 'cancelled', finished_at = clock_timestamp() WHERE execution_id = v_execution;
        END IF;
    END LOOP;
    INSERT INTO workflow.run_strays (execution_id, run_id)
    SELECT s.execution_id, s.run_id FROM workflow.run_steps s
    WHERE s.run_id = p_run_id AND s.state IN ('queued', 'running') AND s.execution_id IS NOT NULL
    ON CONFLICT DO NOTHING;
    PERFORM engine.publish_event(
        CASE p_state WHEN 'cancelled' THEN 'run.cancelled' ELSE 'run.failed' END,
        jsonb_build_object('run_id', p_run_id, 'workflow_type', v_type, 'reason', p_reason, 'error', left(p_error, 1024), 'actor', p_actor,
                           'term', p_term),
        NULL);
    IF v_parent IS NOT NULL THEN PERFORM workflow.child_finished(p_run_id); END IF;
    RETURN true;
END
$$;

-- The step trigger (0012's), advancing through advance_run when a step of another kind becomes
-- ready; a run of worker steps only takes the same path as before (enqueue, or succeed).
CREATE OR REPLACE FUNCTION workflow.step_execution_changed() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
-- Locks: the run row (already held by every caller that follows the lock order), run_steps,
-- budget_ledger; a finish from here takes ready → executions SKIP LOCKED.
DECLARE
    v_step workflow.run_steps%ROWTYPE;
    v_run workflow.runs%ROWTYPE;
    v_spent numeric;
    v_ready text[];
    v_others boolean;
    v_all_done boolean;
BEGIN
    SELECT * INTO v_run FROM workflow.runs WHERE run_id = COALESCE(NEW.run_id, NEW.payload ->> 'run_id') FOR UPDATE;
    IF NOT FOUND THEN RETURN NULL; END IF;
    IF v_run.state <> 'running' THEN
        -- The run finished first: nothing advances; a completion that was in flight is fenced.
        IF NEW.state = 'cancelled' THEN
            NULL;  -- a fence of this run's own finish
        ELSIF NEW.state = 'completed' THEN
            PERFORM workflow.fence_execution(NEW.execution_id);
            UPDATE workflow.run_steps SET state = 'cancelled', finished_at = clock_timestamp()
            WHERE step_id = NEW.step_id AND state IN ('queued', 'running');
        ELSE
            UPDATE workflow.run_steps SET state = 'failed', error = NEW.last_error, finished_at = clock_timestamp()
            WHERE step_id = NEW.step_id AND state IN ('queued', 'running');
        END IF;
        RETURN NULL;
    END IF;

    IF NEW.state = 'completed' THEN
        UPDATE workflow.run_steps SET state = 'succeeded', finished_at = clock_timestamp() WHERE step_id = NEW.step_id
        RETURNING * INTO v_step;
        v_spent := v_run.budget_spent;
        IF NEW.cost IS NOT NULL AND jsonb_array_length(NEW.cost) > 0 THEN
            INSERT INTO workflow.budget_ledger (entry_id, run_id, step_name, amount, unit)
            SELECT 'budget_' || workflow.ulid(), v_run.run_id, v_step.name, (c ->> 'amount')::numeric,
                   COALESCE(c ->> 'unit', v_run.budget_unit, 'units')
            FROM jsonb_array_elements(NEW.cost) AS c;
            SELECT v_spent + COALESCE(sum((c ->> 'amount')::numeric), 0) INTO v_spent
            FROM jsonb_array_elements(NEW.cost) AS c
            WHERE COALESCE(c ->> 'unit', v_run.budget_unit, 'units') = COALESCE(v_run.budget_unit, 'units');
            UPDATE workflow.runs SET budget_spent = v_spent WHERE run_id = v_run.run_id;
        END IF;
        PERFORM engine.publish_event('step.succeeded',
            jsonb_build_object('run_id', v_run.run_id, 'step', v_step.name, 'execution_id', NEW.execution_id, 'epoch', NEW.lease_epoch), NULL);
        IF v_run.budget_limit IS NOT NULL AND v_spent >= v_run.budget_limit THEN
            PERFORM workflow.finish_run(v_run.run_id, 'failed', 'budget_exceeded',
                format('the run spent %s %s of its budget of %s', v_spent, v_run.budget_unit, v_run.budget_limit), 'engine', NULL);
            RETURN NULL;
        END IF;
        SELECT array_agg(x.name ORDER BY x.position) FILTER (WHERE x.ready AND x.kind = 'worker'),
               bool_or(x.ready AND x.kind <> 'worker'), bool_and(x.state = 'succeeded')
        INTO v_ready, v_others, v_all_done
        FROM (SELECT s.name, s.position, s.kind, s.state,
                     s.state = 'pending' AND NOT EXISTS (
                         SELECT 1 FROM workflow.run_steps d WHERE d.run_id = s.run_id AND d.name = ANY (s.after_steps) AND d.state <> 'succeeded') AS ready
              FROM workflow.run_steps s WHERE s.run_id = v_run.run_id) AS x;
        IF v_others THEN
            PERFORM workflow.advance_run(v_run.run_id, 'engine', NULL);
        ELSIF v_ready IS NOT NULL THEN
            PERFORM workflow.enqueue_steps(v_run.run_id, v_ready, NEW.namespace);
        ELSIF v_all_done THEN
            -- succeed_run's statements, inline: this is every run's last step (a call costs more).
            UPDATE workflow.runs SET state = 'succeeded', finished_at = clock_timestamp(), finished_by = 'engine',
                output = (SELECT jsonb_object_agg(s.name, COALESCE(s.output, e.result)) FROM workflow.run_steps s
                          LEFT JOIN workflow.executions e ON e.execution_id = s.execution_id
                          WHERE s.run_id = v_run.run_id
                            AND NOT EXISTS (SELECT 1 FROM workflow.run_steps t WHERE t.run_id = s.run_id AND s.name = ANY (t.after_steps)))
            WHERE run_id = v_run.run_id;
            PERFORM engine.publish_event('run.succeeded',
                jsonb_build_object('run_id', v_run.run_id, 'workflow_type', v_run.workflow_type), NULL);
            IF v_run.parent_run_id IS NOT NULL THEN PERFORM workflow.child_finished(v_run.run_id); END IF;
        END IF;
    ELSIF NEW.state IN ('failed', 'dead_lettered', 'cancelled') THEN
        UPDATE workflow.run_steps SET state = 'failed', error = NEW.last_error, finished_at = clock_timestamp() WHERE step_id = NEW.step_id
        RETURNING * INTO v_step;
        PERFORM engine.publish_event('step.failed',
            jsonb_build_object('run_id', v_run.run_id, 'step', v_step.name, 'execution_id', NEW.execution_id, 'error', left(NEW.last_error, 1024)),
            NULL);
        PERFORM workflow.finish_run(v_run.run_id, 'failed', 'step_failed',
            format('step %s failed after %s attempt(s): %s', v_step.name, NEW.attempts, NEW.last_error), 'engine', NULL);
    END IF;
    RETURN NULL;
END
$$;

-- The start of 0014, making the run through create_run (so a root of any kind begins).
CREATE OR REPLACE FUNCTION workflow.start_run(
    p_type text, p_input jsonb, p_idempotency_key text, p_deadline_ms bigint, p_budget_limit numeric, p_budget_unit text,
    p_actor text, p_namespace text, p_publisher uuid, p_allowed_lanes text[], p_version text)
RETURNS TABLE (run_id text, created boolean, package_hash text, same_input boolean, refused text)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
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
$$;

-- A signal for a run. Outcomes: 'consumed' (a step waited for it and succeeded with its
-- payload), 'kept' (no step waits for it yet: the first wait of that name consumes it),
-- 'duplicate' (this signal_id was delivered already, with the same name and payload: the first
-- delivery's answer), and refusals 'not_found' (no run), 'signal_conflict' (the signal_id was
-- used with another name or payload), 'run_finished', 'unknown_signal' (no step of the run
-- waits for that name).
CREATE FUNCTION workflow.send_signal(p_run_id text, p_name text, p_payload jsonb, p_signal_id text, p_actor text, p_publisher uuid)
RETURNS TABLE (outcome text, signal_id text, consumed_by text, run_state text)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
-- Locks: runs → signals → run_steps (then advance_run's).
DECLARE
    v_run workflow.runs%ROWTYPE;
    v_old workflow.signals%ROWTYPE;
    v_id text := COALESCE(p_signal_id, 'sig_' || workflow.ulid());
    v_seq bigint;
    v_step workflow.run_steps%ROWTYPE;
BEGIN
    SELECT * INTO v_run FROM workflow.runs WHERE run_id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN RETURN QUERY SELECT 'not_found', NULL::text, NULL::text, NULL::text; RETURN; END IF;
    IF p_signal_id IS NOT NULL THEN
        SELECT * INTO v_old FROM workflow.signals g WHERE g.run_id = p_run_id AND g.signal_id = p_signal_id;
        IF FOUND THEN
            IF v_old.name = p_name AND v_old.payload = p_payload THEN
                RETURN QUERY SELECT 'duplicate', v_old.signal_id, v_old.consumed_by, v_run.state;
            ELSE
                RETURN QUERY SELECT 'signal_conflict', v_old.signal_id, v_old.consumed_by, v_run.state;
            END IF;
            RETURN;
        END IF;
    END IF;
    IF v_run.state <> 'running' THEN RETURN QUERY SELECT 'run_finished', NULL::text, NULL::text, v_run.state; RETURN; END IF;
    IF NOT EXISTS (SELECT 1 FROM workflow.run_steps s WHERE s.run_id = p_run_id AND s.kind = 'signal' AND s.wait ->> 'signal' = p_name) THEN
        RETURN QUERY SELECT 'unknown_signal', NULL::text, NULL::text, v_run.state; RETURN;
    END IF;
    INSERT INTO workflow.signals (run_id, signal_id, name, payload, sent_by) VALUES (p_run_id, v_id, p_name, p_payload, p_actor)
    RETURNING seq INTO v_seq;
    SELECT * INTO v_step FROM workflow.run_steps s
    WHERE s.run_id = p_run_id AND s.kind = 'signal' AND s.wait ->> 'signal' = p_name AND s.state = 'waiting'
    ORDER BY s.position LIMIT 1;
    IF FOUND AND NOT EXISTS (SELECT 1 FROM workflow.signals g WHERE g.run_id = p_run_id AND g.name = p_name AND g.consumed_at IS NULL AND g.seq < v_seq) THEN
        UPDATE workflow.signals SET consumed_by = v_step.name, consumed_at = clock_timestamp() WHERE seq = v_seq;
        DELETE FROM workflow.wakeups WHERE step_id = v_step.step_id AND run_id = p_run_id;
        PERFORM engine.publish_event('run.signalled',
            jsonb_build_object('run_id', p_run_id, 'name', p_name, 'signal_id', v_id, 'consumed_by', v_step.name, 'actor', p_actor), p_publisher);
        IF workflow.wait_step_succeeded(p_run_id, v_step.step_id, p_payload) THEN
            PERFORM workflow.advance_run(p_run_id, p_actor, NULL);
        END IF;
        RETURN QUERY SELECT 'consumed', v_id, v_step.name, (SELECT r.state FROM workflow.runs r WHERE r.run_id = p_run_id);
        RETURN;
    END IF;
    PERFORM engine.publish_event('run.signalled',
        jsonb_build_object('run_id', p_run_id, 'name', p_name, 'signal_id', v_id, 'consumed_by', NULL, 'actor', p_actor), p_publisher);
    RETURN QUERY SELECT 'kept', v_id, NULL::text, v_run.state;
END
$$;

-- One wakeup, its run's row held and the wakeup row deleted.
CREATE FUNCTION workflow.fire_wakeup(p_run_id text, p_step_id text, p_reason text, p_actor text, p_term bigint) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_step workflow.run_steps%ROWTYPE;
    v_parent text;
BEGIN
    IF p_reason = 'parent_finished' THEN
        SELECT parent_run_id INTO v_parent FROM workflow.runs WHERE run_id = p_run_id AND state = 'running';
        IF FOUND AND NOT EXISTS (SELECT 1 FROM workflow.runs WHERE run_id = v_parent AND state = 'running') THEN
            PERFORM workflow.finish_run(p_run_id, 'cancelled', 'cancelled', format('its parent run %s finished', v_parent), p_actor, p_term);
        END IF;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM workflow.runs WHERE run_id = p_run_id AND state = 'running') THEN RETURN; END IF;
    SELECT * INTO v_step FROM workflow.run_steps WHERE step_id = p_step_id AND state = 'waiting';
    IF NOT FOUND THEN RETURN; END IF;
    IF p_reason = 'timer' AND v_step.kind = 'timer' THEN
        IF workflow.wait_step_succeeded(p_run_id, p_step_id, jsonb_build_object('due_at', v_step.due_at, 'fired_at', clock_timestamp())) THEN
            PERFORM workflow.advance_run(p_run_id, p_actor, p_term);
        END IF;
    ELSIF p_reason = 'signal_timeout' AND v_step.kind = 'signal' THEN
        IF v_step.wait ->> 'on_timeout' = 'continue' THEN
            IF workflow.wait_step_succeeded(p_run_id, p_step_id, 'null'::jsonb) THEN
                PERFORM workflow.advance_run(p_run_id, p_actor, p_term);
            END IF;
        ELSE
            PERFORM workflow.fail_wait_step(p_run_id, p_step_id,
                format('no %s signal arrived within %s ms', v_step.wait ->> 'signal', v_step.wait ->> 'timeout_ms'), p_actor, p_term);
        END IF;
    ELSIF p_reason = 'child_done' AND v_step.kind = 'child' THEN
        PERFORM workflow.resolve_child(p_run_id, p_step_id, v_step.child_run_id, p_actor, p_term);
    END IF;
END
$$;

-- The timer duty's page: due wakeups in due order, each under its run's row (SKIP LOCKED: a
-- run held elsewhere is left for the next page, counted in `skipped`). Pages fired side by side
-- split the due wakeups by id (`wakeup_id % p_parts = p_part`) rather than by row locks: a
-- wakeup row is only ever deleted by a transaction that holds its run's row (its page, or a
-- finish, signal or retry of that run), so no two transactions wait for each other over them. A wakeup that raises
-- fails its step (or run) with the error instead of failing the page forever; errors that a
-- retry cures (serialization, deadlock, lock or statement timeouts) fail the page. Returns
-- what it fired, what it skipped, and the milliseconds until the next due wakeup (NULL: none).
-- Pages stay under 64 wakeups so their subtransactions fit the server's per-backend cache.
CREATE FUNCTION workflow.fire_due(p_limit integer, p_actor text, p_term bigint, p_part integer, p_parts integer)
RETURNS TABLE (fired integer, skipped integer, next_due_ms bigint)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
-- Locks: runs (SKIP LOCKED), then what advancing each takes.
DECLARE
    w workflow.wakeups%ROWTYPE;
    v_fired integer := 0;
    v_skipped integer := 0;
    v_message text;
BEGIN
    IF p_limit NOT BETWEEN 1 AND 60 THEN
        RAISE EXCEPTION 'a timer page is 1 to 60 wakeups, not %', p_limit USING ERRCODE = '22023';
    END IF;
    IF p_parts NOT BETWEEN 1 AND 16 OR p_part NOT BETWEEN 0 AND p_parts - 1 THEN
        RAISE EXCEPTION 'a timer page is part 0 to % of 1 to 16 parts, not % of %', p_parts - 1, p_part, p_parts USING ERRCODE = '22023';
    END IF;
    FOR w IN
        SELECT * FROM workflow.wakeups WHERE due_at <= clock_timestamp() AND wakeup_id % p_parts = p_part ORDER BY due_at, wakeup_id LIMIT p_limit
    LOOP
        PERFORM 1 FROM workflow.runs WHERE run_id = w.run_id FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            IF EXISTS (SELECT 1 FROM workflow.runs WHERE run_id = w.run_id) THEN
                v_skipped := v_skipped + 1;
            ELSE
                DELETE FROM workflow.wakeups WHERE wakeup_id = w.wakeup_id;  -- its run was pruned
            END IF;
            CONTINUE;
        END IF;
        DELETE FROM workflow.wakeups WHERE wakeup_id = w.wakeup_id;
        CONTINUE WHEN NOT FOUND;
        BEGIN
            PERFORM workflow.fire_wakeup(w.run_id, w.step_id, w.reason, p_actor, p_term);
        EXCEPTION
            WHEN serialization_failure OR deadlock_detected OR lock_not_available OR query_canceled THEN RAISE;
            WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
                IF w.step_id IS NOT NULL THEN
                    PERFORM workflow.fail_wait_step(w.run_id, w.step_id, 'the engine could not advance it: ' || v_message, p_actor, p_term);
                ELSE
                    PERFORM workflow.finish_run(w.run_id, 'failed', 'step_failed', 'the engine could not advance it: ' || v_message, p_actor, p_term);
                END IF;
        END;
        v_fired := v_fired + 1;
    END LOOP;
    RETURN QUERY SELECT v_fired, v_skipped,
        (SELECT CASE WHEN min(k.due_at) IS NOT NULL THEN GREATEST(0, ceil(extract(epoch FROM (min(k.due_at) - clock_timestamp())) * 1000))::bigint END
         FROM workflow.wakeups k);
END
$$;

-- Resume (0015's), for every kind: a waiting or failed timer, signal or child step begins
-- again (a child step records a new child on the type's route at that moment). Refused also
-- while a child run of the last round still runs ('children_live': its parent's finish
-- cancels it within moments).
CREATE OR REPLACE FUNCTION workflow.retry_run(
    p_run_id text, p_mode text, p_budget_limit numeric, p_deadline_ms bigint, p_actor text, p_publisher uuid)
RETURNS TABLE (outcome text, requeued text[], reset text[])
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
-- Locks: runs → run_steps → (advance) executions, ready; a child's version row (KEY SHARE).
DECLARE
    v_run workflow.runs%ROWTYPE;
    v_reset text[];
    v_ready text[];
BEGIN
    IF p_mode NOT IN ('failed', 'all-unfinished') THEN
        RAISE EXCEPTION 'retry mode must be failed or all-unfinished, not %', p_mode USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_run FROM workflow.runs WHERE run_id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN RETURN QUERY SELECT 'not_found', NULL::text[], NULL::text[]; RETURN; END IF;
    IF v_run.state IN ('running', 'succeeded') THEN RETURN QUERY SELECT v_run.state, NULL::text[], NULL::text[]; RETURN; END IF;
    IF p_mode = 'failed' AND NOT EXISTS (SELECT 1 FROM workflow.run_steps WHERE run_id = p_run_id AND state = 'failed') THEN
        RETURN QUERY SELECT 'no_failed_step', NULL::text[], NULL::text[]; RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM workflow.run_steps WHERE run_id = p_run_id AND state <> 'succeeded') THEN
        RETURN QUERY SELECT 'nothing_to_retry', NULL::text[], NULL::text[]; RETURN;
    END IF;
    IF p_budget_limit IS NOT NULL AND p_budget_limit <= v_run.budget_spent THEN
        RETURN QUERY SELECT 'budget_too_low', NULL::text[], NULL::text[]; RETURN;
    END IF;
    IF p_budget_limit IS NULL AND v_run.budget_limit IS NOT NULL AND v_run.budget_spent >= v_run.budget_limit THEN
        RETURN QUERY SELECT 'budget_exhausted', NULL::text[], NULL::text[]; RETURN;
    END IF;
    IF EXISTS (
        SELECT 1 FROM workflow.run_steps s JOIN workflow.executions e ON e.execution_id = s.execution_id
        WHERE s.run_id = p_run_id AND e.state IN ('queued', 'running')
    ) THEN
        RETURN QUERY SELECT 'executions_live', NULL::text[], NULL::text[]; RETURN;
    END IF;
    IF EXISTS (
        SELECT 1 FROM workflow.run_steps s JOIN workflow.runs c ON c.run_id = s.child_run_id
        WHERE s.run_id = p_run_id AND s.state <> 'succeeded' AND c.state = 'running'
    ) THEN
        RETURN QUERY SELECT 'children_live', NULL::text[], NULL::text[]; RETURN;
    END IF;
    UPDATE workflow.runs
    SET state = 'running', reason = NULL, error = NULL, output = NULL, finished_at = NULL, finished_by = NULL, term = NULL,
        budget_limit = COALESCE(p_budget_limit, budget_limit),
        budget_unit = CASE WHEN p_budget_limit IS NOT NULL THEN COALESCE(budget_unit, 'units') ELSE budget_unit END,
        deadline = CASE WHEN p_deadline_ms IS NOT NULL THEN clock_timestamp() + p_deadline_ms * interval '1 millisecond'
                        WHEN deadline IS NOT NULL THEN clock_timestamp() + (deadline - started_at)
                        END
    WHERE run_id = p_run_id;
    DELETE FROM workflow.wakeups WHERE run_id = p_run_id;
    WITH r AS (
        UPDATE workflow.run_steps
        SET state = 'pending', execution_id = NULL, output = NULL, error = NULL, queued_at = NULL, finished_at = NULL,
            waiting_since = NULL, due_at = NULL, child_type = NULL, child_hash = NULL, child_run_id = NULL
        WHERE run_id = p_run_id AND state <> 'succeeded'
        RETURNING name, position
    )
    SELECT array_agg(name ORDER BY position) INTO v_reset FROM r;
    SELECT array_agg(s.name ORDER BY s.position) INTO v_ready FROM workflow.run_steps s
    WHERE s.run_id = p_run_id AND s.state = 'pending' AND NOT EXISTS (
        SELECT 1 FROM workflow.run_steps d WHERE d.run_id = s.run_id AND d.name = ANY (s.after_steps) AND d.state <> 'succeeded');
    PERFORM engine.publish_event('run.retried',
        jsonb_build_object('run_id', p_run_id, 'workflow_type', v_run.workflow_type, 'package_hash', v_run.package_hash, 'mode', p_mode,
                           'previous_state', v_run.state, 'previous_reason', v_run.reason, 'requeued', to_jsonb(COALESCE(v_ready, '{}')),
                           'reset', to_jsonb(COALESCE(v_reset, '{}')), 'actor', p_actor),
        p_publisher);
    PERFORM workflow.advance_run(p_run_id, p_actor, NULL);
    RETURN QUERY SELECT 'retried', COALESCE(v_ready, '{}'), COALESCE(v_reset, '{}');
END
$$;
