-- workflow.ulid: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/workflow/0006_runs.sql.
--
-- A ULID in lowercase Crockford base32 (26 characters: 48 bits of milliseconds, 80 random).

CREATE OR REPLACE FUNCTION workflow.ulid()
 RETURNS text
 LANGUAGE plpgsql
AS $function$
DECLARE
    alphabet constant text := '0123456789abcdefghjkmnpqrstvwxyz';
    ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    r bytea := decode(replace(gen_random_uuid()::text, '-', ''), 'hex');
    a bigint := 0;
    b bigint := 0;
    out text := '';
BEGIN
    FOR i IN REVERSE 9..0 LOOP
        out := out || substr(alphabet, ((ms >> (i * 5)) & 31)::int + 1, 1);
    END LOOP;
    -- 40 random bits each from bytes 0-4 and 11-15 (a v4 UUID's version and variant bits are elsewhere).
    FOR i IN 0..4 LOOP
        a := (a << 8) | get_byte(r, i);
        b := (b << 8) | get_byte(r, 11 + i);
    END LOOP;
    FOR i IN REVERSE 7..0 LOOP
        out := out || substr(alphabet, ((a >> (i * 5)) & 31)::int + 1, 1);
    END LOOP;
    FOR i IN REVERSE 7..0 LOOP
        out := out || substr(alphabet, ((b >> (i * 5)) & 31)::int + 1, 1);
    END LOOP;
    RETURN out;
END
$function$;
