import CoreMetrics
import Foundation
import PostgresClient

/// Writes events into the durable outbox (`engine.events`); the row's trigger announces
/// each with NOTIFY when its transaction commits.
public struct EventPublisher: Sendable {
    let pool: ConnectionPool
    /// Recorded as each event's publisher (a node's instance id; nil for the CLI and the API).
    public let publisherID: UUID?
    let metrics: RegentMetrics

    public init(pool: ConnectionPool, publisherID: UUID?, metrics: RegentMetrics = .discarded) {
        self.pool = pool
        self.publisherID = publisherID
        self.metrics = metrics
    }

    /// Publishes in a transaction of its own; returns the event id.
    @discardableResult
    public func publish(topic: String, payload: String) async throws -> Int64 {
        let (topic, payload) = try Self.validate(topic: topic, payload: payload)
        let publisherID = self.publisherID
        let id = try await pool.withConnection { conn in
            try await Self.publish(topic: topic, payload: payload, publisher: publisherID, on: conn)
        }
        metrics.eventsPublished.increment()
        return id
    }

    /// Publishes inside the caller's open transaction: the event exists, and is announced,
    /// if and only if that transaction commits.
    @discardableResult
    public static func publish(topic: EventTopic, payload: EventPayload, publisher: UUID?, on connection: PostgresConnection) async throws
        -> Int64
    {
        try await connection.query(
            EventQueries.publish(topic: topic.name, payload: payload.json, publisher: publisher), purpose: "publish event"
        ).single().decode("id", as: Int64.self)
    }

    /// The text of the statement `publish` prepares and runs (parameters: topic, payload
    /// JSON, publisher uuid), for `regent bench events`'s raw-libpq row.
    public static var statementText: String { EventQueries.publish(topic: "", payload: "{}", publisher: nil).sql }

    public static func validate(topic: String, payload: String) throws(RegentError) -> (EventTopic, EventPayload) {
        (try EventTopic(topic), try EventPayload(json: payload))
    }
}
