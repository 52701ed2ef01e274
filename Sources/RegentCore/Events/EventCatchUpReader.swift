import PostgresClient

/// Reads the outbox on the listener's own session: where "now" is when a bus starts, what
/// was missed after a reconnect, and the given-up gaps. Each page goes to `deliver` (the
/// sequencer) as it is read.
struct EventCatchUpReader {
    let session: ListenerSession
    let pageSize: Int
    let deliver: ([Event]) -> Void
    /// How many gaps one query looks into: each page probes every gap it is given.
    static let gapsPerRead = 256

    /// Where a starting bus begins: the highest id, the low end of the window it checked for
    /// gaps, and the ids missing in that window (transactions that took one before the bus
    /// started may commit later, and must then be found by a catch-up like any late event).
    func start(window: Int64) throws -> (horizon: Int64, checkedFrom: Int64, gaps: [ClosedRange<Int64>]) {
        let result = try session.query(EventQueries.start(window: window))
        let max = try result.first.map { try $0.decode("max", as: Int64.self) } ?? 0
        let low = try result.first.map { try $0.decode("low", as: Int64.self) } ?? max
        let gaps = try result.compactMap { row -> ClosedRange<Int64>? in
            guard let lo = try row.decodeOptional("lo", as: Int64.self), let hi = try row.decodeOptional("hi", as: Int64.self) else {
                return nil
            }
            return lo...hi
        }
        return (max, low, gaps)
    }

    /// What was missed: events in the given-up gaps (transactions that held their ids and
    /// committed while no notification could reach us), then everything above the horizon.
    /// The gaps are read by range, so an old gap (a rolled-back publish leaves one for good)
    /// does not make every reconnect re-read the outbox from there.
    func readMissed(gaps: [ClosedRange<Int64>], after horizon: Int64) throws {
        try readGaps(gaps)
        let pageSize = self.pageSize
        try readPages(from: horizon) { EventQueries.page(after: $0, upTo: nil, topics: nil, limit: pageSize) }
    }

    /// Reads the rows that appeared in `gaps` (given-up ranges, in order), by range.
    func readGaps(_ gaps: [ClosedRange<Int64>]) throws {
        var rest = gaps[...]
        let pageSize = self.pageSize
        while !rest.isEmpty {
            let chunk = Array(rest.prefix(Self.gapsPerRead))
            rest = rest.dropFirst(chunk.count)
            try readPages(from: chunk[0].lowerBound - 1) { EventQueries.inGaps(chunk, after: $0, limit: pageSize) }
        }
    }

    /// An event too large for NOTIFY: its body is in the table.
    func event(id: Int64) throws -> Event? {
        try session.query(EventQueries.byID(id)).first.map(EventQueries.decode)
    }

    /// Reads pages (`query` after an id) until a short one.
    private func readPages(from: Int64, _ query: (Int64) -> PostgresQuery) throws {
        var after = from
        while true {
            let events = try session.query(query(after)).map(EventQueries.decode)
            deliver(events)
            after = events.last?.id ?? after
            if events.count < pageSize { return }
        }
    }
}
