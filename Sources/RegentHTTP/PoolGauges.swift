import CoreMetrics
import PostgresClient

/// Connection pool gauges of the API's pool and the node's pool, set when metrics are read.
struct PoolGauges: Sendable {
    struct Set: Sendable {
        let open: Gauge
        let idle: Gauge
        let waiting: Gauge
        let max: Gauge
        init(pool: String, factory: any MetricsFactory) {
            open = Gauge(label: "regent_db_pool_connections", dimensions: [("pool", pool), ("state", "open")], factory: factory)
            idle = Gauge(label: "regent_db_pool_connections", dimensions: [("pool", pool), ("state", "idle")], factory: factory)
            waiting = Gauge(label: "regent_db_pool_waiters", dimensions: [("pool", pool)], factory: factory)
            max = Gauge(label: "regent_db_pool_max_connections", dimensions: [("pool", pool)], factory: factory)
        }
        func update(_ pool: ConnectionPool) async {
            let stats = await pool.statistics
            open.record(stats.open)
            idle.record(stats.idle)
            waiting.record(stats.waiting)
            max.record(pool.options.maxConnections)
        }
    }
    let http: Set
    let node: Set

    init(factory: any MetricsFactory) {
        http = Set(pool: "http", factory: factory)
        node = Set(pool: "node", factory: factory)
    }
}
