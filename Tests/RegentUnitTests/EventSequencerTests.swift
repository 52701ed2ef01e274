import RegentTestSupport
@testable import RegentCore
import Testing

@Suite("Event sequencer with a controlled clock")
struct EventSequencerTests {
    let t0 = TestInstant(offset: .seconds(10))
    func e(_ id: Int64) -> Event { Event(id: id, topic: "t", payload: "{}", publisher: nil, publishedAt: nil) }

    @Test func inOrderEventsPassStraightThrough() {
        var s = EventSequencer<TestInstant>(horizon: 0, gapTimeout: .milliseconds(500))
        #expect(s.receive(e(1), now: t0).map(\.id) == [1])
        #expect(s.receive(e(2), now: t0).map(\.id) == [2])
        #expect(s.horizon == 2)
    }

    @Test func lowerIdCommittingLaterIsNotSkipped() {
        var s = EventSequencer<TestInstant>(horizon: 0, gapTimeout: .milliseconds(500))
        #expect(s.receive(e(2), now: t0).isEmpty)  // 1 is still in flight
        #expect(s.receive(e(3), now: t0).isEmpty)
        #expect(s.receive(e(1), now: t0.advanced(by: .milliseconds(10))).map(\.id) == [1, 2, 3])
    }

    @Test func rolledBackIdIsGivenUpAfterTheTimeout() {
        var s = EventSequencer<TestInstant>(horizon: 0, gapTimeout: .milliseconds(500))
        #expect(s.receive(e(2), now: t0).isEmpty)
        #expect(s.nextDeadline == t0.advanced(by: .milliseconds(500)))
        #expect(s.tick(now: t0.advanced(by: .milliseconds(499))).isEmpty)
        #expect(s.tick(now: t0.advanced(by: .milliseconds(500))).map(\.id) == [2])
        #expect(s.horizon == 2)
        // The given-up id commits after all: released late, once.
        #expect(s.receive(e(1), now: t0.advanced(by: .seconds(2))).map(\.id) == [1])
        #expect(s.receive(e(1), now: t0.advanced(by: .seconds(2))).isEmpty)
        #expect(s.gapsToRecheck.isEmpty)  // it came: no catch-up looks for it again
    }

    @Test func duplicatesAreDropped() {
        var s = EventSequencer<TestInstant>(horizon: 5, gapTimeout: .milliseconds(500))
        #expect(s.receive(e(6), now: t0).map(\.id) == [6])
        #expect(s.receive(e(6), now: t0).isEmpty)
        // Ids at or below the start horizon were never released by this sequencer: new to it.
        #expect(s.receive(e(4), now: t0).map(\.id) == [4])
        #expect(s.receive(e(4), now: t0).isEmpty)
    }

    @Test func gapsFoundAtTheStartAreGivenUpAndTracked() {
        var s = EventSequencer<TestInstant>(horizon: 20, gapTimeout: .milliseconds(500), checkedFrom: 2, gaps: [3...4, 9...9, 30...31])
        #expect(s.gapsToRecheck == [3...4, 9...9])  // none above the horizon
        // Checked at the start: ids of the window that were there are duplicates; older ones new.
        #expect(s.receive(e(7), now: t0).isEmpty)
        #expect(s.receive(e(2), now: t0).map(\.id) == [2])
        #expect(s.receive(e(2), now: t0).isEmpty)
        #expect(s.awaitsLateRelease(4) && s.awaitsLateRelease(9))
        #expect(!s.awaitsLateRelease(5) && !s.awaitsLateRelease(21))
        #expect(s.receive(e(9), now: t0).map(\.id) == [9])  // late, once
        #expect(!s.awaitsLateRelease(9))
        #expect(s.receive(e(9), now: t0).isEmpty)
        #expect(s.receive(e(21), now: t0).map(\.id) == [21])
        // An id that comes leaves its gap: catch-ups no longer look for it.
        #expect(s.gapsToRecheck == [3...4])
        #expect(s.receive(e(3), now: t0).map(\.id) == [3])
        #expect(s.gapsToRecheck == [4...4])
        #expect(s.receive(e(4), now: t0).map(\.id) == [4])
        #expect(s.gapsToRecheck.isEmpty)
    }

    @Test func anIDInsideAWideGapSplitsIt() {
        var s = EventSequencer<TestInstant>(horizon: 0, gapTimeout: .milliseconds(1))
        _ = s.receive(e(10), now: t0)
        #expect(s.tick(now: t0.advanced(by: .milliseconds(1))).map(\.id) == [10])
        #expect(s.gapsToRecheck == [1...9])
        #expect(s.receive(e(5), now: t0).map(\.id) == [5])
        #expect(s.gapsToRecheck == [1...4, 6...9])
        #expect(s.receive(e(5), now: t0).isEmpty)
        #expect(s.receive(e(1), now: t0).map(\.id) == [1])
        #expect(s.receive(e(9), now: t0).map(\.id) == [9])
        #expect(s.gapsToRecheck == [2...4, 6...8])
    }

    @Test func givenUpGapsAreFoundByBinarySearchAmongMany() {
        var s = EventSequencer<TestInstant>(horizon: 0, gapTimeout: .milliseconds(1))
        // Every odd id is missing: 100 gaps, given up one after another.
        for id in stride(from: Int64(2), through: 200, by: 2) {
            _ = s.receive(e(id), now: t0)
            _ = s.tick(now: t0.advanced(by: .milliseconds(1)))
        }
        #expect(s.horizon == 200)
        #expect(s.gapsToRecheck.count == 100)
        for id in Int64(1)...200 { #expect(s.awaitsLateRelease(id) == (id % 2 == 1)) }
    }

    @Test func forgottenGapsAreNoLongerLookedForAndTheirIDsAreDuplicates() {
        var s = EventSequencer<TestInstant>(horizon: 20, gapTimeout: .milliseconds(500), checkedFrom: 0, gaps: [3...4, 9...9, 15...16])
        s.forgetGaps(through: 9)
        #expect(s.gapsToRecheck == [15...16])
        #expect(s.receive(e(9), now: t0).isEmpty)
        #expect(s.receive(e(15), now: t0).map(\.id) == [15])
    }

    @Test func pastItsMemoryTheSequencerForgetsItsOldestGapsOnly() {
        let limit = EventSequencer<TestInstant>.gapMemory
        var s = EventSequencer<TestInstant>(horizon: 0, gapTimeout: .milliseconds(1))
        // Every odd id is missing: two gaps more than it remembers.
        for id in stride(from: Int64(2), through: Int64(2 * (limit + 2)), by: 2) {
            _ = s.receive(e(id), now: t0)
            _ = s.tick(now: t0.advanced(by: .milliseconds(1)))
        }
        #expect(s.gapsToRecheck.count == limit)
        #expect(!s.awaitsLateRelease(1) && !s.awaitsLateRelease(3))
        #expect(s.awaitsLateRelease(5) && s.awaitsLateRelease(Int64(2 * (limit + 2) - 1)))
        // The remembered ones still come late; the forgotten ones are taken for duplicates.
        #expect(s.receive(e(5), now: t0).map(\.id) == [5])
        #expect(s.receive(e(3), now: t0).isEmpty)
    }
}
