-- workflow.flow_waiting_added: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0018_flow_control.sql (with its trigger, flow_waiting_added).

-- A keyed execution joined its key's waiting list: note the key for the commit's settling.
CREATE OR REPLACE FUNCTION workflow.flow_waiting_added()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM workflow.flow_note(NEW.namespace, NEW.flow_key, 0);
    RETURN NULL;
END
$function$;
