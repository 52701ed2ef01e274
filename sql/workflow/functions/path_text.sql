-- workflow.path_text: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0016_step_kinds.sql.
--
-- The manifest's spelling of a path, for errors: `$.steps.pack.output`.

CREATE OR REPLACE FUNCTION workflow.path_text(p_path jsonb)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE
AS $function$
    SELECT '$.' || string_agg(p, '.' ORDER BY n) FROM jsonb_array_elements_text(p_path) WITH ORDINALITY AS t(p, n)
$function$;
