-- workflow.executions_deleted: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0009_queue_hot_path.sql.

CREATE OR REPLACE FUNCTION workflow.executions_deleted()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    DELETE FROM workflow.attempts a USING gone g WHERE a.execution_id = g.execution_id;
    DELETE FROM workflow.leases l USING gone g WHERE l.execution_id = g.execution_id;
    RETURN NULL;
END
$function$;
