import Foundation

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
