import ArgumentParser
import Foundation
import RegentBench
import RegentDrill
import RegentCore
import RegentHTTP

extension BenchCommand {
    struct JSON: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "json",
            abstract: "The API's body reader against Foundation's JSONSerialization, by body size and shape.",
            discussion: """
                Reads flat bodies (an array of small objects) and nested ones (arrays nested as deep \
                as the size allows) from 1 KiB to 256 KiB with the admin API's strict reader and with \
                JSONSerialization (the baseline), and prints the median time of each, the ratio, and \
                the time per KiB (flat: it must stay level as bodies grow, which is what linear \
                means). Nested bodies deeper than 32 levels are refused by the reader at the limit.
                """)
        @Option(help: "Repetitions per size (median taken).") var repetitions = 25

        func validate() throws {
            guard (3...10_000).contains(repetitions) else { throw ValidationError("--repetitions must be 3 to 10000") }
        }

        func median(_ work: () -> Void) -> Duration {
            var samples: [Duration] = []
            for _ in 0..<repetitions {
                let start = ContinuousClock.now
                work()
                samples.append(ContinuousClock.now - start)
            }
            return samples.sorted()[samples.count / 2]
        }

        func run() throws {
            var rows: [[String]] = []
            for kib in [1, 4, 16, 64, 256] {
                let size = kib * 1024 - 64
                var flat = #"{"topic":"bench","payload":{"items":["#
                var n = 0
                while flat.utf8.count < size {
                    flat += (n == 0 ? "" : ",") + #"{"n":\#(n),"s":"abc"}"#
                    n += 1
                }
                flat += "]}}"
                let depth = size / 2
                let nested = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
                for (shape, text) in [("flat", flat), ("nested \(depth) deep", nested)] {
                    let bytes = Array(text.utf8)
                    let data = Data(bytes)
                    var accepted = false
                    let ours = median { accepted = readRequestBodyForBenchmark(bytes) }
                    let base = median { _ = try? JSONSerialization.jsonObject(with: data) }
                    rows.append([
                        "\(kib) KiB", shape, accepted ? "accepted" : "refused", ms(ours), ms(base),
                        String(format: "%.2f×", ours.milliseconds / max(base.milliseconds, 0.0001)),
                        String(format: "%.1f µs", ours.milliseconds * 1000 / Double(kib)),
                    ])
                }
            }
            print(table(["body", "shape", "reader", "reader median", "JSONSerialization", "ratio", "reader per KiB"], rows))
        }
    }
}
