-- regent:expand
-- The console's runs list (issue 30): filtered by type, state, both, or version, newest first,
-- and paged by (started_at, run_id). Each filter walks its own index in that order, so a page
-- reads the rows it returns whether the table holds a thousand runs or millions (without them a
-- filter on a rare state walked the whole started_at index). runs_pins_idx stays: unload and
-- routing ask only for running runs of a version.
CREATE INDEX runs_type_listing_idx ON workflow.runs (workflow_type, started_at, run_id);
CREATE INDEX runs_state_listing_idx ON workflow.runs (state, started_at, run_id);
CREATE INDEX runs_type_state_listing_idx ON workflow.runs (workflow_type, state, started_at, run_id);
CREATE INDEX runs_version_listing_idx ON workflow.runs (package_hash, started_at, run_id);
