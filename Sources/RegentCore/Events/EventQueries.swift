import Foundation
import PostgresClient

/// The event bus's statements.
enum EventQueries {
    static let channel = "regent_events"

    /// What `engine.publish_event` does (the row, then the same notification text, in the
    /// caller's transaction), as one statement that each connection prepares once: the
    /// function's call costs the server a parse, a plan and a PL/pgSQL frame per event, and
    /// a durable publish is what bounds the bus's latency. The topic goes into the JSON
    /// unescaped because the row's CHECK admits only letters, digits and `_ . : / -`; the
    /// notification text must stay byte for byte the function's (a test compares them).
    static func publish(topic: String, payload: String, publisher: UUID?) -> PostgresQuery {
        let query: PostgresQuery = """
            WITH e AS (
                INSERT INTO engine.events (topic, payload, publisher) VALUES (\(topic), \(payload)::jsonb, \(publisher)::uuid)
                RETURNING id, '{"id":' || id || ',"topic":"' || topic || '"' AS head,
                    ',"publisher":' || coalesce('"' || publisher::text || '"', 'null') || ',"published_at":' || to_json(published_at)::text
                        || ',"payload":' || payload::text || '}' AS tail
            )
            SELECT id, pg_notify('regent_events', CASE WHEN octet_length(head || tail) < 8000 THEN head || tail
                                                       ELSE head || ',"truncated":true}' END) AS notified
            FROM e
            """
        return query.prepared()
    }

    /// The highest committed id (`max`), and the ranges of ids missing in (`low`, `max`], the
    /// `window` ids up to it (above what retention pruned): one row per gap (`lo`, `hi`), or a
    /// single row with null bounds when there is none.
    static func start(window: Int64) -> PostgresQuery {
        """
        WITH bounds AS (
            SELECT m.max, greatest(m.max - \(window)::bigint, r.pruned_through, 0) AS low
            FROM (SELECT coalesce(max(id), 0) AS max FROM engine.events) AS m, engine.event_retention AS r
            WHERE r.id = 1
        ), present AS (
            SELECT e.id, lag(e.id, 1, b.low) OVER (ORDER BY e.id) AS prev
            FROM engine.events AS e, bounds AS b
            WHERE e.id > b.low AND e.id <= b.max
        )
        SELECT b.max, b.low, p.prev + 1 AS lo, p.id - 1 AS hi
        FROM bounds AS b LEFT JOIN present AS p ON p.id > p.prev + 1
        ORDER BY lo
        """
    }
    /// The transactions (virtual transaction ids, one row each) that hold a write lock on
    /// `engine.events`. A transaction takes that lock before it can take an event id (an
    /// INSERT or COPY locks its table before evaluating the id's default, a prepared one
    /// before it runs) and keeps it until it ends, when its commit is already visible.
    static let eventWriters: PostgresQuery = """
        SELECT DISTINCT virtualtransaction AS vxid FROM pg_locks
        WHERE locktype = 'relation' AND mode = 'RowExclusiveLock'
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND relation = 'engine.events'::regclass
        """
    static let prunedThrough: PostgresQuery = "SELECT pruned_through FROM engine.event_retention WHERE id = 1"

    static func page(after id: Int64, upTo: Int64?, topics: [String]?, limit: Int) -> PostgresQuery {
        """
        SELECT id, topic, payload::text AS payload, publisher, published_at FROM engine.events
        WHERE id > \(id) AND (\(upTo)::bigint IS NULL OR id <= \(upTo)::bigint)
          AND (\(topics)::text[] IS NULL OR topic = ANY(\(topics)::text[]))
        ORDER BY id LIMIT \(limit)
        """
    }

    /// Events whose ids lie in `gaps` (disjoint ranges, in order) and above `after`, in id
    /// order: one index range scan per gap, however far back the oldest gap is.
    static func inGaps(_ gaps: [ClosedRange<Int64>], after: Int64, limit: Int) -> PostgresQuery {
        let lows = gaps.map { String($0.lowerBound) }
        let highs = gaps.map { String($0.upperBound) }
        return """
            SELECT e.id, e.topic, e.payload::text AS payload, e.publisher, e.published_at
            FROM unnest(\(lows)::text[]::bigint[], \(highs)::text[]::bigint[]) AS g(lo, hi)
            CROSS JOIN LATERAL (
                SELECT * FROM engine.events
                WHERE id BETWEEN greatest(g.lo, \(after)::bigint + 1) AND g.hi
                ORDER BY id LIMIT \(limit)
            ) AS e
            ORDER BY e.id LIMIT \(limit)
            """
    }

    static func byID(_ id: Int64) -> PostgresQuery {
        "SELECT id, topic, payload::text AS payload, publisher, published_at FROM engine.events WHERE id = \(id)"
    }

    static func prune(retention: Duration, keep: Int, batch: Int) -> PostgresQuery {
        """
        WITH oldest AS (
            SELECT id, published_at FROM engine.events ORDER BY id LIMIT \(batch)
        ), doomed AS (
            -- The oldest ids, walked by primary key: those past retention, or beyond the newest `keep`.
            SELECT id FROM oldest
            WHERE published_at < now() - \(retention)::interval
               OR id <= (SELECT max(id) FROM engine.events) - \(keep)::bigint
        ), gone AS (
            DELETE FROM engine.events WHERE id IN (SELECT id FROM doomed) RETURNING id
        )
        UPDATE engine.event_retention
        SET pruned_through = greatest(pruned_through, coalesce((SELECT max(id) FROM gone), 0))
        WHERE id = 1
        RETURNING pruned_through, (SELECT count(*) FROM gone) AS removed
        """
    }

    static func decode(_ row: PostgresRow) throws -> Event {
        Event(
            id: try row.decode("id"), topic: try row.decode("topic"), payload: try row.decode("payload"),
            publisher: try row.decodeOptional("publisher"), publishedAt: try row.decodeOptional("published_at"))
    }

    /// Parses a `regent_events` notification. Nil `event` means truncated: read the row.
    ///
    /// The format is fixed by `engine.publish_event` (header fields first, payload last), so a
    /// small scanner reads it; it is on the hot path of every delivery.
    static func parseNotification(_ text: String) -> (id: Int64, topic: String, event: Event?)? {
        var utf8 = Substring(text).utf8[...]
        func expect(_ literal: String) -> Bool {
            guard utf8.starts(with: literal.utf8) else { return false }
            utf8 = utf8.dropFirst(literal.utf8.count)
            return true
        }
        func number() -> Int64? {
            let digits = utf8.prefix { $0 >= 48 && $0 <= 57 }
            utf8 = utf8.dropFirst(digits.count)
            return Int64(Substring(digits))
        }
        /// A JSON string without escapes (topics, uuids and timestamps never need them).
        func plainString() -> String? {
            guard expect("\"") else { return nil }
            let body = utf8.prefix { $0 != 34 && $0 != 92 }
            utf8 = utf8.dropFirst(body.count)
            guard expect("\"") else { return nil }
            return String(Substring(body))
        }
        guard expect("{\"id\":"), let id = number(), expect(",\"topic\":"), let topic = plainString() else { return nil }
        if expect(",\"truncated\":true}") { return (id, topic, nil) }
        guard expect(",\"publisher\":") else { return nil }
        var publisher: UUID?
        if !expect("null") {
            guard let text = plainString(), let uuid = UUID(uuidString: text) else { return nil }
            publisher = uuid
        }
        guard expect(",\"published_at\":"), let at = plainString(), expect(",\"payload\":"), utf8.last == 125 else { return nil }
        let payload = String(Substring(utf8.dropLast()))
        let publishedAt = PostgresTimestampText.parse(at)
        return (id, topic, Event(id: id, topic: topic, payload: payload, publisher: publisher, publishedAt: publishedAt))
    }
}

/// Parses the timestamps `to_json(timestamptz)` writes.
enum PostgresTimestampText {
    static func parse(_ text: String) -> Date? { try? Date(postgresText: text, typeOID: 0) }
}
