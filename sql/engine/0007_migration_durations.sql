-- regent:expand
-- How long each migration file took to apply, lock waits included (NULL for files applied
-- before this one). Nodes give up on a table lock after 1 s, so a long duration here is the
-- file's own work: the figure to read before applying the same file on a larger database.
-- Expand: a nullable column that older binaries never read or write.
ALTER TABLE engine.migrations ADD COLUMN duration_ms double precision CHECK (duration_ms >= 0);
