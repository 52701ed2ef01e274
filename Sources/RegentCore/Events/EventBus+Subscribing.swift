import Synchronization
import Foundation
import PostgresClient

/// The consumer side: subscribing, taking batches, parking, and paging from the table for a
/// subscription that fell behind. The rules are ``SubscriptionState``'s; this performs them.
extension EventBus {
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
            var sub = Subscriber(state: SubscriptionState(topics: topicNames.map(Set.init), lastDelivered: start, lagging: fromID != nil))
            if s.stopped { sub.state.finish() }
            s.subscriptions[s.nextSubscriptionID] = sub
            return s.nextSubscriptionID
        }
        return EventSubscription(bus: self, id: id)
    }

    enum BatchResult: Sendable {
        case events([Event])
        case ended
        /// Nothing arrived within the idle time; the subscription is still open.
        case idle
    }

    /// Up to `max` events for subscription `id`, waiting for at least one (or, with
    /// `idleAfter`, until that much time passed without one).
    func nextBatch(_ id: Int, max: Int, idleAfter: Duration? = nil) async throws -> BatchResult {
        while true {
            let step = state.withLock { s -> SubscriptionState.NextStep in
                s.subscriptions[id]?.state.next(max: max, horizon: s.sequencer?.horizon ?? 0) ?? .ended
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
            switch try await park(id, idleAfter: idleAfter) {
            case .event(let event):
                recordDelivery(CollectionOfOne(event))
                return .events([event])
            case .finished: return .ended
            case .idle: return .idle
            case .retry: continue
            }
        }
    }

    /// Parks subscription `id`'s consumer until the listener thread hands it an event (or it ends, or idles).
    private func park(_ id: Int, idleAfter: Duration?) async throws -> Wake {
        let generation = state.withLock { s -> Int in
            s.subscriptions[id]?.waitGeneration += 1
            return s.subscriptions[id]?.waitGeneration ?? 0
        }
        // The idle timer is a child task: leaving the scope (an event came) cancels and awaits it.
        async let _ = wakeIdle(id, generation: generation, after: idleAfter)
        return try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Wake, any Error>) in
            let immediate = state.withLock { s -> Wake? in
                guard let sub = s.subscriptions[id] else { return .finished }
                switch sub.state.parkRefusal {
                case .finished: return .finished
                case .retry: return .retry
                case nil: break
                }
                if sub.waitGeneration != generation { return .retry }
                s.subscriptions[id]!.consumer = cont
                return nil
            }
            if let immediate { cont.resume(returning: immediate) }
        }
    }

    private func wakeIdle(_ id: Int, generation: Int, after idle: Duration?) async {
        guard let idle else { return }
        do { try await Task.sleep(for: idle) } catch { return }
        wakeIdle(id, generation: generation)
    }

    private func wakeIdle(_ id: Int, generation: Int) {
        let consumer = state.withLock { s -> CheckedContinuation<Wake, any Error>? in
            guard s.subscriptions[id]?.waitGeneration == generation else { return nil }
            defer { s.subscriptions[id]?.consumer = nil }
            return s.subscriptions[id]?.consumer
        }
        consumer?.resume(returning: .idle)
    }

    /// Reads the table for a subscription that fell behind (or started in the past), after
    /// what it has queued and up to what the bus had released (see ``SubscriptionState/settlePage``).
    private func page(_ id: Int, after: Int64, upTo: Int64, topics: [String]?) async throws {
        let rows = try await pool.query(
            EventQueries.page(after: after, upTo: upTo, topics: topics, limit: options.pageSize), purpose: "events: page for a subscriber")
        let events = try rows.map(EventQueries.decode)
        let pageSize = options.pageSize
        state.withLock { s in
            guard s.subscriptions[id] != nil else { return }
            let sequencer = s.sequencer
            s.subscriptions[id]!.state.settlePage(
                events, after: after, upTo: upTo, horizon: sequencer?.horizon ?? 0, pageSize: pageSize,
                awaitsLateRelease: { sequencer?.awaitsLateRelease($0) ?? false })
        }
    }

    func cancel(_ id: Int) {
        let consumer = state.withLock { s in
            var sub = s.subscriptions.removeValue(forKey: id)
            return sub?.finish()
        }
        consumer?.resume(returning: .finished)
    }
}
