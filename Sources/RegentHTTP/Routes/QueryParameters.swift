import CoreMetrics
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import PostgresClient
import Prometheus
import RegentCore
import ServiceLifecycle

/// The admin API's query parameters: parsed and range-checked once, 400 naming the parameter otherwise.
extension AdminAPI {
    /// An integer query parameter in `range`, nil when absent; otherwise 400 with `code`.
    func queryInt64(_ request: Request, _ name: String, range: ClosedRange<Int64>, code: String) throws -> Int64? {
        guard let text = request.uri.queryParameters.get(name) else { return nil }
        guard let v = Int64(text), range.contains(v) else {
            let expected = range.upperBound < .max ? "an integer from \(range.lowerBound) to \(range.upperBound)"
                : range.lowerBound == 0 ? "a non-negative integer" : "an integer of at least \(range.lowerBound)"
            throw APIError.badRequest(code, "\(name) must be \(expected), got \(SQLIdentifier.printable(String(text.prefix(64))))")
        }
        return v
    }

    /// `limit`, 1–1000, default 100.
    func limit(_ request: Request) throws -> Int {
        Int(try queryInt64(request, "limit", range: 1...1000, code: "invalid_limit") ?? 100)
    }

    /// An id cursor `after` (0 or more), nil when absent.
    func afterID(_ request: Request) throws -> Int64? {
        try queryInt64(request, "after", range: 0...Int64.max, code: "invalid_cursor")
    }

    func clusterStatus() async throws -> ClusterStatus {
        try await pool.withConnection { try await ClusterStatus.read(on: $0, staleAfter: staleAfter) }
    }

    func optionalNamespace(_ request: Request) throws -> Namespace? {
        try request.uri.queryParameters.get("namespace").map { try Namespace($0) }
    }
}
