import ArgumentParser
import Foundation
import PostgresClient
import RegentCore

/// Turns a `RegentError` from validating a flag into ArgumentParser's usage error.
func validated<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let error as RegentError { throw ValidationError(error.description) }
}

struct WorkersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "workers", abstract: "The worker registry.", subcommands: [List.self, MarkDead.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List workers (all namespaces unless --namespace).")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Option(help: "Only this namespace.") var namespace: String?
        @Option(help: "Rows per page (1-1000); every page is fetched.") var pageSize = 500
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if let namespace { _ = try validated { try Namespace(namespace) } }
            guard (1...1000).contains(pageSize) else { throw ValidationError("--page-size must be 1 to 1000") }
        }

        func run() async throws {
            try log.bootstrap()
            let ns = try namespace.map { try Namespace($0) }
            try await PostgresConnection.withConnection(try database.configuration()) { conn in
                var all: [WorkerRecord] = []
                var cursor: WorkerCursor?
                while true {
                    let page = try await WorkerRegistry().list(namespace: ns, after: cursor, limit: pageSize, on: conn)
                    all += page
                    guard let last = page.last, page.count == pageSize else { break }
                    cursor = WorkerCursor(namespace: last.namespace, workerInstanceID: last.workerInstanceID)
                }
                if json { return try printJSON(all) }
                let now = Date()
                print(table(["namespace", "instance", "worker", "lanes", "capabilities", "expires in", "state"], all.map { w in
                    [w.namespace, w.workerInstanceID, w.workerID, w.lanes.joined(separator: ","), w.capabilities.joined(separator: ","),
                     String(format: "%.1f s", w.expiresAt.timeIntervalSince(now)), w.dead ? "dead: \(w.deadReason ?? "")" : "alive"]
                }))
            }
        }
    }

    struct MarkDead: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "mark-dead", abstract: "Mark a worker instance dead.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "Namespace.") var namespace: String
        @Argument(help: "Worker instance id.") var instance: String
        @Option(help: "Why (at most 256 bytes, no control characters).") var reason: String

        func validate() throws {
            _ = try validated { try Namespace(namespace) }
            _ = try validated { try WorkerInstanceID(instance) }
            _ = try validated { try DeathReason(reason) }
        }

        func run() async throws {
            try log.bootstrap()
            try await PostgresConnection.withConnection(try database.configuration()) { conn in
                let outcome = try await WorkerRegistry().markDead(
                    namespace: try Namespace(namespace), workerInstanceID: try WorkerInstanceID(instance), reason: try DeathReason(reason), on: conn)
                switch outcome {
                case .marked: print("worker instance \(instance) in \(namespace) marked dead")
                case .notRegistered:
                    throw RegentError(.notRegistered, "no live worker instance \(instance) in namespace \(namespace)")
                }
            }
        }
    }
}

struct LeasesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "leases", abstract: "Execution leases.", subcommands: [Expired.self, Claim.self])

    struct Expired: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Leases past their expiry that the leader has not reclaimed yet.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Option(help: "Only this namespace.") var namespace: String?
        @Option(help: "At most this many (1-1000).") var limit = 100
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if let namespace { _ = try validated { try Namespace(namespace) } }
            guard (1...1000).contains(limit) else { throw ValidationError("--limit must be 1 to 1000") }
        }

        func run() async throws {
            try log.bootstrap()
            try await PostgresConnection.withConnection(try database.configuration()) { conn in
                let leases = try await LeaseStore().listExpiredLeases(namespace: try namespace.map { try Namespace($0) }, limit: limit, on: conn)
                if json { return try printJSON(leases) }
                print(table(["execution", "namespace", "lane", "attempt", "epoch", "worker", "expired at"], leases.map { l in
                    [l.executionID.lowercasedText, l.namespace, l.lane, "\(l.attemptIndex)", "\(l.epoch)", l.workerInstanceID,
                     ISO8601DateFormatter().string(from: l.expiresAt)]
                }))
            }
        }
    }
}
