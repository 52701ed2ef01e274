import CivilTime
import Foundation
import Logging
import NIOConcurrencyHelpers

/// What a step handler knows about the step it is doing.
public struct StepContext: Sendable {
    /// The run (`run_…`), the step's name and its attempt (1 for the first).
    public let runID: String
    public let step: String
    public let attempt: Int
    /// The package version the run is pinned to.
    public let packageHash: String
    /// The queue's execution behind this attempt, and its lane.
    public let executionID: String
    public let lane: String
    /// A logger carrying the run, step, attempt and package as metadata.
    public let logger: Logger
    /// The run's input.
    public let input: JSONValue
    /// The outputs of the steps this one runs after (its manifest `after`), by step name.
    public let earlierOutputs: [String: JSONValue]
    let costs: CostLedger
    /// Reads a vault secret with this attempt's lease (nil: a context made without a node).
    let secretReader: (@Sendable (String) async throws -> [UInt8])?

    /// A vault secret this step was granted (its manifest step's `secrets`, or its enqueue's),
    /// read with this attempt's lease; the read is audited on the node. Bytes, held only as
    /// long as you hold them: do not log them. A secret the step was not granted, or a lease
    /// that was lost, fails the step for good (``NonRetryable``); a node without the vault key
    /// is skipped for the next one.
    public func secretBytes(_ path: String) async throws -> [UInt8] {
        guard let secretReader else { throw NonRetryable("step \(step) has no node to read secret \(path) from") }
        return try await secretReader(path)
    }

    /// A vault secret as UTF-8 text (see ``secretBytes(_:)``).
    public func secret(_ path: String) async throws -> String {
        let bytes = try await secretBytes(path)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw NonRetryable("secret \(path) is not UTF-8 text; read it with secretBytes")
        }
        return text
    }

    /// Records what this attempt cost (sent with its completion, for the run's budget
    /// ledger): an amount in the run's budget unit, or in `unit`.
    public func reportCost(_ amount: Double, unit: String? = nil) {
        costs.add(amount, unit: unit)
    }

    /// The output of an earlier step (one this step runs after), decoded as `T`.
    public func output<T: Decodable>(of step: String, as type: T.Type = T.self) throws -> T {
        guard let value = earlierOutputs[step] else {
            throw NonRetryable(
                "step \(self.step) reads the output of \(step), which is not among the steps it runs after (\(earlierOutputs.keys.sorted().joined(separator: ", ")))")
        }
        return try value.decode(as: T.self)
    }

    /// Reads a step lease's payload: `{"input": …, "after": {step: output}}`.
    init(lease: Lease, logger base: Logger, secretReader: (@Sendable (String) async throws -> [UInt8])? = nil) {
        self.secretReader = secretReader
        runID = lease.runID ?? ""
        step = lease.step ?? ""
        attempt = lease.attempt
        packageHash = lease.packageHash ?? ""
        executionID = lease.executionID
        lane = lease.lane
        input = lease.payload["input"] ?? lease.payload
        earlierOutputs = lease.payload["after"]?.objectValue ?? [:]
        var logger = base
        logger[metadataKey: "run_id"] = "\(runID)"
        logger[metadataKey: "step"] = "\(step)"
        logger[metadataKey: "attempt"] = "\(attempt)"
        logger[metadataKey: "package_hash"] = "\(packageHash)"
        logger[metadataKey: "execution_id"] = "\(executionID)"
        self.logger = logger
        costs = CostLedger()
    }
}

/// The costs one attempt reported (a handler may report from several tasks).
final class CostLedger: Sendable {
    private let items = NIOLockedValueBox<[JSONValue]>([])
    func add(_ amount: Double, unit: String?) {
        var item: [String: JSONValue] = ["amount": .number(amount)]
        if let unit { item["unit"] = .string(unit) }
        items.withLockedValue { $0.append(.object(item)) }
    }
    var all: [JSONValue] { items.withLockedValue { $0 } }
}

/// A lease as a claim gave it.
struct Lease: Sendable {
    let executionID: String
    let epoch: Int64
    let lane: String
    let attempt: Int
    let payload: JSONValue
    let expiresAt: Date
    let runID: String?
    let step: String?
    let packageHash: String?
    /// When the claim's answer came (this process's clock).
    let claimedAt: ContinuousClock.Instant

    init?(_ json: JSONValue, claimedAt: ContinuousClock.Instant) {
        guard let id = json["execution_id"]?.stringValue, let epoch = json["lease_epoch"]?.intValue, let expires = json["lease_expires_at"]?.stringValue,
            let at = Lease.parseInstant(expires)
        else { return nil }
        executionID = id
        self.epoch = epoch
        lane = json["lane"]?.stringValue ?? ""
        attempt = Int(json["attempt_index"]?.intValue ?? 1)
        payload = json["payload"] ?? .null
        expiresAt = at
        runID = json["run_id"]?.stringValue
        step = json["step"]?.stringValue
        packageHash = json["package_hash"]?.stringValue
        self.claimedAt = claimedAt
    }

    /// An RFC 3339 instant with or without fractional seconds.
    static func parseInstant(_ text: String) -> Date? {
        if let d = Timestamp.parse(text, requireZone: true) { return d }
        if let d = try? Date(text, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true)) { return d }
        return try? Date(text, strategy: .iso8601)
    }

    /// How long the lease ran for when granted, as this process's clock sees it (bounded
    /// below: a clock ahead of the database's must not make renewals spin).
    var length: Duration {
        let seconds = expiresAt.timeIntervalSinceNow
        return seconds > 0.3 ? .milliseconds(Int64(seconds * 1000)) : .milliseconds(300)
    }
}
