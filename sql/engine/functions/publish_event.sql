-- engine.publish_event: its live definition, the one home of this function (docs/operations.md,
-- "Where SQL functions live"). Change it here; a new signature also needs a migration that
-- drops the old one once no running binary calls it.
-- History: sql/engine/0002_events.sql, sql/engine/0003_cheaper_publish.sql.

CREATE OR REPLACE FUNCTION engine.publish_event(p_topic text, p_payload jsonb, p_publisher uuid)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_id   bigint;
    v_at   timestamptz;
    v_head text;
    msg    text;
BEGIN
    INSERT INTO engine.events (topic, payload, publisher) VALUES (p_topic, p_payload, p_publisher)
    RETURNING id, published_at INTO v_id, v_at;
    -- The insert passed events_topic_check, so the topic is safe inside JSON quotes as it is.
    v_head := '{"id":' || v_id || ',"topic":"' || p_topic || '"';
    msg := v_head
        || ',"publisher":' || CASE WHEN p_publisher IS NULL THEN 'null' ELSE '"' || p_publisher::text || '"' END
        || ',"published_at":' || to_json(v_at)::text
        || ',"payload":' || p_payload::text || '}';
    IF octet_length(msg) >= 8000 THEN
        msg := v_head || ',"truncated":true}';
    END IF;
    PERFORM pg_notify('regent_events', msg);
    RETURN v_id;
END
$function$;
