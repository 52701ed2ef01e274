import Foundation
import PostgresClient

/// The event bus's statements.
enum EventQueries {
    static let channel = "regent_events"

    static func publish(topic: String, payload: String, publisher: UUID?) -> PostgresQuery {
        "SELECT engine.publish_event(\(topic), \(payload)::jsonb, \(publisher)::uuid) AS id"
    }

    static let maxID: PostgresQuery = "SELECT coalesce(max(id), 0) AS id FROM engine.events"
    static let prunedThrough: PostgresQuery = "SELECT pruned_through FROM engine.event_retention WHERE id = 1"

    static func page(after id: Int64, upTo: Int64?, topics: [String]?, limit: Int) -> PostgresQuery {
        """
        SELECT id, topic, payload::text AS payload, publisher, published_at FROM engine.events
        WHERE id > \(id) AND (\(upTo)::bigint IS NULL OR id <= \(upTo)::bigint)
          AND (\(topics)::text[] IS NULL OR topic = ANY(\(topics)::text[]))
        ORDER BY id LIMIT \(limit)
        """
    }

    static func byID(_ id: Int64) -> PostgresQuery {
        "SELECT id, topic, payload::text AS payload, publisher, published_at FROM engine.events WHERE id = \(id)"
    }

    static func prune(retention: Duration, keep: Int, batch: Int) -> PostgresQuery {
        """
        WITH doomed AS (
            SELECT id FROM engine.events
            WHERE published_at < now() - \(retention)::interval
               OR id <= (SELECT max(id) FROM engine.events) - \(keep)::bigint
            ORDER BY id LIMIT \(batch)
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

    /// Parses a `regent_events` notification. Nil `payload` means truncated: read the row.
    static func parseNotification(_ text: String) -> (id: Int64, topic: String, event: Event?)? {
        struct Header: Decodable {
            let id: Int64
            let topic: String
            let truncated: Bool?
            let publisher: UUID?
            let published_at: String?
        }
        guard let header = try? JSONDecoder().decode(Header.self, from: Data(text.utf8)) else { return nil }
        if header.truncated == true { return (header.id, header.topic, nil) }
        // The header fields cannot contain this marker (topics are restricted), so its first
        // occurrence starts the payload, which runs to the document's closing brace.
        guard let marker = text.range(of: ",\"payload\":"), text.hasSuffix("}") else { return nil }
        let payload = String(text[marker.upperBound..<text.index(before: text.endIndex)])
        let publishedAt = header.published_at.flatMap { try? Date(postgresText: $0, typeOID: 0) }
        return (header.id, header.topic, Event(id: header.id, topic: header.topic, payload: payload, publisher: header.publisher, publishedAt: publishedAt))
    }
}
