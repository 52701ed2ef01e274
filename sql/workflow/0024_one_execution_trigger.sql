-- regent:expand
-- regent:functions step_state_changed step_execution_changed flow_note flow_settle
-- Less trigger work at every claim and completion (issue 26: `bench queue` and `bench runs`
-- no slower than before). Counted with callgrind (one session claiming and completing plain
-- executions with the statements a worker sends), a plain cycle cost about 1.29 M instructions
-- with 0023's three row triggers on an execution's state change (83b7a6c: 1.29 M too) and
-- 1.20 M with none. Most of the difference is the triggers' WHEN clauses: PostgreSQL reads each
-- WHEN back from its stored node text at every statement that may fire it (nodeRead was the
-- top entry of the difference), whether or not it then holds. So:
--
-- * execution_flow_changed (flow control, workflow 0018) and step_execution_changed (the run
--   engine) become one trigger, step_execution_changed, whose WHEN only passes the rows either
--   part may concern (a step, a flow key, a lane limit: three column tests, a short node text,
--   and a plain execution's row never calls the function, which matters for a claim or a
--   completion of a hundred); its function, now with no SET clause, tests the state change
--   and a step's final state itself, doing flow control's part first (as the two triggers
--   fired, by name) and calling workflow.step_state_changed (new: the step's part, the old
--   body, with its SET clauses) for a step that ended. workflow.flow_changed, the old flow
--   trigger's function, goes.
--
-- The deferred flow_settle_executions (the settle of flow keys at commit) goes too: a
-- constraint trigger cannot be an immediate one's part, and it cost every claim and completion
-- its setup (a plain cycle, 31,000 instructions). What queues the commit's settle instead is
-- the note itself: the first note of a transaction (workflow.flow_note) inserts a row into
-- workflow.flow_settle_hooks (unlogged: a row lives for one transaction), whose deferred
-- trigger runs workflow.flow_settle at commit, which deletes it. A transaction that notes no
-- key writes no hook; one that does writes one row (and flow_settle fires once for it, where
-- it fired once per keyed row before). The run keys' deferred trigger on runs and those on the
-- waiting lists stay as they were.
--
-- The new body is applied inside this migration's transaction (the `regent:functions` line,
-- new with this migration): applied after the migrations, as function files are, it would have
-- left a moment in which the new trigger handed a keyed execution's claim to the old body,
-- which would have noted nothing for flow control and locked the run row after the execution.
--
-- The same rows are locked in the same order and the same notes are made: FlowControlTests and
-- RunTests run on it unchanged.
--
-- Functions changed with this migration (their files in sql/workflow/functions/):
-- step_execution_changed, flow_note (now plpgsql), flow_settle; new: step_state_changed; claim_limited (its history line mended); claim, complete,
-- complete_and_claim, fail and start_run only name the contract's new number (0025) in their
-- history. Dropped: flow_changed.
-- Takes SHARE ROW EXCLUSIVE on executions for the moment of the catalog changes (no table is
-- rewritten or scanned). The function files named on the second line are applied first, in
-- this transaction: flow_note already writes the hook when the trigger on executions goes.
CREATE UNLOGGED TABLE workflow.flow_settle_hooks (xact xid8 NOT NULL DEFAULT pg_current_xact_id());
CREATE INDEX flow_settle_hooks_xact_idx ON workflow.flow_settle_hooks (xact);
CREATE CONSTRAINT TRIGGER flow_settle_hooked
AFTER INSERT ON workflow.flow_settle_hooks
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION workflow.flow_settle();
DROP TRIGGER flow_settle_executions ON workflow.executions;
DROP TRIGGER execution_flow_changed ON workflow.executions;
DROP TRIGGER step_execution_changed ON workflow.executions;
DROP FUNCTION workflow.flow_changed();
CREATE TRIGGER step_execution_changed
AFTER UPDATE OF state ON workflow.executions
FOR EACH ROW
WHEN (NEW.step_id IS NOT NULL OR NEW.flow_key IS NOT NULL OR NEW.lane_limited)
EXECUTE FUNCTION workflow.step_execution_changed();
