import CoreMetrics
import Foundation

/// The metrics a node records, made through swift-metrics from one factory.
///
/// Each node gets its own set (the HTTP layer hands it a factory backed by a Prometheus
/// registry of its own), so several nodes in one process — tests, the demo — do not
/// mix their figures. Names follow Prometheus conventions; docs/operations.md says what
/// each one means and which to alert on.
public struct RegentMetrics: Sendable {
    /// 1 while this node leads, else 0.
    public let isLeader: Gauge
    /// The term this node last saw itself elected in (0 before it ever led).
    public let leaderTerm: Gauge
    /// Elections this node won.
    public let elections: Counter
    /// Leaderless time before this node took over (see `FailoverClock`), in seconds.
    public let failover: CoreMetrics.Timer
    /// Heartbeats of this node that failed.
    public let heartbeatFailures: Counter
    /// Instances by state, refreshed when metrics are read.
    public let liveInstances: Gauge
    public let staleInstances: Gauge
    /// Events published through this node (bus API and HTTP).
    public let eventsPublished: Counter
    /// Events this node's bus handed to its subscribers.
    public let eventsDelivered: Counter
    /// Seconds between an event's commit (database clock) and its delivery here (this node's clock).
    public let eventLag: Gauge
    /// Events this node's bus released late: their transaction held its id past the gap
    /// timeout, so they came after higher ids.
    public let eventsLate: Counter
    /// Given-up id gaps this node's bus is still watching (transactions that may yet commit).
    public let eventGaps: Gauge
    /// Times this node's bus lost its LISTEN connection and reconnected.
    public let eventListenerReconnects: Counter
    /// Expired leases this node reclaimed as leader.
    public let leasesReclaimed: Counter
    /// Stale instance rows this node removed as leader.
    public let staleInstancesSwept: Counter
    /// Wakeups (timers, signal timeouts, parent/child hand-offs) this node fired as leader.
    public let wakeupsFired: Counter
    /// How far behind the oldest due wakeup was at this leader's last look, in seconds (0: none due).
    public let wakeupsOverdue: Gauge
    /// How far behind the earliest due schedule slot was at this leader's last look, in seconds.
    public let schedulesOverdue: Gauge
    /// The worst lateness of a page of fired schedule slots (start against due time), in seconds.
    public let scheduleLateness: Gauge

    /// Metric names, shared by the exporter, the tests and the docs.
    public enum Name {
        public static let failoverSeconds = "regent_failover_seconds"
    }

    /// Where per-duty and other dynamically labelled metrics are created.
    public let factory: any MetricsFactory

    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
        isLeader = Gauge(label: "regent_is_leader", factory: factory)
        leaderTerm = Gauge(label: "regent_leader_term", factory: factory)
        elections = Counter(label: "regent_elections_total", factory: factory)
        failover = CoreMetrics.Timer(label: Name.failoverSeconds, factory: factory)
        heartbeatFailures = Counter(label: "regent_heartbeat_failures_total", factory: factory)
        liveInstances = Gauge(label: "regent_instances", dimensions: [("state", "live")], factory: factory)
        staleInstances = Gauge(label: "regent_instances", dimensions: [("state", "stale")], factory: factory)
        eventsPublished = Counter(label: "regent_events_published_total", factory: factory)
        eventsDelivered = Counter(label: "regent_events_delivered_total", factory: factory)
        eventLag = Gauge(label: "regent_event_lag_seconds", factory: factory)
        eventsLate = Counter(label: "regent_events_late_total", factory: factory)
        eventGaps = Gauge(label: "regent_event_gaps", factory: factory)
        eventListenerReconnects = Counter(label: "regent_event_listener_reconnects_total", factory: factory)
        leasesReclaimed = Counter(label: "regent_leases_reclaimed_total", factory: factory)
        wakeupsFired = Counter(label: "regent_run_wakeups_fired_total", factory: factory)
        wakeupsOverdue = Gauge(label: "regent_run_wakeups_overdue_seconds", factory: factory)
        staleInstancesSwept = Counter(label: "regent_stale_instances_swept_total", factory: factory)
        schedulesOverdue = Gauge(label: "regent_schedules_overdue_seconds", factory: factory)
        scheduleLateness = Gauge(label: "regent_schedule_lateness_seconds", factory: factory)
    }

    /// Schedule slots this node handled as leader, by outcome: started, existing (the slot's
    /// run had been started already), failed, skipped (by the catch-up policy).
    public func scheduleSlots(outcome: String) -> Counter {
        Counter(label: "regent_schedule_slots_total", dimensions: [("outcome", outcome)], factory: factory)
    }

    /// Metrics that go nowhere (library users and tests that do not read them).
    public static let discarded = RegentMetrics(factory: NOOPMetricsHandler.instance)
}
