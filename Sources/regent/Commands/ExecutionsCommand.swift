import ArgumentParser
import Foundation
import PostgresClient
import RegentCore

struct ExecutionsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "executions", abstract: "Enqueue, cancel and list executions.", subcommands: [Enqueue.self, Cancel.self, List.self])

    struct Enqueue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Enqueue an execution (or --count of them, in one statement); prints each id.",
            discussion: """
                With --unique-key, while an execution with that key is unfinished the existing one's id \
                is printed (marked "existing") instead of creating another.
                """)
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Option(help: "Namespace.") var namespace: String
        @Option(help: "Lane.") var lane: String
        @Option(help: "Payload: a JSON object.") var payload = "{}"
        @Option(help: "Attempts before dead-lettering (1-1000).") var maxAttempts = 3
        @Option(name: .customLong("require"), help: "A capability the worker must have (repeatable).") var required: [String] = []
        @Option(help: "Priority: 0 runs first, up to 1000.") var priority = 0
        @Option(help: ArgumentHelp("Not claimable before this instant (RFC 3339, e.g. 2026-12-01T08:00:00Z).", valueName: "instant"))
        var runAt: String?
        @Option(help: "Not claimable before this much time from now (e.g. 30s, 5m).") var delay: String?
        @Option(help: "While an execution with this key is unfinished, return it instead (1-255 characters).") var uniqueKey: String?
        @Option(help: "First retry backoff (e.g. 1s; doubles per attempt, ±25% jitter).") var retryBase: String?
        @Option(help: "Longest retry backoff (e.g. 1h).") var retryMax: String?
        @Option(help: "How many identical executions (1-1000).") var count = 1

        func validate() throws {
            _ = try request()
            guard (1...1000).contains(count) else { throw ValidationError("--count must be 1 to 1000, got \(count)") }
            guard runAt == nil || delay == nil else { throw ValidationError("give --run-at or --delay, not both") }
        }

        func request() throws -> EnqueueRequest {
            _ = try validated { try Namespace(namespace) }
            var r = EnqueueRequest(lane: try validated { try Lane(lane) }, payload: payload, maxAttempts: maxAttempts)
            r.requiredCapabilities = try required.map { c in try validated { try Capability(c) } }
            r.priority = priority
            r.uniqueKey = uniqueKey
            if let runAt {
                guard let at = ISO8601DateFormatter().date(from: runAt)
                    ?? (try? Date(runAt, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true)))
                else { throw ValidationError("invalid --run-at \(runAt.debugDescription): use RFC 3339, e.g. 2026-12-01T08:00:00Z") }
                r.runAt = at
            }
            if let delay { r.runAt = Date().addingTimeInterval(try validated { try parseDuration(delay, flag: "--delay") }.milliseconds / 1000) }
            if retryBase != nil || retryMax != nil {
                let base = try retryBase.map { b in try validated { try parseDuration(b, flag: "--retry-base") } } ?? RetryPolicy.default.base
                let max = try retryMax.map { m in try validated { try parseDuration(m, flag: "--retry-max") } } ?? Swift.max(base, RetryPolicy.default.maximum)
                r.retry = try validated { try RetryPolicy(base: base, maximum: max) }
            }
            _ = try validated { try r.check() }
            return r
        }

        func run() async throws {
            try log.bootstrap()
            let request = try request()
            try await PostgresConnection.withConnection(try database.configuration()) { conn in
                let made = try await LeaseStore().enqueue(namespace: try Namespace(namespace), Array(repeating: request, count: count), on: conn)
                for e in made { print(e.executionID.lowercasedText + (e.created ? "" : " existing")) }
            }
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Cancel a queued or running execution (a running one's worker is refused from then on).")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "Execution id.") var id: String

        func validate() throws {
            guard UUID(uuidString: id) != nil else { throw ValidationError("invalid execution id \(id.debugDescription): a UUID") }
        }

        func run() async throws {
            try log.bootstrap()
            let outcome = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await LeaseStore().cancel(executionID: UUID(uuidString: id)!, on: conn)
            }
            print(outcome.rawValue)
            if outcome == .notFound { throw ExitCode(1) }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List executions, newest first.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Option(help: "Only this namespace.") var namespace: String?
        @Option(help: "Only this state: \(LeaseStore.states.joined(separator: ", ")).") var state: String?
        @Option(help: "At most this many (1-1000).") var limit = 50
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if let namespace { _ = try validated { try Namespace(namespace) } }
            if let state, !LeaseStore.states.contains(state) {
                throw ValidationError("invalid --state \(state.debugDescription): use one of \(LeaseStore.states.joined(separator: ", "))")
            }
            guard (1...1000).contains(limit) else { throw ValidationError("--limit must be 1 to 1000") }
        }

        func run() async throws {
            try log.bootstrap()
            try await PostgresConnection.withConnection(try database.configuration()) { conn in
                let rows = try await LeaseStore().listExecutions(namespace: try namespace.map { try Namespace($0) }, state: state, limit: limit, on: conn)
                if json { return try printJSON(rows) }
                print(table(["execution", "namespace", "lane", "state", "attempts", "epoch"], rows.map { e in
                    [e.executionID.lowercasedText, e.namespace, e.lane, e.state, "\(e.attempts)/\(e.maxAttempts)", "\(e.epoch)"]
                }))
            }
        }
    }
}
