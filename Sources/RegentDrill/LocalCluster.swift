import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore

/// `regent serve` child processes on this machine, for the demo, drills and benchmarks.
package final class LocalCluster {
    package struct Node {
        package let name: String
        package let pid: pid_t
        /// The binary it runs (the upgrade drill mixes two).
        package var executable: String = ""
    }

    package let databaseURL: String
    package let logDirectory: String
    package let extraArguments: [String]
    private(set) var nodes: [Node] = []
    private var counter = 0

    /// The `regent` binary the nodes run.
    package let executablePath: String

    package init(databaseURL: String, logDirectory: String, extraArguments: [String], executable: String = LocalCluster.executable) {
        self.executablePath = executable
        self.databaseURL = databaseURL
        self.logDirectory = logDirectory
        self.extraArguments = extraArguments
        try? FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
    }

    /// The running binary, so children are exactly this build.
    package static var executable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    /// Starts a node on `executable` (default: the cluster's) with `arguments` after the usual ones.
    @discardableResult
    package func spawn(executable: String? = nil, arguments: [String] = []) throws -> Node {
        counter += 1
        let name = "node\(counter)"
        let binary = executable ?? executablePath
        let argv = [binary, "serve", "--database-url", databaseURL, "--node-name", name] + extraArguments + arguments
        let pid = try ChildProcess.spawn(argv, outputPath: "\(logDirectory)/\(name).log")
        let node = Node(name: name, pid: pid, executable: binary)
        nodes.append(node)
        return node
    }

    package func node(pid: Int32) -> Node? { nodes.first { $0.pid == pid } }

    /// Sends `signal` and forgets the node; it is reaped by `reap()`.
    package func kill(_ node: Node, signal: Int32) {
        _ = Glibc.kill(node.pid, signal)
        nodes.removeAll { $0.pid == node.pid }
        exited.append(node.pid)
    }

    private var exited: [pid_t] = []

    /// Waits for killed children so none lingers as a zombie.
    package func reap(wait: Bool = false) {
        exited = exited.filter { ChildProcess.exitStatus($0, wait: wait) == nil }
    }

    /// SIGTERM to everyone, then SIGKILL whoever is still there after `grace`.
    package func stopAll(grace: Duration = .seconds(10)) {
        let all = nodes
        for n in all { kill(n, signal: SIGTERM) }
        let deadline = ContinuousClock.now + grace
        while !exited.isEmpty, ContinuousClock.now < deadline {
            reap()
            usleep(20_000)
        }
        for pid in exited { _ = Glibc.kill(pid, SIGKILL) }
        reap(wait: true)
    }
}

/// A light, single-statement view of the leadership used to time failovers.
package struct LeadershipProbe {
    package let connection: PostgresConnection

    package init(connection: PostgresConnection) {
        self.connection = connection
    }

    package struct Reading: Equatable {
        package let term: Term
        /// Whether the lock holder is the session that recorded `term`.
        package let settled: Bool
        package let leaderPID: Int32?
        /// `elected_at` of the term (database clock), seconds since 1970.
        package let electedEpoch: Double?
    }

    package static let query = PostgresQuery(
        unsafeSQL: """
            SELECT l.term, i.pid AS os_pid, extract(epoch FROM l.elected_at)::float8 AS elected_epoch,
                   (SELECT min(pid) FROM pg_locks WHERE \(LeadershipQueries.lockHolderFilter)) = l.leader_backend_pid AS settled
            FROM engine.leadership l LEFT JOIN engine.instances i ON i.instance_id = l.leader_instance
            WHERE l.id = 1
            """)

    package func read() async throws -> Reading {
        let row = try await connection.query(Self.query, purpose: "probe leadership").single()
        return Reading(
            term: try row.decode("term"), settled: try row.decodeOptional("settled", as: Bool.self) ?? false,
            leaderPID: try row.decodeOptional("os_pid"), electedEpoch: try row.decodeOptional("elected_epoch"))
    }

    /// Polls until a settled leader with a term above `term` whose OS process is known.
    package func waitForLeader(after term: Term, timeout: Duration) async throws -> Reading? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let r = try await read()
            if r.term > term, r.settled, r.leaderPID != nil { return r }
            try await Task.sleep(for: .microseconds(200))
        }
        return nil
    }
}

/// Order statistics over durations.
package struct Figures {
    package let samples: [Duration]
    package init(_ samples: [Duration]) { self.samples = samples.sorted() }
    package func percentile(_ p: Double) -> Duration {
        guard !samples.isEmpty else { return .zero }
        let index = Swift.min(samples.count - 1, Int((p * Double(samples.count - 1)).rounded(.up)))
        return samples[index]
    }
    package var min: Duration { samples.first ?? .zero }
    package var max: Duration { samples.last ?? .zero }
    package var median: Duration { percentile(0.5) }
    package var p99: Duration { percentile(0.99) }
}

package func ms(_ d: Duration) -> String { String(format: "%.2f ms", d.milliseconds) }
