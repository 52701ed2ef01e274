-- The console's runs list by idempotency key alone (any type): built online by the leader.
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_key_listing_idx ON workflow.runs (idempotency_key, started_at, run_id) WHERE idempotency_key IS NOT NULL;
