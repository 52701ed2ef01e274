import Foundation
import PostgresClient

/// The recent terms of the cluster, newest first, from `engine.audit`: who was elected when,
/// how the term before it ended (resigned, terminated as a hung leader, or lost: a crash or a
/// cut-off session, which writes nothing) and how long the cluster had no leader, as the new
/// leader measured it (`leader.elected`'s detail, written since the console; older rows have none).
public struct LeadershipHistory: Sendable, Encodable {
    public struct Term: Sendable, Encodable {
        public let term: Int64
        public let instanceID: String?
        public let electedAt: Date
        /// `resignation`, `lock_released` or `fresh` (nil on rows written before this was recorded).
        public let after: String?
        public let leaderlessMs: Double?
        /// How this term ended: `resigned`, `terminated` (a hung leader ended by a follower), or nil
        /// while it lasts or when its leader vanished without a word (crash, partition).
        public let ended: String?
        public let endedAt: Date?
        enum CodingKeys: String, CodingKey {
            case term, instanceID = "instance_id", electedAt = "elected_at", after, leaderlessMs = "leaderless_ms", ended, endedAt = "ended_at"
        }
    }

    public let terms: [Term]

    static func query(limit: Int) -> PostgresQuery {
        """
        WITH e AS (
            SELECT id, term, instance_id, at, detail FROM engine.audit
            WHERE action = 'leader.elected' ORDER BY id DESC LIMIT \(limit)
        ), ends AS (
            -- A term's end is written after its election: the (action, id) index walks only the
            -- rows since the oldest election shown.
            SELECT DISTINCT ON (term) term, action, at FROM engine.audit
            WHERE action IN ('leader.resigned', 'leader.terminated') AND id > (SELECT min(id) FROM e)
            ORDER BY term, id
        )
        SELECT e.term, e.instance_id::text AS instance_id, e.at, e.detail ->> 'after' AS after,
               (e.detail ->> 'leaderless_ms')::float8 AS leaderless_ms, x.action AS ended, x.at AS ended_at
        FROM e LEFT JOIN ends x ON x.term = e.term
        ORDER BY e.term DESC
        """
    }

    /// The last `limit` (1–200) terms.
    public static func read(limit: Int = 50, on conn: PostgresConnection) async throws -> LeadershipHistory {
        guard (1...200).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to 200, got \(limit)") }
        let rows = try await conn.query(query(limit: limit), purpose: "cluster: leadership history")
        return LeadershipHistory(terms: try rows.map { row in
            let ended = try row.decodeOptional("ended", as: String.self)
            return Term(
                term: try row.decode("term"), instanceID: try row.decodeOptional("instance_id"), electedAt: try row.decode("at"),
                after: try row.decodeOptional("after"), leaderlessMs: try row.decodeOptional("leaderless_ms"),
                ended: ended.map { $0 == "leader.resigned" ? "resigned" : "terminated" }, endedAt: try row.decodeOptional("ended_at"))
        })
    }
}
