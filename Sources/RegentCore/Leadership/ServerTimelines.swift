import Foundation
import Logging
import PostgresClient
import Synchronization

/// The elector's refusal to lead on the wrong server: one in recovery, or an old primary
/// brought back writable after a failover (its timeline is behind what this process or the
/// cluster's records have seen), probed across every host of a multi-host URL.
extension LeaderElector {
    /// Why this node must not lead on the server its lock session reached, or nil. Refused: a
    /// server in recovery, or one whose timeline is behind the highest this process or the
    /// cluster's records have seen for its system identifier (an old primary brought back
    /// writable after a failover). Records the timeline when it is new.
    func timelineRefusal(on conn: PostgresConnection) async -> String? {
        let row: PostgresRow
        do {
            row = try await conn.query(LeadershipQueries.serverTimeline, purpose: "read the server's timeline").single()
        } catch {
            if !timelineUnreadableWarned {
                timelineUnreadableWarned = true
                logger.warning(
                    "cannot read the server's system identifier and timeline; an old primary brought back writable will not be noticed (were pg_control_system() and pg_control_checkpoint() revoked? GRANT EXECUTE ON FUNCTION pg_control_system(), pg_control_checkpoint() TO <this role>)",
                    metadata: ["error": "\(error)"])
            }
            return nil
        }
        do {
            if try row.decode("in_recovery", as: Bool.self) { return "the server is in recovery (a standby)" }
            let systemID = try row.decode("system_id", as: String.self)
            let timeline = try row.decode("timeline", as: Int.self)
            let recorded = try row.decodeOptional("highest", as: Int.self) ?? 0
            let seen = ServerTimelines.highest(systemID)
            let highest = max(recorded, seen)
            if timeline < highest {
                return "server \(systemID) is on timeline \(timeline), behind timeline \(highest) a leader was elected on (\(seen > recorded ? "seen by this process" : "recorded in engine.server_timelines")): this looks like an old primary brought back writable after a failover; fence it or pg_rewind it"
            }
            if let newer = await newerPrimaryElsewhere(systemID: systemID, timeline: timeline) { return newer }
            ServerTimelines.saw(systemID, timeline)
            pendingTimeline = (systemID, timeline)
        } catch {
            logger.warning("cannot decode the server's timeline", metadata: ["error": "\(error)"])
        }
        return nil
    }

    /// With a multi-host URL, asks every listed host what it is: another writable server of the
    /// same system on a later timeline means this one is an old primary (a node that just
    /// started cannot know that from this server's own tables, which never saw the new timeline).
    /// Hosts that do not answer within the connect timeout are skipped.
    func newerPrimaryElsewhere(systemID: String, timeline: Int) async -> String? {
        let hosts = configuration.hosts
        guard hosts.count > 1 else { return nil }
        for host in hosts {
            var probe = configuration.onlyHost(host)
            probe.connectTimeoutSeconds = min(configuration.connectTimeoutSeconds, 2)
            guard let conn = try? await PostgresConnection.connect(probe) else { continue }
            let row = try? await conn.query(LeadershipQueries.serverTimeline, purpose: "ask another listed host its timeline").single()
            await conn.close()
            guard let row, let other = try? row.decode("system_id", as: String.self), other == systemID,
                let recovering = try? row.decode("in_recovery", as: Bool.self), !recovering,
                let otherTimeline = try? row.decode("timeline", as: Int.self), otherTimeline > timeline
            else { continue }
            ServerTimelines.saw(systemID, otherTimeline)
            return "host \(host.host):\(host.port) of the database URL is a writable server of the same system (\(systemID)) on timeline \(otherTimeline), ahead of this server's timeline \(timeline): this server is an old primary brought back writable after a failover; fence it or pg_rewind it, and put the current primary first in the URL"
        }
        return nil
    }
}

/// The highest timeline this process has seen a leader elected on, per system identifier: a
/// node that lived through a failover refuses the old primary even when that server's own
/// tables never saw the new timeline.
enum ServerTimelines {
    private static let seen = Mutex<[String: Int]>([:])
    static func highest(_ systemID: String) -> Int { seen.withLock { $0[systemID] ?? 0 } }
    static func saw(_ systemID: String, _ timeline: Int) { seen.withLock { $0[systemID] = max($0[systemID] ?? 0, timeline) } }
    /// Tests that fake a higher timeline in one process clear what it remembered.
    static func forgetForTests() { seen.withLock { $0 = [:] } }
}
