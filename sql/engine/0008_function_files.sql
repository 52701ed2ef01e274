-- regent:expand
-- Where SQL functions live (issue 28): each function's live definition is one file,
-- sql/<schema>/functions/<name>.sql, applied with CREATE OR REPLACE after the schema's
-- migrations whenever the files' combined checksum differs from the one recorded here. Only a
-- binary at least as new as the one that applied the recorded files applies its own
-- (`binary_level`: the schema version it knows), and only once its own migrations of the schema
-- are applied (held contracts aside), so an older binary never puts back older definitions
-- during a rollout or after a rollback. Migrations keep the history; the files are the present.
-- Expand: a new table no older binary reads.
CREATE TABLE engine.function_files (
    schema_name  text        PRIMARY KEY,
    checksum     text        NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    binary_level integer     NOT NULL CHECK (binary_level > 0),
    applied_by   text        NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
