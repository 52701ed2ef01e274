-- workflow.flow_note: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0018_flow_control.sql, sql/workflow/0024_one_execution_trigger.sql (the first note queues the commit's settle: a row of flow_settle_hooks).

-- Notes, for this transaction's commit, that key `p_key` has `p_releases` slots to free (0: an
-- execution joined its waiting list). Kept in a transaction-local setting (no lock, no row), as
-- records `namespace US key US releases RS` (ASCII unit and record separators; a key holds no
-- control character: workflow.enqueue_steps replaces them, the API refuses them). The first note
-- since the list was last settled (or ever, in this transaction) also inserts a row into
-- workflow.flow_settle_hooks, whose deferred trigger settles the list at commit
-- (workflow.flow_settle): only a transaction that noted something pays for a settle, where a
-- deferred trigger on executions cost every claim and completion its setup (0024).
CREATE OR REPLACE FUNCTION workflow.flow_note(p_namespace text, p_key text, p_releases integer)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
-- Locks: none on a shared row (the hook row is this transaction's own).
DECLARE
    v_pending text := current_setting('regent.flow_pending', true);
BEGIN
    IF v_pending IS NULL OR v_pending = '' THEN
        INSERT INTO workflow.flow_settle_hooks DEFAULT VALUES;
    END IF;
    PERFORM set_config('regent.flow_pending',
                       COALESCE(v_pending, '') || p_namespace || chr(31) || p_key || chr(31) || p_releases || chr(30), true);
END
$function$;
