-- workflow.flow_note: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0018_flow_control.sql.

-- Notes, for this transaction's commit, that key `p_key` has `p_releases` slots to free (0: an
-- execution joined its waiting list). Kept in a transaction-local setting (no lock, no row), as
-- records `namespace US key US releases RS` (ASCII unit and record separators; a key holds no
-- control character: workflow.enqueue_steps replaces them, the API refuses them).
CREATE OR REPLACE FUNCTION workflow.flow_note(p_namespace text, p_key text, p_releases integer)
 RETURNS void
 LANGUAGE sql
AS $function$
    SELECT set_config('regent.flow_pending',
                      COALESCE(current_setting('regent.flow_pending', true), '') || p_namespace || chr(31) || p_key || chr(31) || p_releases || chr(30),
                      true);
$function$;
