-- regent:expand
-- Run concurrency keys (issue 31): a manifest's top-level `"concurrency": {"key": "$.input.x",
-- "limit": N}` lets at most N runs of the workflow type with the same key value run at once,
-- cluster-wide. A run over the limit is created `queued`: its row and steps exist, nothing of
-- it has begun, and it waits in `run_waiting`, in arrival order. It is admitted (state
-- `running`, `admitted_at`, its roots begun) when its key has a free slot: at its own start's
-- commit when the key is below its limit, otherwise at the commit of the run that frees the
-- slot (succeeded, failed, cancelled, deadline). The gate is the one of 0018, with a third key
-- family (`r:<type>/<value>` in `flow_keys`, the namespace the run's); see
-- sql/workflow/functions/flow_settle.sql and flow_settle_runs.sql.
--
-- LOCK ORDER (0018's, extended): runs → run_waiting (a run's own row, deleted when it ends
-- queued). At commit: run keys' flow_keys rows in (namespace, flow_key) order → their waiting
-- rows and run rows (SKIP LOCKED) → what advance_run takes; then the step keys, as in 0018.
--
-- Functions changed with this migration (their files in sql/workflow/functions/): create_run,
-- finish_run, cancel_run, cancel_children, fire_wakeup, send_signal, retry_run, expire_runs,
-- enqueue_steps (the key's text through flow_value), flow_settle; new: flow_value,
-- flow_settle_runs, run_flow_changed. Also with it: fire_schedules starts a page's runs set by
-- set (new: create_runs), for the schedules' lateness goal (issue 31).

-- New columns are nullable; the new checks hold for new rows only (NOT VALID: nothing is
-- scanned, and every existing row satisfies them: they only allow one more state).
ALTER TABLE workflow.runs
    ADD COLUMN flow_key text,
    ADD COLUMN admitted_at timestamptz,
    DROP CONSTRAINT runs_state_check,
    DROP CONSTRAINT runs_check,
    ADD CONSTRAINT runs_state_check CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')) NOT VALID,
    ADD CONSTRAINT runs_unfinished_check CHECK ((state IN ('queued', 'running')) = (finished_at IS NULL)) NOT VALID,
    ADD CONSTRAINT runs_flow_key_check CHECK (flow_key IS NULL OR (flow_key ~ '^r:' AND length(flow_key) <= 400)) NOT VALID;

CREATE TABLE workflow.run_waiting (
    seq          bigserial   PRIMARY KEY,
    namespace    text        NOT NULL,
    flow_key     text        NOT NULL,
    run_id       text        NOT NULL UNIQUE REFERENCES workflow.runs (run_id) ON DELETE CASCADE,
    -- The limit this run's version asked for: the newest waiting run's is the key's.
    max_admitted integer     NOT NULL CHECK (max_admitted BETWEEN 1 AND 100000),
    -- The run's deadline, copied: the deadline duty finds a queued run past it here.
    deadline     timestamptz,
    since        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX run_waiting_key_idx ON workflow.run_waiting (namespace, flow_key, seq);
CREATE INDEX run_waiting_deadline_idx ON workflow.run_waiting (deadline) WHERE deadline IS NOT NULL;
ALTER TABLE workflow.run_waiting SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0);

-- The trigger functions' live definitions are in sql/workflow/functions/ (run_flow_changed,
-- flow_settle; flow_waiting_added serves run_waiting too); stated here because the triggers
-- below need them.
CREATE OR REPLACE FUNCTION workflow.run_flow_changed()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
-- Locks: the run's own run_waiting row only.
BEGIN
    IF NEW.state IN ('succeeded', 'failed', 'cancelled') THEN
        IF OLD.state = 'queued' THEN
            DELETE FROM workflow.run_waiting w WHERE w.run_id = NEW.run_id;
        ELSIF OLD.state = 'running' THEN
            PERFORM workflow.flow_note(COALESCE(NEW.namespace, 'runs'), NEW.flow_key, 1);
        END IF;
    END IF;
    RETURN NULL;
END
$function$;

CREATE TRIGGER run_flow_changed
AFTER UPDATE OF state ON workflow.runs
FOR EACH ROW
WHEN (NEW.flow_key IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)
EXECUTE FUNCTION workflow.run_flow_changed();
CREATE CONSTRAINT TRIGGER flow_settle_runs
AFTER UPDATE OF state ON workflow.runs
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW
WHEN (NEW.flow_key IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)
EXECUTE FUNCTION workflow.flow_settle();
CREATE TRIGGER run_waiting_added
AFTER INSERT ON workflow.run_waiting
FOR EACH ROW EXECUTE FUNCTION workflow.flow_waiting_added();
CREATE CONSTRAINT TRIGGER flow_settle_run_waiting
AFTER INSERT ON workflow.run_waiting
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION workflow.flow_settle();
