import Foundation
import PostgresClient
@testable import RegentCore
import Synchronization
import Testing

/// A duty whose rounds follow a script: `true` succeeds, `false` throws (a fence refusal when
/// `refused`); after the script it succeeds.
final class ScriptedDuty: LeaderDuty {
    let name = "scripted"
    let interval = Duration.milliseconds(1)
    let refused: Bool
    private let script: Mutex<[Bool]>
    let rounds = Atomic<Int>(0)

    init(_ script: [Bool], refused: Bool = false) {
        self.script = Mutex(script)
        self.refused = refused
    }

    func runOnce(fence: LeaderFence) async throws -> Bool {
        rounds.add(1, ordering: .relaxed)
        let ok = script.withLock { $0.isEmpty ? true : $0.removeFirst() }
        if !ok {
            throw refused ? RegentError(.notLeader, "refused by the fence") : RegentError(.timeout, "transient")
        }
        return false
    }
}

/// The resignations a duty runner asked for.
final class Resignations: Sendable {
    let reasons = Mutex<[String]>([])
}

@Suite("Leader duty runner")
struct DutyRunnerTests {
    func run(_ duty: ScriptedDuty, rounds: Int) async -> [String] {
        let resigned = Resignations()
        let runner = DutyRunner(duties: [duty], retryDelay: .milliseconds(1))
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await runner.run(fence: LeaderFence(term: 1, instanceID: InstanceID(), lockBackendPID: 0)) { reason in
                    resigned.reasons.withLock { $0.append(reason) }
                }
            }
            let deadline = ContinuousClock.now + .seconds(10)
            while duty.rounds.load(ordering: .relaxed) < rounds, resigned.reasons.withLock({ $0.isEmpty }), ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(2))
            }
            group.cancelAll()
        }
        return resigned.reasons.withLock { $0 }
    }

    @Test func failuresSpreadBetweenSuccessesNeverMakeTheLeaderResign() async {
        // Two failures, a success, two failures, a success, ...: never three in a row.
        let script = Array(repeating: [false, false, true], count: 10).flatMap { $0 }
        let duty = ScriptedDuty(script)
        #expect(await run(duty, rounds: 35).isEmpty)
        #expect(duty.rounds.load(ordering: .relaxed) >= 30)
    }

    @Test func threeConsecutiveFailuresResign() async {
        let duty = ScriptedDuty([true, false, false, false])
        let resigned = await run(duty, rounds: 100)
        #expect(resigned.count == 1)
        #expect(resigned.first?.contains("failed 3 times in a row") == true)
        #expect(duty.rounds.load(ordering: .relaxed) == 4)
    }

    @Test func fenceRefusalsCountLikeOtherFailures() async {
        // A node that keeps the lock but whose writes the fence refuses must not keep the title.
        let duty = ScriptedDuty([false, false, false], refused: true)
        let resigned = await run(duty, rounds: 100)
        #expect(resigned.count == 1)
        #expect(resigned.first?.contains("refused by the fence") == true)
    }
}

@Suite("Node configuration")
struct NodeConfigurationTests {
    func config(heartbeat: Duration, stale: Duration, lease: Duration) throws -> NodeConfiguration {
        var c = NodeConfiguration(database: try ConnectionConfiguration("postgres://u@127.0.0.1:5432/x"))
        c.heartbeatInterval = heartbeat
        c.staleAfter = stale
        c.leaseWindow = lease
        return c
    }

    @Test func staleAfterShorterThanTwoHeartbeatsIsRefusedNamingBoth() throws {
        #expect { try config(heartbeat: .seconds(2), stale: .seconds(3), lease: .seconds(2)).validate() } throws: {
            "\($0)".contains("--stale-after (3.0 seconds)") && "\($0)".contains("--heartbeat-interval (2.0 seconds)")
        }
        try config(heartbeat: .seconds(1), stale: .seconds(2), lease: .seconds(1)).validate()
    }

    @Test func leaseWindowLongerThanStaleAfterIsRefusedNamingBoth() throws {
        #expect { try config(heartbeat: .seconds(1), stale: .seconds(4), lease: .seconds(5)).validate() } throws: {
            "\($0)".contains("--lease-window (5.0 seconds)") && "\($0)".contains("--stale-after (4.0 seconds)")
        }
        // The defaults pass.
        try NodeConfiguration(database: try ConnectionConfiguration("postgres://u@127.0.0.1:5432/x")).validate()
    }
}
