-- workflow.notify_queue: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0012_lock_order_and_trust.sql, sql/workflow/0021_cheaper_row_checks.sql (one lane: no query), sql/workflow/0022_one_comparison_step_trigger.sql (the notification sent by an assignment, not a PERFORM).
--
-- Every queue notification is built here: `<namespace> <lane> <lane> …`, or `<namespace> *`
-- when that would not fit in a notification's 8000 bytes (a waiter on `*` claims in all its lanes).

CREATE OR REPLACE FUNCTION workflow.notify_queue(p_namespace text, p_lanes text[])
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_payload text;
    v_sent text;
BEGIN
    IF p_lanes IS NULL OR cardinality(p_lanes) = 0 THEN RETURN; END IF;
    -- One lane (or the same lane repeated), the usual case: an expression, with no query to run.
    IF p_lanes <@ p_lanes[1:1] THEN
        v_payload := p_namespace || ' ' || p_lanes[1];
    ELSE
        v_payload := p_namespace || ' ' || array_to_string(ARRAY(SELECT DISTINCT l FROM unnest(p_lanes) AS l ORDER BY l), ' ');
    END IF;
    IF octet_length(v_payload) > 7000 THEN v_payload := p_namespace || ' *'; END IF;
    -- Assigned, not PERFORMed (a PERFORM runs a query with an executor of its own; pg_notify
    -- returns void, which reads as '' as text).
    v_sent := pg_notify('regent_queue', v_payload)::text;
END
$function$;
