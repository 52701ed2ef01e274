-- workflow.flow_value: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0019_run_concurrency.sql (the expression 0018 wrote in enqueue_steps).

-- A concurrency or fair key's value as its key text: a string as it is, any other JSON as its
-- text, a missing value as `null` (one shared key); control characters become `?`; past 200
-- characters, its md5 (docs/flow-control.md).
CREATE OR REPLACE FUNCTION workflow.flow_value(p_value jsonb)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE
AS $function$
    SELECT CASE WHEN length(t) > 200 THEN 'md5:' || md5(t) ELSE regexp_replace(t, '[\x01-\x1f\x7f]', '?', 'g') END
    FROM (SELECT COALESCE(CASE WHEN jsonb_typeof(p_value) = 'string' THEN p_value #>> '{}' ELSE p_value::text END, 'null') AS t) AS x
$function$;
