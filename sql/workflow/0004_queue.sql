-- The execution queue at peer speed (issue 18).
--
-- Hot path: enqueue, claim, complete/fail. Each touches as few index entries as it can:
--   * `workflow.ready` holds one row per runnable execution. Its primary key is the order a
--     claim walks for one lane: (namespace, lane, priority, run_at, execution_id). A claim
--     deletes what it takes; a requeue inserts again. No other table's index mentions state.
--   * `workflow.executions` and `workflow.attempts` keep only indexes on columns the hot path
--     never changes (their keys, `created_at`), so claim/complete/fail updates are HOT-eligible;
--     a fillfactor of 70 leaves room on each page for the new row versions.
--   * `workflow.leases` holds the live leases alone (inserted at claim, deleted at the end of
--     the attempt, moved by renew); the expiry scanner walks its `lease_expires_at` index.
--   * `workflow.unique_keys` holds the uniqueness keys of unfinished executions (written in the
--     enqueue statement before the execution row, so no foreign key; finishing deletes the key).

ALTER TABLE workflow.executions
    ADD COLUMN priority      smallint    NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 1000),
    ADD COLUMN run_at        timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN unique_key    text        CHECK (unique_key IS NULL OR length(unique_key) BETWEEN 1 AND 255),
    ADD COLUMN retry_base_ms bigint      CHECK (retry_base_ms BETWEEN 1 AND 86400000),
    ADD COLUMN retry_max_ms  bigint      CHECK (retry_max_ms BETWEEN 1 AND 604800000),
    ADD COLUMN finished_at   timestamptz;
ALTER TABLE workflow.executions DROP CONSTRAINT executions_state_check;
ALTER TABLE workflow.executions ADD CONSTRAINT executions_state_check
    CHECK (state IN ('queued', 'running', 'completed', 'failed', 'dead_lettered', 'cancelled'));
-- Its predicate mentions `state`: every claim would have written new index entries.
DROP INDEX workflow.executions_runnable_idx;
-- Never updated: retention walks it (finished rows among the oldest), listings too.
CREATE INDEX executions_created_idx ON workflow.executions (created_at, execution_id);
-- Statistics follow a burst quickly: an emptied table (retention, a drained backlog) that
-- fills again must not keep the plans of an empty one for long.
ALTER TABLE workflow.executions SET (fillfactor = 70, autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000);

CREATE TABLE workflow.ready (
    namespace             text        NOT NULL,
    lane                  text        NOT NULL,
    priority              smallint    NOT NULL,
    run_at                timestamptz NOT NULL,
    execution_id          uuid        NOT NULL,
    required_capabilities text[]      NOT NULL,
    PRIMARY KEY (namespace, lane, priority, run_at, execution_id)
);
CREATE UNIQUE INDEX ready_execution_idx ON workflow.ready (execution_id);
-- A queue table churns: vacuum it after every thousand dead rows, whatever its size, without
-- the cost-based pauses (a claim walks past dead index entries until they are vacuumed).
ALTER TABLE workflow.ready SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0);

INSERT INTO workflow.ready (namespace, lane, priority, run_at, execution_id, required_capabilities)
SELECT namespace, lane, priority, run_at, execution_id, required_capabilities FROM workflow.executions WHERE state = 'queued';

CREATE TABLE workflow.leases (
    execution_id       uuid        PRIMARY KEY REFERENCES workflow.executions (execution_id) ON DELETE CASCADE,
    namespace          text        NOT NULL,
    attempt_index      integer     NOT NULL,
    lease_epoch        bigint      NOT NULL,
    worker_instance_id text        NOT NULL,
    lease_expires_at   timestamptz NOT NULL,
    lease_ms           bigint      NOT NULL CHECK (lease_ms > 0),
    started_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX leases_expiry_idx ON workflow.leases (lease_expires_at, execution_id);
ALTER TABLE workflow.leases SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0);

INSERT INTO workflow.leases (execution_id, namespace, attempt_index, lease_epoch, worker_instance_id, lease_expires_at, lease_ms, started_at)
SELECT a.execution_id, e.namespace, a.attempt_index, a.lease_epoch, a.worker_instance_id, a.lease_expires_at,
       COALESCE(a.lease_ms, GREATEST(1, (extract(epoch FROM a.lease_expires_at - a.started_at) * 1000)::bigint)), a.started_at
FROM workflow.attempts a JOIN workflow.executions e USING (execution_id) WHERE a.state = 'leased';

-- Its predicate mentions `state`: ending an attempt would have written new index entries.
DROP INDEX workflow.attempts_live_lease_expiry_idx;
ALTER TABLE workflow.attempts DROP CONSTRAINT attempts_state_check;
ALTER TABLE workflow.attempts ADD CONSTRAINT attempts_state_check
    CHECK (state IN ('leased', 'completed', 'failed', 'expired', 'cancelled'));
ALTER TABLE workflow.attempts SET (fillfactor = 70);

CREATE TABLE workflow.unique_keys (
    namespace    text NOT NULL,
    unique_key   text NOT NULL,
    execution_id uuid NOT NULL,
    PRIMARY KEY (namespace, unique_key)
);

-- Retention walks these by time.
CREATE INDEX worker_events_at_idx ON workflow.worker_events (at);
CREATE INDEX lease_decisions_at_idx ON workflow.lease_decisions (at);
