import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore

/// A database (the given URL, or a private PostgreSQL started here) with `nodes` local
/// `regent serve` processes on it, torn down by `close()`.
package final class DrillEnvironment {
    package let databaseURL: String
    package let cluster: LocalCluster
    package let probeConnection: PostgresConnection
    /// The private PostgreSQL, when the drill started one (outage and pooler drills need it).
    package let embedded: EmbeddedPostgres?

    package static let nodeArguments = ["--heartbeat-interval", "500ms", "--stale-after", "2s", "--lease-window", "2s", "--log-level", "info"]

    package static func start(
        databaseURL: String?, nodes: Int, nodeArguments: [String] = DrillEnvironment.nodeArguments, serverMaxConnections: Int = 400,
        executable: String = LocalCluster.executable, say: (String) -> Void
    ) async throws -> DrillEnvironment {
        var embedded: EmbeddedPostgres?
        let url: String
        if let databaseURL {
            url = databaseURL
        } else {
            say("▶ starting a private PostgreSQL …")
            let pg = try EmbeddedPostgres.start(maxConnections: serverMaxConnections)
            embedded = pg
            url = pg.url()
            say("  127.0.0.1:\(pg.port), data in \(pg.directory)")
        }
        do {
            let config = try drillConfiguration(url)
            // Bootstrap the engine schema once so the probe can read it before any node is up.
            let setup = try await PostgresConnection.connect(config)
            try await MigrationRunner(appliedBy: "drill").migrate(on: setup, schemas: ["engine"])
            await setup.close()
            let logs = NSTemporaryDirectory() + "regent-drill-\(getpid())"
            let cluster = LocalCluster(databaseURL: url, logDirectory: logs, extraArguments: nodeArguments, executable: executable)
            say("▶ starting \(nodes) nodes (logs in \(logs))")
            for _ in 0..<nodes { try cluster.spawn() }
            let probe = try await PostgresConnection.connect(config)
            return DrillEnvironment(databaseURL: url, cluster: cluster, probeConnection: probe, embedded: embedded)
        } catch {
            embedded?.destroy()
            throw error
        }
    }

    private init(databaseURL: String, cluster: LocalCluster, probeConnection: PostgresConnection, embedded: EmbeddedPostgres?) {
        self.databaseURL = databaseURL
        self.cluster = cluster
        self.probeConnection = probeConnection
        self.embedded = embedded
    }

    package var probe: LeadershipProbe { LeadershipProbe(connection: probeConnection) }

    /// The first settled leader of the drill's cluster; throws naming the logs when none comes.
    package func firstLeader(timeout: Duration = .seconds(30)) async throws -> LeadershipProbe.Reading {
        guard let reading = try await probe.waitForLeader(after: 0, timeout: timeout) else {
            throw RegentError(.timeout, "no leader was elected within \(timeout); see the node logs in \(cluster.logDirectory)")
        }
        return reading
    }

    /// Waits until the leader has migrated the workflow schema (its runs table exists).
    package func waitForWorkflowSchema(timeout: Duration = .seconds(30)) async throws {
        let deadline = ContinuousClock.now + timeout
        while try await !probeConnection.query("SELECT to_regclass('workflow.runs') IS NOT NULL AS ok").single().decode("ok", as: Bool.self) {
            guard ContinuousClock.now < deadline else { throw RegentError(.timeout, "the workflow schema was not migrated within \(timeout)") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// How many workflow runs have not finished.
    package func unfinishedRuns() async throws -> Int {
        try await probeConnection.query("SELECT count(*) AS n FROM workflow.runs WHERE state = 'running'").single().decode("n", as: Int.self)
    }

    /// Waits until every run has finished; returns how many had not when `timeout` passed (0: all did).
    package func waitForRuns(timeout: Duration) async throws -> Int {
        let deadline = ContinuousClock.now + timeout
        while true {
            let open = try await unfinishedRuns()
            if open == 0 || ContinuousClock.now > deadline { return open }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// Starts a `regent worker` process (this build) on the drill's database, logging next to
    /// the nodes; `arguments` are its lanes, capabilities and pace. Returns its pid.
    package func spawnWorker(name: String, arguments: [String]) throws -> pid_t {
        let argv = [cluster.executablePath, "worker", "--database-url", databaseURL, "--name", name] + arguments
        return try ChildProcess.spawn(argv, outputPath: "\(cluster.logDirectory)/\(name).log")
    }

    /// SIGKILLs the leader node, when one leads, and starts a replacement node: the reading it
    /// acted on, and whether it killed.
    package func killLeaderAndReplace() async throws -> (reading: LeadershipProbe.Reading, killed: Bool) {
        let reading = try await probe.read()
        guard let pid = reading.leaderPID, let node = cluster.node(pid: pid) else { return (reading, false) }
        cluster.kill(node, signal: SIGKILL)
        try cluster.spawn()
        return (reading, true)
    }

    /// SIGKILLs one of `workers` at random (taking it out of the list) and waits for it to end.
    package static func killRandomWorker(_ workers: inout [pid_t], using rng: inout some RandomNumberGenerator) {
        let victim = workers.remove(at: Int.random(in: 0..<workers.count, using: &rng))
        kill(victim, SIGKILL)
        _ = ChildProcess.exitStatus(victim, wait: true)
    }

    package func close() async {
        cluster.stopAll()
        await probeConnection.close()
        embedded?.destroy()
    }
}
