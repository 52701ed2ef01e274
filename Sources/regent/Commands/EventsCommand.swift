import ArgumentParser
import Foundation
import PostgresClient
import RegentCore

struct EventsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events",
        abstract: "Publish to and follow the engine event bus.",
        subcommands: [Publish.self, Tail.self]
    )

    struct Publish: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Publish one event (its payload must be a JSON object).")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Option(help: "Topic: 1-200 letters, digits or _ . : / -.") var topic: String
        @Option(help: "Payload: a JSON object, at most 1 MiB.") var data: String

        func validate() throws {
            do {
                let (topic, _) = try EventPublisher.validate(topic: topic, payload: data)
                try EventPublisher.checkClientTopic(topic)
            } catch { throw ValidationError(error.description) }
        }

        func run() async throws {
            try log.bootstrap()
            let (topic, payload) = try EventPublisher.validate(topic: topic, payload: data)
            try await PostgresConnection.withConnection(try database.configuration()) { conn in
                let id = try await EventPublisher.publish(topic: topic, payload: payload, publisher: nil, on: conn)
                print("published event \(id) on \(topic)")
            }
        }
    }

    struct Tail: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Follow events live, one line each (from --from-id first, if given).")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Option(name: .customLong("topic"), help: "Only this topic (repeatable).") var topics: [String] = []
        @Option(help: "Start at this event id (must not be below the retention horizon).") var fromId: Int64?
        @Flag(help: "Print each event as a JSON object.") var json = false
        @Option(help: "Stop after this many events (default: follow until interrupted).") var limit: Int?

        func validate() throws {
            for t in topics {
                do { _ = try EventTopic(t) } catch { throw ValidationError(error.description) }
            }
            if let fromId, fromId < 1 { throw ValidationError("--from-id must be 1 or more, got \(fromId)") }
            if let limit, limit < 1 { throw ValidationError("--limit must be 1 or more") }
        }

        func run() async throws {
            try log.bootstrap()
            let config = try database.configuration()
            let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 2))
            let bus = EventBus(configuration: config, pool: pool)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await bus.run() }
                let signals = SignalHandler(signals: [SIGTERM, SIGINT]) { bus.stop() }
                defer { signals.cancel() }
                let subscription = try await bus.subscribe(topics: topics.isEmpty ? nil : topics, fromID: fromId)
                var count = 0
                for try await event in subscription {
                    let at = event.publishedAt.map { ISO8601DateFormatter().string(from: $0) }
                    let line: String
                    if json {
                        // The same shape as the regent_events notification; the payload is spliced in as JSON.
                        line = #"{"id":\#(event.id),"topic":\#(jsonString(event.topic)),"publisher":\#(event.publisher.map { jsonString($0.lowercasedText) } ?? "null"),"published_at":\#(at.map(jsonString) ?? "null"),"payload":\#(event.payload)}"#
                    } else {
                        line = "\(event.id)  \(at ?? "")  \(event.topic)  \(event.payload)"
                    }
                    FileHandle.standardOutput.write(Data((line + "\n").utf8))
                    count += 1
                    if let limit, count >= limit { break }
                }
                bus.stop()
                try await group.waitForAll()
            }
            await pool.shutdown()
        }
    }
}
