-- regent:expand
-- regent:functions step_execution_changed
-- One row trigger fewer on every update of an execution's state (issue 26: `bench queue` and
-- `bench runs` no slower than before). Counted with callgrind (one session claiming and
-- completing plain executions, the statements a worker sends), each AFTER UPDATE OF state row
-- trigger of workflow.executions costs every claim and every completion some 20,000
-- instructions, whether or not its WHEN holds, and whatever the WHEN says (a WHEN of one boolean
-- column cost the same as one of three tests): a plain cycle cost 1.31 M instructions with the
-- three triggers of 0023, 1.26 M without execution_flow_changed, 1.20 M with none.
-- execution_flow_changed (flow control, workflow 0018) and step_execution_changed (the run
-- engine) become one trigger, step_execution_changed, whose WHEN is either one's, and whose
-- function does flow control's part first (as the two triggers fired, by name) and then the
-- step's. workflow.flow_changed, the old trigger's function, goes with it. The deferred
-- flow_settle_executions stays (a constraint trigger cannot be the same trigger as an
-- immediate one).
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
-- step_execution_changed; claim_limited (its history line mended); claim, complete,
-- complete_and_claim, fail and start_run only name the contract's new number (0025) in their
-- history. Dropped: flow_changed.
-- Takes SHARE ROW EXCLUSIVE on executions for the moment of the catalog changes (no table is
-- rewritten or scanned).
DROP TRIGGER execution_flow_changed ON workflow.executions;
DROP TRIGGER step_execution_changed ON workflow.executions;
DROP FUNCTION workflow.flow_changed();
CREATE TRIGGER step_execution_changed
AFTER UPDATE OF state ON workflow.executions
FOR EACH ROW
WHEN ((NEW.step_id IS NOT NULL AND NEW.state < 'queued' COLLATE "C") OR NEW.flow_key IS NOT NULL OR NEW.lane_limited)
EXECUTE FUNCTION workflow.step_execution_changed();
