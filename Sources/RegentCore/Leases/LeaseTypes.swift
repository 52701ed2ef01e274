import Foundation
import PostgresClient

/// A lease on one execution, held by one worker instance until `expiresAt` (database time).
public struct Lease: Sendable, Hashable, Codable {
    public let executionID: UUID
    public let lane: String
    public let attemptIndex: Int
    public let epoch: LeaseEpoch
    public let payload: String
    public let expiresAt: Date
    /// For a workflow step (namespace ``RunStore/namespace``): its run, step name and the
    /// package version the run is pinned to; nil for plain executions.
    public var step: StepRef?

    public struct StepRef: Sendable, Hashable, Codable {
        public let runID: String
        public let name: String
        public let packageHash: String
        enum CodingKeys: String, CodingKey { case runID = "run_id", name = "step", packageHash = "package_hash" }
    }

    enum CodingKeys: String, CodingKey {
        case executionID = "execution_id", lane, attemptIndex = "attempt_index", epoch = "lease_epoch", payload
        case expiresAt = "lease_expires_at", step
    }

    public init(executionID: UUID, lane: String, attemptIndex: Int, epoch: LeaseEpoch, payload: String, expiresAt: Date, step: StepRef? = nil) {
        self.executionID = executionID
        self.lane = lane
        self.attemptIndex = attemptIndex
        self.epoch = epoch
        self.payload = payload
        self.expiresAt = expiresAt
        self.step = step
    }

    /// Ids in lower case, as the HTTP API writes them.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(executionID.lowercasedText, forKey: .executionID)
        try c.encode(lane, forKey: .lane)
        try c.encode(attemptIndex, forKey: .attemptIndex)
        try c.encode(epoch, forKey: .epoch)
        try c.encode(payload, forKey: .payload)
        try c.encode(expiresAt, forKey: .expiresAt)
        try c.encodeIfPresent(step, forKey: .step)
    }
}

/// An expired lease, as operators list them.
public struct ExpiredLease: Sendable, Hashable, Codable {
    public let executionID: UUID
    public let namespace: String
    public let lane: String
    public let attemptIndex: Int
    public let epoch: Int64
    public let workerInstanceID: String
    public let expiresAt: Date

    enum CodingKeys: String, CodingKey {
        case executionID = "execution_id", namespace, lane, attemptIndex = "attempt_index", epoch = "lease_epoch"
        case workerInstanceID = "worker_instance_id", expiresAt = "lease_expires_at"
    }
}

/// A stable `(expires_at, execution_id)` position in the expired-lease listing.
public struct ExpiredLeaseCursor: Sendable, Hashable, Codable {
    public let expiresAt: Date
    public let executionID: UUID
    public init(expiresAt: Date, executionID: UUID) {
        self.expiresAt = expiresAt
        self.executionID = executionID
    }
}

/// An execution's summary row.
public struct ExecutionRecord: Sendable, Hashable, Codable {
    public let executionID: UUID
    public let namespace: String
    public let lane: String
    public let state: String
    public let attempts: Int
    public let maxAttempts: Int
    public let epoch: Int64
    public let createdAt: Date

    enum CodingKeys: String, CodingKey {
        case executionID = "execution_id", namespace, lane, state, attempts, maxAttempts = "max_attempts", epoch = "lease_epoch"
        case createdAt = "created_at"
    }
}

/// How a failed execution's retries are spaced: attempt n waits `min(maximum, base · 2^(n-1))`,
/// times a jitter factor drawn uniformly from [0.75, 1.25] so that executions that failed
/// together do not come back together.
public struct RetryPolicy: Sendable, Hashable, Codable {
    public var base: Duration
    public var maximum: Duration

    public static let `default` = RetryPolicy(unchecked: .seconds(1), .seconds(3600))

    public init(base: Duration, maximum: Duration) throws(RegentError) {
        guard base >= .milliseconds(1), base <= .seconds(86_400) else {
            throw RegentError(.invalidInput, "retry base \(base) must be between 1ms and 24h")
        }
        guard maximum >= base, maximum <= .seconds(604_800) else {
            throw RegentError(.invalidInput, "retry maximum \(maximum) must be at least the base (\(base)) and at most 7 days")
        }
        self.base = base
        self.maximum = maximum
    }

    private init(unchecked base: Duration, _ maximum: Duration) {
        self.base = base
        self.maximum = maximum
    }

    /// The un-jittered delay before retry number `attempt` (the first retry follows attempt 1).
    public func delay(afterAttempt attempt: Int) -> Duration {
        let exponent = min(max(attempt - 1, 0), 40)
        let ms = min(Double(maximum.milliseconds), Double(base.milliseconds) * pow(2, Double(exponent)))
        return .milliseconds(Int64(ms))
    }
}

/// One execution to enqueue.
public struct EnqueueRequest: Sendable, Hashable {
    public var lane: Lane
    /// A JSON object.
    public var payload: String
    public var maxAttempts: Int
    public var requiredCapabilities: [Capability]
    /// 0 runs first; at most 1000.
    public var priority: Int
    /// Not claimable before this instant (database time); nil: now.
    public var runAt: Date?
    /// While an execution with this key is unfinished, enqueueing the key again returns it.
    public var uniqueKey: String?
    /// nil: ``RetryPolicy/default``.
    public var retry: RetryPolicy?
    /// A concurrency key or a fair key (docs/flow-control.md); nil: neither.
    public var flow: FlowGate?
    /// Vault secrets the worker holding this execution's lease may read (docs/vault.md).
    public var secrets: [SecretPath] = []

    public init(
        lane: Lane, payload: String = "{}", maxAttempts: Int = 3, requiredCapabilities: [Capability] = [], priority: Int = 0,
        runAt: Date? = nil, uniqueKey: String? = nil, retry: RetryPolicy? = nil
    ) {
        self.lane = lane
        self.payload = payload
        self.maxAttempts = maxAttempts
        self.requiredCapabilities = requiredCapabilities
        self.priority = priority
        self.runAt = runAt
        self.uniqueKey = uniqueKey
        self.retry = retry
    }

    /// Refuses what the queue would refuse (clear errors before anything is sent).
    public func check() throws(RegentError) { _ = try validated(0) }

    /// Refuses what the table would refuse, naming the field and the item.
    func validated(_ index: Int) throws(RegentError) -> EventPayload {
        func bad(_ what: String) -> RegentError { RegentError(.invalidInput, "execution \(index): \(what)") }
        guard (1...1000).contains(maxAttempts) else { throw bad("max attempts must be 1 to 1000, got \(maxAttempts)") }
        guard (0...1000).contains(priority) else { throw bad("priority must be 0 (first) to 1000, got \(priority)") }
        if let uniqueKey {
            let length = uniqueKey.unicodeScalars.count
            guard (1...255).contains(length) else { throw bad("unique key must be 1 to 255 characters, got \(length)") }
            guard !uniqueKey.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw bad("unique key contains a control character")
            }
        }
        if let flow {
            do { try flow.check() } catch { throw bad(error.message) }
        }
        do { return try EventPayload(json: payload) } catch { throw bad(error.message) }
    }

    /// The gate's key in `workflow.flow_keys` (`c:<key>`, or `f:<lane>:<key>`: fairness is per lane) and its limit.
    var flowKey: (key: String, limit: Int)? {
        switch flow {
        case nil: nil
        case .concurrency(let key, let limit): ("c:" + key, limit)
        case .fair(let key, let window): ("f:\(lane.value):" + key, window)
        }
    }
}

/// Flow control for one execution (docs/flow-control.md): it waits outside the claim's reach
/// until its key has a free slot.
public enum FlowGate: Sendable, Hashable {
    /// At most `limit` executions with this key queued or running at once (in its namespace).
    case concurrency(key: String, limit: Int)
    /// At most `window` executions with this key claimable at once in its lane: one key's
    /// backlog interleaves with the others' instead of running ahead of them.
    case fair(key: String, window: Int)

    public static let maxLimit = 100_000
    public static let defaultFairWindow = 10

    public func check() throws(RegentError) {
        let (key, limit, what) = switch self {
        case .concurrency(let key, let limit): (key, limit, "concurrency")
        case .fair(let key, let window): (key, window, "fair")
        }
        let length = key.unicodeScalars.count
        guard (1...255).contains(length) else { throw RegentError(.invalidInput, "\(what) key must be 1 to 255 characters, got \(length)") }
        guard !key.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw RegentError(.invalidInput, "\(what) key contains a control character")
        }
        guard (1...Self.maxLimit).contains(limit) else {
            throw RegentError(.invalidInput, "\(what == "fair" ? "fair window" : "concurrency limit") must be 1 to \(Self.maxLimit), got \(limit)")
        }
    }
}

/// An enqueued execution: created now, or the unfinished one that holds the request's unique key.
public struct Enqueued: Sendable, Hashable, Codable {
    public let executionID: UUID
    public let created: Bool

    enum CodingKeys: String, CodingKey { case executionID = "execution_id", created }
}

/// One completion of a batch.
public struct Completion: Sendable, Hashable {
    public let executionID: UUID
    public let epoch: LeaseEpoch
    /// A JSON object: for a workflow step, its output.
    public let result: String
    /// What the work cost (a workflow step's budget ledger); empty for none.
    public let cost: [Cost]
    /// The worker instance completing it: when given, only that instance's lease is completed.
    public var worker: WorkerInstanceID?
    /// A workflow step's run, as its claim gave it (``Lease/step``). When every item of a batch
    /// names its run, the completion skips its statement for plain executions (sql/workflow
    /// 0013); a plain execution sent with a run is reported stale.
    public var runID: String?

    public init(
        executionID: UUID, epoch: LeaseEpoch, result: String = "{}", cost: [Cost] = [], worker: WorkerInstanceID? = nil, runID: String? = nil
    ) {
        self.executionID = executionID
        self.epoch = epoch
        self.result = result
        self.cost = cost
        self.worker = worker
        self.runID = runID
    }
}

/// An amount a step's completion reports; `unit` nil means the run's budget unit.
public struct Cost: Sendable, Hashable {
    public let amount: Double
    public let unit: String?

    public init(amount: Double, unit: String? = nil) throws(RegentError) {
        guard amount.isFinite, amount >= 0, amount <= 1e15 else {
            throw RegentError(.invalidInput, "a cost amount must be a number from 0 to 1e15, got \(amount)")
        }
        if let unit, !Lane.isValid(unit) { throw RegentError(.invalidInput, "cost unit \(quoted(unit)): use 1-128 letters, digits or _ . : -") }
        self.amount = amount
        self.unit = unit
    }

    var json: String { #"{"amount":\#(amount)"# + (unit.map { #","unit":"\#($0)"}"# } ?? "}") }
}

/// One failure of a batch.
public struct Failure: Sendable, Hashable {
    public let executionID: UUID
    public let epoch: LeaseEpoch
    public let error: String
    public let retryable: Bool
    /// The worker instance failing it: when given, only that instance's lease is failed.
    public var worker: WorkerInstanceID?

    public init(executionID: UUID, epoch: LeaseEpoch, error: String, retryable: Bool, worker: WorkerInstanceID? = nil) {
        self.executionID = executionID
        self.epoch = epoch
        self.error = error
        self.retryable = retryable
        self.worker = worker
    }
}

/// What a batch completion or failure did: the executions it finished (or requeued), and
/// the ones whose epoch was no longer current (reclaimed, cancelled or already finished).
public struct BatchOutcome: Sendable, Hashable {
    public var done: [UUID: String]
    public var stale: [UUID]
}

/// What `cancel` found.
public enum CancelOutcome: String, Sendable, Hashable, Codable {
    /// It was queued: it will not run.
    case cancelledQueued = "cancelled_queued"
    /// It was running: its worker's renew, complete and fail are refused from now on.
    case cancelledRunning = "cancelled_running"
    /// It had finished already; nothing changed.
    case alreadyFinished = "already_finished"
    case notFound = "not_found"
}

/// A lease as the console lists it: who holds which execution until when, and the workflow
/// step it carries.
public struct CurrentLease: Sendable, Encodable {
    /// Lowercase, as the API writes execution ids.
    public let executionID: String
    public let namespace: String
    public let lane: String
    public let attemptIndex: Int
    public let epoch: Int64
    public let workerInstanceID: String
    public let expiresAt: Date
    public let startedAt: Date
    public let leaseMs: Int64
    public let runID: String?
    public let step: String?
    /// The database's clock when read: `expires_at - read_at` is the time left, whatever the viewer's clock says.
    public let readAt: Date
    enum CodingKeys: String, CodingKey {
        case executionID = "execution_id", namespace, lane, attemptIndex = "attempt_index", epoch = "lease_epoch"
        case workerInstanceID = "worker_instance_id", expiresAt = "lease_expires_at", startedAt = "started_at", leaseMs = "lease_ms"
        case runID = "run_id", step, readAt = "read_at"
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(executionID, forKey: .executionID)
        try c.encode(namespace, forKey: .namespace)
        try c.encode(lane, forKey: .lane)
        try c.encode(attemptIndex, forKey: .attemptIndex)
        try c.encode(epoch, forKey: .epoch)
        try c.encode(workerInstanceID, forKey: .workerInstanceID)
        try c.encode(expiresAt, forKey: .expiresAt)
        try c.encode(startedAt, forKey: .startedAt)
        try c.encode(leaseMs, forKey: .leaseMs)
        try c.encode(runID, forKey: .runID)  // null for a plain execution
        try c.encode(step, forKey: .step)
        try c.encode(readAt, forKey: .readAt)
    }
}

/// One decision of the leader's lease-expiry scanner.
public struct LeaseDecision: Sendable, Encodable {
    public let id: Int64
    public let executionID: String
    public let attemptIndex: Int
    public let decision: String
    public let term: Int64
    public let at: Date
    public let namespace: String?
    public let lane: String?
    public let runID: String?
    public let step: String?
    enum CodingKeys: String, CodingKey {
        case id, executionID = "execution_id", attemptIndex = "attempt_index", decision, term, at, namespace, lane, runID = "run_id", step
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(executionID, forKey: .executionID)
        try c.encode(attemptIndex, forKey: .attemptIndex)
        try c.encode(decision, forKey: .decision)
        try c.encode(term, forKey: .term)
        try c.encode(at, forKey: .at)
        try c.encode(namespace, forKey: .namespace)  // nulls: the execution was pruned since
        try c.encode(lane, forKey: .lane)
        try c.encode(runID, forKey: .runID)
        try c.encode(step, forKey: .step)
    }
}
