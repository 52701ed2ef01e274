import RegentTestSupport
@testable import RegentCore
import Testing

@Suite("Election state machine with a controlled clock")
struct ElectionStateMachineTests {
    typealias Machine = ElectionStateMachine<TestInstant>
    let t0 = TestInstant(offset: .seconds(100))

    func leader(term: Term = 7) -> Machine {
        var m = Machine(leaseWindow: .seconds(5), confirmInterval: .seconds(1))
        _ = m.start()
        #expect(m.connected() == .waitForLock)
        #expect(m.lockAcquired() == .recordTerm)
        #expect(m.termRecorded(term, startedAt: t0) == .startDuties(term: term))
        return m
    }

    @Test func trustWindowIsAnchoredToWhenConfirmationStarted() {
        var m = leader()
        #expect(m.isLeader(at: t0.advanced(by: .milliseconds(4999))))
        #expect(!m.isLeader(at: t0.advanced(by: .seconds(5))))
        // A confirmation that started at +1s and returned at +3s extends to +6s, not +8s.
        #expect(m.confirmationSucceeded(startedAt: t0.advanced(by: .seconds(1)), now: t0.advanced(by: .seconds(3))) == nil)
        #expect(m.isLeader(at: t0.advanced(by: .milliseconds(5999))))
        #expect(!m.isLeader(at: t0.advanced(by: .seconds(6))))
        #expect(m.confirmationStarting() == .confirm(deadline: t0.advanced(by: .seconds(6))))
    }

    @Test func lapsedWindowDemotesOnTick() {
        var m = leader()
        #expect(m.tick(now: t0.advanced(by: .seconds(4))) == nil)
        guard case .demote(let reason)? = m.tick(now: t0.advanced(by: .seconds(5))) else {
            Issue.record("expected demotion")
            return
        }
        #expect(reason.contains("lease window"))
        #expect(!m.isLeader(at: t0.advanced(by: .seconds(5))))
        #expect(m.term == nil)
    }

    @Test func lateConfirmationDoesNotExtendLeadership() {
        var m = leader()
        let action = m.confirmationSucceeded(startedAt: t0.advanced(by: .seconds(1)), now: t0.advanced(by: .seconds(5)))
        guard case .demote? = action else {
            Issue.record("a confirmation returning after the window must demote, got \(String(describing: action))")
            return
        }
    }

    @Test func failedConfirmationOrLostConnectionDemotes() {
        var m = leader()
        guard case .demote = m.confirmationFailed("timeout") else { Issue.record("expected demote"); return }
        var m2 = leader()
        guard case .demote = m2.connectionLost("reset") else { Issue.record("expected demote"); return }
        #expect(!m2.isLeader(at: t0))
    }

    @Test func reconnectBacksOffExponentiallyWithCap() {
        var m = Machine(leaseWindow: .seconds(5), confirmInterval: .seconds(1), baseBackoff: .milliseconds(100), maxBackoff: .seconds(1))
        _ = m.start()
        var delays: [Duration] = []
        for _ in 0..<6 {
            if case .connect(let d) = m.connectFailed() { delays.append(d) }
        }
        #expect(delays == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .seconds(1), .seconds(1)])
        #expect(m.connected() == .waitForLock)
    }

    @Test func shutdownResignsOnlyWhenLeading() {
        var m = leader()
        #expect(m.shutdownRequested() == .resignAndStop)
        var f = Machine(leaseWindow: .seconds(5), confirmInterval: .seconds(1))
        _ = f.start()
        _ = f.connected()
        #expect(f.shutdownRequested() == .stop)
        #expect(f.lockAcquired() == .stop)
    }

    @Test func durationsParseAndBadOnesAreRefused() throws {
        #expect(try parseDuration("250ms", flag: "--x") == .milliseconds(250))
        #expect(try parseDuration("3s", flag: "--x") == .seconds(3))
        #expect(try parseDuration("1.5s", flag: "--x") == .milliseconds(1500))
        #expect(try parseDuration("1m", flag: "--x") == .seconds(60))
        for bad in ["", "3", "-1s", "0s", "abc", "1x", "s", "1e3s", "9999h"] {
            let error = #expect(throws: RegentError.self) { try parseDuration(bad, flag: "--x") }
            #expect(error?.code == .invalidInput, "\(bad)")
        }
    }
}
