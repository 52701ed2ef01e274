-- Durable workflow runs (issue 20): a run is pinned to the package version its type was
-- routed to when it started; its steps are created from that version's manifest and carried
-- by the execution queue (one execution per step attempt series).
--
-- `package_hash` has no foreign key: a finished run keeps naming the version it ran after
-- that version is unloaded. An unfinished one pins it (PackageStore.unload checks
-- `runs_pins_idx` under the version's row lock; run starts take that row's key-share lock).

CREATE TABLE workflow.runs (
    run_id          text        PRIMARY KEY CHECK (run_id ~ '^run_[0-9a-z]{26}$'),
    workflow_type   text        NOT NULL,
    package_hash    text        NOT NULL CHECK (package_hash ~ '^[0-9a-f]{64}$'),
    state           text        NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    input           jsonb       NOT NULL CHECK (jsonb_typeof(input) = 'object'),
    output          jsonb,
    idempotency_key text        CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 255),
    deadline        timestamptz,
    budget_limit    numeric     CHECK (budget_limit IS NULL OR budget_limit > 0),
    budget_unit     text,
    budget_spent    numeric     NOT NULL DEFAULT 0,
    reason          text        CHECK (reason IS NULL OR reason IN ('step_failed', 'cancelled', 'deadline_exceeded', 'budget_exceeded')),
    error           text,
    started_by      text        NOT NULL,
    finished_by     text,
    term            bigint,
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz,
    CHECK ((state = 'running') = (finished_at IS NULL))
);
CREATE UNIQUE INDEX runs_idempotency_idx ON workflow.runs (workflow_type, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_pins_idx ON workflow.runs (package_hash) WHERE state = 'running';
CREATE INDEX runs_listing_idx ON workflow.runs (started_at, run_id);
CREATE INDEX runs_deadline_idx ON workflow.runs (deadline) WHERE state = 'running' AND deadline IS NOT NULL;
CREATE INDEX runs_finished_idx ON workflow.runs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE workflow.run_steps (
    step_id      text        PRIMARY KEY CHECK (step_id ~ '^step_[0-9a-z]{26}$'),
    run_id       text        NOT NULL REFERENCES workflow.runs (run_id) ON DELETE CASCADE,
    name         text        NOT NULL,
    position     integer     NOT NULL,
    after_steps  text[]      NOT NULL,
    -- The step's manifest entry, copied at start so advancing never reads the package.
    lane         text        NOT NULL,
    capabilities text[]      NOT NULL,
    max_attempts integer     NOT NULL,
    timeout_ms   bigint      NOT NULL,
    backoff_base_ms bigint   NOT NULL,
    backoff_max_ms  bigint   NOT NULL,
    state        text        NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'skipped', 'cancelled')),
    execution_id uuid        UNIQUE,
    output       jsonb,
    error        text,
    queued_at    timestamptz,
    finished_at  timestamptz,
    UNIQUE (run_id, name)
);

CREATE TABLE workflow.budget_ledger (
    entry_id  text        PRIMARY KEY CHECK (entry_id ~ '^budget_[0-9a-z]{26}$'),
    run_id    text        NOT NULL REFERENCES workflow.runs (run_id) ON DELETE CASCADE,
    step_name text        NOT NULL,
    amount    numeric     NOT NULL CHECK (amount >= 0),
    unit      text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX budget_ledger_run_idx ON workflow.budget_ledger (run_id, at);

-- The step an execution carries (NULL for plain queue executions), the lease a claim of it
-- gets (the step's timeout, whatever the worker asks), and the costs its completion reported.
ALTER TABLE workflow.executions
    ADD COLUMN step_id       text,
    ADD COLUMN step_lease_ms bigint CHECK (step_lease_ms BETWEEN 1000 AND 86400000),
    ADD COLUMN cost          jsonb;
-- Steps whose execution may still be claimed or running: what a finished run must fence.
CREATE INDEX run_steps_active_idx ON workflow.run_steps (execution_id) WHERE state IN ('queued', 'running');

-- A ULID in lowercase Crockford base32 (26 characters: 48 bits of milliseconds, 80 random).
CREATE FUNCTION workflow.ulid() RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    alphabet constant text := '0123456789abcdefghjkmnpqrstvwxyz';
    ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    r bytea := decode(replace(gen_random_uuid()::text, '-', ''), 'hex');
    a bigint := 0;
    b bigint := 0;
    out text := '';
BEGIN
    FOR i IN REVERSE 9..0 LOOP
        out := out || substr(alphabet, ((ms >> (i * 5)) & 31)::int + 1, 1);
    END LOOP;
    -- 40 random bits each from bytes 0-4 and 11-15 (a v4 UUID's version and variant bits are elsewhere).
    FOR i IN 0..4 LOOP
        a := (a << 8) | get_byte(r, i);
        b := (b << 8) | get_byte(r, 11 + i);
    END LOOP;
    FOR i IN REVERSE 7..0 LOOP
        out := out || substr(alphabet, ((a >> (i * 5)) & 31)::int + 1, 1);
    END LOOP;
    FOR i IN REVERSE 7..0 LOOP
        out := out || substr(alphabet, ((b >> (i * 5)) & 31)::int + 1, 1);
    END LOOP;
    RETURN out;
END
$$;

-- Enqueues the named steps of a run as executions in namespace `p_namespace`: each gets the
-- input {"run_id", "step", "package_hash", "input": the run's input, "after": {step: output}
-- of the steps it runs after}, the lane, capabilities, attempts, backoff and timeout (its
-- lease) of its manifest entry. The steps must be 'pending'; they become 'queued'.
CREATE FUNCTION workflow.enqueue_steps(p_run_id text, p_names text[], p_namespace text) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n integer;
BEGIN
    WITH run AS (
        SELECT r.run_id, r.input, r.package_hash FROM workflow.runs r WHERE r.run_id = p_run_id
    ), spec AS (
        SELECT s.step_id, s.lane, s.capabilities, s.max_attempts, s.timeout_ms, s.backoff_base_ms, s.backoff_max_ms,
               jsonb_build_object(
                   'run_id', run.run_id, 'step', s.name, 'package_hash', run.package_hash, 'input', run.input,
                   'after', COALESCE((SELECT jsonb_object_agg(d.name, d.output) FROM workflow.run_steps d
                                      WHERE d.run_id = s.run_id AND d.name = ANY (s.after_steps)), '{}'::jsonb)) AS payload,
               gen_random_uuid() AS execution_id
        FROM run
        JOIN workflow.run_steps s ON s.run_id = run.run_id AND s.name = ANY (p_names) AND s.state = 'pending'
    ), inserted AS (
        INSERT INTO workflow.executions (
            execution_id, namespace, lane, payload, max_attempts, required_capabilities, priority, run_at, retry_base_ms, retry_max_ms, step_id,
            step_lease_ms)
        SELECT execution_id, p_namespace, lane, payload, max_attempts, capabilities, 0, clock_timestamp(), backoff_base_ms, backoff_max_ms,
               step_id, timeout_ms
        FROM spec
        RETURNING execution_id, lane, priority, run_at, required_capabilities
    ), readied AS (
        INSERT INTO workflow.ready (namespace, lane, priority, run_at, execution_id, required_capabilities)
        SELECT p_namespace, lane, priority, run_at, execution_id, required_capabilities FROM inserted
        RETURNING lane
    ), marked AS (
        UPDATE workflow.run_steps s SET state = 'queued', execution_id = spec.execution_id, queued_at = clock_timestamp()
        FROM spec WHERE s.step_id = spec.step_id
        RETURNING 1
    ), notified AS (
        SELECT pg_notify('regent_queue', p_namespace || ' ' || lanes) FROM (SELECT string_agg(DISTINCT lane, ' ') AS lanes FROM readied) AS l
        WHERE lanes IS NOT NULL
    )
    SELECT count(*) + 0 * (SELECT count(*) FROM notified) INTO n FROM marked;
    RETURN n;
END
$$;

-- Starts a run of `p_type` on the version its route points at, in the caller's transaction:
-- the run (pinned to that version), its steps, and its root steps enqueued. The version's
-- row is taken FOR KEY SHARE first, so an unload running at the same time either waits for
-- this transaction (and then sees the run) or has already deleted the version (and this
-- finds no route: no row is returned). With an idempotency key already used for the type,
-- returns that run (created false) and changes nothing.
CREATE FUNCTION workflow.start_run(
    p_type text, p_input jsonb, p_idempotency_key text, p_deadline timestamptz, p_budget_limit numeric, p_budget_unit text,
    p_actor text, p_namespace text, p_publisher uuid)
RETURNS TABLE (run_id text, created boolean, package_hash text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_hash text;
    v_manifest jsonb;
    v_run text;
    v_roots text[];
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        RETURN QUERY SELECT r.run_id, false, r.package_hash FROM workflow.runs r
                     WHERE r.workflow_type = p_type AND r.idempotency_key = p_idempotency_key;
        IF FOUND THEN RETURN; END IF;
    END IF;
    SELECT p.content_hash, p.manifest INTO v_hash, v_manifest
    FROM workflow.package_routes rt JOIN workflow.packages p ON p.content_hash = rt.content_hash
    WHERE rt.workflow_type = p_type
    FOR KEY SHARE OF p;
    IF NOT FOUND THEN RETURN; END IF;
    v_run := 'run_' || workflow.ulid();
    INSERT INTO workflow.runs (run_id, workflow_type, package_hash, input, idempotency_key, deadline, budget_limit, budget_unit, started_by)
    VALUES (v_run, p_type, v_hash, p_input, p_idempotency_key, p_deadline,
            COALESCE(p_budget_limit, (v_manifest -> 'budget' ->> 'limit')::numeric),
            CASE WHEN p_budget_limit IS NOT NULL THEN p_budget_unit ELSE v_manifest -> 'budget' ->> 'unit' END, p_actor)
    ON CONFLICT (workflow_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;
    IF NOT FOUND THEN
        -- A start with the same key committed while this one ran: that run is the answer.
        RETURN QUERY SELECT r.run_id, false, r.package_hash FROM workflow.runs r
                     WHERE r.workflow_type = p_type AND r.idempotency_key = p_idempotency_key;
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
    PERFORM engine.publish_event('run.started', jsonb_build_object('run_id', v_run, 'workflow_type', p_type, 'package_hash', v_hash), p_publisher);
    RETURN QUERY SELECT v_run, true, v_hash;
END
$$;
