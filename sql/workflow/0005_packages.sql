-- Workflow packages (issue 19): immutable, content-addressed versions of a workflow type,
-- and the route that says which version new runs of each type use.
--
-- A version is keyed by its content hash: the SHA-256 of its canonical archive (a ustar
-- stream of its files in path order, every header fixed; docs/packages.md). The archive is
-- stored as those exact bytes, so any node can recompute the hash and refuse a row that does
-- not match. `manifest` is the normalized workflow.json (defaults filled in, durations in
-- milliseconds) that run starts read.

CREATE TABLE workflow.packages (
    content_hash  text        PRIMARY KEY CHECK (content_hash ~ '^[0-9a-f]{64}$'),
    workflow_type text        NOT NULL CHECK (length(workflow_type) BETWEEN 1 AND 128),
    manifest      jsonb       NOT NULL,
    archive       bytea       NOT NULL,
    size_bytes    bigint      NOT NULL CHECK (size_bytes >= 0),
    file_count    integer     NOT NULL CHECK (file_count >= 1),
    step_count    integer     NOT NULL CHECK (step_count >= 1),
    deployed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    deployed_by   text        NOT NULL
);
-- Listing order and cursor: type, then deploy time, then hash.
CREATE INDEX packages_listing_idx ON workflow.packages (workflow_type, deployed_at, content_hash);

-- One row per workflow type: the version new runs use. The foreign key makes deleting a
-- routed version impossible, whatever code tries it.
CREATE TABLE workflow.package_routes (
    workflow_type text        PRIMARY KEY CHECK (length(workflow_type) BETWEEN 1 AND 128),
    content_hash  text        NOT NULL REFERENCES workflow.packages (content_hash),
    routed_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    routed_by     text        NOT NULL
);
CREATE INDEX package_routes_hash_idx ON workflow.package_routes (content_hash);
