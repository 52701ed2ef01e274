-- Worker registry: one row per (namespace, worker instance). A worker instance id is bound
-- to one worker id for its life; re-registering it under another worker id is refused.
CREATE TABLE workflow.workers (
    namespace          text        NOT NULL CHECK (namespace ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    worker_instance_id text        NOT NULL CHECK (worker_instance_id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    worker_id          text        NOT NULL CHECK (worker_id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    lanes              text[]      NOT NULL,
    capabilities       text[]      NOT NULL,
    liveness_ttl_ms    bigint      NOT NULL CHECK (liveness_ttl_ms > 0),
    registered_at      timestamptz NOT NULL DEFAULT now(),
    last_heartbeat     timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    dead               boolean     NOT NULL DEFAULT false,
    dead_reason        text,
    PRIMARY KEY (namespace, worker_instance_id)
);
CREATE INDEX workers_expires_at_idx ON workflow.workers (expires_at);

-- What happened to workers, written in the same transaction as the change.
-- Heartbeats are not logged here (they would dominate the table); last_heartbeat holds the latest.
CREATE TABLE workflow.worker_events (
    id                 bigserial   PRIMARY KEY,
    namespace          text        NOT NULL,
    worker_instance_id text        NOT NULL,
    kind               text        NOT NULL CHECK (kind IN ('registered', 'refreshed', 'marked_dead', 'ttl_swept')),
    at                 timestamptz NOT NULL DEFAULT now(),
    detail             jsonb       NOT NULL DEFAULT '{}'::jsonb
);

-- Executions and their attempts. lease_epoch is the worker's fence: it grows at every claim
-- and every reclaim, and renew/complete/fail must present the current one.
CREATE TABLE workflow.executions (
    execution_id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    namespace             text        NOT NULL CHECK (namespace ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    lane                  text        NOT NULL CHECK (lane ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    payload               jsonb       NOT NULL DEFAULT '{}'::jsonb,
    max_attempts          integer     NOT NULL CHECK (max_attempts BETWEEN 1 AND 1000),
    required_capabilities text[]      NOT NULL DEFAULT '{}',
    state                 text        NOT NULL DEFAULT 'queued'
                                      CHECK (state IN ('queued', 'running', 'completed', 'failed', 'dead_lettered')),
    attempts              integer     NOT NULL DEFAULT 0,
    lease_epoch           bigint      NOT NULL DEFAULT 0,
    result                jsonb,
    last_error            text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX executions_runnable_idx ON workflow.executions (namespace, lane, created_at, execution_id) WHERE state = 'queued';

CREATE TABLE workflow.attempts (
    execution_id       uuid        NOT NULL REFERENCES workflow.executions (execution_id) ON DELETE CASCADE,
    attempt_index      integer     NOT NULL,
    lease_epoch        bigint      NOT NULL,
    worker_instance_id text        NOT NULL,
    state              text        NOT NULL CHECK (state IN ('leased', 'completed', 'failed', 'expired')),
    lease_expires_at   timestamptz NOT NULL,
    started_at         timestamptz NOT NULL DEFAULT now(),
    ended_at           timestamptz,
    PRIMARY KEY (execution_id, attempt_index)
);
-- The scanner reads only live leases in expiry order: its cost follows the expired rows.
CREATE INDEX attempts_live_lease_expiry_idx ON workflow.attempts (lease_expires_at, execution_id) WHERE state = 'leased';

-- Every decision of the lease-expiry scanner, with the leader's term.
CREATE TABLE workflow.lease_decisions (
    id            bigserial   PRIMARY KEY,
    execution_id  uuid        NOT NULL,
    attempt_index integer     NOT NULL,
    decision      text        NOT NULL CHECK (decision IN ('requeued', 'dead_lettered')),
    term          bigint      NOT NULL,
    at            timestamptz NOT NULL DEFAULT now()
);
