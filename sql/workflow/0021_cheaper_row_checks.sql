-- regent:expand
-- The step path's cost, again (issue 26: `bench runs` no slower than before). Counted with
-- callgrind (instructions per step, one claim and one completion, the same SQL a worker
-- sends), most of what a step cost more than before workflow 0012 was not the step's work but
-- PostgreSQL re-reading rules at every statement:
--
-- * A table's CHECK constraints are parsed from their stored text, planned and evaluated by
--   every INSERT and UPDATE of the table, whichever columns it sets (about 20,000 instructions
--   per constraint per statement here). run_steps had four and each step updates it twice;
--   executions gained one (0018) that every claim and completion paid for. As in workflow 0009,
--   the rules of columns move into domains: a domain's check runs only where a value of that
--   domain is assigned, from an expression the session keeps. The rules are the same ones.
--   The columns change type without a rewrite (a domain with no constraint yet, then the
--   constraint added NOT VALID: every stored value already passed the same rule as a table
--   constraint). Rules that span columns or that UPDATE statements assign (runs' state,
--   reason and the unfinished rule) stay table constraints, restated with typed array
--   literals, which are read as one value instead of one node per element.
-- * A regular expression with a counted repetition (`{1,128}`, `{26}`, `{64}`) is expanded by
--   PostgreSQL's engine into one state per count and is several times dearer to run than the
--   same class with `+` and a length test (measured: 3.7 µs against 0.4 µs per value for a lane
--   name). Every enqueued execution ran two (its namespace and lane), every run row written
--   three. They become `+` and a length test; the strings they accept are the same.
-- * A trigger's WHEN condition is parsed and planned by every statement that may fire it.
--   The flow-control triggers (0018, 0019) now test only for a key (or a limited lane); their
--   functions return at once when the state did not change. The step trigger's list of final
--   states is a typed array literal. Which rows fire which trigger is unchanged.
--
-- * Two plans that depended on the statistics a session's generic plan was made with: the claim
--   could read and sort a lane's whole ready queue to take its first row (a bitmap scan, chosen
--   because the plan cannot know the limit), and a completion or failure batch could walk all
--   of executions' index (a join to the batch the planner thought costlier than one pass). The
--   claim no longer uses bitmap scans; the batches name their ids as an array as well.
--
-- * Smaller things on every step: the step trigger assigns what it calls instead of PERFORMing
--   it (a PERFORM runs a query with an executor of its own, an assignment an expression), and
--   a queue notification of one lane is built without a query.
--
-- Functions changed with this migration (their files in sql/workflow/functions/): flow_changed,
-- run_flow_changed, claim, complete, fail, step_execution_changed, notify_queue.
-- Takes ACCESS EXCLUSIVE on executions, run_steps, runs and workers for the moment of the catalog
-- changes (no table is rewritten or scanned; the indexes on changed columns are kept as they
-- are). run_steps_child_hash_idx is dropped (its predicate names child_hash) and rebuilt
-- online by the leader, as after workflow 0020.
CREATE DOMAIN workflow.step_id AS text;
CREATE DOMAIN workflow.step_kind AS text;
CREATE DOMAIN workflow.step_state AS text;
CREATE DOMAIN workflow.sha256_hex AS text;
CREATE DOMAIN workflow.execution_flow_key AS text;

-- Triggers whose WHEN names a changed column go while its type changes, and come back.
DROP TRIGGER step_execution_changed ON workflow.executions;
DROP TRIGGER execution_flow_changed ON workflow.executions;
DROP TRIGGER flow_settle_executions ON workflow.executions;
DROP TRIGGER run_flow_changed ON workflow.runs;
DROP TRIGGER flow_settle_runs ON workflow.runs;
DROP INDEX IF EXISTS workflow.run_steps_child_hash_idx;

ALTER TABLE workflow.executions
    DROP CONSTRAINT executions_flow_key_check,
    ALTER COLUMN flow_key TYPE workflow.execution_flow_key;
ALTER TABLE workflow.run_steps
    DROP CONSTRAINT run_steps_step_id_check, DROP CONSTRAINT run_steps_kind_check, DROP CONSTRAINT run_steps_state_check,
    DROP CONSTRAINT run_steps_child_hash_check,
    ALTER COLUMN step_id TYPE workflow.step_id, ALTER COLUMN kind TYPE workflow.step_kind, ALTER COLUMN state TYPE workflow.step_state,
    ALTER COLUMN child_hash TYPE workflow.sha256_hex;
ALTER DOMAIN workflow.step_id ADD CONSTRAINT step_id_check CHECK (VALUE ~ '^step_[0-9a-z]+$' AND length(VALUE) = 31) NOT VALID;
ALTER DOMAIN workflow.step_kind ADD CONSTRAINT step_kind_check CHECK (VALUE IN ('worker', 'timer', 'signal', 'child')) NOT VALID;
ALTER DOMAIN workflow.step_state ADD CONSTRAINT step_state_check
    CHECK (VALUE IN ('pending', 'queued', 'running', 'waiting', 'succeeded', 'failed', 'skipped', 'cancelled')) NOT VALID;
ALTER DOMAIN workflow.sha256_hex ADD CONSTRAINT sha256_hex_check CHECK (VALUE ~ '^[0-9a-f]+$' AND length(VALUE) = 64) NOT VALID;
ALTER DOMAIN workflow.execution_flow_key ADD CONSTRAINT execution_flow_key_check
    CHECK (VALUE ~ '^[cf]:' AND length(VALUE) <= 400) NOT VALID;

-- runs: the same rules, shorter to read (a NULL passes a CHECK as it did through `IS NULL OR`).
ALTER TABLE workflow.runs
    DROP CONSTRAINT runs_reason_check,
    ADD CONSTRAINT runs_reason_check CHECK (reason = ANY ('{step_failed,cancelled,deadline_exceeded,budget_exceeded}'::text[])) NOT VALID,
    DROP CONSTRAINT runs_idempotency_key_check,
    ADD CONSTRAINT runs_idempotency_key_check CHECK (length(idempotency_key) BETWEEN 1 AND 255) NOT VALID,
    DROP CONSTRAINT runs_state_check,
    ADD CONSTRAINT runs_state_check CHECK (state = ANY ('{queued,running,succeeded,failed,cancelled}'::text[])) NOT VALID,
    DROP CONSTRAINT runs_flow_key_check,
    ADD CONSTRAINT runs_flow_key_check CHECK (flow_key ~ '^r:' AND length(flow_key) <= 400) NOT VALID,
    DROP CONSTRAINT runs_unfinished_check,
    ADD CONSTRAINT runs_unfinished_check CHECK ((state = ANY ('{queued,running}'::text[])) = (finished_at IS NULL)) NOT VALID,
    DROP CONSTRAINT runs_budget_limit_check,
    ADD CONSTRAINT runs_budget_limit_check CHECK (budget_limit > 0) NOT VALID,
    DROP CONSTRAINT runs_namespace_check,
    ADD CONSTRAINT runs_namespace_check CHECK (namespace ~ '^[A-Za-z0-9_.:-]+$' AND length(namespace) <= 128) NOT VALID,
    DROP CONSTRAINT runs_run_id_check,
    ADD CONSTRAINT runs_run_id_check CHECK (run_id ~ '^run_[0-9a-z]+$' AND length(run_id) = 30) NOT VALID,
    DROP CONSTRAINT runs_package_hash_check,
    ADD CONSTRAINT runs_package_hash_check CHECK (package_hash ~ '^[0-9a-f]+$' AND length(package_hash) = 64) NOT VALID;
-- The queue's names (executions' namespace and lane) and the worker registry's.
ALTER DOMAIN workflow.queue_ident DROP CONSTRAINT queue_ident_check;
ALTER DOMAIN workflow.queue_ident ADD CONSTRAINT queue_ident_check CHECK (VALUE ~ '^[A-Za-z0-9_.:-]+$' AND length(VALUE) <= 128) NOT VALID;
ALTER TABLE workflow.workers
    DROP CONSTRAINT workers_namespace_check,
    ADD CONSTRAINT workers_namespace_check CHECK (namespace ~ '^[A-Za-z0-9_.:-]+$' AND length(namespace) <= 128) NOT VALID,
    DROP CONSTRAINT workers_worker_instance_id_check,
    ADD CONSTRAINT workers_worker_instance_id_check
        CHECK (worker_instance_id ~ '^[A-Za-z0-9_.:-]+$' AND length(worker_instance_id) <= 128) NOT VALID,
    DROP CONSTRAINT workers_worker_id_check,
    ADD CONSTRAINT workers_worker_id_check CHECK (worker_id ~ '^[A-Za-z0-9_.:-]+$' AND length(worker_id) <= 128) NOT VALID;

CREATE TRIGGER step_execution_changed
AFTER UPDATE OF state ON workflow.executions
FOR EACH ROW
WHEN (NEW.step_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state
      AND NEW.state = ANY ('{completed,failed,dead_lettered,cancelled}'::text[]))
EXECUTE FUNCTION workflow.step_execution_changed();
CREATE TRIGGER execution_flow_changed
AFTER UPDATE OF state ON workflow.executions
FOR EACH ROW
WHEN (NEW.flow_key IS NOT NULL OR NEW.lane_limited)
EXECUTE FUNCTION workflow.flow_changed();
CREATE CONSTRAINT TRIGGER flow_settle_executions
AFTER UPDATE OF state ON workflow.executions
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW
WHEN (NEW.flow_key IS NOT NULL)
EXECUTE FUNCTION workflow.flow_settle();
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
