import ArgumentParser
import Foundation
import PostgresClient
import RegentCore

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Who leads, since when, under which term, and every instance — read from the database.",
        discussion: """
            JSON form (stable): {"leader": {"instance_id", "node_name", "host", "pid", "term", \
            "elected_at", "backend_pid"} | null, "term": N, "instances": [{"instance_id", \
            "node_name", "host", "pid", "version", "started_at", "last_heartbeat", \
            "heartbeat_age_ms", "stale", "is_leader"}]}
            """
    )
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var log: LogOptions
    @Flag(help: "Print the JSON document.") var json = false
    @Option(help: "Heartbeat age past which an instance is shown stale.") var staleAfter = "10s"

    func run() async throws {
        try log.bootstrap()
        let stale = try parseDuration(staleAfter, flag: "--stale-after")
        let conn = try await PostgresConnection.connect(try database.configuration())
        defer { Task { await conn.close() } }
        let status = try await ClusterStatus.read(on: conn, staleAfter: stale)
        if json { return try printJSON(status) }
        print(renderStatus(status))
    }
}

func renderStatus(_ status: ClusterStatus) -> String {
    var out = ""
    if let l = status.leader {
        let since = l.electedAt.map { ISO8601DateFormatter().string(from: $0) } ?? "?"
        out += "leader  \(l.nodeName ?? "?") (instance \(l.instanceID.uuidString.lowercased().prefix(8)), pid \(l.pid.map(String.init) ?? "?"), backend \(l.backendPID))\n"
        out += "term    \(l.term), since \(since)\n"
    } else {
        out += "leader  none (term \(status.term))\n"
    }
    out += "\n"
    out += table(
        ["", "node", "instance", "host", "pid", "version", "heartbeat", "state"],
        status.instances.map { i in
            [
                i.isLeader ? "★" : " ", i.nodeName, String(i.instanceID.uuidString.lowercased().prefix(8)), i.host, "\(i.pid)",
                i.version, "\(i.heartbeatAgeMs) ms ago", i.stale ? "STALE" : (i.isLeader ? "leader" : "follower"),
            ]
        })
    return out
}
