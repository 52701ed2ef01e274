import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore

/// `regent serve` child processes on this machine, for the demo, drills and benchmarks.
final class LocalCluster {
    struct Node {
        let name: String
        let pid: pid_t
    }

    let databaseURL: String
    let logDirectory: String
    let extraArguments: [String]
    private(set) var nodes: [Node] = []
    private var counter = 0

    init(databaseURL: String, logDirectory: String, extraArguments: [String]) {
        self.databaseURL = databaseURL
        self.logDirectory = logDirectory
        self.extraArguments = extraArguments
        try? FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
    }

    /// The running binary, so children are exactly this build.
    static var executable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    @discardableResult
    func spawn() throws -> Node {
        counter += 1
        let name = "node\(counter)"
        let argv = [Self.executable, "serve", "--database-url", databaseURL, "--node-name", name] + extraArguments
        let pid = try ChildProcess.spawn(argv, outputPath: "\(logDirectory)/\(name).log")
        let node = Node(name: name, pid: pid)
        nodes.append(node)
        return node
    }

    func node(pid: Int32) -> Node? { nodes.first { $0.pid == pid } }

    /// Sends `signal` and forgets the node; it is reaped by `reap()`.
    func kill(_ node: Node, signal: Int32) {
        _ = Glibc.kill(node.pid, signal)
        nodes.removeAll { $0.pid == node.pid }
        exited.append(node.pid)
    }

    private var exited: [pid_t] = []

    /// Waits for killed children so none lingers as a zombie.
    func reap(wait: Bool = false) {
        exited = exited.filter { ChildProcess.exitStatus($0, wait: wait) == nil }
    }

    /// SIGTERM to everyone, then SIGKILL whoever is still there after `grace`.
    func stopAll(grace: Duration = .seconds(10)) {
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
struct LeadershipProbe {
    let connection: PostgresConnection

    struct Reading: Equatable {
        let term: Int64
        /// Whether the lock holder is the session that recorded `term`.
        let settled: Bool
        let leaderPID: Int32?
        /// `elected_at` of the term (database clock), seconds since 1970.
        let electedEpoch: Double?
    }

    static let query = PostgresQuery(
        unsafeSQL: """
            SELECT l.term, i.pid AS os_pid, extract(epoch FROM l.elected_at)::float8 AS elected_epoch,
                   (SELECT min(pid) FROM pg_locks WHERE \(LeadershipQueries.lockHolderFilter)) = l.leader_backend_pid AS settled
            FROM engine.leadership l LEFT JOIN engine.instances i ON i.instance_id = l.leader_instance
            WHERE l.id = 1
            """)

    func read() async throws -> Reading {
        let row = try await connection.query(Self.query, purpose: "probe leadership").single()
        return Reading(
            term: try row.decode("term"), settled: try row.decodeOptional("settled", as: Bool.self) ?? false,
            leaderPID: try row.decodeOptional("os_pid"), electedEpoch: try row.decodeOptional("elected_epoch"))
    }

    /// Polls until a settled leader with a term above `term` whose OS process is known.
    func waitForLeader(after term: Int64, timeout: Duration) async throws -> Reading? {
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
struct Figures {
    let samples: [Duration]
    init(_ samples: [Duration]) { self.samples = samples.sorted() }
    func percentile(_ p: Double) -> Duration {
        guard !samples.isEmpty else { return .zero }
        let index = Swift.min(samples.count - 1, Int((p * Double(samples.count - 1)).rounded(.up)))
        return samples[index]
    }
    var min: Duration { samples.first ?? .zero }
    var max: Duration { samples.last ?? .zero }
    var median: Duration { percentile(0.5) }
    var p99: Duration { percentile(0.99) }
}

func ms(_ d: Duration) -> String { String(format: "%.2f ms", d.milliseconds) }
