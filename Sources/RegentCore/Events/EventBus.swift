import CoreMetrics
import Foundation
import Logging
import PostgresClient

/// The engine event bus of one node: publish into the durable outbox, subscribe to
/// what others publish.
///
/// One LISTEN connection per bus multiplexes every subscription. Events are released to
/// subscribers in id order (see ``EventSequencer``). When the listener connection breaks
/// the bus reconnects with backoff, LISTENs first, then reads from the outbox everything
/// after what it had released, then resumes live delivery: at-least-once, in order, no
/// gaps, no duplicates within a subscription. Each subscription buffers at most
/// `bufferLimit` events; a slower consumer is switched to paging from the table instead
/// of growing without bound.
public actor EventBus {
    public struct Options: Sendable {
        public var gapTimeout: Duration = .milliseconds(500)
        public var bufferLimit: Int = 1024
        public var pageSize: Int = 500
        public init() {}
    }

    let configuration: ConnectionConfiguration
    let pool: ConnectionPool
    let publisher: UUID?
    let options: Options
    let logger: Logger
    let metrics: RegentMetrics
    private var sequencer: EventSequencer<ContinuousClock.Instant>?
    private var subscriptions: [Int: Subscription] = [:]
    private var nextSubscriptionID = 0
    private var stopped = false
    private var listener: PostgresListener?
    private var ready: [CheckedContinuation<Void, Never>] = []
    /// Times the listener connection was re-established.
    public private(set) var reconnects = 0
    public private(set) var delivered = 0

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

    public static func validate(topic: String, payload: String) throws(RegentError) -> (EventTopic, EventPayload) {
        (try EventTopic(topic), try EventPayload(json: payload))
    }

    // MARK: Running

    /// Listens until `stop()`, reconnecting with backoff.
    public func run() async {
        var delay = Duration.milliseconds(50)
        let ticker = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(25))
                await self?.tick()
            }
        }
        defer { ticker.cancel() }
        while !stopped {
            do {
                let listener = try await PostgresListener.connect(configuration, channels: [try SQLIdentifier(EventQueries.channel)])
                self.listener = listener
                if stopped { listener.stop() }
                // LISTEN first (done), then read what we missed, then deliver live.
                try await catchUp()
                delay = .milliseconds(50)
                for continuation in ready { continuation.resume() }
                ready.removeAll()
                for try await note in listener.notifications {
                    try await handle(note.payload)
                }
                if stopped { break }
                throw PostgresError(.connectionClosed, "listener ended")
            } catch {
                listener = nil
                if stopped { break }
                reconnects += 1
                logger.warning("event listener lost; reconnecting", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
        for sub in subscriptions.values { sub.finish(nil) }
        subscriptions.removeAll()
        for continuation in ready { continuation.resume() }
        ready.removeAll()
    }

    /// Returns once the bus is listening and caught up (for callers that publish right after starting it).
    public func waitUntilListening() async {
        if listener != nil, sequencer != nil { return }
        await withCheckedContinuation { ready.append($0) }
    }

    public func stop() {
        stopped = true
        listener?.stop()
    }

    /// The server pid of the LISTEN session (drills and tests).
    public var listenerBackendPID: Int32? { listener?.backendPID }

    /// Cuts the listener connection as a network failure would (drills and tests).
    public func abortListener() { listener?.abort() }

    private func catchUp() async throws {
        if sequencer == nil {
            let max = try await pool.query(EventQueries.maxID, purpose: "events: current max id").single().decode("id", as: Int64.self)
            sequencer = EventSequencer(horizon: max, gapTimeout: options.gapTimeout)
            return
        }
        var after = sequencer!.catchUpFrom
        while true {
            let rows = try await pool.query(
                EventQueries.page(after: after, upTo: nil, topics: nil, limit: options.pageSize), purpose: "events: catch up")
            for row in rows {
                let event = try EventQueries.decode(row)
                dispatch(sequencer!.receive(event, now: .now))
                after = event.id
            }
            if rows.count < options.pageSize { break }
        }
    }

    private func handle(_ text: String) async throws {
        guard let parsed = EventQueries.parseNotification(text) else {
            logger.warning("ignoring a malformed regent_events notification", metadata: ["payload": "\(text.prefix(200))"])
            return
        }
        var event = parsed.event
        if event == nil {
            // Too large for NOTIFY: the body is in the table.
            let rows = try await pool.query(EventQueries.byID(parsed.id), purpose: "events: read truncated event")
            event = try rows.first.map(EventQueries.decode)
        }
        guard let event, sequencer != nil else { return }
        dispatch(sequencer!.receive(event, now: .now))
    }

    private func tick() {
        guard sequencer?.nextDeadline != nil else { return }
        dispatch(sequencer!.tick(now: .now))
    }

    private func dispatch(_ events: [Event]) {
        guard !events.isEmpty else { return }
        for event in events {
            for sub in subscriptions.values { sub.offer(event, limit: options.bufferLimit) }
        }
    }

    // MARK: Subscribing

    /// Events of `topics` (nil: all) in id order: those with id ≥ `fromID`, then live; or,
    /// without `fromID`, those published from now on. Throws when `fromID` is below what
    /// retention kept.
    public func subscribe(topics: [String]? = nil, fromID: Int64? = nil) async throws -> EventSubscription {
        let topicNames = try topics.map { try $0.map { try EventTopic($0).name } }
        await waitUntilListening()
        let horizon = sequencer?.horizon ?? 0
        let start: Int64
        if let fromID {
            guard fromID >= 1 else { throw RegentError(.invalidInput, "--from-id must be 1 or more, got \(fromID)") }
            let pruned = try await pool.query(EventQueries.prunedThrough, purpose: "events: retention horizon").single()
                .decode("pruned_through", as: Int64.self)
            guard fromID > pruned else {
                throw RegentError(
                    .invalidInput, "events up to id \(pruned) were pruned by retention; resume from id \(pruned + 1) or later")
            }
            start = fromID - 1
        } else {
            start = horizon
        }
        nextSubscriptionID += 1
        let sub = Subscription(id: nextSubscriptionID, topics: topicNames.map(Set.init), lastDelivered: start, lagging: fromID != nil)
        subscriptions[sub.id] = sub
        return EventSubscription(bus: self, id: sub.id)
    }

    private func recordDelivery(_ events: some Collection<Event>) {
        delivered += events.count
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
    }

    /// Up to `max` events for subscription `id`, waiting for at least one (or, with
    /// `idleAfter`, until that much time passed without one).
    func nextBatch(_ id: Int, max: Int, idleAfter: Duration? = nil) async throws -> BatchResult {
        guard let sub = subscriptions[id] else { return .ended }
        while true {
            let batch = sub.popBatch(max: max)
            if !batch.isEmpty {
                recordDelivery(batch)
                return .events(batch)
            }
            if sub.finished { return .ended }
            if sub.lagging {
                try await page(sub)
                continue
            }
            sub.waitGeneration += 1
            let generation = sub.waitGeneration
            let timer = idleAfter.map { idle in
                Task { [weak self] in
                    try? await Task.sleep(for: idle)
                    await self?.wakeIdle(id, generation: generation)
                }
            }
            let wake = try await withCheckedThrowingContinuation { sub.waiter = $0 }
            timer?.cancel()
            switch wake {
            case .event(let event):
                recordDelivery(CollectionOfOne(event))
                return .events([event])
            case .finished: return .ended
            case .idle: return .idle
            }
        }
    }

    private func wakeIdle(_ id: Int, generation: Int) {
        guard let sub = subscriptions[id], sub.waitGeneration == generation, let waiter = sub.waiter else { return }
        sub.waiter = nil
        waiter.resume(returning: .idle)
    }

    /// Reads the table for a subscription that fell behind (or started in the past), after
    /// what it has queued and up to what the bus has released; once a short page shows it
    /// has everything released so far, it goes back to live delivery. (No await between the
    /// last horizon check and the switch, so nothing slips between paging and live.)
    private func page(_ sub: Subscription) async throws {
        let upTo = sequencer?.horizon ?? 0
        let rows = try await pool.query(
            EventQueries.page(after: sub.lastQueued, upTo: upTo, topics: sub.topics.map { Array($0) }, limit: options.pageSize),
            purpose: "events: page for a subscriber")
        let events = try rows.map(EventQueries.decode)
        sub.buffer.append(contentsOf: events)
        if let last = events.last { sub.lastQueued = last.id }
        if events.count < options.pageSize, (sequencer?.horizon ?? 0) == upTo {
            sub.lagging = false
            sub.lastQueued = max(sub.lastQueued, upTo)
        }
    }

    func cancel(_ id: Int) {
        subscriptions.removeValue(forKey: id)?.finish(nil)
    }

    /// Subscriptions currently open (for metrics and tests).
    public var subscriptionCount: Int { subscriptions.count }

    /// One subscriber's state; only touched by the bus actor.
    final class Subscription {
        let id: Int
        let topics: Set<String>?
        var buffer: [Event] = []
        var head = 0
        /// The highest id handed to the consumer.
        var lastDelivered: Int64
        /// The highest id put into the buffer (paging continues after it).
        var lastQueued: Int64
        var lagging: Bool
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

        func offer(_ event: Event, limit: Int) {
            guard !finished, !lagging, topics?.contains(event.topic) ?? true else { return }  // a lagging one pages
            deliverOrBuffer(event, limit: limit)
        }

        private func deliverOrBuffer(_ event: Event, limit: Int) {
            if let waiter {
                self.waiter = nil
                lastDelivered = max(lastDelivered, event.id)
                lastQueued = max(lastQueued, event.id)
                waiter.resume(returning: .event(event))
                return
            }
            if buffer.count - head >= limit {
                // Slow consumer: stop buffering; it will page from the table after what it has.
                buffer.removeSubrange(head...)
                buffer.removeSubrange(..<head)
                head = 0
                lastQueued = lastDelivered
                lagging = true
                return
            }
            buffer.append(event)
            lastQueued = max(lastQueued, event.id)
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
                Task { await bus.cancel(id) }
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
    public func cancel() async { await bus.cancel(id) }

    /// The next events in order; nil when none arrived within `idleAfter` (the subscription
    /// stays open: a stream can send a keep-alive and ask again); empty once it ended.
    public func nextBatch(idleAfter: Duration, max: Int = 256) async throws -> [Event]? {
        let bus = self.bus
        let id = self.id
        let result = try await withTaskCancellationHandler {
            try await bus.nextBatch(id, max: max, idleAfter: idleAfter)
        } onCancel: {
            Task { await bus.cancel(id) }
        }
        switch result {
        case .events(let events): return events
        case .ended: return []
        case .idle: return nil
        }
    }
}
