import ArgumentParser
import Foundation
import PostgresClient
import RegentCore

struct LanesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lanes", abstract: "Lane limits enforced by the claim: max running and a rate (docs/flow-control.md).",
        subcommands: [Set.self, Clear.self, List.self])

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Limit a lane: at most N running at once, and/or at most a rate of claims (a token bucket).",
            discussion: """
                Replaces the lane's limits. --rate takes N/s, N/m or N/h; --burst (default: one second's worth) is how many \
                claims may come at once after a quiet time. Executions already running when a max-running limit is first set \
                are not counted; those claimed from then on are.
                """)
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "Namespace.") var namespace: String
        @Argument(help: "Lane.") var lane: String
        @Option(help: "At most this many of the lane's executions running at once (1-1000000).") var maxRunning: Int?
        @Option(help: "At most this many claims per second, minute or hour (e.g. 50/s).") var rate: String?
        @Option(help: "Claims allowed at once after a quiet time (1-1000000; needs --rate).") var burst: Int?
        @Option(help: "Recorded as who set it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            _ = try validated { try Namespace(namespace) }
            _ = try validated { try Lane(lane) }
            if let rate { _ = try validated { try LaneLimit.parseRate(rate) } }
            guard maxRunning != nil || rate != nil else { throw ValidationError("give --max-running, --rate or both") }
            if burst != nil && rate == nil { throw ValidationError("--burst needs --rate") }
        }

        func run() async throws {
            try log.bootstrap()
            let limit = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await LaneLimitStore().set(
                    namespace: try Namespace(namespace), lane: try Lane(lane), maxRunning: maxRunning, rate: try rate.map { try LaneLimit.parseRate($0) },
                    burst: burst, actor: .named(actor), on: conn)
            }
            if json { return try printJSON(limit) }
            print(LanesCommand.describe(limit))
        }
    }

    struct Clear: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a lane's limits.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "Namespace.") var namespace: String
        @Argument(help: "Lane.") var lane: String
        @Option(help: "Recorded as who cleared it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"

        func validate() throws {
            _ = try validated { try Namespace(namespace) }
            _ = try validated { try Lane(lane) }
        }

        func run() async throws {
            try log.bootstrap()
            try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await LaneLimitStore().clear(namespace: try Namespace(namespace), lane: try Lane(lane), actor: .named(actor), on: conn)
            }
            print("\(namespace) \(lane): no limits")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Limited lanes: their limits, running, ready, and claims held back.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try log.bootstrap()
            let limits = try await PostgresConnection.withConnection(try database.configuration()) { try await LaneLimitStore().list(on: $0) }
            if json { return try printJSON(limits) }
            print(table(["namespace", "lane", "max running", "rate", "burst", "running", "ready", "held back"], limits.map { l in
                [l.namespace, l.lane, l.maxRunning.map(String.init) ?? "-", l.rate.map { String(format: "%g/s", $0) } ?? "-", l.burst.map(String.init) ?? "-",
                 String(l.running), String(l.ready), String(l.blocked)]
            }))
        }
    }

    static func describe(_ l: LaneLimit) -> String {
        var parts: [String] = []
        if let m = l.maxRunning { parts.append("at most \(m) running") }
        if let r = l.rate { parts.append(String(format: "%g claims/s, bursts of %d", r, l.burst ?? 1)) }
        return "\(l.namespace) \(l.lane): " + parts.joined(separator: ", ")
    }
}
