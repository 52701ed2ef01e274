-- The event bus's durable outbox. A NOTIFY on channel regent_events accompanies each row
-- in the same transaction; subscribers that were away read what they missed from here.
CREATE TABLE engine.events (
    id           bigserial   PRIMARY KEY,
    topic        text        NOT NULL CHECK (topic ~ '^[A-Za-z0-9_.:/-]{1,200}$'),
    payload      jsonb       NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    publisher    uuid,
    published_at timestamptz NOT NULL DEFAULT now()
);
-- No other index: every read is an id range (catch-up, paging, pruning the oldest ids),
-- and each extra index would slow every publish.

-- Everything at or below pruned_through was removed by retention; a subscriber asking to
-- resume below it is told so instead of silently missing events.
CREATE TABLE engine.event_retention (
    id             integer PRIMARY KEY CHECK (id = 1),
    pruned_through bigint  NOT NULL DEFAULT 0
);
INSERT INTO engine.event_retention (id, pruned_through) VALUES (1, 0);

-- Publishing, in one place: insert the event and notify regent_events in the caller's
-- transaction (so the event exists, and is announced, if and only if it commits).
-- The notification is {"id","topic","publisher","published_at","payload"}; when that
-- would not fit NOTIFY's 8000-byte limit it is {"id","topic","truncated":true} and
-- listeners read the row. See docs/events.md.
CREATE FUNCTION engine.publish_event(p_topic text, p_payload jsonb, p_publisher uuid)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    r   engine.events;
    msg text;
BEGIN
    INSERT INTO engine.events (topic, payload, publisher) VALUES (p_topic, p_payload, p_publisher)
    RETURNING * INTO r;
    msg := '{"id":' || r.id || ',"topic":' || to_json(r.topic)::text
        || ',"publisher":' || coalesce(to_json(r.publisher)::text, 'null')
        || ',"published_at":' || to_json(r.published_at)::text
        || ',"payload":' || r.payload::text || '}';
    IF octet_length(msg) >= 8000 THEN
        msg := '{"id":' || r.id || ',"topic":' || to_json(r.topic)::text || ',"truncated":true}';
    END IF;
    PERFORM pg_notify('regent_events', msg);
    RETURN r.id;
END
$$;
