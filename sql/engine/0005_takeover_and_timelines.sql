-- Whether each node's database role may end other roles' sessions (superuser, or a member of
-- pg_signal_backend). A follower ends a frozen leader's lock session with
-- pg_terminate_backend; without this it can end only sessions of roles it belongs to.
-- Computed by the node's own session when it joins; NULL for rows written before this file.
ALTER TABLE engine.instances ADD COLUMN can_signal_backends boolean;

-- Every (system identifier, timeline) a leader has been elected on. A node refuses to lead on
-- a server whose timeline is behind the highest one recorded for its system identifier (an
-- old primary brought back writable after a failover), or on a server in recovery.
CREATE TABLE engine.server_timelines (
    system_identifier text        NOT NULL CHECK (system_identifier ~ '^[0-9]{1,20}$'),
    timeline          integer     NOT NULL CHECK (timeline > 0),
    first_seen        timestamptz NOT NULL DEFAULT now(),
    first_term        bigint      NOT NULL,
    PRIMARY KEY (system_identifier, timeline)
);
