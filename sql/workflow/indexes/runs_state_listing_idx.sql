-- The console's runs list (issue 30), filtered and newest first: built online by the leader.
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_state_listing_idx ON workflow.runs (state, started_at, run_id);
