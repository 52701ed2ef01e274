-- regent:expand
-- The step path's cost, a third time (issue 26: `bench runs` and `bench queue` no slower than
-- before). A trigger's WHEN is read from its stored text, planned and compiled by every
-- statement that may fire it, whether or not a row then passes it: every claim and every
-- completion UPDATEs executions' state, so every one of them, plain executions included, read
-- the step trigger's WHEN (a list of four final states and a test that the state changed:
-- about 45,000 instructions, counted with callgrind).
--
-- * The final states (cancelled, completed, dead_lettered, failed) are exactly the
--   execution states that sort before 'queued' byte-wise (the other two are queued and
--   running), so the WHEN is one comparison. RunTests.theStepTriggerSeesEveryFinalStateAndNoRepeat
--   holds the execution_state domain to this order: a new state fails it until the WHEN is read
--   again. The function now returns at once when the state did not change (what the WHEN
--   tested before), so a final state set to itself changes nothing, as before.
-- * No bitmap scans in the completion's functions (complete, fail, step_execution_changed,
--   enqueue_steps, finish_run), as in the claim since 0021. Every statement of theirs looks rows
--   up by key, but their generic plans, made while run_steps and runs had no statistics yet (a
--   bench, a fresh database, a table after a bulk load), chose a bitmap heap scan for most of
--   them: under 16 workers, with auto_explain, the completion's own statement, the step
--   trigger's readiness query, both of enqueue_steps' and the run's final update. A bitmap
--   scan builds and walks a TID bitmap to fetch one to a few rows; an index scan fetches them.
--   Single-session counts never showed it (a freshly analysed database plans index scans).
-- * The rules of the runs columns that nothing updates after a start move into domains, as
--   0021 did for run_steps: `input`, `depth`, `flow_key`, `budget_limit` and `namespace`
--   (workflow.run_input, run_depth, run_flow_key, run_budget, run_namespace). A table's CHECKs
--   are parsed and compiled by every UPDATE of it, and every run's last step updates its run:
--   dropping these five took about 50,000 instructions off an average step. A domain's check
--   runs only where a value of the column is written (a start). Same rules, same NOT VALID
--   retype with no rewrite and no scan (each domain gets its constraint after the column moved).
--   The other runs rules stay table constraints: `state`, `reason` and the unfinished rule are
--   what updates set; `run_id`, `package_hash` and `idempotency_key` are in indexes or foreign
--   keys that a type change would rebuild or check again.
-- * Smaller things on the same path: the claim probes the worker and the lane limits in one CTE
--   (each plan node is set up again at every claim), and a queue notification is sent by an
--   assignment instead of a PERFORM (a query with an executor of its own), in notify_queue and
--   enqueue_steps.
--
-- Measured, per step (one claim and one completion of a step that is not its run's last):
-- 2.95 M instructions before, 2.85 M after; per plain execution's claim and completion,
-- 1.48 M before, 1.39 M after.
--
-- Functions changed with this migration (their files in sql/workflow/functions/):
-- step_execution_changed, notify_queue, enqueue_steps, claim, complete, fail, finish_run.
-- Takes ACCESS EXCLUSIVE on runs and SHARE ROW EXCLUSIVE on executions for the moment of the
-- catalog changes (no table is rewritten or scanned, no index rebuilt).
CREATE DOMAIN workflow.run_input AS jsonb;
CREATE DOMAIN workflow.run_depth AS integer;
CREATE DOMAIN workflow.run_flow_key AS text;
CREATE DOMAIN workflow.run_budget AS numeric;
CREATE DOMAIN workflow.run_namespace AS text;
-- The runs triggers' WHEN names flow_key: they go while its type changes, and come back.
DROP TRIGGER run_flow_changed ON workflow.runs;
DROP TRIGGER flow_settle_runs ON workflow.runs;
ALTER TABLE workflow.runs
    DROP CONSTRAINT runs_input_check, DROP CONSTRAINT runs_depth_check, DROP CONSTRAINT runs_flow_key_check,
    DROP CONSTRAINT runs_budget_limit_check, DROP CONSTRAINT runs_namespace_check,
    ALTER COLUMN input TYPE workflow.run_input, ALTER COLUMN depth TYPE workflow.run_depth,
    ALTER COLUMN flow_key TYPE workflow.run_flow_key, ALTER COLUMN budget_limit TYPE workflow.run_budget,
    ALTER COLUMN namespace TYPE workflow.run_namespace;
ALTER DOMAIN workflow.run_input ADD CONSTRAINT run_input_check CHECK (jsonb_typeof(VALUE) = 'object') NOT VALID;
ALTER DOMAIN workflow.run_depth ADD CONSTRAINT run_depth_check CHECK (VALUE BETWEEN 0 AND 8) NOT VALID;
ALTER DOMAIN workflow.run_flow_key ADD CONSTRAINT run_flow_key_check CHECK (VALUE ~ '^r:' AND length(VALUE) <= 400) NOT VALID;
ALTER DOMAIN workflow.run_budget ADD CONSTRAINT run_budget_check CHECK (VALUE > 0) NOT VALID;
ALTER DOMAIN workflow.run_namespace ADD CONSTRAINT run_namespace_check
    CHECK (VALUE ~ '^[A-Za-z0-9_.:-]+$' AND length(VALUE) <= 128) NOT VALID;
CREATE TRIGGER run_flow_changed
AFTER UPDATE OF state ON workflow.runs
FOR EACH ROW
WHEN (NEW.flow_key IS NOT NULL)
EXECUTE FUNCTION workflow.run_flow_changed();
CREATE CONSTRAINT TRIGGER flow_settle_runs
AFTER UPDATE OF state ON workflow.runs
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW
WHEN (NEW.flow_key IS NOT NULL)
EXECUTE FUNCTION workflow.flow_settle();

DROP TRIGGER step_execution_changed ON workflow.executions;
CREATE TRIGGER step_execution_changed
AFTER UPDATE OF state ON workflow.executions
FOR EACH ROW
WHEN (NEW.step_id IS NOT NULL AND NEW.state < 'queued' COLLATE "C")
EXECUTE FUNCTION workflow.step_execution_changed();
