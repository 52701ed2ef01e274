-- API tokens for the admin HTTP API. Only a SHA-256 of each token's secret is kept;
-- the token itself is shown once, when it is created.
CREATE TABLE auth.tokens (
    -- The public half of a token (`rgt_<token_id>_<secret>`), used to find its row.
    token_id      text        PRIMARY KEY CHECK (token_id ~ '^[0-9a-f]{16}$'),
    name          text        NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    role          text        NOT NULL CHECK (role IN ('admin', 'worker', 'read')),
    secret_sha256 text        NOT NULL CHECK (secret_sha256 ~ '^[0-9a-f]{64}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text        NOT NULL,
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
-- A name belongs to one live token at a time; revoked tokens keep theirs for the record.
CREATE UNIQUE INDEX tokens_live_name_idx ON auth.tokens (name) WHERE revoked_at IS NULL;
