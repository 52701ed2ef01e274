/// One subscriber's position, buffer and paging state: a pure value.
///
/// The bus keeps one per subscription under its lock and performs what the methods return
/// (resume the parked consumer, read a page from the table). Nothing here waits, reads or
/// looks at the time, so the rules (bounded buffer, switching to paging and back, settling
/// late events against the pages) are unit-tested without a database.
struct SubscriptionState: Sendable {
    let topics: Set<String>?
    private(set) var buffer: [Event] = []
    private(set) var head = 0
    /// The highest id handed to the consumer.
    private(set) var lastDelivered: Int64
    /// The highest id put into the buffer (paging continues after it).
    private(set) var lastQueued: Int64
    /// Reading pages from the table instead of taking live events.
    private(set) var lagging: Bool
    /// Late events released while this subscription was paging: each is settled by the
    /// next page that covers its id (see ``settlePage``).
    private(set) var lateWhilePaging: [Event] = []
    /// Given-up ids that a page returned before the listener released them late: that late
    /// release is a duplicate for this subscription.
    private(set) var pagedLate: Set<Int64> = []
    private(set) var finished = false

    init(topics: Set<String>?, lastDelivered: Int64, lagging: Bool) {
        self.topics = topics
        self.lastDelivered = lastDelivered
        self.lastQueued = lastDelivered
        self.lagging = lagging
    }

    var buffered: Int { buffer.count - head }
    var hasBuffered: Bool { head < buffer.count }

    /// What ``offer`` did with an event.
    enum OfferAction: Equatable {
        /// Not for this subscription, or a copy of one it has.
        case ignored
        /// Give it to the parked consumer now.
        case handToConsumer
        case buffered
        /// Kept until a page settles it (the subscription is paging).
        case keptWhilePaging
        /// The buffer was full: the subscription now pages from the table.
        case startedPaging
    }

    /// Takes `event` if it is for this subscription. `consumerWaiting`: a consumer is parked
    /// and gets it directly. A paging subscription reads in-order events from the table
    /// itself, but a `late` one may lie below where its pages already are: it keeps those.
    mutating func offer(_ event: Event, late: Bool, limit: Int, consumerWaiting: Bool) -> OfferAction {
        guard !finished, topics?.contains(event.topic) ?? true else { return .ignored }
        if late, !pagedLate.isEmpty, pagedLate.remove(event.id) != nil { return .ignored }  // a page had it
        if lagging {
            guard late else { return .ignored }
            lateWhilePaging.append(event)
            return .keptWhilePaging
        }
        if consumerWaiting {
            lastDelivered = max(lastDelivered, event.id)
            lastQueued = max(lastQueued, event.id)
            return .handToConsumer
        }
        if buffer.count - head >= limit {
            // Slow consumer: stop buffering; it will page from the table after what it has.
            // Late events at or below that point would not be read again: they are kept.
            lateWhilePaging = buffer[head...].filter { $0.id <= lastDelivered } + (late && event.id <= lastDelivered ? [event] : [])
            buffer.removeAll()
            head = 0
            lastQueued = lastDelivered
            lagging = true
            return .startedPaging
        }
        buffer.append(event)
        lastQueued = max(lastQueued, event.id)
        return .buffered
    }

    /// What the consumer does next.
    enum NextStep: Equatable {
        case events([Event])
        case ended
        /// Read the table after `after`, up to `upTo` (what the bus had released), then ask again.
        case page(after: Int64, upTo: Int64, topics: [String]?)
        /// Park until an event comes.
        case wait
    }

    /// Up to `max` buffered events, else what the consumer must do to get more. `horizon`:
    /// the highest id the bus has released.
    mutating func next(max: Int, horizon: Int64) -> NextStep {
        let batch = popBatch(max: max)
        if !batch.isEmpty { return .events(batch) }
        if finished { return .ended }
        if lagging { return .page(after: lastQueued, upTo: horizon, topics: topics.map { Array($0).sorted() }) }
        return .wait
    }

    /// Whether a consumer that is about to park should (nil), or has something to do first.
    var parkRefusal: ParkRefusal? {
        if finished { return .finished }
        if hasBuffered || lagging { return .retry }
        return nil
    }

    enum ParkRefusal: Equatable { case finished, retry }

    private mutating func popBatch(max: Int) -> [Event] {
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

    /// Queues a page read for a lagging subscription: `events`, read after `after` up to
    /// `upTo`. Returns false (and changes nothing) when the page is stale: the subscription
    /// moved on while it was read. Once a short page reaches what the bus has released
    /// (`horizon`, taken under the same lock as this call, so nothing released meanwhile
    /// slips between paging and live) the subscription goes back to live delivery.
    /// `awaitsLateRelease`: whether the sequencer may still release an id late.
    @discardableResult
    mutating func settlePage(
        _ events: [Event], after: Int64, upTo: Int64, horizon: Int64, pageSize: Int, awaitsLateRelease: (Int64) -> Bool
    ) -> Bool {
        guard lagging, lastQueued == after else { return false }
        let caughtUp = events.count < pageSize && horizon == upTo
        // What this page covers: (after, covered]. Late events offered while paging are
        // settled against it: one the page returned is already here; one in its range that
        // the page did not return committed after the page's snapshot, and one below its
        // range was passed by an earlier page: both are queued now (late, out of order).
        let covered = caughtUp ? Swift.max(upTo, events.last?.id ?? after) : (events.last?.id ?? after)
        if !lateWhilePaging.isEmpty {
            let paged = Set(events.map(\.id))
            var waiting: [Event] = []
            for late in lateWhilePaging {
                if late.id > covered { waiting.append(late) } else if !paged.contains(late.id) { buffer.append(late) }
            }
            lateWhilePaging = waiting
        }
        // A given-up id that this page found committed will also come from the listener,
        // late: remember it, so that this subscription does not get it twice.
        pagedLate = pagedLate.filter(awaitsLateRelease)
        for event in events where awaitsLateRelease(event.id) { pagedLate.insert(event.id) }
        buffer.append(contentsOf: events)
        lastQueued = covered
        if caughtUp {
            lagging = false
            // Nothing late can be above the horizon; anything left is queued, not dropped.
            buffer.append(contentsOf: lateWhilePaging)
            lateWhilePaging.removeAll()
        }
        return true
    }

    mutating func finish() { finished = true }
}
