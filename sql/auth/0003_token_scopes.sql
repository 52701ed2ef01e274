-- Worker tokens scoped to a namespace and, optionally, some of its lanes (issue 26). A scoped
-- token registers, claims, enqueues, cancels and starts runs only inside its scope; the runs
-- it starts put their steps in its namespace. NULL: unscoped (every namespace).
ALTER TABLE auth.tokens
    ADD COLUMN scope_namespace text CHECK (scope_namespace IS NULL OR scope_namespace ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    ADD COLUMN scope_lanes text[] CHECK (scope_lanes IS NULL OR (scope_namespace IS NOT NULL AND cardinality(scope_lanes) BETWEEN 1 AND 100));
