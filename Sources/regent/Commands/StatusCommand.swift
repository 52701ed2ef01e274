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
        try await PostgresConnection.withConnection(try database.configuration()) { conn in
            let status = try await ClusterStatus.read(on: conn, staleAfter: stale)
            if json { return try printJSON(status) }
            print(renderStatus(status))
        }
    }
}

func renderStatus(_ status: ClusterStatus) -> String {
    var out = ""
    if let l = status.leader {
        let since = l.electedAt.map { ISO8601DateFormatter().string(from: $0) } ?? "?"
        out += "leader  \(l.nodeName ?? "?") (instance \(l.instanceID.uuidString.lowercased().prefix(8)), pid \(l.pid.map(String.init) ?? "?"), backend \(l.backendPID))\n"
        out += "term    \(l.term), since \(since)\n"
        if l.heartbeatStale {
            out += "WARNING the leader holds the lock but has not heartbeated within the stale cutoff (frozen, or cut off from the\n"
            out += "        database on its pool): a follower ends its session once it has been stale for --stale-after\n"
        }
    } else {
        out += "leader  none: no working leader (term \(status.term)); nobody holds the lock, or its holder is not the session that recorded the term\n"
    }
    let unable = status.instances.filter { $0.canSignalBackends == false }.map(\.nodeName)
    if !unable.isEmpty {
        out += "note    \(unable.joined(separator: ", ")): role may not end other roles' sessions (no pg_signal_backend); a frozen leader\n"
        out += "        running as another role is replaced only when PostgreSQL drops its session (see docs/operations.md)\n"
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
