import ArgumentParser
import RegentBench
import EmbeddedPostgres
import Foundation
import RegentDrill
import PostgresClient
import RegentCore

extension BenchCommand {
    struct Statements: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "One statement's round trip through Regent's connection against raw libpq, in one run.",
            discussion: """
                Runs short statements one after another on one connection: raw libpq \
                (PQexecParams, blocking), then PostgresConnection with the wait for the result \
                on the caller's thread (the default) and with every wait on the connection's \
                queue (--caller-thread-wait 0). Rounds alternate so that a noisy machine \
                disturbs all three alike; the figures are medians over every round.
                """
        )
        @Option(help: "Statements per round and variant.") var statements = 2000
        @Option(help: "Rounds.") var rounds = 5
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database.", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (100...1_000_000).contains(statements), (1...100).contains(rounds) else {
                throw ValidationError("--statements 100-1000000, --rounds 1-100")
            }
        }

        func run() async throws {
            let (url, embedded) = try benchDatabase(databaseURL, say: { print($0) })
            defer { embedded?.destroy() }
            let config = try ConnectionConfiguration(url)
            let sql = "SELECT $1::int + 1"
            print("▶ \(rounds) rounds of \(statements) × `\(sql)` per variant")
            var raw: [Duration] = []
            var inline: [Duration] = []
            var queued: [Duration] = []
            for _ in 0..<rounds {
                raw += try StatementRounds.raw(url, sql: sql, statements: statements)
                inline += try await StatementRounds.regent(config, wait: config.callerThreadWait, statements: statements)
                queued += try await StatementRounds.regent(config, wait: .zero, statements: statements)
            }
            let r = Figures(raw), i = Figures(inline), q = Figures(queued)
            print("")
            print(table(
                ["", "p50", "p99", "statements/s"],
                [
                    ["raw libpq (limit)", us(r.median), us(r.p99), rate(raw)],
                    ["Regent, caller's thread waits ≤ \(Int(config.callerThreadWait.milliseconds)) ms", us(i.median), us(i.p99), rate(inline)],
                    ["Regent, queue waits", us(q.median), us(q.p99), rate(queued)],
                ]))
            print(String(
                format: "\nratios: p50 %.2f× raw with the caller's-thread wait, %.2f× raw through the queue",
                i.median.milliseconds / max(r.median.milliseconds, 0.0001), q.median.milliseconds / max(r.median.milliseconds, 0.0001)))
        }

        func us(_ d: Duration) -> String { String(format: "%.1f µs", d.milliseconds * 1000) }
        func rate(_ times: [Duration]) -> String {
            let total = times.reduce(Duration.zero, +)
            return String(format: "%.0f", Double(times.count) / max(total.milliseconds / 1000, 1e-9))
        }
    }
}
