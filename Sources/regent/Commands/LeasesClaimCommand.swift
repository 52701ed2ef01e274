import ArgumentParser
import Foundation
import PostgresClient
import RegentCore

extension LeasesCommand {
    struct Claim: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Claim executions as a registered worker (for scripts and debugging); prints the leases as JSON.",
            discussion: """
                With --wait, a claim that finds nothing waits up to that long for work to be enqueued \
                in one of the lanes (woken by the enqueue's notification), then claims again.
                """)
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Option(help: "Namespace.") var namespace: String
        @Option(help: "The registered worker instance that claims.") var worker: String
        @Option(name: .customLong("lane"), help: "A lane to claim from (repeatable).") var lanes: [String]
        @Option(name: .customLong("capability"), help: "A capability the worker has (repeatable).") var capabilities: [String] = []
        @Option(help: "At most this many (1-1000).") var limit = 1
        @Option(help: "Lease duration (e.g. 30s).") var lease = "30s"
        @Option(help: "Wait this long for work when there is none (0 to 30s).") var wait: String?

        func validate() throws {
            _ = try validated { try Namespace(namespace) }
            _ = try validated { try WorkerInstanceID(worker) }
            guard !lanes.isEmpty else { throw ValidationError("give at least one --lane") }
            for l in lanes { _ = try validated { try Lane(l) } }
            for c in capabilities { _ = try validated { try Capability(c) } }
            guard (1...1000).contains(limit) else { throw ValidationError("--limit must be 1 to 1000, got \(limit)") }
            _ = try validated { try parseDuration(lease, flag: "--lease") }
            if let wait {
                let d = try validated { try parseDuration(wait, flag: "--wait") }
                guard d <= .seconds(30) else { throw ValidationError("--wait must be at most 30s, got \(wait)") }
            }
        }

        func run() async throws {
            try log.bootstrap()
            let config = try database.configuration()
            let store = LeaseStore()
            let ns = try Namespace(namespace), me = try WorkerInstanceID(worker)
            let lanes = try self.lanes.map { try Lane($0) }, caps = try capabilities.map { try Capability($0) }
            let lease = try parseDuration(lease, flag: "--lease")
            let leases: [Lease]
            if let wait {
                let waker = QueueWaker(configuration: config)
                let pool = ConnectionPool(configuration: config, options: .init(maxConnections: 1))
                leases = try await withThrowingTaskGroup(of: [Lease]?.self) { group in
                    group.addTask { await waker.run(); return nil }
                    group.addTask {
                        try await store.claim(
                            namespace: ns, lanes: lanes, workerInstanceID: me, capabilities: caps, leaseDuration: lease, limit: limit,
                            wait: try parseDuration(wait, flag: "--wait"), waker: waker, pool: pool)
                    }
                    defer { group.cancelAll() }
                    while let result = try await group.next() { if let result { return result } }
                    return []
                }
                await pool.shutdown()
            } else {
                leases = try await PostgresConnection.withConnection(config) { conn in
                    try await store.claim(
                        namespace: ns, lanes: lanes, workerInstanceID: me, capabilities: caps, leaseDuration: lease, limit: limit, on: conn)
                }
            }
            try printJSON(leases)
        }
    }
}
