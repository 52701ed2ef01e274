/// When the listener looks again at the given-up gaps, and which of them it may forget: a
/// pure value; the listener supplies the time and the server's answers.
///
/// A given-up id was taken by a transaction that has held a write lock on `engine.events`
/// since before it took the id, and holds it until it ends. So the transactions that can
/// still fill the gaps given up before a check are among the writers seen at that check;
/// once none of those is writing any more, the gaps up to that check's horizon are read one
/// last time (a row that committed there is released late, even if its notification never
/// came) and forgotten. (The writers of a later check include every writer of an earlier
/// one still running, so settling a check settles those before it.)
struct GapLedger<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    let checkInterval: Duration
    /// Checks not yet settled, oldest first: the transactions writing to the outbox then,
    /// and the sequencer's horizon then.
    private(set) var checks: [(writers: Set<String>, horizon: Int64)] = []
    /// When the gaps were last looked at (a gap check, or the catch-up on connecting).
    private(set) var lastLook: Instant
    /// The gap count last reported to the gauge.
    private(set) var reportedGaps = 0

    init(checkInterval: Duration, now: Instant) {
        self.checkInterval = checkInterval
        self.lastLook = now
    }

    /// The catch-up on connecting just read every gap: the next look is an interval away.
    mutating func caughtUp(now: Instant) { lastLook = now }

    /// What a listener tick must do, given how many gaps the sequencer holds.
    struct TickAction: Equatable {
        /// The gauge's new value, when it changed.
        var reportGaps: Int?
        /// Ask the server which transactions write to the outbox, then ``record``.
        var checkWriters: Bool
    }

    mutating func tick(gaps: Int, now: Instant) -> TickAction {
        var action = TickAction(reportGaps: nil, checkWriters: false)
        if gaps != reportedGaps {
            reportedGaps = gaps
            action.reportGaps = gaps
        }
        action.checkWriters = gaps > 0 && lastLook.duration(to: now) >= checkInterval
        return action
    }

    /// Records a check: `writers` (transaction ids writing to the outbox now) at the
    /// sequencer's `horizon`. Returns the id through which the gaps are settled (read them
    /// once more, then forget them), or nil when no earlier check's writers have all ended.
    mutating func record(writers: Set<String>, horizon: Int64, now: Instant) -> Int64? {
        lastLook = now
        // (A check at the same horizon as the last one would settle nothing more.)
        if checks.last?.horizon != horizon { checks.append((writers, horizon)) }
        guard let done = checks.lastIndex(where: { $0.writers.isDisjoint(with: writers) }) else { return nil }
        let through = checks[done].horizon
        checks.removeSubrange(...done)
        return through
    }
}
