-- Regent engine schema: the tables every node shares.
-- Migration files run inside one transaction per schema: no BEGIN/COMMIT here.
CREATE SCHEMA IF NOT EXISTS engine;

-- Every applied migration file, with the checksum of the text that ran.
CREATE TABLE engine.migrations (
    schema_name text        NOT NULL,
    version     integer     NOT NULL CHECK (version > 0),
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    applied_by  text        NOT NULL,
    PRIMARY KEY (schema_name, version)
);

-- Modules of this deployment; seeded from the binary's built-in modules on first boot.
CREATE TABLE engine.modules (
    name       text        PRIMARY KEY CHECK (name ~ '^[a-z_][a-z0-9_]{0,62}$'),
    version    text        NOT NULL,
    enabled    boolean     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Live nodes. Times are the database's now(), never a node's clock.
CREATE TABLE engine.instances (
    instance_id    uuid        PRIMARY KEY,
    node_name      text        NOT NULL,
    host           text        NOT NULL,
    pid            integer     NOT NULL,
    version        text        NOT NULL,
    modules        text[]      NOT NULL DEFAULT '{}',
    http_address   text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instances_last_heartbeat_idx ON engine.instances (last_heartbeat);

-- Every admin action and every leadership change, with its actor and term.
CREATE TABLE engine.audit (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    action      text        NOT NULL,
    term        bigint,
    instance_id uuid,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_action_idx ON engine.audit (action, id);

-- The leadership term: one logged row (never UNLOGGED, so a term cannot go
-- backwards after a crash or a failover to a standby).
CREATE TABLE engine.leadership (
    id                 integer     PRIMARY KEY CHECK (id = 1),
    term               bigint      NOT NULL DEFAULT 0 CHECK (term >= 0),
    leader_instance    uuid,
    leader_backend_pid integer,
    elected_at         timestamptz
);
INSERT INTO engine.leadership (id, term) VALUES (1, 0);
