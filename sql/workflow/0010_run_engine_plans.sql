-- The run engine's functions are planned with sequential scans off, like the queue's (0004).
-- A session keeps the plans PL/pgSQL (and the foreign-key checks its inserts fire) made on their
-- first calls; on a fresh deployment those calls find the run tables empty, and the plans
-- they make scan them: measured in `regent bench runs`, five sequential scans of `runs` per
-- start and one of `run_steps` per step, each reading the whole table, kept until an ANALYZE
-- happened to invalidate them. Every statement of these functions has an index to use.
ALTER FUNCTION workflow.start_run(text, jsonb, text, timestamptz, numeric, text, text, text, uuid) SET enable_seqscan = off;
ALTER FUNCTION workflow.enqueue_steps(text, text[], text) SET enable_seqscan = off;
ALTER FUNCTION workflow.step_execution_changed() SET enable_seqscan = off;
ALTER FUNCTION workflow.finish_run(text, text, text, text, text, bigint) SET enable_seqscan = off;
ALTER FUNCTION workflow.fence_execution(uuid) SET enable_seqscan = off;
ALTER FUNCTION workflow.cancel_run(text, text, text) SET enable_seqscan = off;
