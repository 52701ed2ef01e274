-- The vault module (issue 32): versioned secrets, sealed at rest (docs/vault.md).
--
-- Envelope encryption: every secret version has its own random 256-bit data key; the value is
-- sealed with it (AES-256-GCM), and the data key is sealed with the key-encryption key (KEK)
-- the nodes hold in a file or an environment variable, never in the database. Both seals bind
-- the path and version as authenticated data: a sealed value or data key copied to another row
-- does not open. The database holds only ciphertext, the KEK's public id and metadata.
CREATE SCHEMA IF NOT EXISTS vault;

-- The key-encryption keys the vault has used, by id (an HMAC of the key, never the key).
-- One is active: new versions are sealed under it. `retiring`: a rotation is moving its data
-- keys to the active one. `retired`: nothing is sealed under it any more.
CREATE TABLE vault.keys (
    key_id     text        PRIMARY KEY CHECK (key_id ~ '^k-[0-9a-f]{16}$'),
    state      text        NOT NULL CHECK (state IN ('active', 'retiring', 'retired')),
    added_at   timestamptz NOT NULL DEFAULT now(),
    added_by   text        NOT NULL,
    retired_at timestamptz,
    CHECK ((state = 'retired') = (retired_at IS NOT NULL))
);
CREATE UNIQUE INDEX keys_one_active_idx ON vault.keys ((true)) WHERE state = 'active';

-- One row per secret path: its newest version and how many versions it keeps.
CREATE TABLE vault.kv_meta (
    path            text        PRIMARY KEY
                    CHECK (length(path) <= 255 AND path ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}){0,7}$'),
    current_version integer     NOT NULL DEFAULT 0 CHECK (current_version >= 0),
    max_versions    integer     NOT NULL DEFAULT 10 CHECK (max_versions BETWEEN 1 AND 100),
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text        NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      text        NOT NULL
);

-- One row per kept version. `sealed_key` is the data key sealed under `key_id`'s KEK and
-- `sealed_value` the value sealed under the data key, each nonce ‖ ciphertext ‖ tag.
-- Destroying a version clears both (the row stays, marked, so its number is never reused).
CREATE TABLE vault.kv_versions (
    path         text        NOT NULL REFERENCES vault.kv_meta (path) ON DELETE CASCADE,
    version      integer     NOT NULL CHECK (version >= 1),
    key_id       text        NOT NULL REFERENCES vault.keys (key_id),
    sealed_key   bytea       CHECK (sealed_key IS NULL OR length(sealed_key) = 60),
    sealed_value bytea,
    size_bytes   integer     NOT NULL CHECK (size_bytes >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL,
    expires_at   timestamptz,
    deleted_at   timestamptz,
    deleted_by   text,
    destroyed_at timestamptz,
    destroyed_by text,
    PRIMARY KEY (path, version),
    CHECK ((destroyed_at IS NULL) = (sealed_key IS NOT NULL AND sealed_value IS NOT NULL)),
    CHECK ((deleted_at IS NULL) = (deleted_by IS NULL))
);
-- A rotation's pages: the versions still sealed under a given key, in a stable order.
CREATE INDEX kv_versions_key_idx ON vault.kv_versions (key_id, path, version) WHERE sealed_key IS NOT NULL;

-- Secrets an execution enqueued on its own (POST /v1/executions `secrets`) may read while a
-- worker holds its lease. Steps of runs name theirs in the package manifest instead.
-- No foreign key: the workflow module's tables are its own (pruned with the leader's retention).
CREATE TABLE vault.execution_grants (
    execution_id uuid        PRIMARY KEY,
    paths        text[]      NOT NULL CHECK (cardinality(paths) BETWEEN 1 AND 32),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX execution_grants_age_idx ON vault.execution_grants (created_at);
