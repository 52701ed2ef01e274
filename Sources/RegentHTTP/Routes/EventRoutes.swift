import CoreMetrics
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import PostgresClient
import Prometheus
import RegentCore
import ServiceLifecycle

let lastEventID = HTTPField.Name("Last-Event-ID")!

/// Publishing and the server-sent event stream.
extension AdminAPI {
    struct EventDocument: Encodable {
        let event: Event
        enum Keys: String, CodingKey { case id, topic, payload, publisher, publishedAt = "published_at" }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(event.id, forKey: .id)
            try c.encode(event.topic, forKey: .topic)
            try c.encode(event.publisher.map { $0.uuidString.lowercased() }, forKey: .publisher)
            try c.encode(event.publishedAt, forKey: .publishedAt)
            try c.encode(AnyJSON(text: event.payload), forKey: .payload)
        }
    }

    func publishEvent(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let body = try await JSONBody.read(request, context: context, allowed: ["topic", "payload"])
        let (topic, payload) = try EventPublisher.validate(topic: try body.string("topic"), payload: try body.objectJSON("payload"))
        do { try EventPublisher.checkClientTopic(topic) } catch {
            throw APIError(status: .forbidden, code: "reserved_topic", message: error.description)
        }
        let id: Int64
        if let bus = await node?.eventBus {
            id = try await bus.publish(topic: topic.name, payload: payload.json)
        } else {
            id = try await pool.withConnection { try await EventPublisher.publish(topic: topic, payload: payload, publisher: nil, on: $0) }
        }
        return try json(["id": id], status: .created)
    }

    /// Server-sent events: one `id:`/`event:`/`data:` record per event, in id order, from
    /// `after` (or the `Last-Event-ID` header a reconnecting EventSource sends) or from now.
    func eventStream(_ request: Request) async throws -> Response {
        guard let bus = await node?.eventBus else {
            throw APIError(status: .serviceUnavailable, code: "no_event_bus", message: "this process runs no node, so it has no event bus")
        }
        // `after` and `Last-Event-ID` name the last event the client has: the stream starts
        // after it (0: from the oldest kept event). An unreadable Last-Event-ID is refused, not ignored.
        var resume: Int64?
        if let header = request.headers[lastEventID] {
            guard let v = Int64(header.trimmingCharacters(in: .whitespaces)), v >= 0, v < .max else {
                throw APIError.badRequest(
                    "invalid_last_event_id", "Last-Event-ID must be the id of the last event received (a non-negative integer), got \(SQLIdentifier.printable(String(header.prefix(64))))")
            }
            resume = v
        }
        let after = try queryInt64(request, "after", range: 0...(Int64.max - 1), code: "invalid_cursor") ?? resume
        let topics = try request.uri.queryParameters.getAll("topic").map { try EventTopic($0).name }
        if request.method == .head {
            return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"])
        }
        let subscription = try await bus.subscribe(topics: topics.isEmpty ? nil : topics, fromID: after.map { $0 + 1 })
        let keepAlive = options.eventStreamKeepAlive
        let body = ResponseBody { writer in
            // End the stream when the server shuts down gracefully (it waits for open responses).
            try await withGracefulShutdownHandler {
                do {
                    try await writer.write(ByteBuffer(string: ": regent event stream\n\n"))
                    while true {
                        guard let batch = try await subscription.nextBatch(idleAfter: keepAlive) else {
                            // Idle: a comment keeps proxies from closing the connection, and
                            // finds out when the client went away (the write fails).
                            try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                            continue
                        }
                        if batch.isEmpty { break }
                        var buffer = ByteBuffer()
                        for event in batch {
                            buffer.writeString("id: \(event.id)\nevent: \(event.topic)\ndata: ")
                            buffer.writeBytes(try encodeJSON(EventDocument(event: event)))
                            buffer.writeString("\n\n")
                        }
                        try await writer.write(buffer)
                    }
                } catch {
                    subscription.cancel()
                    throw error
                }
                subscription.cancel()
            } onGracefulShutdown: {
                subscription.cancel()
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }
}
