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
            try c.encode(event.publisher.map { $0.lowercasedText }, forKey: .publisher)
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
        let snapshots = try streamSnapshots(request)
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
                    var nextSnapshot = ContinuousClock.now
                    while true {
                        if !snapshots.isEmpty, ContinuousClock.now >= nextSnapshot {
                            try await writer.write(await snapshotRecords(snapshots))
                            nextSnapshot = .now + Self.snapshotInterval
                        }
                        let idle = snapshots.isEmpty ? keepAlive : min(keepAlive, max(.milliseconds(20), ContinuousClock.now.duration(to: nextSnapshot)))
                        guard let batch = try await subscription.nextBatch(idleAfter: idle) else {
                            // Idle: a comment keeps proxies from closing the connection, and
                            // finds out when the client went away (the write fails). Snapshots do both.
                            if snapshots.isEmpty { try await writer.write(ByteBuffer(string: ": keep-alive\n\n")) }
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

    /// What a stream's `snapshot` parameters ask for besides events: the cluster document, the
    /// queues, or a run's page, written every ``snapshotInterval`` as `event: snapshot.<kind>`
    /// records without an id (they are state, not events: nothing to resume). Each comes from the
    /// node's shared reads, so a thousand open consoles cost the database what one does, and
    /// their token was checked once, when the stream opened.
    enum StreamSnapshot: Hashable {
        case cluster, queues, workers, run(String)
        var name: String {
            switch self {
            case .cluster: "cluster"
            case .queues: "queues"
            case .workers: "workers"
            case .run: "run"
            }
        }
    }

    static let snapshotInterval: Duration = .seconds(2)

    func streamSnapshots(_ request: Request) throws -> [StreamSnapshot] {
        var snapshots: [StreamSnapshot] = []
        for text in request.uri.queryParameters.getAll("snapshot") {
            let snapshot: StreamSnapshot
            switch text {
            case "cluster": snapshot = .cluster
            case "queues": snapshot = .queues
            case "workers": snapshot = .workers
            case let t where t.hasPrefix("run:") && RunStore.isRunID(String(t.dropFirst(4))): snapshot = .run(String(t.dropFirst(4)))
            default:
                throw APIError.badRequest(
                    "invalid_snapshot", "snapshot takes cluster, queues, workers or run:RUN_ID, got \(SQLIdentifier.printable(String(text.prefix(64))))")
            }
            if !snapshots.contains(snapshot) { snapshots.append(snapshot) }
        }
        guard snapshots.count <= 3 else { throw APIError.badRequest("invalid_snapshot", "a stream carries at most 3 snapshots") }
        return snapshots
    }

    /// The snapshots' records; one whose read fails is left out this time (the next comes in 2 s).
    func snapshotRecords(_ snapshots: [StreamSnapshot]) async -> ByteBuffer {
        var buffer = ByteBuffer()
        for snapshot in snapshots {
            let body: [UInt8]?
            switch snapshot {
            case .cluster: body = try? encodeJSON(try await sharedCluster.value())
            case .queues: body = try? await workflowEnabled() ? encodeJSON(try await sharedQueues.value()) : nil
            case .workers: body = try? await workflowEnabled() ? encodeJSON(try await sharedWorkers.value()) : nil
            case .run(let id): body = try? await workflowEnabled() ? encodeJSON(RunSnapshot(runID: id, run: try await sharedRuns.value(id))) : nil
            }
            guard let body else { continue }
            buffer.writeString("event: snapshot.\(snapshot.name)\ndata: ")
            buffer.writeBytes(body)
            buffer.writeString("\n\n")
        }
        return buffer
    }

    func workflowEnabled() async -> Bool { (try? await modules.require()) != nil }

    /// A run's snapshot: the run's page, or null when there is no such run.
    struct RunSnapshot: Encodable {
        let runID: String
        let run: RunStore.Run?
        enum CodingKeys: String, CodingKey { case runID = "run_id", run }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(runID, forKey: .runID)
            try c.encode(run, forKey: .run)
        }
    }
}
