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

    /// Topic families only the engine publishes (its own events: runs, steps, packages,
    /// membership, leadership, leases, workers, modules, migrations, tokens). A topic belongs
    /// to a family by its first segment (up to the first `.`, `:`, `/`, `_` or `-`), in any case.
    public static let reservedFamilies: Set<String> = [
        "run", "runs", "step", "steps", "package", "packages", "instance", "instances", "leader", "leaders", "lease", "leases",
        "worker", "workers", "module", "modules", "migration", "migrations", "auth", "token", "tokens", "engine", "regent",
        "execution", "executions", "queue", "schedule", "schedules", "vault", "audit",
    ]

    /// The reserved family `topic` belongs to, or nil when a client may publish it.
    public static func reservedFamily(of topic: String) -> String? {
        let first = topic.split(whereSeparator: { ".:/_-".contains($0) }).first.map { $0.lowercased() } ?? ""
        return reservedFamilies.contains(first) ? first : nil
    }

    /// Refuses (``RegentError/Code/forbidden``) a topic of the engine's own families.
    public static func checkClientTopic(_ topic: EventTopic) throws(RegentError) {
        if let family = reservedFamily(of: topic.name) {
            throw RegentError(
                .forbidden, "topic \(quoted(topic.name)) is in the engine's reserved family \(quoted(family)); only the engine publishes it",
                hint: "publish your own events under a family of yours, e.g. app.\(topic.name) (docs/events.md lists the reserved families)")
        }
    }
}
