import ArgumentParser
import RegentBench
import EmbeddedPostgres
import Foundation
import RegentDrill
import PostgresClient
import RegentCore
import Synchronization

extension BenchCommand {
    struct Events: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Event bus latency and throughput against raw NOTIFY → LISTEN, in one run.",
            discussion: """
                Latency: one event every 2 ms, each delivered to 3 subscribers on separate \
                connections; publish call → delivery. Throughput: one publisher sends as fast as it \
                can until all 3 subscribers have every event. The baseline does the same with raw \
                libpq: a prepared `SELECT pg_notify(...)` per transaction and 3 LISTEN connections; a middle \
                row publishes through the outbox but receives with raw libpq (the server's share). \
                The three take turns in rounds, so that a noisy machine disturbs them alike.
                """
        )
        @Option(help: "Events in the latency run (split over the rounds).") var latencyEvents = 1000
        @Option(help: "Events in the throughput run (split over the rounds).") var throughputEvents = 10000
        @Option(help: "Rounds: each variant's share of the events, taken in turn.") var rounds = 5
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database.", valueName: "url"))
        var databaseURL: String?

        func validate() throws {
            guard (10...100_000).contains(latencyEvents), (100...1_000_000).contains(throughputEvents), (1...50).contains(rounds) else {
                throw ValidationError("--latency-events 10-100000, --throughput-events 100-1000000, --rounds 1-50")
            }
        }

        func run() async throws {
            let (url, embedded) = try benchDatabase(databaseURL, say: { print($0) })
            defer { embedded?.destroy() }
            let config = try ConnectionConfiguration(url)
            let setup = try await PostgresConnection.connect(config)
            try await MigrationRunner(appliedBy: "bench").migrate(on: setup, schemas: ["engine"])
            await setup.close()

            let perRound = (latency: max(1, latencyEvents / rounds), throughput: max(1, throughputEvents / rounds))
            print("▶ \(rounds) rounds; in each, per variant: \(perRound.latency) events 2 ms apart, then \(perRound.throughput) flat out; 3 receivers")
            // One variant's connections at a time: PostgreSQL signals every listening backend
            // of the database on each NOTIFY, whatever its channel.
            var figures = [RunFigures](repeating: RunFigures(), count: 3)
            for round in 1...rounds {
                // Each round starts with another variant, so none always runs first or last.
                for variant in (0..<3).map({ ($0 + round) % 3 }) {
                    if variant < 2 {
                        let raw = try RawNotify(conninfo: url, viaOutbox: variant == 1)
                        defer { raw.stop() }
                        figures[variant].add(try raw.latency(events: perRound.latency))
                        figures[variant].add(raw.throughput(events: perRound.throughput))
                        continue
                    }
                    let bus = try await BusRun.start(config: config)
                    do {
                        figures[2].add(try await bus.latency(events: perRound.latency))
                        figures[2].add(try await bus.throughput(events: perRound.throughput))
                    } catch {
                        await bus.stop()
                        throw error
                    }
                    await bus.stop()
                }
                print(String(
                    format: "  round %d: p50 raw %@, outbox %@, Regent %@; throughput raw %.0f/s, outbox %.0f/s, Regent %.0f/s", round,
                    ms(Figures(figures[0].lastLatencies).median), ms(Figures(figures[1].lastLatencies).median),
                    ms(Figures(figures[2].lastLatencies).median), figures[0].lastThroughput, figures[1].lastThroughput,
                    figures[2].lastThroughput))
            }

            let (r, o, b) = (figures[0], figures[1], figures[2])
            let rl = Figures(r.latencies), ol = Figures(o.latencies), bl = Figures(b.latencies)
            print("")
            print(table(
                ["", "p50", "p99", "throughput", "lost"],
                [
                    ["raw NOTIFY → LISTEN (limit)", ms(rl.median), ms(rl.p99), String(format: "%.0f /s", r.throughput), "\(r.lost)"],
                    ["outbox publish → raw LISTEN", ms(ol.median), ms(ol.p99), String(format: "%.0f /s", o.throughput), "\(o.lost)"],
                    ["Regent publish → subscriber", ms(bl.median), ms(bl.p99), String(format: "%.0f /s", b.throughput), "\(b.lost)"],
                ]))
            print(String(
                format: "\nratios: p50 latency %.2f× raw (goal ≤ 1.5×; the outbox alone: %.2f×), throughput %.0f%% of raw (goal ≥ 50%%), lost events: %d (goal 0)",
                bl.median.milliseconds / max(rl.median.milliseconds, 0.0001), ol.median.milliseconds / max(rl.median.milliseconds, 0.0001),
                100 * b.throughput / max(r.throughput, 1), b.lost))
            if b.lost > 0 { throw ExitCode(1) }
        }
    }
}

