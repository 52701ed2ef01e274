import CoreMetrics
import Foundation
import Logging
import PostgresClient
import Synchronization

/// The engine event bus of one node: publish into the durable outbox, subscribe to what
/// others publish.
///
/// The parts: ``EventPublisher`` writes; ``EventListenerService`` keeps one LISTEN
/// connection per bus up, multiplexing every subscription; its ``EventReceiver`` puts what
/// arrives in id order (``EventSequencer``), catches up after each reconnect
/// (``EventCatchUpReader``) and settles gaps (``GapLedger``); each subscription's rules are
/// the pure ``SubscriptionState``, and ``EventSubscription`` is its AsyncSequence. This type
/// holds the state they share, under one lock: at-least-once, in order, no gaps, no
/// duplicates within a subscription; each subscription buffers at most `bufferLimit`
/// events, and a slower consumer pages from the table instead of growing without bound.
public final class EventBus: Sendable {
    public struct Options: Sendable {
        public var gapTimeout: Duration = .milliseconds(500)
        public var bufferLimit: Int = 1024
        public var pageSize: Int = 500
        /// How often the listener asks PostgreSQL whether the transactions that could still
        /// fill a given-up gap have all ended (see ``GapLedger``). The first check comes an
        /// interval after the listener connects.
        public var gapCheckInterval: Duration = .seconds(1)
        public init() {}
    }

    let configuration: ConnectionConfiguration
    let pool: ConnectionPool
    public let publisher: EventPublisher
    /// When set, the bus's LISTEN session also carries `regent_queue` for it.
    let queueWaker: QueueWaker?
    /// When set, the bus's LISTEN session also carries `regent_wakeups` (a wakeup was recorded:
    /// the leader's timer duty looks again), and rings it when it (re)connects or drops.
    let wakeupBell: Doorbell?
    /// Rung by `regent_schedules` (a schedule changed): the schedule duty's wake-up.
    let scheduleBell: Doorbell?
    let options: Options
    let logger: Logger
    let metrics: RegentMetrics
    let state: Mutex<State>
    private let deliveredCount = Atomic<Int>(0)
    private let reconnectCount = Atomic<Int>(0)
    private let catchUpRowCount = Atomic<Int>(0)
    private let gapCheckCount = Atomic<Int>(0)
    /// How many ids below the highest one a starting bus checks for gaps (transactions in
    /// flight before it started, which may commit later).
    static let startGapWindow = 10_000

    struct State: ~Copyable {
        var sequencer: EventSequencer<ContinuousClock.Instant>?
        var ledger: GapLedger<ContinuousClock.Instant>
        var subscriptions: [Int: Subscriber] = [:]
        var nextSubscriptionID = 0
        var stopped = false
        var listener: PostgresListener?
        /// The current listener connection has caught up (subscribing may proceed).
        var caughtUp = false
        var listenerPID: Int32?
        var ready: [CheckedContinuation<Void, Never>] = []
    }

    /// A subscription: its rules, and the consumer parked on it (if any).
    struct Subscriber {
        var state: SubscriptionState
        var consumer: CheckedContinuation<Wake, any Error>?
        /// Tells an idle timer whether the wait it was set for is still the current one.
        var waitGeneration = 0

        /// Ends it; returns the parked consumer, to be told once the lock is released.
        mutating func finish() -> CheckedContinuation<Wake, any Error>? {
            state.finish()
            defer { consumer = nil }
            return consumer
        }
    }

    /// What wakes a parked consumer.
    enum Wake: Sendable {
        case event(Event)
        case finished
        case idle
        /// Its state changed before it could park: look again.
        case retry
    }

    public init(
        configuration: ConnectionConfiguration, pool: ConnectionPool, publisher: UUID? = nil, options: Options = Options(),
        metrics: RegentMetrics = .discarded, queueWaker: QueueWaker? = nil, wakeupBell: Doorbell? = nil, scheduleBell: Doorbell? = nil,
        logger: Logger = Logger(label: "regent.events")
    ) {
        self.queueWaker = queueWaker
        self.wakeupBell = wakeupBell
        self.scheduleBell = scheduleBell
        self.metrics = metrics
        self.configuration = configuration
        self.pool = pool
        self.publisher = EventPublisher(pool: pool, publisherID: publisher, metrics: metrics)
        self.options = options
        self.logger = logger
        self.state = Mutex(State(ledger: GapLedger(checkInterval: options.gapCheckInterval, now: .now)))
    }

    /// Publishes in a transaction of its own; returns the event id.
    @discardableResult
    public func publish(topic: String, payload: String) async throws -> Int64 {
        try await publisher.publish(topic: topic, payload: payload)
    }

    // MARK: Listening

    /// Listens until `stop()`, reconnecting with backoff (see ``EventListenerService``).
    public func run() async { await EventListenerService(bus: self).run() }

    /// The service that keeps this bus's LISTEN connection up.
    public var listenerService: EventListenerService { EventListenerService(bus: self) }

    public func stop() {
        let listener = state.withLock { s -> PostgresListener? in
            s.stopped = true
            return s.listener
        }
        listener?.stop()
    }

    var isStopped: Bool { state.withLock { $0.stopped } }
    var isCaughtUp: Bool { state.withLock { $0.caughtUp } }

    /// Takes `listener` as the current connection; false when the bus stopped meanwhile.
    func adopt(_ listener: PostgresListener) -> Bool {
        state.withLock { s -> Bool in
            if !s.stopped { s.listener = listener }
            return !s.stopped
        }
    }

    /// Forgets the broken connection; returns whether the bus stopped.
    func dropListener() -> Bool {
        queueWaker?.notListening()
        wakeupBell?.ring()
        scheduleBell?.ring()
        return state.withLock { s -> Bool in
            s.listener = nil
            s.caughtUp = false
            s.listenerPID = nil
            return s.stopped
        }
    }

    func countReconnect() {
        reconnectCount.add(1, ordering: .relaxed)
        metrics.eventListenerReconnects.increment()
    }

    func countGapCheck() { gapCheckCount.add(1, ordering: .relaxed) }
    /// Gap checks the listener has run (tests wait for some to pass instead of sleeping).
    var gapChecksRun: Int { gapCheckCount.load(ordering: .relaxed) }

    func countCatchUpRows(_ n: Int) { catchUpRowCount.add(n, ordering: .relaxed) }
    func resetCatchUpRows() { catchUpRowCount.store(0, ordering: .relaxed) }

    /// The listener ended for good: every subscription ends, and whoever waits for it to listen returns.
    func endAll() {
        queueWaker?.notListening()
        let (consumers, ready) = state.withLock { s -> ([CheckedContinuation<Wake, any Error>], [CheckedContinuation<Void, Never>]) in
            let consumers = s.subscriptions.keys.compactMap { s.subscriptions[$0]!.finish() }
            s.subscriptions.removeAll()
            s.listener = nil
            s.caughtUp = false
            defer { s.ready.removeAll() }
            return (consumers, s.ready)
        }
        for consumer in consumers { consumer.resume(returning: .finished) }
        for continuation in ready { continuation.resume() }
    }

    /// Returns once the bus is listening and caught up (for callers that publish right after starting it).
    public func waitUntilListening() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.caughtUp || s.stopped { return true }
                s.ready.append(cont)
                return false
            }
            if now { cont.resume() }
        }
    }

    /// Times the listener connection was re-established.
    public var reconnects: Int { reconnectCount.load(ordering: .relaxed) }
    /// Rows read from the outbox since the listener last connected, by its catch-up and gap
    /// checks (tests: a reconnect reads what it must, no more).
    var rowsReadSinceConnected: Int { catchUpRowCount.load(ordering: .relaxed) }
    /// The sequencer's given-up gaps (tests).
    var givenUpGaps: [ClosedRange<Int64>] { state.withLock { $0.sequencer?.gapsToRecheck ?? [] } }
    /// Events held in memory for each subscription, and whether it reads pages from the table
    /// instead (tests check the bound on a slow consumer).
    var subscriptionBuffers: [(buffered: Int, paging: Bool)] {
        state.withLock { $0.subscriptions.values.map { ($0.state.buffered, $0.state.lagging) } }
    }
    /// Events handed to subscribers so far.
    public var delivered: Int { deliveredCount.load(ordering: .relaxed) }
    /// The server pid of the LISTEN session (drills and tests).
    public var listenerBackendPID: Int32? { state.withLock { $0.listenerPID } }
    /// Cuts the listener connection as a network failure would (drills and tests).
    public func abortListener() { state.withLock { $0.listener }?.abort() }
    /// Subscriptions currently open (for metrics and tests).
    public var subscriptionCount: Int { state.withLock { $0.subscriptions.count } }

    func recordDelivery(_ events: some Collection<Event>) {
        deliveredCount.add(events.count, ordering: .relaxed)
        metrics.eventsDelivered.increment(by: events.count)
        if let at = events.first?.publishedAt { metrics.eventLag.record(max(0, Date().timeIntervalSince(at))) }
    }

    // MARK: Handing events to subscribers

    /// Runs `body` under the bus's lock; the consumers it wakes (collected in its `Handoffs`)
    /// are resumed, and its late events counted, once the lock is released (a consumer
    /// resumed under it could wake up only to wait for the lock).
    func handingOff<T: Sendable>(_ body: (inout State, inout Handoffs) -> T) -> T {
        let (result, woken) = state.withLock { s in
            var woken = Handoffs()
            let result = body(&s, &woken)
            return (result, woken)
        }
        if woken.late > 0 { metrics.eventsLate.increment(by: woken.late) }
        for (consumer, event) in woken.list { consumer.resume(returning: .event(event)) }
        return result
    }

    struct Handoffs {
        var list: [(CheckedContinuation<Wake, any Error>, Event)] = []
        var late = 0
    }

    /// Puts `event` (from a notification or the table) through the sequencer and offers
    /// what that releases. An id at or below the horizon comes out only if it is late (a
    /// given-up id that committed after all); anything else releases in order.
    static func receive(_ event: Event, into s: inout State, limit: Int, _ woken: inout Handoffs) {
        let late = event.id <= s.sequencer!.horizon
        let released = s.sequencer!.receive(event, now: .now)
        if late, !released.isEmpty { woken.late += 1 }
        dispatch(released, late: late, to: &s, limit: limit, &woken)
    }

    /// Offers `events` to every subscription.
    static func dispatch(_ events: [Event], late: Bool, to s: inout State, limit: Int, _ woken: inout Handoffs) {
        for event in events {
            for i in s.subscriptions.values.indices {
                let waiting = s.subscriptions.values[i].consumer != nil
                let action = s.subscriptions.values[i].state.offer(event, late: late, limit: limit, consumerWaiting: waiting)
                if action == .handToConsumer {
                    woken.list.append((s.subscriptions.values[i].consumer!, event))
                    s.subscriptions.values[i].consumer = nil
                }
            }
        }
    }
}
