/// Puts events that arrive in commit order back into id order, without losing any.
///
/// `bigserial` ids are taken at INSERT and become visible at COMMIT, so a lower id can
/// commit after a higher one. The sequencer releases events strictly in id order; an id
/// that is missing (a transaction still in flight, or one rolled back) holds the events
/// above it back for at most `gapTimeout`, after which it is given up. If a given-up id
/// commits later after all, it is released then ("late", out of order) rather than lost.
/// A pure value: the caller supplies the time.
public struct EventSequencer<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    /// Every id at or below `horizon` was released or given up.
    public private(set) var horizon: Int64
    /// Ids at or below this were before the sequencer started and are not tracked: one
    /// arriving now is new to it (the first time). Ids above it are: released, or given up.
    let untrackedThrough: Int64
    public let gapTimeout: Duration
    private var pending: [Int64: (event: Event, arrived: Instant)] = [:]
    private var givenUp: [ClosedRange<Int64>] = []
    private var lateReleased: Set<Int64> = []
    /// How many given-up ranges are remembered (16 bytes each: 1 MiB at most). Gap checks
    /// forget dead ones within seconds, so this fills only while one transaction writing to
    /// the outbox stays open for as long as that many gaps take to appear.
    static var gapMemory: Int { 65_536 }
    /// How many late ids from below `untrackedThrough` are remembered (to drop their copies).
    static var lateMemory: Int { 4096 }

    /// Starts at `horizon` (the highest committed id). `gaps`: the ids in (`checkedFrom`,
    /// `horizon`] that were missing then (in order, disjoint): rolled back, or taken by
    /// transactions still in flight, which will come late; they count as given up from the
    /// start, and every other id in that window as released. Without `checkedFrom`, nothing
    /// below the horizon was checked.
    public init(horizon: Int64, gapTimeout: Duration, checkedFrom: Int64? = nil, gaps: [ClosedRange<Int64>] = []) {
        self.horizon = horizon
        let checked = min(checkedFrom ?? horizon, horizon)
        self.untrackedThrough = checked
        self.gapTimeout = gapTimeout
        self.givenUp = Array(gaps.filter { $0.lowerBound > checked && $0.upperBound <= horizon }.suffix(Self.gapMemory))
    }

    public var pendingCount: Int { pending.count }

    /// What a catch-up read must look at besides the ids above ``horizon``: the given-up
    /// gaps (in order), where a transaction that held its id may have committed since.
    public var gapsToRecheck: [ClosedRange<Int64>] { givenUp }

    /// Takes an event (from a notification or the table); returns what can be released now, in order.
    public mutating func receive(_ event: Event, now: Instant) -> [Event] {
        if event.id <= horizon {
            // A given-up id leaves its gap when it comes: later copies of it (a catch-up, a
            // replayed notification) are duplicates, and catch-ups stop looking for it.
            if let gap = givenUpIndex(event.id) {
                let range = givenUp[gap]
                var rest: [ClosedRange<Int64>] = []
                if range.lowerBound < event.id { rest.append(range.lowerBound...(event.id - 1)) }
                if event.id < range.upperBound { rest.append((event.id + 1)...range.upperBound) }
                givenUp.replaceSubrange(gap...gap, with: rest)
                return [event]
            }
            // Ids from before the window it checked at the start are not tracked: new to it
            // the first time. Any other id here was released already.
            guard event.id <= untrackedThrough, !lateReleased.contains(event.id) else { return [] }  // a duplicate
            lateReleased.insert(event.id)
            if lateReleased.count > Self.lateMemory { lateReleased.remove(lateReleased.min()!) }
            return [event]
        }
        if pending[event.id] == nil { pending[event.id] = (event, now) }
        return release(now: now)
    }

    /// Gives up gaps that waited `gapTimeout`; returns what that releases.
    public mutating func tick(now: Instant) -> [Event] { release(now: now) }

    /// Forgets the given-up gaps at or below `id` (nothing can fill them any more). An id
    /// from them that still arrives is taken for a duplicate.
    public mutating func forgetGaps(through id: Int64) {
        givenUp.removeAll { $0.upperBound <= id }
    }

    /// Whether `id` was given up and has not come since: if it commits, it will be released
    /// late. (Ids at or below `untrackedThrough` are not tracked.)
    public func awaitsLateRelease(_ id: Int64) -> Bool { givenUpIndex(id) != nil }

    /// The given-up gap that holds `id` (binary search: the gaps are disjoint and in order).
    private func givenUpIndex(_ id: Int64) -> Int? {
        var low = 0
        var high = givenUp.count
        while low < high {
            let mid = (low + high) / 2
            if givenUp[mid].upperBound < id { low = mid + 1 } else { high = mid }
        }
        return low < givenUp.count && givenUp[low].contains(id) ? low : nil
    }

    /// When the lowest gap will time out, if there is one.
    public var nextDeadline: Instant? {
        guard let lowest = pending.keys.min(), lowest > horizon + 1, let p = pending[lowest] else { return nil }
        return p.arrived.advanced(by: gapTimeout)
    }

    private mutating func release(now: Instant) -> [Event] {
        var out: [Event] = []
        while !pending.isEmpty {
            if let next = pending.removeValue(forKey: horizon + 1) {
                out.append(next.event)
                horizon += 1
                continue
            }
            let lowest = pending.keys.min()!
            // Ids horizon+1 ..< lowest are missing; they have been since `lowest` arrived at the latest.
            guard pending[lowest]!.arrived.duration(to: now) >= gapTimeout else { break }
            givenUp.append((horizon + 1)...(lowest - 1))
            if givenUp.count > Self.gapMemory { givenUp.removeFirst() }
            horizon = lowest - 1
        }
        return out
    }
}
