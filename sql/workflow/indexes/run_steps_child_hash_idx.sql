-- The unload rule (children recorded on a version and not finished pin it), sql/workflow/0020:
-- on child_hash alone, so that a step's state changes stay HOT updates.
CREATE INDEX CONCURRENTLY IF NOT EXISTS run_steps_child_hash_idx ON workflow.run_steps (child_hash) WHERE child_hash IS NOT NULL;
