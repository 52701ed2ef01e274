@testable import PostgresClient
import Testing

@Suite("Connection ownership state machine, no database")
struct ConnectionOwnershipTests {
    typealias Ownership = ConnectionOwnership<String>

    @Test func blocksAreQueuedAtOnceWhileNoCallerHoldsTheConnection() {
        var o = Ownership()
        do { let v = o.submit("a"); #expect(v == "a") }
        do { let v = o.submit("b"); #expect(v == "b") }
        #expect(o.outstanding == 2)
        do { let v = o.takeForCaller(); #expect(!v) }  // work runs or waits: the caller must queue too
        o.workEnded()
        o.workEnded()
        #expect(o.isIdle && o.ended == 2)
        do { let v = o.takeForCaller(); #expect(v) }
    }

    @Test func blocksSubmittedWhileACallerHoldsTheConnectionWaitForItToLetGo() {
        var o = Ownership()
        do { let v = o.takeForCaller(); #expect(v) }
        do { let v = o.submit("later-1"); #expect(v == nil) }
        do { let v = o.submit("later-2"); #expect(v == nil) }
        do { let v = o.takeForCaller(); #expect(!v) }
        // The caller's statement ended on its thread: the held blocks go, in order.
        do { let v = o.callerReleases(finishing: nil, broken: false); #expect(v == ["later-1", "later-2"]) }
        #expect(o.outstanding == 2 && o.ended == 1)
    }

    @Test func aStatementHandedToTheQueueIsFinishedBeforeAnythingHeld() {
        var o = Ownership()
        do { let v = o.takeForCaller(); #expect(v) }
        do { let v = o.submit("next"); #expect(v == nil) }
        do { let v = o.callerReleases(finishing: "finish", broken: false); #expect(v == ["finish", "next"]) }
        // The caller's statement still counts until its finishing block ends.
        #expect(o.outstanding == 2 && o.ended == 0)
        o.workEnded()
        #expect(o.outstanding == 1 && o.ended == 1)
    }

    @Test func aBrokenOrClosedConnectionIsNeverTakenByACaller() {
        var broken = Ownership()
        do { let v = broken.takeForCaller(); #expect(v) }
        _ = broken.callerReleases(finishing: nil, broken: true)
        #expect(!broken.isUsable)
        do { let v = broken.takeForCaller(); #expect(!v) }
        var closed = Ownership()
        closed.markClosed()
        do { let v = closed.takeForCaller(); #expect(!v) }
        closed.markBroken()
        #expect(!closed.broken)  // closed stays the reason
    }

    @Test func aCancelRequestSentLateNeverReachesALaterStatement() {
        var o = Ownership()
        _ = o.submit("statement 1")
        let endedThen = o.ended
        #expect(!o.cancelIsStale(endedThen: endedThen))  // still running: send it
        o.workEnded()
        #expect(o.cancelIsStale(endedThen: endedThen))  // idle now
        _ = o.submit("statement 2")
        #expect(o.cancelIsStale(endedThen: endedThen))  // another statement runs: do not send
    }

    @Test func preparedNamesAreNeverReusedOnASession() {
        var cache = PreparedStatementCache()
        let first = cache.newName()
        cache.remember("SELECT 1", as: first)
        #expect(cache.name(for: "SELECT 1") == first)
        cache.forget("SELECT 1")
        #expect(cache.name(for: "SELECT 1") == nil)
        #expect(cache.newName() != first)
    }
}
