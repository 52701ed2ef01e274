import CoreMetrics
import Foundation
import Logging
import PostgresClient
import Synchronization

/// The engine event bus of one node: publish into the durable outbox, subscribe to
/// what others publish.
///
/// One LISTEN connection per bus multiplexes every subscription. Its thread does the
/// bus's whole receiving side itself — parse, read truncated bodies, put in id order (see
/// ``EventSequencer``), hand to each subscription — so an event reaches a waiting
/// subscriber in one hop from the socket. When the connection breaks the bus reconnects
/// with backoff, LISTENs first, then reads from the outbox (on the listener connection)
/// everything after what it had released, then resumes live delivery: at-least-once, in
/// order, no gaps, no duplicates within a subscription. Each subscription buffers at most
/// `bufferLimit` events; a slower consumer is switched to paging from the table instead
/// of growing without bound.
public final class EventBus: Sendable {
    public struct Options: Sendable {
        public var gapTimeout: Duration = .milliseconds(500)
        public var bufferLimit: Int = 1024
        public var pageSize: Int = 500
        /// How often the listener asks PostgreSQL whether the transactions that could still
        /// fill a given-up gap have all ended; then it reads those gaps one last time and
        /// forgets them (see `checkGaps`). The first check comes an interval after the listener
        /// connects.
        public var gapCheckInterval: Duration = .seconds(1)
        public init() {}
    }

    let configuration: ConnectionConfiguration
    let pool: ConnectionPool
    let publisher: UUID?
    let options: Options
    let logger: Logger
    let metrics: RegentMetrics
    private let state = Mutex(State())
    private let deliveredCount = Atomic<Int>(0)
    private let reconnectCount = Atomic<Int>(0)
    private let catchUpRowCount = Atomic<Int>(0)
    /// How many ids below the highest one a starting bus checks for gaps (transactions in
    /// flight before it started, which may commit later).
    static let startGapWindow = 10_000
    /// How many gaps one catch-up query looks into.
    static let gapsPerRead = 256

    private struct State: ~Copyable {
        var sequencer: EventSequencer<ContinuousClock.Instant>?
        var subscriptions: [Int: Subscription] = [:]
        var nextSubscriptionID = 0
        var stopped = false
        var listener: PostgresListener?
        /// The current listener connection has caught up (subscribing may proceed).
        var caughtUp = false
        var listenerPID: Int32?
        var ready: [CheckedContinuation<Void, Never>] = []
        /// Gap checks not yet settled, oldest first: the transactions writing to the outbox
        /// then, and the sequencer's horizon then.
        var gapChecks: [(writers: Set<String>, horizon: Int64)] = []
        /// When the gaps were last looked at (a gap check, or the catch-up on connecting).
        var lastGapCheck = ContinuousClock.now
        /// The gap count last given to the `regent_event_gaps` gauge.
        var reportedGaps = 0
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
        state.withLock { $0.subscriptions.values.map { ($0.buffer.count - $0.head, $0.lagging) } }
    }
    /// Events handed to subscribers so far.
    public var delivered: Int { deliveredCount.load(ordering: .relaxed) }

    public init(
        configuration: ConnectionConfiguration, pool: ConnectionPool, publisher: UUID? = nil, options: Options = Options(),
        metrics: RegentMetrics = .discarded, logger: Logger = Logger(label: "regent.events")
    ) {
        self.metrics = metrics
        self.configuration = configuration
        self.pool = pool
        self.publisher = publisher
        self.options = options
        self.logger = logger
    }

    // MARK: Publishing

    /// Publishes in a transaction of its own; returns the event id.
    @discardableResult
    public func publish(topic: String, payload: String) async throws -> Int64 {
        let (topic, payload) = try Self.validate(topic: topic, payload: payload)
        let publisher = self.publisher
        let id = try await pool.withConnection { conn in
            try await Self.publish(topic: topic, payload: payload, publisher: publisher, on: conn)
        }
        metrics.eventsPublished.increment()
        return id
    }

    /// Publishes inside the caller's open transaction: the event exists, and is announced,
    /// if and only if that transaction commits.
    @discardableResult
    public static func publish(topic: EventTopic, payload: EventPayload, publisher: UUID?, on connection: PostgresConnection) async throws
        -> Int64
    {
        try await connection.query(
            EventQueries.publish(topic: topic.name, payload: payload.json, publisher: publisher), purpose: "publish event"
        ).single().decode("id", as: Int64.self)
    }

    /// The text of the statement `publish` prepares and runs (parameters: topic, payload
    /// JSON, publisher uuid), for `regent bench events`'s raw-libpq row.
    public static var publishStatementText: String { EventQueries.publish(topic: "", payload: "{}", publisher: nil).sql }

    public static func validate(topic: String, payload: String) throws(RegentError) -> (EventTopic, EventPayload) {
        (try EventTopic(topic), try EventPayload(json: payload))
    }

    // MARK: Running

    /// Listens until `stop()`, reconnecting with backoff.
    public func run() async {
        var delay = Duration.milliseconds(50)
        let receiver = Receiver(bus: self)
        while !state.withLock({ $0.stopped }) {
            do {
                let listener = try await PostgresListener.open(configuration, channels: [try SQLIdentifier(EventQueries.channel)])
                let stopped = state.withLock { s -> Bool in
                    if !s.stopped { s.listener = listener }
                    return s.stopped
                }
                if stopped {
                    listener.stop()
                    break
                }
                listener.start(receiver)
                do {
                    try await listener.waitUntilClosed()
                } catch {
                    // A listener that got as far as catching up was a working connection.
                    if state.withLock({ $0.caughtUp }) { delay = .milliseconds(50) }
                    throw error
                }
                if state.withLock({ $0.stopped }) { break }
                throw PostgresError(.connectionClosed, "listener ended")
            } catch {
                let stopped = state.withLock { s -> Bool in
                    s.listener = nil
                    s.caughtUp = false
                    s.listenerPID = nil
                    return s.stopped
                }
                if stopped { break }
                reconnectCount.add(1, ordering: .relaxed)
                metrics.eventListenerReconnects.increment()
                logger.warning("event listener lost; reconnecting", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
        let ready = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            for sub in s.subscriptions.values { sub.finish(nil) }
            s.subscriptions.removeAll()
            s.listener = nil
            s.caughtUp = false
            defer { s.ready.removeAll() }
            return s.ready
        }
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

    public func stop() {
        let listener = state.withLock { s -> PostgresListener? in
            s.stopped = true
            return s.listener
        }
        listener?.stop()
    }

    /// The server pid of the LISTEN session (drills and tests).
    public var listenerBackendPID: Int32? { state.withLock { $0.listenerPID } }

    /// Cuts the listener connection as a network failure would (drills and tests).
    public func abortListener() { state.withLock { $0.listener }?.abort() }

    /// The bus's receiving side, run by the listener thread.
    private struct Receiver: PostgresListenerHandler {
        let bus: EventBus
        var tickInterval: Duration? { .milliseconds(25) }

        /// LISTEN is done; read what was missed (or, the first time, where "now" is), then go live.
        ///
        /// What was missed: events in the given-up gaps (transactions that held their ids and
        /// committed while no notification could reach us), then everything above the
        /// horizon. The gaps are read by range, so an old gap (a rolled-back publish leaves
        /// one for good) does not make every reconnect re-read the outbox from there.
        func listenerConnected(_ session: ListenerSession) throws {
            let start = bus.state.withLock { s in s.sequencer.map { ($0.gapsToRecheck, $0.horizon) } }
            if let (gaps, horizon) = start {
                bus.catchUpRowCount.store(0, ordering: .relaxed)
                try readGaps(session, gaps)
                try catchUp(session, from: horizon) { after in
                    EventQueries.page(after: after, upTo: nil, topics: nil, limit: bus.options.pageSize)
                }
            } else {
                // Where "now" is, and the ids below it that are still missing: a transaction
                // that took one before this bus started may commit later, and must then be
                // found by a catch-up like any other late event.
                let rows = try session.query(EventQueries.start(window: Int64(EventBus.startGapWindow)))
                let max = try rows.first.map { try $0.decode("max", as: Int64.self) } ?? 0
                let low = try rows.first.map { try $0.decode("low", as: Int64.self) } ?? max
                let gaps = try rows.compactMap { row -> ClosedRange<Int64>? in
                    guard let lo = try row.decodeOptional("lo", as: Int64.self), let hi = try row.decodeOptional("hi", as: Int64.self) else {
                        return nil
                    }
                    return lo...hi
                }
                bus.state.withLock {
                    $0.sequencer = EventSequencer(horizon: max, gapTimeout: bus.options.gapTimeout, checkedFrom: low, gaps: gaps)
                }
            }
            let ready = bus.state.withLock { s -> [CheckedContinuation<Void, Never>] in
                s.caughtUp = true
                s.listenerPID = session.backendPID
                s.lastGapCheck = .now  // the catch-up just read the gaps: the next look is an interval away
                defer { s.ready.removeAll() }
                return s.ready
            }
            for continuation in ready { continuation.resume() }
        }

        /// Reads the rows that appeared in `gaps` (given-up ranges, in order), by range.
        private func readGaps(_ session: ListenerSession, _ gaps: [ClosedRange<Int64>]) throws {
            // A few hundred gaps a query: each page probes every gap it is given.
            var rest = gaps[...]
            while !rest.isEmpty {
                let chunk = Array(rest.prefix(EventBus.gapsPerRead))
                rest = rest.dropFirst(chunk.count)
                try catchUp(session, from: chunk[0].lowerBound - 1) { after in
                    EventQueries.inGaps(chunk, after: after, limit: bus.options.pageSize)
                }
            }
        }

        /// Reads pages (`query` after an id) until a short one, feeding the sequencer.
        private func catchUp(_ session: ListenerSession, from: Int64, _ query: (Int64) -> PostgresQuery) throws {
            var after = from
            while true {
                let events = try session.query(query(after)).map(EventQueries.decode)
                bus.catchUpRowCount.add(events.count, ordering: .relaxed)
                bus.handingOff { s, woken in
                    for event in events { Self.receive(event, into: &s, limit: bus.options.bufferLimit, &woken) }
                }
                after = events.last?.id ?? after
                if events.count < bus.options.pageSize { return }
            }
        }

        func received(_ notification: PostgresNotification, session: ListenerSession) throws {
            guard let parsed = EventQueries.parseNotification(notification.payload) else {
                bus.logger.warning(
                    "ignoring a malformed regent_events notification", metadata: ["payload": "\(notification.payload.prefix(200))"])
                return
            }
            // Too large for NOTIFY: the body is in the table.
            guard let event = try parsed.event ?? session.query(EventQueries.byID(parsed.id)).first.map(EventQueries.decode) else {
                return
            }
            bus.handingOff { s, woken in
                if s.sequencer != nil { Self.receive(event, into: &s, limit: bus.options.bufferLimit, &woken) }
            }
        }

        func tick(_ session: ListenerSession) throws {
            let checkDue = bus.handingOff { s, woken in
                if s.sequencer?.nextDeadline != nil {
                    Self.dispatch(s.sequencer!.tick(now: .now), late: false, to: s, limit: bus.options.bufferLimit, &woken)
                }
                let gaps = s.sequencer?.gapsToRecheck.count ?? 0
                if gaps != s.reportedGaps {
                    s.reportedGaps = gaps
                    bus.metrics.eventGaps.record(gaps)
                }
                return gaps > 0 && s.lastGapCheck.duration(to: .now) >= bus.options.gapCheckInterval
            }
            if checkDue { try checkGaps(session) }
        }

        /// Forgets the given-up gaps that nothing can fill any more. A gap's id was taken
        /// before the gap was given up, by a transaction that has held a write lock on
        /// `engine.events` since before it took the id and holds it until it ends. So the
        /// transactions that can still fill the gaps given up before a check are among the
        /// writers seen at that check; once none of those is writing any more, the gaps are
        /// read one last time (a row that committed there is released late, even if its
        /// notification never came) and forgotten. Rolled-back publishes thus stop costing
        /// memory and catch-up reads. (The writers set of a later check holds every writer
        /// of an earlier one still running, so settling a check settles those before it.)
        private func checkGaps(_ session: ListenerSession) throws {
            let writers = Set(try session.query(EventQueries.eventWriters).map { try $0.decode("vxid", as: String.self) })
            let settled = bus.state.withLock { s -> (through: Int64, gaps: [ClosedRange<Int64>])? in
                s.lastGapCheck = .now
                // (A check at the same horizon as the last one would settle nothing more.)
                if s.gapChecks.last?.horizon != s.sequencer!.horizon { s.gapChecks.append((writers, s.sequencer!.horizon)) }
                guard let done = s.gapChecks.lastIndex(where: { $0.writers.isDisjoint(with: writers) }) else { return nil }
                let through = s.gapChecks[done].horizon
                s.gapChecks.removeSubrange(...done)
                return (through, s.sequencer!.gapsToRecheck.filter { $0.upperBound <= through })
            }
            guard let settled, !settled.gaps.isEmpty else { return }
            try readGaps(session, settled.gaps)
            bus.state.withLock { $0.sequencer!.forgetGaps(through: settled.through) }
        }

        /// Puts `event` (from a notification or the table) through the sequencer and offers
        /// what that releases. An id at or below the horizon comes out only if it is late (a
        /// given-up id that committed after all); anything else releases in order.
        static func receive(_ event: Event, into s: inout State, limit: Int, _ woken: inout Handoffs) {
            let late = event.id <= s.sequencer!.horizon
            let released = s.sequencer!.receive(event, now: .now)
            if late, !released.isEmpty { woken.late += 1 }
            dispatch(released, late: late, to: s, limit: limit, &woken)
        }

        /// Offers `events` to every subscription; the subscribers this wakes are added to
        /// `woken`, to be resumed once the lock is released (a subscriber resumed under it
        /// could wake up only to wait for the lock).
        static func dispatch(_ events: [Event], late: Bool, to s: borrowing State, limit: Int, _ woken: inout Handoffs) {
            for event in events {
                for sub in s.subscriptions.values {
                    if let waiter = sub.offer(event, late: late, limit: limit) { woken.list.append((waiter, event)) }
                }
            }
        }
    }

    /// Runs `body` under the bus's lock; the subscribers it wakes (collected in its
    /// `Handoffs`) are resumed, and its late events counted, once the lock is released.
    private func handingOff<T: Sendable>(_ body: @Sendable (inout State, inout Handoffs) -> T) -> T {
        let (result, woken) = state.withLock { s in
            var woken = Handoffs()
            let result = body(&s, &woken)
            return (result, woken)
        }
        woken.resume(metrics)
        return result
    }

    /// Subscribers to resume with an event, collected under the bus's lock (and the late
    /// events released meanwhile, counted once it is released).
    private struct Handoffs {
        var list: [(CheckedContinuation<Wake, any Error>, Event)] = []
        var late = 0
        func resume(_ metrics: RegentMetrics) {
            if late > 0 { metrics.eventsLate.increment(by: late) }
            for (waiter, event) in list { waiter.resume(returning: .event(event)) }
        }
    }

    // MARK: Subscribing

    /// Events of `topics` (nil: all) in id order: those with id ≥ `fromID`, then live; or,
    /// without `fromID`, those published from now on. Throws when `fromID` is below what
    /// retention kept.
    public func subscribe(topics: [String]? = nil, fromID: Int64? = nil) async throws -> EventSubscription {
        let topicNames = try topics.map { try $0.map { try EventTopic($0).name } }
        if let fromID {
            guard fromID >= 1 else { throw RegentError(.invalidInput, "--from-id must be 1 or more, got \(fromID)") }
            let pruned = try await pool.query(EventQueries.prunedThrough, purpose: "events: retention horizon").single()
                .decode("pruned_through", as: Int64.self)
            guard fromID > pruned else {
                throw RegentError(
                    .invalidInput, "events up to id \(pruned) were pruned by retention; resume from id \(pruned + 1) or later")
            }
        }
        await waitUntilListening()
        let id = state.withLock { s -> Int in
            s.nextSubscriptionID += 1
            let start = fromID.map { $0 - 1 } ?? s.sequencer?.horizon ?? 0
            let sub = Subscription(id: s.nextSubscriptionID, topics: topicNames.map(Set.init), lastDelivered: start, lagging: fromID != nil)
            if s.stopped { sub.finish(nil) }
            s.subscriptions[sub.id] = sub
            return sub.id
        }
        return EventSubscription(bus: self, id: id)
    }

    private func recordDelivery(_ events: some Collection<Event>) {
        deliveredCount.add(events.count, ordering: .relaxed)
        metrics.eventsDelivered.increment(by: events.count)
        if let at = events.first?.publishedAt { metrics.eventLag.record(max(0, Date().timeIntervalSince(at))) }
    }

    enum BatchResult: Sendable {
        case events([Event])
        case ended
        /// Nothing arrived within the idle time; the subscription is still open.
        case idle
    }

    /// What wakes a waiting subscriber.
    enum Wake: Sendable {
        case event(Event)
        case finished
        case idle
        /// Its state changed before it could wait: look again.
        case retry
    }

    /// The next step of a subscriber, decided under the lock.
    private enum Step {
        case events([Event])
        case ended
        case page(after: Int64, upTo: Int64, topics: [String]?)
        case wait
    }

    /// Up to `max` events for subscription `id`, waiting for at least one (or, with
    /// `idleAfter`, until that much time passed without one).
    func nextBatch(_ id: Int, max: Int, idleAfter: Duration? = nil) async throws -> BatchResult {
        while true {
            let step = state.withLock { s -> Step in
                guard let sub = s.subscriptions[id] else { return .ended }
                let batch = sub.popBatch(max: max)
                if !batch.isEmpty { return .events(batch) }
                if sub.finished { return .ended }
                if sub.lagging { return .page(after: sub.lastQueued, upTo: s.sequencer?.horizon ?? 0, topics: sub.topics.map { Array($0) }) }
                return .wait
            }
            switch step {
            case .events(let batch):
                recordDelivery(batch)
                return .events(batch)
            case .ended:
                return .ended
            case .page(let after, let upTo, let topics):
                try await page(id, after: after, upTo: upTo, topics: topics)
                continue
            case .wait:
                break
            }
            let wake = try await wait(id, idleAfter: idleAfter)
            switch wake {
            case .event(let event):
                recordDelivery(CollectionOfOne(event))
                return .events([event])
            case .finished: return .ended
            case .idle: return .idle
            case .retry: continue
            }
        }
    }

    /// Parks subscription `id` until the listener thread hands it an event (or it ends, or idles).
    private func wait(_ id: Int, idleAfter: Duration?) async throws -> Wake {
        let generation = state.withLock { s -> Int in
            guard let sub = s.subscriptions[id] else { return 0 }
            sub.waitGeneration += 1
            return sub.waitGeneration
        }
        let timer = idleAfter.map { idle in
            Task { [weak self] in
                try? await Task.sleep(for: idle)
                self?.wakeIdle(id, generation: generation)
            }
        }
        defer { timer?.cancel() }
        return try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Wake, any Error>) in
            let immediate = state.withLock { s -> Wake? in
                guard let sub = s.subscriptions[id] else { return .finished }
                if sub.finished { return .finished }
                if sub.hasBuffered || sub.lagging || sub.waitGeneration != generation { return .retry }
                sub.waiter = cont
                return nil
            }
            if let immediate { cont.resume(returning: immediate) }
        }
    }

    private func wakeIdle(_ id: Int, generation: Int) {
        let waiter = state.withLock { s -> CheckedContinuation<Wake, any Error>? in
            guard let sub = s.subscriptions[id], sub.waitGeneration == generation, let waiter = sub.waiter else { return nil }
            sub.waiter = nil
            return waiter
        }
        waiter?.resume(returning: .idle)
    }

    /// Reads the table for a subscription that fell behind (or started in the past), after
    /// what it has queued and up to what the bus had released; once a short page shows it
    /// has everything released so far, it goes back to live delivery. (The switch is
    /// decided under the lock, against the horizon at that moment, so nothing the listener
    /// releases in the meantime slips between paging and live.)
    private func page(_ id: Int, after: Int64, upTo: Int64, topics: [String]?) async throws {
        let rows = try await pool.query(
            EventQueries.page(after: after, upTo: upTo, topics: topics, limit: options.pageSize), purpose: "events: page for a subscriber")
        let events = try rows.map(EventQueries.decode)
        let pageSize = options.pageSize
        state.withLock { s in
            guard let sub = s.subscriptions[id], sub.lagging, sub.lastQueued == after else { return }
            let caughtUp = events.count < pageSize && (s.sequencer?.horizon ?? 0) == upTo
            // What this page covers: (after, covered]. Late events offered while paging are
            // settled against it: one the page returned is already here; one in its range that
            // the page did not return committed after the page's snapshot, and one below its
            // range was passed by an earlier page: both are queued now (late, out of order).
            let covered = caughtUp ? Swift.max(upTo, events.last?.id ?? after) : (events.last?.id ?? after)
            if !sub.lateWhilePaging.isEmpty {
                let paged = Set(events.map(\.id))
                var waiting: [Event] = []
                for late in sub.lateWhilePaging {
                    if late.id > covered { waiting.append(late) } else if !paged.contains(late.id) { sub.buffer.append(late) }
                }
                sub.lateWhilePaging = waiting
            }
            // A given-up id that this page found committed will also come from the listener,
            // late: remember it, so that this subscription does not get it twice.
            if let sequencer = s.sequencer {
                sub.pagedLate = sub.pagedLate.filter { sequencer.awaitsLateRelease($0) }
                for event in events where sequencer.awaitsLateRelease(event.id) { sub.pagedLate.insert(event.id) }
            }
            sub.buffer.append(contentsOf: events)
            sub.lastQueued = covered
            if caughtUp {
                sub.lagging = false
                // Nothing late can be above the horizon; anything left is queued, not dropped.
                sub.buffer.append(contentsOf: sub.lateWhilePaging)
                sub.lateWhilePaging.removeAll()
            }
        }
    }

    func cancel(_ id: Int) {
        state.withLock { s in s.subscriptions.removeValue(forKey: id)?.finish(nil) }
    }

    /// Subscriptions currently open (for metrics and tests).
    public var subscriptionCount: Int { state.withLock { $0.subscriptions.count } }

    /// One subscriber's state; only touched under the bus's lock.
    final class Subscription {
        let id: Int
        let topics: Set<String>?
        var buffer: [Event] = []
        var head = 0
        /// The highest id handed to the consumer.
        var lastDelivered: Int64
        /// The highest id put into the buffer (paging continues after it).
        var lastQueued: Int64
        /// Paging from the table instead of taking live events.
        var lagging: Bool
        /// Late events the listener released while this subscription was paging: each is
        /// settled by the next page that covers its id (see `page`).
        var lateWhilePaging: [Event] = []
        /// Given-up ids that a page returned before the listener released them late: that
        /// late release is a duplicate for this subscription.
        var pagedLate: Set<Int64> = []
        var finished = false
        var waiter: CheckedContinuation<Wake, any Error>?
        /// Tells an idle timer whether the wait it was set for is still the current one.
        var waitGeneration = 0

        init(id: Int, topics: Set<String>?, lastDelivered: Int64, lagging: Bool) {
            self.id = id
            self.topics = topics
            self.lastDelivered = lastDelivered
            self.lastQueued = lastDelivered
            self.lagging = lagging
        }

        var hasBuffered: Bool { head < buffer.count }

        /// Takes `event` if it is for this subscription: hands it to the waiting subscriber
        /// (returned, for the caller to resume after the lock), or buffers it. A paging
        /// subscription reads in-order events from the table itself, but a `late` one may lie
        /// below where its pages already are: it keeps those (see `page`).
        func offer(_ event: Event, late: Bool, limit: Int) -> CheckedContinuation<Wake, any Error>? {
            guard !finished, topics?.contains(event.topic) ?? true else { return nil }
            if late, !pagedLate.isEmpty, pagedLate.remove(event.id) != nil { return nil }  // a page had it
            if lagging {
                if late { lateWhilePaging.append(event) }
                return nil
            }
            if let waiter {
                self.waiter = nil
                lastDelivered = max(lastDelivered, event.id)
                lastQueued = max(lastQueued, event.id)
                return waiter
            }
            if buffer.count - head >= limit {
                // Slow consumer: stop buffering; it will page from the table after what it has.
                // Late events at or below that point would not be read again: they are kept.
                lateWhilePaging = buffer[head...].filter { $0.id <= lastDelivered } + (late && event.id <= lastDelivered ? [event] : [])
                buffer.removeAll()
                head = 0
                lastQueued = lastDelivered
                lagging = true
                return nil
            }
            buffer.append(event)
            lastQueued = max(lastQueued, event.id)
            return nil
        }

        func popBatch(max: Int) -> [Event] {
            let end = Swift.min(buffer.count, head + max)
            guard head < end else { return [] }
            let batch = Array(buffer[head..<end])
            head = end
            if head == buffer.count {
                buffer.removeAll(keepingCapacity: true)
                head = 0
            }
            lastDelivered = Swift.max(lastDelivered, batch.last!.id)
            return batch
        }

        func finish(_ error: (any Error)?) {
            finished = true
            if let waiter {
                self.waiter = nil
                if let error { waiter.resume(throwing: error) } else { waiter.resume(returning: .finished) }
            }
        }
    }
}

/// The events of one subscription, in id order. Ends when the bus stops; cancelling the
/// consuming task ends it too.
public struct EventSubscription: AsyncSequence, Sendable {
    public typealias Element = Event
    let bus: EventBus
    let id: Int

    public struct AsyncIterator: AsyncIteratorProtocol {
        let bus: EventBus
        let id: Int
        /// Events taken from the bus in one hop and not yet returned.
        var batch: [Event] = []
        var index = 0

        public mutating func next() async throws -> Event? {
            if index < batch.count {
                index += 1
                return batch[index - 1]
            }
            let bus = self.bus
            let id = self.id
            let result = try await withTaskCancellationHandler {
                try await bus.nextBatch(id, max: 256)
            } onCancel: {
                bus.cancel(id)
            }
            if case .events(let events) = result { batch = events } else { batch = [] }
            index = 0
            guard !batch.isEmpty else { return nil }
            index = 1
            return batch[0]
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(bus: bus, id: id) }

    /// Ends this subscription.
    public func cancel() { bus.cancel(id) }

    /// The next events in order; nil when none arrived within `idleAfter` (the subscription
    /// stays open: a stream can send a keep-alive and ask again); empty once it ended.
    public func nextBatch(idleAfter: Duration, max: Int = 256) async throws -> [Event]? {
        let bus = self.bus
        let id = self.id
        let result = try await withTaskCancellationHandler {
            try await bus.nextBatch(id, max: max, idleAfter: idleAfter)
        } onCancel: {
            bus.cancel(id)
        }
        switch result {
        case .events(let events): return events
        case .ended: return []
        case .idle: return nil
        }
    }
}
