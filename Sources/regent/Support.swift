import AsyncHTTPClient
import Foundation
import Dispatch
import NIOCore
import NIOHTTP1
import PostgresClient
import RegentCore


/// Left-aligned text table for terminal output.
func table(_ header: [String], _ rows: [[String]]) -> String {
    var widths = header.map(\.count)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
    }
    return ([line(header), line(widths.map { String(repeating: "─", count: $0) })] + rows.map(line)).joined(separator: "\n")
}

/// Writes a JSON document to standard output.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    encoder.dateEncodingStrategy = .iso8601
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// "who am I" for audit rows written from the CLI.
var cliActor: String {
    "cli:\(ProcessInfo.processInfo.environment["USER"] ?? "unknown")@\(ProcessInfo.processInfo.hostName)"
}
/// Turns SIGTERM/SIGINT into a callback (the default action, exiting, is disabled).
final class SignalHandler {
    private let sources: [any DispatchSourceSignal]

    init(signals: [Int32], handler: @escaping @Sendable () -> Void) {
        sources = signals.map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler(handler: handler)
            source.resume()
            return source
        }
    }

    func cancel() { sources.forEach { $0.cancel() } }
}

/// Waits until `base` answers `GET /readyz` with 200 (a node this command started).
func waitUntilReady(_ base: String, within limit: Duration = .seconds(60)) async throws {
    let deadline = ContinuousClock.now + limit
    while true {
        if let r = try? await HTTPClient.shared.execute(HTTPClientRequest(url: base + "/readyz"), timeout: .seconds(2)), r.status.code == 200 { return }
        guard ContinuousClock.now < deadline else { throw RegentError(.timeout, "the node at \(base) did not become ready within \(limit)") }
        try await Task.sleep(for: .milliseconds(100))
    }
}

/// CPU seconds a process used (user + system), from /proc/PID/stat (0 when it cannot be read).
func processCPUSeconds(_ pid: Int32) -> Double {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return 0 }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    // After the command: state is field 3, utime 14 and stime 15 (1-based over the whole line).
    guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}
