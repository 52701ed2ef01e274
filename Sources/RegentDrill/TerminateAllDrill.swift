import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore

/// Ends every node's sessions at once (`pg_terminate_backend` on every `regent` backend, as a
/// server-side kill or a network blip would) and times the return of a leader.
package struct TerminateAllDrill {
    package let env: DrillEnvironment
    package let rounds: Int
    package let say: (String) -> Void

    package init(env: DrillEnvironment, rounds: Int, say: @escaping (String) -> Void) {
        self.env = env
        self.rounds = rounds
        self.say = say
    }

    package static let terminateAll: PostgresQuery = """
        SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS ended FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'regent' AND pid <> pg_backend_pid()
        """

    package func run() async throws -> (recoveries: [Duration], violations: [String]) {
        var recoveries: [Duration] = []
        var violations: [String] = []
        let background = DrillBackground(databaseURL: env.databaseURL)
        var current = try await env.firstLeader()
        let admin = try await PostgresConnection.connect(try drillConfiguration(env.databaseURL))
        for round in 1...rounds {
            try await Task.sleep(for: .seconds(1))
            let started = ContinuousClock.now
            let ended = try await admin.query(Self.terminateAll, purpose: "drill: end every node session").single().decode("ended", as: Int.self)
            guard let next = try await env.probe.waitForLeader(after: current.term, timeout: .seconds(20)) else {
                violations.append("round \(round): no leader within 20 s after every session was ended")
                break
            }
            let took = started.duration(to: .now)
            recoveries.append(took)
            say(String(format: "  round %2d  ended %d sessions (term %lld) → term %lld  after %@", round, ended, current.term.value, next.term.value, ms(took)))
            current = next
        }
        await admin.close()
        violations += await background.finish().violations
        violations += try await DrillInvariants.check(databaseURL: env.databaseURL)
        return (recoveries, violations)
    }
}
