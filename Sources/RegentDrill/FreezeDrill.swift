import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore

/// Freezes the leader with SIGSTOP and checks that a follower ends its session and takes over
/// within `--stale-after` + 2 s, and that after SIGCONT the thawed node writes nothing under its
/// old term and rejoins as a follower.
package struct FreezeDrill {
    package let env: DrillEnvironment
    package let freezes: Int
    package let staleAfter: Duration
    package let say: (String) -> Void

    package init(env: DrillEnvironment, freezes: Int, staleAfter: Duration, say: @escaping (String) -> Void) {
        self.env = env
        self.freezes = freezes
        self.staleAfter = staleAfter
        self.say = say
    }

    package struct Result {
        package var takeovers: [Duration] = []
        package var violations: [String] = []
    }

    package func run() async throws -> Result {
        var result = Result()
        let background = DrillBackground(databaseURL: env.databaseURL)
        var current = try await env.firstLeader()
        // Let the followers heartbeat for a whole stale window: only then may they judge.
        try await Task.sleep(for: staleAfter + .seconds(1))
        for round in 1...freezes {
            guard let pid = current.leaderPID, let node = env.cluster.node(pid: pid) else {
                result.violations.append("round \(round): the leader is not one of the drill's nodes")
                break
            }
            let started = ContinuousClock.now
            _ = kill(node.pid, SIGSTOP)
            let next = try await env.probe.waitForLeader(after: current.term, timeout: staleAfter + .seconds(10))
            let took = started.duration(to: .now)
            // Keep it frozen a moment longer, then thaw it into a cluster that moved on.
            try await Task.sleep(for: .milliseconds(500))
            _ = kill(node.pid, SIGCONT)
            guard let next else {
                result.violations.append("round \(round): no new leader within \(staleAfter + .seconds(10)) of freezing \(node.name)")
                break
            }
            result.takeovers.append(took)
            let bound = staleAfter + .seconds(2)
            say(String(format: "  round %2d  SIGSTOP %@ (term %lld) → term %lld  after %@ (bound %@)%@", round, node.name, current.term.value, next.term.value,
                       ms(took), ms(bound), took > bound ? "  ✘ over the bound" : ""))
            if took > bound { result.violations.append("round \(round): takeover took \(ms(took)), over stale-after + 2 s (\(ms(bound)))") }
            // The thawed node must see its session gone, step down and heartbeat again as a follower.
            try await Task.sleep(for: .seconds(2))
            if next.leaderPID == node.pid {
                result.violations.append("round \(round): the thawed node \(node.name) leads again under term \(next.term)")
            }
            // ... and heartbeats again as a follower (its row re-inserted if the new leader swept it).
            let rejoined = try await env.probe.connection.query(
                "SELECT count(*) AS n FROM engine.instances WHERE pid = \(Int(node.pid)) AND last_heartbeat > now() - interval '2 seconds'"
            ).single().decode("n", as: Int.self)
            if rejoined != 1 { result.violations.append("round \(round): the thawed node \(node.name) is not heartbeating as a follower") }
            current = next
        }
        let (made, overlaps) = await background.finish()
        result.violations += overlaps
        say("  (churn: \(made) short-lived workers and leases kept the duties writing)")
        let conn = try await PostgresConnection.connect(try drillConfiguration(env.databaseURL))
        let terminated = try await conn.query("SELECT count(*) AS n FROM engine.audit WHERE action = 'leader.terminated'").single().decode("n", as: Int.self)
        await conn.close()
        if terminated < result.takeovers.count {
            result.violations.append("\(result.takeovers.count) takeovers but only \(terminated) leader.terminated audit rows")
        }
        result.violations += try await DrillInvariants.check(databaseURL: env.databaseURL)
        return result
    }
}
