import Foundation
import PostgresClient
import RegentCore

/// Kills leaders of a local cluster round after round, times each failover, and checks
/// the invariants from the database's own records.
package struct FailoverDrill {
    package let cluster: LocalCluster
    package let probe: LeadershipProbe
    package let databaseURL: String
    package let kills: Int
    /// Every `gracefulEvery`-th round sends SIGTERM instead of SIGKILL (0: never).
    package let gracefulEvery: Int
    package let say: (String) -> Void

    package init(cluster: LocalCluster, probe: LeadershipProbe, databaseURL: String, kills: Int, gracefulEvery: Int, say: @escaping (String) -> Void) {
        self.cluster = cluster
        self.probe = probe
        self.databaseURL = databaseURL
        self.kills = kills
        self.gracefulEvery = gracefulEvery
        self.say = say
    }

    package struct Result {
        package var sigkill: [Duration] = []
        package var sigterm: [Duration] = []
        package var violations: [String] = []
    }

    /// Waits for the `leader.elected` announcement of a term above `term`.
    package static func awaitElection(
        _ iterator: inout AsyncThrowingStream<PostgresNotification, any Error>.Iterator, after term: Term, timeout: Duration
    ) async throws -> Bool {
        struct Announcement: Decodable {
            struct Body: Decodable { let term: Term }
            let topic: String
            let payload: Body?
        }
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard let note = try await iterator.next() else { return false }
            if let a = try? JSONDecoder().decode(Announcement.self, from: Data(note.payload.utf8)),
                a.topic == "leader.elected", let body = a.payload, body.term > term
            {
                return true
            }
        }
        return false
    }

    package func run() async throws -> Result {
        let sampler = sampleLockHolders(databaseURL: databaseURL, every: .milliseconds(10))
        var result = try await rounds()
        sampler.cancel()
        let most = await sampler.value
        if most > 1 { result.violations.append("\(most) sessions held the leadership lock at once during the drill") }
        return result
    }

    private func rounds() async throws -> Result {
        var result = Result()
        let listener = try await PostgresListener.connect(
            try ConnectionConfiguration(databaseURL), channels: [try SQLIdentifier("regent_events")])
        defer { listener.stop() }
        var announcements = listener.notifications.makeAsyncIterator()
        guard var current = try await probe.waitForLeader(after: 0, timeout: .seconds(30)) else {
            throw RegentError(.timeout, "no leader was elected within 30 s; see the node logs in \(cluster.logDirectory)")
        }
        for round in 1...kills {
            let graceful = gracefulEvery > 0 && round % gracefulEvery == 0
            guard let pid = current.leaderPID, let node = cluster.node(pid: pid) else {
                result.violations.append("round \(round): the leader (pid \(current.leaderPID.map(String.init) ?? "?")) is not one of the drill's nodes")
                break
            }
            let wallStart = Date().timeIntervalSince1970
            let started = ContinuousClock.now
            cluster.kill(node, signal: graceful ? SIGTERM : SIGKILL)
            // The new leader announces its term in the statement that records it: time that.
            let announced = try await Self.awaitElection(&announcements, after: current.term, timeout: .seconds(15))
            let took = started.duration(to: .now)
            guard announced, let next = try await probe.waitForLeader(after: current.term, timeout: .seconds(15)) else {
                result.violations.append("round \(round): no new leader within 15 s after \(graceful ? "SIGTERM" : "SIGKILL") of \(node.name)")
                break
            }
            if next.term != current.term.next {
                result.violations.append("round \(round): term went from \(current.term) to \(next.term) (an election was lost in between)")
            }
            if graceful { result.sigterm.append(took) } else { result.sigkill.append(took) }
            let recorded = next.electedEpoch.map { String(format: " (term recorded after %.2f ms)", ($0 - wallStart) * 1000) } ?? ""
            say(String(format: "  round %2d  %@  %@ (term %lld) → term %lld  %@%@", round, graceful ? "SIGTERM" : "SIGKILL",
                       node.name, current.term.value, next.term.value, ms(took), recorded))
            current = next
            try cluster.spawn()
            cluster.reap()
            // Let the replacement boot and join the queue before the next kill, so a round
            // measures a failover of a settled cluster, not one competing with a booting node.
            try await Task.sleep(for: .seconds(1))
        }
        result.violations += try await checkInvariants()
        return result
    }

    /// Terms strictly increase, each elected once; no leader-duty audit row carries a term
    /// other than the one current (by audit order) when it was written, or comes from
    /// another instance than that term's leader; at most one lock holder now.
    package func checkInvariants() async throws -> [String] {
        var violations: [String] = []
        return try await PostgresConnection.withConnection(try ConnectionConfiguration(databaseURL)) { conn in
            let rows = try await conn.query(
                "SELECT id, action, term, actor FROM engine.audit WHERE term IS NOT NULL ORDER BY id", purpose: "drill: read audit")
            var currentTerm: Int64 = 0
            var currentActor = ""
            for row in rows {
                let action = try row.decode("action", as: String.self)
                let term = try row.decode("term", as: Int64.self)
                let actor = try row.decode("actor", as: String.self)
                let id = try row.decode("id", as: Int64.self)
                switch action {
                case "leader.elected":
                    if term <= currentTerm { violations.append("audit \(id): term \(term) elected after term \(currentTerm)") }
                    currentTerm = term
                    currentActor = actor
                case "leader.resigned":
                    if term != currentTerm { violations.append("audit \(id): resignation of term \(term) while term \(currentTerm) was current") }
                default:
                    if term != currentTerm || actor != currentActor {
                        violations.append("audit \(id): leader duty \(action) by \(actor) under term \(term) while term \(currentTerm) (\(currentActor)) was current")
                    }
                }
            }
            let holders = try await conn.query(LeadershipQueries.countLockHolders, purpose: "drill: count lock holders").single().decode("n", as: Int.self)
            if holders > 1 { violations.append("\(holders) sessions hold the leadership lock") }
            return violations
        }
    }
}
