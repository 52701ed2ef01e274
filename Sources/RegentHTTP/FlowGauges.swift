import CoreMetrics
import PostgresClient
import Synchronization

/// Flow-control metrics (issue 31), read from the database when metrics are scraped, with a
/// cardinality bounded by configuration, never by traffic:
/// - `regent_lane_blocked_total{namespace,lane}`: claims a lane's limits held back (limited lanes only);
/// - `regent_lane_running{namespace,lane}`: a limited lane's executions running under its max-running limit;
/// - `regent_flow_waiting{namespace,lane}`: keyed executions waiting for a slot, per lane;
/// - `regent_flow_keys{namespace,state}`: live keys at their limit (`at_limit`) or below it;
/// - `regent_flow_key_admitted{namespace,key}`: the ten busiest keys' admitted executions (keys
///   leaving the ten are set to 0), so a hot key shows without a series per key.
/// - `regent_runs_queued{namespace,workflow_type}`: runs waiting for a slot of their run
///   concurrency key (types with a key only).
final class FlowGauges: Sendable {
    let factory: any MetricsFactory
    /// The last blocked count seen per lane (the counter moves by the difference), and the keys
    /// last reported among the busiest.
    private let state = Mutex<(blocked: [String: Int64], busiest: Set<[String]>, queued: Set<[String]>)>(([:], [], []))

    init(factory: any MetricsFactory) { self.factory = factory }

    func update(_ pool: ConnectionPool) async {
        do {
            try await pool.withConnection { conn in
                let tables = try await conn.query(
                    "SELECT to_regclass('workflow.flow_keys') IS NOT NULL AS ok, to_regclass('workflow.run_waiting') IS NOT NULL AS runs",
                    purpose: "metrics: flow tables?"
                ).single()
                guard try tables.decode("ok", as: Bool.self) else { return }
                let lanes = try await conn.query(
                    """
                    SELECT ll.namespace, ll.lane, ll.blocked,
                           (SELECT count(*) FROM workflow.leases s WHERE s.namespace = ll.namespace AND s.lane = ll.lane AND s.lane_limited)::bigint AS running
                    FROM workflow.lane_limits ll
                    """, purpose: "metrics: lane limits")
                let waiting = try await conn.query(
                    "SELECT namespace, lane, count(*)::bigint AS n FROM workflow.flow_waiting GROUP BY 1, 2", purpose: "metrics: waiting executions")
                let keys = try await conn.query(
                    """
                    SELECT namespace, count(*) FILTER (WHERE admitted >= max_admitted)::bigint AS at_limit,
                           count(*) FILTER (WHERE admitted < max_admitted)::bigint AS below FROM workflow.flow_keys GROUP BY 1
                    """, purpose: "metrics: keys")
                let busiest = try await conn.query(
                    "SELECT namespace, flow_key, admitted FROM workflow.flow_keys ORDER BY admitted DESC, flow_key LIMIT 10", purpose: "metrics: busiest keys")
                for row in lanes {
                    let (ns, lane): (String, String) = (try row.decode("namespace"), try row.decode("lane"))
                    let blocked: Int64 = try row.decode("blocked")
                    let dims = [("namespace", ns), ("lane", lane)]
                    Gauge(label: "regent_lane_running", dimensions: dims, factory: factory).record(Double(try row.decode("running", as: Int64.self)))
                    let delta = state.withLock { s -> Int64 in
                        let before = s.blocked[ns + " " + lane] ?? 0
                        s.blocked[ns + " " + lane] = blocked
                        return blocked - before
                    }
                    let counter = Counter(label: "regent_lane_blocked_total", dimensions: dims, factory: factory)
                    if delta > 0 { counter.increment(by: delta) }
                }
                for row in waiting {
                    Gauge(label: "regent_flow_waiting", dimensions: [("namespace", try row.decode("namespace")), ("lane", try row.decode("lane"))], factory: factory)
                        .record(Double(try row.decode("n", as: Int64.self)))
                }
                for row in keys {
                    let ns: String = try row.decode("namespace")
                    Gauge(label: "regent_flow_keys", dimensions: [("namespace", ns), ("state", "at_limit")], factory: factory)
                        .record(Double(try row.decode("at_limit", as: Int64.self)))
                    Gauge(label: "regent_flow_keys", dimensions: [("namespace", ns), ("state", "below_limit")], factory: factory)
                        .record(Double(try row.decode("below", as: Int64.self)))
                }
                if try tables.decode("runs", as: Bool.self) {
                    let queued = try await conn.query(
                        """
                        SELECT w.namespace, r.workflow_type, count(*)::bigint AS n
                        FROM workflow.run_waiting w JOIN workflow.runs r ON r.run_id = w.run_id GROUP BY 1, 2
                        """, purpose: "metrics: queued runs")
                    var seen = Set<[String]>()
                    for row in queued {
                        let id = [try row.decode("namespace", as: String.self), try row.decode("workflow_type", as: String.self)]
                        seen.insert(id)
                        Gauge(label: "regent_runs_queued", dimensions: [("namespace", id[0]), ("workflow_type", id[1])], factory: factory)
                            .record(Double(try row.decode("n", as: Int64.self)))
                    }
                    // A type with nothing queued any more reads 0, not its last count.
                    let emptied = state.withLock { s -> Set<[String]> in
                        defer { s.queued = seen }
                        return s.queued.subtracting(seen)
                    }
                    for id in emptied {
                        Gauge(label: "regent_runs_queued", dimensions: [("namespace", id[0]), ("workflow_type", id[1])], factory: factory).record(0)
                    }
                }
                var now = Set<[String]>()
                for row in busiest {
                    let id = [try row.decode("namespace", as: String.self), String(try row.decode("flow_key", as: String.self).prefix(80))]
                    now.insert(id)
                    Gauge(label: "regent_flow_key_admitted", dimensions: [("namespace", id[0]), ("key", id[1])], factory: factory)
                        .record(Double(try row.decode("admitted", as: Int.self)))
                }
                let gone = state.withLock { s -> Set<[String]> in
                    defer { s.busiest = now }
                    return s.busiest.subtracting(now)
                }
                for id in gone {
                    Gauge(label: "regent_flow_key_admitted", dimensions: [("namespace", id[0]), ("key", id[1])], factory: factory).record(0)
                }
            }
        } catch {
            // A scrape must not fail because the workflow schema is busy or absent: these gauges keep their last values.
        }
    }
}
