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
-- step_execution_changed, notify_queue, enqueue_steps, claim.
-- Takes SHARE ROW EXCLUSIVE on executions for the moment of the trigger's swap (no scan).
DROP TRIGGER step_execution_changed ON workflow.executions;
CREATE TRIGGER step_execution_changed
AFTER UPDATE OF state ON workflow.executions
FOR EACH ROW
WHEN (NEW.step_id IS NOT NULL AND NEW.state < 'queued' COLLATE "C")
EXECUTE FUNCTION workflow.step_execution_changed();
