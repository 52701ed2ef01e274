import RegentTestSupport
@testable import RegentCore
import Testing

@Suite("Subscription state and gap ledger, no database")
struct SubscriptionStateTests {
    func e(_ id: Int64, _ topic: String = "t") -> Event { Event(id: id, topic: topic, payload: "{}", publisher: nil, publishedAt: nil) }
    func ids(_ step: SubscriptionState.NextStep) -> [Int64]? {
        if case .events(let events) = step { return events.map(\.id) }
        return nil
    }

    @Test func liveEventsAreBufferedInOrderAndTakenInBatches() {
        var s = SubscriptionState(topics: nil, lastDelivered: 0, lagging: false)
        for id in 1...5 { do { let v = s.offer(e(Int64(id)), late: false, limit: 10, consumerWaiting: false); #expect(v == .buffered) } }
        do { let v = ids(s.next(max: 3, horizon: 5)); #expect(v == [1, 2, 3]) }
        do { let v = ids(s.next(max: 3, horizon: 5)); #expect(v == [4, 5]) }
        do { let v = s.next(max: 3, horizon: 5); #expect(v == .wait) }
        #expect(s.lastDelivered == 5)
    }

    @Test func parkedConsumerGetsTheEventDirectly() {
        var s = SubscriptionState(topics: nil, lastDelivered: 0, lagging: false)
        #expect(s.parkRefusal == nil)
        do { let v = s.offer(e(1), late: false, limit: 10, consumerWaiting: true); #expect(v == .handToConsumer) }
        #expect(s.buffered == 0)
        #expect(s.lastDelivered == 1)
    }

    @Test func otherTopicsAreIgnored() {
        var s = SubscriptionState(topics: ["a"], lastDelivered: 0, lagging: false)
        do { let v = s.offer(e(1, "b"), late: false, limit: 10, consumerWaiting: true); #expect(v == .ignored) }
        do { let v = s.offer(e(2, "a"), late: false, limit: 10, consumerWaiting: false); #expect(v == .buffered) }
    }

    @Test func fullBufferSwitchesToPagingAfterWhatWasDelivered() {
        var s = SubscriptionState(topics: nil, lastDelivered: 0, lagging: false)
        for id in 1...3 { _ = s.offer(e(Int64(id)), late: false, limit: 3, consumerWaiting: false) }
        do { let v = ids(s.next(max: 1, horizon: 3)); #expect(v == [1]) }
        do { let v = s.offer(e(4), late: false, limit: 2, consumerWaiting: false); #expect(v == .startedPaging) }
        #expect(s.buffered == 0)
        #expect(s.parkRefusal == .retry)
        // It pages from what it delivered (1), up to what the bus released.
        do { let v = s.next(max: 10, horizon: 9); #expect(v == .page(after: 1, upTo: 9, topics: nil)) }
        // Live in-order events are not kept while paging: the pages will read them.
        do { let v = s.offer(e(10), late: false, limit: 2, consumerWaiting: false); #expect(v == .ignored) }
    }

    @Test func shortPageAtTheHorizonReturnsToLiveDelivery() {
        var s = SubscriptionState(topics: nil, lastDelivered: 4, lagging: true)
        do { let v = s.settlePage([e(5), e(6)], after: 4, upTo: 8, horizon: 8, pageSize: 2, awaitsLateRelease: { _ in false }); #expect(v) }
        #expect(s.lagging)  // a full page: there may be more
        do { let v = s.next(max: 10, horizon: 8).self; #expect(v == .events([e(5), e(6)])) }
        do { let v = s.next(max: 10, horizon: 8); #expect(v == .page(after: 6, upTo: 8, topics: nil)) }
        do { let v = s.settlePage([e(8)], after: 6, upTo: 8, horizon: 8, pageSize: 2, awaitsLateRelease: { _ in false }); #expect(v) }
        #expect(!s.lagging)
        do { let v = ids(s.next(max: 10, horizon: 8)); #expect(v == [8]) }
        do { let v = s.offer(e(9), late: false, limit: 10, consumerWaiting: false); #expect(v == .buffered) }
    }

    @Test func shortPageBehindAMovedHorizonKeepsPaging() {
        var s = SubscriptionState(topics: nil, lastDelivered: 0, lagging: true)
        // The bus released more while the page was read: not caught up yet.
        do { let v = s.settlePage([e(1)], after: 0, upTo: 1, horizon: 3, pageSize: 10, awaitsLateRelease: { _ in false }); #expect(v) }
        #expect(s.lagging)
        do { let v = ids(s.next(max: 10, horizon: 3)); #expect(v == [1]) }
        do { let v = s.next(max: 10, horizon: 3); #expect(v == .page(after: 1, upTo: 3, topics: nil)) }
    }

    @Test func stalePageChangesNothing() {
        var s = SubscriptionState(topics: nil, lastDelivered: 4, lagging: true)
        do { let v = !s.settlePage([e(5)], after: 2, upTo: 9, horizon: 9, pageSize: 10, awaitsLateRelease: { _ in false }); #expect(v) }
        #expect(s.buffered == 0 && s.lagging)
    }

    @Test func lateEventsWhilePagingAreSettledAgainstThePages() {
        var s = SubscriptionState(topics: nil, lastDelivered: 10, lagging: true)
        // Late ids released while paging: 3 (below the pages), 12 (the page has it), 13 (in the
        // page's range, committed after its snapshot), 30 (above it).
        for id in [3, 12, 13, 30] as [Int64] { do { let v = s.offer(e(id), late: true, limit: 10, consumerWaiting: false); #expect(v == .keptWhilePaging) } }
        do { let v = s.settlePage([e(11), e(12), e(14)], after: 10, upTo: 40, horizon: 40, pageSize: 3, awaitsLateRelease: { _ in false }); #expect(v) }
        do { let v = ids(s.next(max: 10, horizon: 40)); #expect(v == [3, 13, 11, 12, 14]) }
        #expect(s.lateWhilePaging.map(\.id) == [30])
        do { let v = s.settlePage([e(31)], after: 14, upTo: 40, horizon: 40, pageSize: 3, awaitsLateRelease: { _ in false }); #expect(v) }
        // Caught up: 30 was covered by the page range but not returned by it: queued, not lost.
        do { let v = ids(s.next(max: 10, horizon: 40)); #expect(v == [30, 31]) }
        #expect(!s.lagging)
    }

    @Test func givenUpIdReadByAPageIsNotDeliveredAgainWhenReleasedLate() {
        var s = SubscriptionState(topics: nil, lastDelivered: 0, lagging: true)
        do { let v = s.settlePage([e(1), e(2)], after: 0, upTo: 5, horizon: 5, pageSize: 10, awaitsLateRelease: { $0 == 2 }); #expect(v) }
        do { let v = ids(s.next(max: 10, horizon: 5)); #expect(v == [1, 2]) }
        do { let v = s.offer(e(2), late: true, limit: 10, consumerWaiting: true); #expect(v == .ignored) }
        do { let v = s.offer(e(4), late: true, limit: 10, consumerWaiting: true); #expect(v == .handToConsumer) }
    }

    @Test func finishedSubscriptionTakesNothingAndEnds() {
        var s = SubscriptionState(topics: nil, lastDelivered: 0, lagging: false)
        s.finish()
        do { let v = s.offer(e(1), late: false, limit: 10, consumerWaiting: false); #expect(v == .ignored) }
        do { let v = s.next(max: 1, horizon: 1); #expect(v == .ended) }
        #expect(s.parkRefusal == .finished)
    }

    // MARK: Gap ledger

    let t0 = TestInstant(offset: .seconds(50))

    @Test func gapChecksComeOnlyWhenGapsExistAndAnIntervalPassed() {
        var ledger = GapLedger<TestInstant>(checkInterval: .seconds(1), now: t0)
        do { let v = ledger.tick(gaps: 0, now: t0.advanced(by: .seconds(5))); #expect(v == .init(reportGaps: nil, checkWriters: false)) }
        do { let v = ledger.tick(gaps: 2, now: t0.advanced(by: .milliseconds(500))); #expect(v == .init(reportGaps: 2, checkWriters: false)) }
        ledger.caughtUp(now: t0.advanced(by: .milliseconds(900)))
        do { let v = ledger.tick(gaps: 2, now: t0.advanced(by: .milliseconds(1500))); #expect(v == .init(reportGaps: nil, checkWriters: false)) }
        do { let v = ledger.tick(gaps: 2, now: t0.advanced(by: .milliseconds(1900))); #expect(v == .init(reportGaps: nil, checkWriters: true)) }
        do { let v = ledger.tick(gaps: 0, now: t0.advanced(by: .milliseconds(2000))); #expect(v == .init(reportGaps: 0, checkWriters: false)) }
    }

    @Test func gapsSettleOnceEveryWriterOfACheckHasEnded() {
        var ledger = GapLedger<TestInstant>(checkInterval: .seconds(1), now: t0)
        // Check 1 at horizon 10: transaction A still writes.
        do { let v = ledger.record(writers: ["A"], horizon: 10, now: t0); #expect(v == nil) }
        // Check 2 at horizon 20: A and B write.
        do { let v = ledger.record(writers: ["A", "B"], horizon: 20, now: t0.advanced(by: .seconds(1))); #expect(v == nil) }
        // Check 3: only B (A ended): the gaps up to 10 can be forgotten, not those up to 20.
        do { let v = ledger.record(writers: ["B"], horizon: 20, now: t0.advanced(by: .seconds(2))); #expect(v == 10) }
        // Check 4: nobody writes: up to 30 (this check's own horizon) settles.
        do { let v = ledger.record(writers: [], horizon: 30, now: t0.advanced(by: .seconds(3))); #expect(v == 30) }
        #expect(ledger.checks.isEmpty)
        #expect(ledger.lastLook == t0.advanced(by: .seconds(3)))
    }
}
