-- workflow.prune_runs: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0007_run_engine.sql.
--
-- Retention, one page: finished runs older than `p_age` with their steps, ledger rows and
-- executions. A run that has not finished is never touched.

CREATE OR REPLACE FUNCTION workflow.prune_runs(p_age interval, p_limit integer)
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
DECLARE
    n integer;
BEGIN
    WITH doomed AS (
        SELECT run_id FROM workflow.runs WHERE finished_at < now() - p_age ORDER BY finished_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), executions AS (
        DELETE FROM workflow.executions e USING workflow.run_steps s, doomed d
        WHERE s.run_id = d.run_id AND e.execution_id = s.execution_id
    ), gone AS (
        DELETE FROM workflow.runs r USING doomed d WHERE r.run_id = d.run_id RETURNING 1
    )
    SELECT count(*) INTO n FROM gone;
    RETURN n;
END
$function$;
