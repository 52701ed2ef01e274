-- A lane's running leases under a max-running limit (sql/workflow/0018): the claim counts them.
CREATE INDEX CONCURRENTLY IF NOT EXISTS leases_lane_limited_idx ON workflow.leases (namespace, lane) WHERE lane_limited;
