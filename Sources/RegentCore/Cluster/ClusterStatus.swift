import Foundation
import PostgresClient

/// "Who leads, since when, under which term" and every instance, answered from the
/// database alone (`pg_locks` + `engine.leadership` + `engine.instances`), so every node
/// and the CLI agree. This is the stable document of `regent status --json`.
public struct ClusterStatus: Sendable, Codable, Equatable {
    public struct Leader: Sendable, Codable, Equatable {
        public let instanceID: InstanceID
        public let nodeName: String?
        public let host: String?
        public let pid: Int32?
        /// Where the leader serves its admin API (`--http-address`), if it does.
        public let httpAddress: String?
        public let term: Term
        public let electedAt: Date?
        /// The lock holder's backend pid in `pg_locks`.
        public let backendPID: Int32
        /// The leader holds the lock but its heartbeat is older than the stale cutoff (frozen,
        /// or its pool cannot reach the database): a follower will end its session.
        public let heartbeatStale: Bool

        enum CodingKeys: String, CodingKey {
            case instanceID = "instance_id", nodeName = "node_name", host, pid, httpAddress = "http_address", term
            case electedAt = "elected_at", backendPID = "backend_pid", heartbeatStale = "heartbeat_stale"
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(instanceID.uuidString.lowercased(), forKey: .instanceID)  // as PostgreSQL prints uuids
            try c.encode(nodeName, forKey: .nodeName)
            try c.encode(host, forKey: .host)
            try c.encode(pid, forKey: .pid)
            try c.encode(httpAddress, forKey: .httpAddress)
            try c.encode(term, forKey: .term)
            try c.encode(electedAt, forKey: .electedAt)
            try c.encode(backendPID, forKey: .backendPID)
            try c.encode(heartbeatStale, forKey: .heartbeatStale)
        }
    }

    public struct Instance: Sendable, Codable, Equatable {
        public let instanceID: InstanceID
        public let nodeName: String
        public let host: String
        public let pid: Int32
        public let version: String
        public let httpAddress: String?
        public let startedAt: Date
        public let lastHeartbeat: Date
        public let heartbeatAgeMs: Int64
        public let stale: Bool
        public let isLeader: Bool
        /// This node's database role may end other roles' sessions (superuser or
        /// `pg_signal_backend`), so it can end a frozen leader's session whatever its role; nil
        /// when unknown.
        public let canSignalBackends: Bool?

        enum CodingKeys: String, CodingKey {
            case instanceID = "instance_id", nodeName = "node_name", host, pid, version, httpAddress = "http_address"
            case startedAt = "started_at"
            case lastHeartbeat = "last_heartbeat", heartbeatAgeMs = "heartbeat_age_ms", stale, isLeader = "is_leader"
            case canSignalBackends = "can_signal_backends"
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(instanceID.uuidString.lowercased(), forKey: .instanceID)
            try c.encode(nodeName, forKey: .nodeName)
            try c.encode(host, forKey: .host)
            try c.encode(pid, forKey: .pid)
            try c.encode(version, forKey: .version)
            try c.encode(httpAddress, forKey: .httpAddress)
            try c.encode(startedAt, forKey: .startedAt)
            try c.encode(lastHeartbeat, forKey: .lastHeartbeat)
            try c.encode(heartbeatAgeMs, forKey: .heartbeatAgeMs)
            try c.encode(stale, forKey: .stale)
            try c.encode(isLeader, forKey: .isLeader)
            try c.encode(canSignalBackends, forKey: .canSignalBackends)
        }
    }

    /// The leader, or nil when nobody holds the lock or the holder has not recorded its term yet.
    public let leader: Leader?
    /// The latest recorded term (0 before the first election).
    public let term: Term
    public let instances: [Instance]

    static let leadershipQuery = PostgresQuery(
        unsafeSQL: """
            WITH holder AS (SELECT pid FROM pg_locks WHERE \(LeadershipQueries.lockHolderFilter))
            SELECT l.term, l.leader_instance, l.leader_backend_pid, l.elected_at,
                   (SELECT min(pid) FROM holder) AS holder_pid
            FROM engine.leadership l WHERE l.id = 1
            """)

    static func instancesQuery(staleAfter: Duration) -> PostgresQuery {
        """
        SELECT instance_id, node_name, host, pid, version, http_address, started_at, last_heartbeat,
               (extract(epoch FROM now() - last_heartbeat) * 1000)::bigint AS age_ms,
               last_heartbeat < now() - \(staleAfter)::interval AS stale, can_signal_backends
        FROM engine.instances ORDER BY started_at, instance_id
        """
    }

    /// Reads the status in one REPEATABLE READ snapshot.
    public static func read(on connection: PostgresConnection, staleAfter: Duration = .seconds(10)) async throws -> ClusterStatus {
        try await connection.withTransaction(isolation: .repeatableRead) { tx in
            let l = try await tx.query(leadershipQuery, purpose: "status: leadership").single()
            let term = try l.decode("term", as: Term.self)
            let holderPID = try l.decodeOptional("holder_pid", as: Int32.self)
            let recordedPID = try l.decodeOptional("leader_backend_pid", as: Int32.self)
            let leaderID = try l.decodeOptional("leader_instance", as: InstanceID.self)
            let rows = try await tx.query(instancesQuery(staleAfter: staleAfter), purpose: "status: instances")
            var leader: Leader?
            if let holderPID, holderPID == recordedPID, let leaderID {
                let row = try rows.first { try $0.decode("instance_id", as: InstanceID.self) == leaderID }
                leader = Leader(
                    instanceID: leaderID, nodeName: try row?.decode("node_name"), host: try row?.decode("host"),
                    pid: try row?.decode("pid"), httpAddress: try row?.decodeOptional("http_address", as: String.self), term: term, electedAt: try l.decodeOptional("elected_at"), backendPID: holderPID,
                    heartbeatStale: try row?.decode("stale", as: Bool.self) ?? true)
            }
            let instances = try rows.map { row in
                let id = try row.decode("instance_id", as: InstanceID.self)
                return Instance(
                    instanceID: id, nodeName: try row.decode("node_name"), host: try row.decode("host"), pid: try row.decode("pid"),
                    version: try row.decode("version"), httpAddress: try row.decodeOptional("http_address"), startedAt: try row.decode("started_at"),
                    lastHeartbeat: try row.decode("last_heartbeat"), heartbeatAgeMs: try row.decode("age_ms"),
                    stale: try row.decode("stale"), isLeader: id == leader?.instanceID,
                    canSignalBackends: try row.decodeOptional("can_signal_backends", as: Bool.self))
            }
            return ClusterStatus(leader: leader, term: term, instances: instances)
        }
    }
}
