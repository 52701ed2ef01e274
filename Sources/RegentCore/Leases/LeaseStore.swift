import CivilTime
import Foundation
import PostgresClient

/// The execution queue: executions, their attempts and leases (`workflow.executions`,
/// `workflow.ready`, `workflow.attempts`, `workflow.leases`, `workflow.unique_keys`).
///
/// Promises: a queued execution is claimed by at most one worker (`FOR UPDATE SKIP LOCKED`
/// on its `ready` row); renew, complete and fail succeed only with the execution's current
/// lease epoch, so a worker whose lease was reclaimed or cancelled changes nothing
/// (``staleLease``). Every hot-path call is one statement; batches of up to 1000.
public struct LeaseStore: Sendable {
    /// The largest batch one call takes.
    public static let maxBatch = 1000
    /// Retries of failed executions that name no policy.
    public var defaultRetry: RetryPolicy
    /// The API token (its id) this store acts for: claims record it on their leases, and
    /// renew, complete and fail change only leases claimed with it. nil: a database client.
    public var token: String?

    public init(defaultRetry: RetryPolicy = .default, token: String? = nil) {
        self.defaultRetry = defaultRetry
        self.token = token
    }

    /// Why a renew, completion or failure of (`id`, `epoch`) changed nothing, read after the
    /// fact: no such execution; a lease held by another worker instance or token
    /// (``RegentError/Code/notLeaseHolder``); an epoch never granted (ahead of the current
    /// one); or an epoch the execution has moved past (reclaimed, cancelled, finished).
    public func refusal(_ id: UUID, _ epoch: LeaseEpoch, worker: WorkerInstanceID?, on conn: PostgresConnection) async throws -> RegentError {
        let idText = id.lowercasedText
        guard let row = try await conn.query(LeaseQueries.leaseStatus(id), purpose: "lease status").first else {
            return RegentError(.notFound, "no execution \(idText)")
        }
        let state: String = try row.decode("state")
        let current: Int64 = try row.decode("lease_epoch")
        if let live = try row.decodeOptional("live_epoch", as: Int64.self), live == epoch.value {
            let holderToken = try row.decodeOptional("token_id", as: String.self)
            let holder: String = try row.decode("worker_instance_id")
            if let token, holderToken != token {
                return RegentError(
                    .notLeaseHolder, "lease epoch \(epoch) of execution \(idText) was claimed with another token",
                    hint: "only the worker that claimed a lease may renew, complete or fail it")
            }
            if let worker, worker.value != holder {
                return RegentError(
                    .notLeaseHolder, "lease epoch \(epoch) of execution \(idText) is held by worker instance \(holder), not \(worker)",
                    hint: "only the worker that claimed a lease may renew, complete or fail it")
            }
        }
        if epoch.value > current {
            return RegentError(
                .staleLease, "lease epoch \(epoch) of execution \(idText) was never granted: its current epoch is \(current) (\(state))",
                hint: "send the lease_epoch the claim returned")
        }
        let what: String
        switch state {
        case "queued": what = "its lease expired and it was queued again"
        case "running": what = "its lease expired and another worker claimed it (epoch \(current))"
        case "completed": what = "it was completed"
        case "cancelled": what = "it was cancelled (or its run finished)"
        default: what = "it ended (\(state))"
        }
        return RegentError(
            .staleLease, "lease epoch \(epoch) of execution \(idText) is no longer current: \(what)", hint: "drop this work")
    }

    static func batchSize(_ count: Int, _ what: String) throws(RegentError) {
        guard (1...maxBatch).contains(count) else {
            throw RegentError(.invalidInput, "a batch of \(what) holds 1 to \(maxBatch) items, got \(count)")
        }
    }

    // MARK: Enqueue

    /// Creates queued executions, in one statement; returns one ``Enqueued`` per request, in
    /// order. Requests whose unique key belongs to an unfinished execution return that one.
    public func enqueue(namespace: Namespace, _ requests: [EnqueueRequest], on conn: PostgresConnection) async throws -> [Enqueued] {
        try Self.batchSize(requests.count, "executions")
        guard requests.contains(where: { !$0.secrets.isEmpty }) else { return try await enqueueItems(namespace: namespace, requests, on: conn) }
        // Executions that name vault secrets get their grants in the same transaction.
        let vault = try await conn.query("SELECT to_regclass('vault.execution_grants') IS NOT NULL AS present", purpose: "vault: grants table?")
            .single().decode("present", as: Bool.self)
        guard vault else {
            throw RegentError(.invalidInput, "an execution names vault secrets, and the vault module's schema does not exist", hint: "enable the vault module (regent modules enable vault)")
        }
        return try await conn.withTransaction { tx in
            let made = try await enqueueItems(namespace: namespace, requests, on: tx)
            var byGrant: [[SecretPath]: [UUID]] = [:]
            for (request, result) in zip(requests, made) where result.created && !request.secrets.isEmpty {
                byGrant[request.secrets, default: []].append(result.executionID)
            }
            for (paths, ids) in byGrant { try await VaultStore.grant(paths, to: ids, on: tx) }
            return made
        }
    }

    func enqueueItems(namespace: Namespace, _ requests: [EnqueueRequest], on conn: PostgresConnection) async throws -> [Enqueued] {
        var items: [String] = []
        items.reserveCapacity(requests.count)
        for (n, request) in requests.enumerated() {
            let payload = try request.validated(n)
            var item = #"{"n":\#(n),"lane":\#(jsonString(request.lane.value)),"payload":\#(payload.json),"max_attempts":\#(request.maxAttempts),"#
            item += #""priority":\#(request.priority),"required_capabilities":["#
            item += request.requiredCapabilities.map { jsonString($0.value) }.joined(separator: ",") + "]"
            if let runAt = request.runAt { item += #","run_at":"\#(PostgresTimestamp.format(runAt))""# }
            if let key = request.uniqueKey { item += #","unique_key":\#(jsonString(key))"# }
            if let retry = request.retry { item += #","retry_base_ms":\#(Int64(retry.base.milliseconds)),"retry_max_ms":\#(Int64(retry.maximum.milliseconds))"# }
            if let flow = request.flowKey { item += #","flow_key":\#(jsonString(flow.key)),"flow_limit":\#(flow.limit)"# }
            items.append(item + "}")
        }
        var results = [Enqueued?](repeating: nil, count: requests.count)
        var pending = Array(requests.indices)
        // An item whose key's holder committed while the statement ran is run again (READ
        // COMMITTED: the next statement sees it). Twice is enough unless the holder finishes
        // and another takes the key in between, which a third run settles.
        for _ in 0..<3 where !pending.isEmpty {
            let rows = try await conn.query(
                LeaseQueries.enqueue(namespace: namespace.value, itemsJSON: "[" + pending.map { items[$0] }.joined(separator: ",") + "]"),
                purpose: "executions: enqueue")
            var again: [Int] = []
            for row in rows {
                let n: Int = try row.decode("n")  // the request's index, as sent
                if let id = try row.decodeOptional("execution_id", as: UUID.self) {
                    results[n] = Enqueued(executionID: id, created: try row.decode("created"))
                } else {
                    again.append(n)
                }
            }
            pending = again
        }
        guard pending.isEmpty else {
            throw RegentError(.timeout, "the unique key of execution \(pending[0]) kept changing hands; enqueue it again")
        }
        return results.map { $0! }
    }

    /// Creates one queued execution; returns its id (or the unfinished one holding its key).
    public func enqueue(
        namespace: Namespace, lane: Lane, payload: String, maxAttempts: Int, requiredCapabilities: [Capability] = [], on conn: PostgresConnection
    ) async throws -> UUID {
        try await enqueue(
            namespace: namespace,
            [EnqueueRequest(lane: lane, payload: payload, maxAttempts: maxAttempts, requiredCapabilities: requiredCapabilities)], on: conn
        )[0].executionID
    }

    // MARK: Claim

    /// Claims up to `limit` runnable executions of `lanes` (run_at reached, required
    /// capabilities held), best priority first, then oldest run_at; each gets a new attempt
    /// and lease epoch. One statement; the worker must be registered and alive.
    public func claim(
        namespace: Namespace, lanes: [Lane], workerInstanceID: WorkerInstanceID, capabilities: [Capability], leaseDuration: Duration?,
        limit: Int, on conn: PostgresConnection
    ) async throws -> [Lease] {
        try Self.validateClaim(lanes: lanes, leaseDuration: leaseDuration, limit: limit)
        let rows = try await conn.query(
            LeaseQueries.claim(
                namespace: namespace.value, lanes: lanes.map(\.value), worker: workerInstanceID.value, capabilities: capabilities.map(\.value),
                lease: leaseDuration, limit: limit, token: token),
            purpose: "claim executions")
        return try Self.leases(rows, workerInstanceID: workerInstanceID, namespace: namespace)
    }

    /// The leases of a claim's rows; ``RegentError/Code/notRegistered`` when the worker is not alive.
    static func leases(_ rows: PostgresRows, workerInstanceID: WorkerInstanceID, namespace: Namespace, completed: Int? = nil) throws -> [Lease] {
        guard try rows.first?.decode("alive", as: Bool.self) == true else {
            throw RegentError(
                .notRegistered, "worker instance \(workerInstanceID) is not registered and alive in namespace \(namespace)"
                    + (completed.map { "; the \($0) completion(s) of this call were applied" } ?? ""),
                hint: "register it (or heartbeat before its TTL lapses) before claiming")
        }
        return try rows.compactMap { row in
            guard let id = try row.decodeOptional("execution_id", as: UUID.self) else { return nil }
            var step: Lease.StepRef?
            if let runID = try row.decodeOptional("run_id", as: String.self) {
                step = Lease.StepRef(runID: runID, name: try row.decode("step"), packageHash: try row.decode("package_hash"))
            }
            return Lease(
                executionID: id, lane: try row.decode("lane"), attemptIndex: try row.decode("attempt_index"),
                epoch: LeaseEpoch(try row.decode("lease_epoch")), payload: try row.decode("payload"), expiresAt: try row.decode("lease_expires_at"),
                step: step)
        }
    }

    /// Claims as above; when nothing is runnable, waits up to `wait` (at most 30 s) for work to
    /// appear in one of `lanes` (``QueueWaker``; without one it looks again every 100 ms) and
    /// claims again. Connections come from `pool` only while a claim runs, never while waiting.
    public func claim(
        namespace: Namespace, lanes: [Lane], workerInstanceID: WorkerInstanceID, capabilities: [Capability], leaseDuration: Duration?,
        limit: Int, wait: Duration, waker: QueueWaker?, pool: ConnectionPool
    ) async throws -> [Lease] {
        try Self.validateClaim(lanes: lanes, leaseDuration: leaseDuration, limit: limit)
        guard wait >= .zero, wait <= .seconds(30) else { throw RegentError(.invalidInput, "wait \(wait) must be between 0 and 30s") }
        let deadline = ContinuousClock.now + wait
        // Registered before the first claim: work announced between that claim and the wait is not missed.
        let ticket = waker?.register(namespace: namespace.value, lanes: Set(lanes.map(\.value)))
        defer { if let waker, let ticket { waker.unregister(ticket) } }
        while true {
            let leases = try await pool.withConnection { conn in
                try await claim(
                    namespace: namespace, lanes: lanes, workerInstanceID: workerInstanceID, capabilities: capabilities,
                    leaseDuration: leaseDuration, limit: limit, on: conn)
            }
            let now = ContinuousClock.now
            if !leases.isEmpty || now >= deadline || Task.isCancelled { return leases }
            // Scheduled work (run_at) and retries announce nothing: look again at least every second.
            if let waker, let ticket {
                _ = await waker.wait(ticket, until: min(deadline, now + .seconds(1)))
            } else {
                try await Task.sleep(until: min(deadline, now + .milliseconds(100)), clock: .continuous)
            }
        }
    }

    /// A lease length a claim or renew may ask for (nil: the default, see each).
    static func checkLeaseDuration(_ leaseDuration: Duration?) throws(RegentError) {
        if let leaseDuration, leaseDuration < .milliseconds(100) || leaseDuration > .seconds(86_400) {
            throw RegentError(.invalidInput, "lease duration \(leaseDuration) must be between 100ms and 24h")
        }
    }

    static func validateClaim(lanes: [Lane], leaseDuration: Duration?, limit: Int) throws(RegentError) {
        guard (1...maxBatch).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to \(maxBatch), got \(limit)") }
        try checkLeaseDuration(leaseDuration)
        guard !lanes.isEmpty, lanes.count <= 100 else { throw RegentError(.invalidInput, "claim needs 1 to 100 lanes, got \(lanes.count)") }
    }

    // MARK: Renew, complete, fail, cancel

    /// Extends a live lease from now by `leaseDuration`, or (nil) by the step's timeout for a
    /// workflow step and by the lease's own length otherwise; returns the new expiry. Only
    /// the holder may: with ``token`` set, a lease claimed with it; with `worker`, that instance's.
    public func renew(
        executionID: UUID, epoch: LeaseEpoch, leaseDuration: Duration?, worker: WorkerInstanceID? = nil, on conn: PostgresConnection
    ) async throws -> Date {
        try Self.checkLeaseDuration(leaseDuration)
        guard let row = try await conn.query(
            LeaseQueries.renew(executionID, epoch, leaseDuration, token: token, worker: worker?.value), purpose: "renew lease").first
        else {
            throw try await refusal(executionID, epoch, worker: worker, on: conn)
        }
        return try row.decode("lease_expires_at")
    }

    /// Completes the executions of the batch whose epoch is current, in one statement.
    public func complete(_ completions: [Completion], on conn: PostgresConnection) async throws -> BatchOutcome {
        try Self.batchSize(completions.count, "completions")
        let rows = try await conn.query(LeaseQueries.complete(itemsJSON: try Self.completionItems(completions), token: token), purpose: "complete executions")
        var done: [UUID: String] = [:]
        for row in rows { done[try row.decode("execution_id", as: UUID.self)] = "completed" }
        return try await settlingRepeats(completions, done: done, on: conn)
    }

    /// The outcome of a batch whose `done` the statement reported: an item it did not complete
    /// because the same completion (execution, epoch and worker instance) had landed before is
    /// `already_completed`, not stale. A worker whose completion's answer was lost (a timeout, a
    /// node that died after its commit) sends it again and learns that it counted; a worker
    /// whose lease was reclaimed, cancelled or completed by another still hears stale.
    func settlingRepeats(_ completions: [Completion], done: [UUID: String], on conn: PostgresConnection) async throws -> BatchOutcome {
        var done = done
        let missing = completions.filter { done[$0.executionID] == nil }
        if !missing.isEmpty {
            let rows = try await conn.query(
                LeaseQueries.alreadyCompleted(
                    ids: missing.map(\.executionID), epochs: missing.map(\.epoch.value), workers: missing.map { $0.worker?.value ?? "" }, token: token),
                purpose: "repeated completions")
            for row in rows { done[try row.decode("execution_id", as: UUID.self)] = CompletionOutcome.alreadyCompleted.rawValue }
        }
        return BatchOutcome(done: done, stale: completions.map(\.executionID).filter { done[$0] == nil })
    }

    /// The JSON array `workflow.complete` takes.
    static func completionItems(_ completions: [Completion]) throws(RegentError) -> String {
        var items: [String] = []
        items.reserveCapacity(completions.count)
        for (n, c) in completions.enumerated() {
            let result: EventPayload
            do { result = try EventPayload(json: c.result) } catch { throw RegentError(.invalidInput, "completion \(n): \(error.message)") }
            let cost = c.cost.isEmpty ? "" : #","cost":["# + c.cost.map(\.json).joined(separator: ",") + "]"
            let worker = c.worker.map { #","worker":\#(jsonString($0.value))"# } ?? ""
            let run = c.runID.map { #","run_id":\#(jsonString($0))"# } ?? ""
            items.append(#"{"execution_id":"\#(c.executionID.lowercasedText)","epoch":\#(c.epoch.value),"result":\#(result.json)\#(cost)\#(worker)\#(run)}"#)
        }
        return "[" + items.joined(separator: ",") + "]"
    }

    /// Completes `completions` (0 to 1000, as ``complete(_:on:)``) and claims up to `limit` (as
    /// ``claim(namespace:lanes:workerInstanceID:capabilities:leaseDuration:limit:on:)``) in one
    /// statement and one transaction: a worker reports what it finished and takes its next work
    /// in one round trip. The completions are applied even when the claim is refused.
    public func completeAndClaim(
        _ completions: [Completion], namespace: Namespace, lanes: [Lane], workerInstanceID: WorkerInstanceID, capabilities: [Capability],
        leaseDuration: Duration?, limit: Int, on conn: PostgresConnection
    ) async throws -> (completed: BatchOutcome, leases: [Lease]) {
        guard completions.count <= Self.maxBatch else {
            throw RegentError(.invalidInput, "a batch of completions holds 0 to \(Self.maxBatch) items, got \(completions.count)")
        }
        try Self.validateClaim(lanes: lanes, leaseDuration: leaseDuration, limit: limit)
        let rows = try await conn.query(
            LeaseQueries.completeAndClaim(
                itemsJSON: try Self.completionItems(completions), namespace: namespace.value, lanes: lanes.map(\.value), worker: workerInstanceID.value,
                capabilities: capabilities.map(\.value), lease: leaseDuration, limit: limit, token: token),
            purpose: "complete and claim")
        var done: [UUID: String] = [:]
        for text in try rows.first?.decode("completed", as: [String].self) ?? [] {
            if let id = try? UUID(postgresText: text, typeOID: 0) { done[id] = "completed" }
        }
        let leases = try Self.leases(rows, workerInstanceID: workerInstanceID, namespace: namespace, completed: done.count)
        return (try await settlingRepeats(completions, done: done, on: conn), leases)
    }

    /// Completes the execution with `result` (a JSON object): `.completed`, or `.alreadyCompleted`
    /// when this same completion (epoch and worker instance) landed before; ``staleLease`` when
    /// its epoch is not current for any other reason.
    @discardableResult
    public func complete(
        executionID: UUID, epoch: LeaseEpoch, result: String = "{}", cost: [Cost] = [], worker: WorkerInstanceID? = nil, on conn: PostgresConnection
    ) async throws -> CompletionOutcome {
        let outcome = try await complete([Completion(executionID: executionID, epoch: epoch, result: result, cost: cost, worker: worker)], on: conn)
        guard let state = outcome.done[executionID], let done = CompletionOutcome(rawValue: state) else {
            throw try await refusal(executionID, epoch, worker: worker, on: conn)
        }
        return done
    }

    /// What a completion did.
    public enum CompletionOutcome: String, Sendable, Equatable {
        case completed
        /// The same completion (execution, epoch, worker instance) had landed before: nothing changed.
        case alreadyCompleted = "already_completed"
    }

    public enum FailOutcome: String, Sendable, Equatable { case requeued = "queued", deadLettered = "dead_lettered", failed }

    /// Fails the attempts of the batch whose epoch is current, in one statement: retryable
    /// with attempts left → queued again after the execution's retry backoff; retryable
    /// without → dead-lettered; not retryable → failed. `done` maps each id to its new state.
    public func fail(_ failures: [Failure], on conn: PostgresConnection) async throws -> BatchOutcome {
        try Self.batchSize(failures.count, "failures")
        var items: [String] = []
        items.reserveCapacity(failures.count)
        for (n, f) in failures.enumerated() {
            guard f.error.utf8.count <= 4096 else {
                throw RegentError(.invalidInput, "failure \(n): error text is \(f.error.utf8.count) bytes; at most 4096")
            }
            let worker = f.worker.map { #","worker":\#(jsonString($0.value))"# } ?? ""
            items.append(
                #"{"execution_id":"\#(f.executionID.lowercasedText)","epoch":\#(f.epoch.value),"error":\#(jsonString(f.error)),"retryable":\#(f.retryable)\#(worker)}"#)
        }
        let rows = try await conn.query(
            LeaseQueries.fail(
                itemsJSON: "[" + items.joined(separator: ",") + "]", defaultBaseMs: Int64(defaultRetry.base.milliseconds),
                defaultMaxMs: Int64(defaultRetry.maximum.milliseconds), token: token),
            purpose: "fail executions")
        var done: [UUID: String] = [:]
        for row in rows { done[try row.decode("execution_id", as: UUID.self)] = try row.decode("state", as: String.self) }
        return BatchOutcome(done: done, stale: failures.map(\.executionID).filter { done[$0] == nil })
    }

    /// Fails the attempt (see the batch form); ``staleLease`` when its epoch is not current.
    public func fail(
        executionID: UUID, epoch: LeaseEpoch, error: String, retryable: Bool, worker: WorkerInstanceID? = nil, on conn: PostgresConnection
    ) async throws -> FailOutcome {
        let outcome = try await fail([Failure(executionID: executionID, epoch: epoch, error: error, retryable: retryable, worker: worker)], on: conn)
        guard let state = outcome.done[executionID] else { throw try await refusal(executionID, epoch, worker: worker, on: conn) }
        return FailOutcome(rawValue: state) ?? .failed
    }

    /// Cancels a queued or running execution. A running one's worker finds its lease stale
    /// (renew, complete and fail are refused with ``RegentError/Code/staleLease``).
    public func cancel(executionID: UUID, on conn: PostgresConnection) async throws -> CancelOutcome {
        try await conn.withTransaction { tx in
            // Lock order (sql/workflow 0012): a step's run row, then the ready row (as a claim
            // takes it), then the execution.
            try await tx.query(LeaseQueries.lockRun(executionID), purpose: "cancel: the run first")
            try await tx.query(LeaseQueries.unready(executionID), purpose: "cancel: out of the queue")
            let row = try await tx.query(LeaseQueries.cancel(executionID), purpose: "cancel execution").single()
            guard let before = try row.decodeOptional("before", as: String.self) else { return .notFound }
            guard try row.decode("cancelled", as: Int.self) == 1 else { return .alreadyFinished }
            return before == "running" ? .cancelledRunning : .cancelledQueued
        }
    }

    // MARK: Listings

    /// Leases past their expiry (as of `asOf`, default now), oldest first, paged by a stable cursor.
    public func listExpiredLeases(
        asOf: Date? = nil, namespace: Namespace? = nil, after: ExpiredLeaseCursor? = nil, limit: Int = 100, on conn: PostgresConnection
    ) async throws -> [ExpiredLease] {
        guard (1...1000).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to 1000, got \(limit)") }
        return try await conn.query(LeaseQueries.listExpired(asOf: asOf, namespace: namespace, after: after, limit: limit), purpose: "list expired leases")
            .map { row in
                ExpiredLease(
                    executionID: try row.decode("execution_id"), namespace: try row.decode("namespace"), lane: try row.decode("lane"),
                    attemptIndex: try row.decode("attempt_index"), epoch: try row.decode("lease_epoch"),
                    workerInstanceID: try row.decode("worker_instance_id"), expiresAt: try row.decode("lease_expires_at"))
            }
    }

    /// Current leases (expired ones not yet reclaimed included), soonest expiry first.
    public func listCurrentLeases(
        namespace: Namespace? = nil, after: ExpiredLeaseCursor? = nil, limit: Int = 100, on conn: PostgresConnection
    ) async throws -> [CurrentLease] {
        guard (1...1000).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to 1000, got \(limit)") }
        return try await conn.query(LeaseQueries.listCurrent(namespace: namespace, after: after, limit: limit), purpose: "list leases")
            .map { row in
                CurrentLease(
                    executionID: try row.decode("execution_id", as: UUID.self).lowercasedText, namespace: try row.decode("namespace"), lane: try row.decode("lane"),
                    attemptIndex: try row.decode("attempt_index"), epoch: try row.decode("lease_epoch"),
                    workerInstanceID: try row.decode("worker_instance_id"), expiresAt: try row.decode("lease_expires_at"),
                    startedAt: try row.decode("started_at"), leaseMs: try row.decode("lease_ms"), runID: try row.decodeOptional("run_id"),
                    step: try row.decodeOptional("step"), readAt: try row.decode("read_at"))
            }
    }

    /// The lease-expiry scanner's decisions, newest first, before id `before`.
    public func listDecisions(before: Int64? = nil, limit: Int = 100, on conn: PostgresConnection) async throws -> [LeaseDecision] {
        guard (1...1000).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to 1000, got \(limit)") }
        return try await conn.query(LeaseQueries.decisions(before: before, limit: limit), purpose: "list lease decisions").map { row in
            LeaseDecision(
                id: try row.decode("id"), executionID: try row.decode("execution_id", as: UUID.self).lowercasedText, attemptIndex: try row.decode("attempt_index"),
                decision: try row.decode("decision"), term: try row.decode("term"), at: try row.decode("at"),
                namespace: try row.decodeOptional("namespace"), lane: try row.decodeOptional("lane"),
                runID: try row.decodeOptional("run_id"), step: try row.decodeOptional("step"))
        }
    }

    public static let states = ["queued", "running", "completed", "failed", "dead_lettered", "cancelled"]

    public func listExecutions(namespace: Namespace?, state: String?, limit: Int, on conn: PostgresConnection) async throws -> [ExecutionRecord] {
        if let state, !Self.states.contains(state) {
            throw RegentError(.invalidInput, "invalid state \(quoted(state)): use one of \(Self.states.joined(separator: ", "))")
        }
        guard (1...1000).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to 1000, got \(limit)") }
        return try await conn.query(LeaseQueries.listExecutions(namespace, state: state, limit: limit), purpose: "list executions").map { row in
            ExecutionRecord(
                executionID: try row.decode("execution_id"), namespace: try row.decode("namespace"), lane: try row.decode("lane"),
                state: try row.decode("state"), attempts: try row.decode("attempts"), maxAttempts: try row.decode("max_attempts"),
                epoch: try row.decode("lease_epoch"), createdAt: try row.decode("created_at"))
        }
    }
}
