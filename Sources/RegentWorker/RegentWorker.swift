import CoreMetrics
import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import ServiceLifecycle

/// A worker for Regent's workflow steps over the HTTP API, with a token: no database
/// credentials, no libpq.
///
/// ```swift
/// let worker = RegentWorker(configuration: .init(urls: ["https://regent:8443"], token: token))
/// worker.step("charge-payment") { (ctx, input: ChargeInput) async throws -> ChargeOutput in
///     ctx.reportCost(12, unit: "cents")
///     return try await charge(input)
/// }
/// try await worker.run()   // until cancelled or shut down (SIGTERM through ServiceGroup)
/// ```
///
/// What it promises:
/// - **Renewal**: each running step's lease is renewed every third of its length; when the run
///   is cancelled or the lease is lost (a renewal refused, or none got through before the lease
///   ran out) the handler's task is cancelled, and nothing it returns is completed.
/// - **Errors**: a thrown error fails the attempt (retried as the step's manifest says);
///   ``NonRetryable`` fails the step for good.
/// - **Completions that cannot count twice**: a completion whose answer is lost is sent again,
///   to the next node if need be; the server answers a repeat with `already_completed`.
/// - **Batching**: finished steps are reported with the next claim in one request
///   (`complete-and-claim`) or together in one `complete-batch`.
/// - **Graceful shutdown** (``shutdown()`` or ServiceLifecycle's): no new claims; running
///   steps get ``WorkerConfiguration/shutdownGrace`` to finish, then are cancelled and handed
///   back (failed as retryable); completions are flushed; the worker deregisters.
public final class RegentWorker: Service, Sendable {
    public typealias Handler = @Sendable (StepContext) async throws -> JSONValue

    public let configuration: WorkerConfiguration
    let logger: Logger
    private let handlers = NIOLockedValueBox<[String: Handler]>([:])
    private let fallbackHandler = NIOLockedValueBox<Handler?>(nil)
    /// The running worker's state (nil before `run` and after it).
    private let active = NIOLockedValueBox<WorkerState?>(nil)
    private let stopRequested = NIOLockedValueBox(false)
    let metrics: WorkerMetrics
    /// How the steps this worker took ended, since it was made.
    public let tally = StepTally()

    public init(configuration: WorkerConfiguration, logger: Logger = Logger(label: "regent.worker")) {
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "worker_instance_id"] = "\(configuration.instanceID)"
        self.logger = logger
        metrics = WorkerMetrics()
    }

    /// Handles step `name` (of any workflow type) with typed input and output: the run's input
    /// decoded as `Input`; the returned `Output` is the step's output (a JSON object; any other
    /// JSON value is stored as `{"value": …}`).
    public func step<Input: Decodable & Sendable, Output: Encodable & Sendable>(
        _ name: String, _ handler: @escaping @Sendable (StepContext, Input) async throws -> Output
    ) {
        on(name) { ctx in
            let input: Input
            do { input = try ctx.input.decode(as: Input.self) } catch {
                throw NonRetryable("the input of run \(ctx.runID) does not decode as \(Input.self) for step \(name): \(error)")
            }
            return try JSONValue(encoding: try await handler(ctx, input))
        }
    }

    /// Handles step `name` with untyped JSON.
    public func on(_ name: String, _ handler: @escaping Handler) {
        handlers.withLockedValue { $0[name] = handler }
    }

    /// Handles every step without a handler of its own (a step no handler knows otherwise
    /// fails its attempt, naming the worker and the step).
    public func fallback(_ handler: @escaping Handler) {
        fallbackHandler.withLockedValue { $0 = handler }
    }

    /// Begins a graceful shutdown (as SIGTERM does under a ServiceGroup): ``run()`` returns once
    /// running steps finished or were handed back and the worker deregistered.
    public func shutdown() {
        stopRequested.withLockedValue { $0 = true }
        if let state = active.withLockedValue({ $0 }) { Task { await state.beginStopping() } }
    }

    /// Registers, claims and runs steps until cancelled or shut down. Throws
    /// ``RegentWorkerError`` for what no retry can mend (a bad configuration, a refused token).
    public func run() async throws {
        try configuration.validate()
        let api = try APIClient(configuration: configuration, logger: logger)
        let state = WorkerState(capacity: configuration.maxConcurrentSteps, batching: configuration.batchCompletions)
        active.withLockedValue { $0 = state }
        if stopRequested.withLockedValue({ $0 }) { await state.beginStopping() }
        defer { active.withLockedValue { $0 = nil } }
        do {
            // Cancelling run() stops the worker as a shutdown does, without the grace period's wait.
            try await withTaskCancellationHandler {
                try await withGracefulShutdownHandler {
                    try await self.serve(api, state)
                } onGracefulShutdown: {
                    Task { await state.beginStopping() }
                }
            } onCancel: {
                Task { await state.beginStopping() }
            }
        } catch {
            await api.shutdown()
            throw error
        }
        await api.shutdown()
    }

    // MARK: - The loops

    private func serve(_ api: APIClient, _ state: WorkerState) async throws {
        try await register(api, state)
        logger.info(
            "worker started",
            metadata: ["nodes": "\(configuration.urls)", "lanes": "\(configuration.lanes)", "max_concurrent_steps": "\(configuration.maxConcurrentSteps)"])
        let fatal = NIOLockedValueBox<RegentWorkerError?>(nil)
        await withTaskGroup(of: Void.self) { loops in
            loops.addTask { await self.heartbeats(api, state) }
            loops.addTask { await self.flushes(api, state) }
            do { try await self.claimAndRun(api, state) } catch let error as RegentWorkerError { fatal.withLockedValue { $0 = error } } catch {}
            // No more claims: running steps are done or handed back. Send what is left, stop.
            await state.closeOutbox()
            await loops.waitForAll()
        }
        if let error = fatal.withLockedValue({ $0 }) { throw error }
        await deregister(api)
        logger.info("worker stopped", metadata: ["completed": "\(tally.completed)", "failed": "\(tally.failed)", "lost": "\(tally.lost)"])
    }

    /// Registers (or refreshes) this instance, retrying until it is done or the worker stops.
    private func register(_ api: APIClient, _ state: WorkerState) async throws {
        let body: JSONValue = .object([
            "namespace": .string(configuration.namespace), "worker_instance_id": .string(configuration.instanceID),
            "worker_id": .string(configuration.workerID), "lanes": .array(configuration.lanes.map(JSONValue.string)),
            "capabilities": .array(configuration.capabilities.map(JSONValue.string)),
            "liveness_ttl_ms": .integer(Int64(configuration.livenessTTL.seconds * 1000)),
        ])
        var delay = Duration.milliseconds(100)
        while true {
            try Task.checkCancellation()
            do {
                let answer = try await api.post("/v1/workers/register", body, timeout: configuration.requestTimeout)
                switch answer.status {
                case 200, 201: return
                case 401, 403: throw RegentWorkerError.unauthorized(status: answer.status, message: answer.errorMessage)
                default: throw RegentWorkerError.refused(path: "/v1/workers/register", status: answer.status, code: answer.errorCode, message: answer.errorMessage)
                }
            } catch let error as APIClient.Unreachable {
                logger.warning("could not register; retrying", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
            }
            try await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(5))
        }
    }

    private func deregister(_ api: APIClient) async {
        let body: JSONValue = ["namespace": .string(configuration.namespace), "worker_instance_id": .string(configuration.instanceID)]
        for _ in 0..<max(2, configuration.urls.count) {
            guard let answer = try? await api.post("/v1/workers/deregister", body, timeout: configuration.requestTimeout) else { continue }
            if answer.status != 200 { logger.notice("deregistration answered \(answer.status) \(answer.errorCode)") }
            return
        }
        logger.warning("could not deregister; the registry's liveness TTL will retire this instance")
    }

    /// Heartbeats every third of the liveness TTL (a claim refreshes nothing), registering
    /// again when the registry lost the worker; ends when the worker stops.
    private func heartbeats(_ api: APIClient, _ state: WorkerState) async {
        let body: JSONValue = ["namespace": .string(configuration.namespace), "worker_instance_id": .string(configuration.instanceID)]
        while await state.nap(configuration.livenessTTL / 3) {
            do {
                let answer = try await api.post("/v1/workers/heartbeat", body, timeout: configuration.requestTimeout)
                if answer.status == 404 {
                    logger.notice("the registry no longer knows this worker; registering again")
                    try await register(api, state)
                }
            } catch {
                logger.debug("heartbeat failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Takes work while there is room, until the worker stops; then waits for running steps
    /// (cancelling them after the grace period).
    private func claimAndRun(_ api: APIClient, _ state: WorkerState) async throws {
        let claimBody: [String: JSONValue] = [
            "namespace": .string(configuration.namespace), "worker_instance_id": .string(configuration.instanceID),
            "lanes": .array(configuration.lanes.map(JSONValue.string)), "capabilities": .array(configuration.capabilities.map(JSONValue.string)),
        ]
        try await withThrowingDiscardingTaskGroup { steps in
            var delay = Duration.milliseconds(50)
            while let (room, completions) = await state.nextClaim() {
                var body = claimBody
                body["limit"] = .integer(Int64(room))
                let path: String
                let timeout: Duration
                if completions.isEmpty {
                    path = "/v1/leases/claim"
                    body["wait_ms"] = .integer(Int64(configuration.longPoll.seconds * 1000))
                    timeout = configuration.requestTimeout + configuration.longPoll
                } else {
                    path = "/v1/leases/complete-and-claim"
                    body["completions"] = .array(completions.map(\.json))
                    timeout = configuration.requestTimeout
                }
                // Only a long poll lets the flusher send what finishes meanwhile; a complete-and-claim
                // is short, and what finishes during it rides on the next one.
                await state.parkClaimer(completions.isEmpty)
                tally.claimed(completions: completions.count)
                let answer: APIClient.Answer
                do {
                    answer = try await api.post(path, .object(body), timeout: timeout)
                    await state.parkClaimer(false)
                } catch {
                    await state.parkClaimer(false)
                    if error is CancellationError || Task.isCancelled { await state.requeue(completions); break }
                    // The completions may or may not have landed: sent again, they are told which.
                    await state.requeue(completions)
                    logger.warning("claim failed; retrying", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                    try? await Task.sleep(for: delay)
                    delay = min(delay * 2, .seconds(5))
                    continue
                }
                switch answer.status {
                case 200:
                    delay = .milliseconds(50)
                    report(completions, answer, state)
                    let at = ContinuousClock.now
                    tally.leased(answer.body["leases"]?.arrayValue?.count ?? 0)
                    for item in answer.body["leases"]?.arrayValue ?? [] {
                        guard let lease = Lease(item, claimedAt: at) else {
                            logger.error("a claim answered a lease this library cannot read", metadata: ["lease": "\(item)"])
                            continue
                        }
                        await state.started()
                        steps.addTask { await self.perform(lease, api, state) }
                    }
                case 404 where answer.errorCode == "not_registered":
                    // Completions were applied even though the claim was refused (complete-and-claim's contract).
                    report(completions, answer, state)
                    logger.notice("the registry no longer knows this worker; registering again")
                    try await register(api, state)
                case 401, 403:
                    await state.requeue(completions)
                    throw RegentWorkerError.unauthorized(status: answer.status, message: answer.errorMessage)
                case 429:
                    await state.requeue(completions)
                    try? await Task.sleep(for: delay)
                    delay = min(delay * 2, .seconds(5))
                default:
                    await state.requeue(completions)
                    throw RegentWorkerError.refused(path: path, status: answer.status, code: answer.errorCode, message: answer.errorMessage)
                }
            }
            // Stopping: running steps get the grace period, then are cancelled (and hand their work back).
            if await !state.waitIdle(for: configuration.shutdownGrace) {
                let running = await state.running
                logger.notice("shutdown grace over; cancelling running steps and handing them back", metadata: ["running": "\(running)"])
                steps.cancelAll()
            }
        }
    }

    /// Sends batches of completions while the claimer is waiting (a long poll or a full
    /// worker), so no completion waits for the next claim; ends when the outbox is closed and empty.
    private func flushes(_ api: APIClient, _ state: WorkerState) async {
        while let batch = await state.nextFlush() {
            // While stopping, a flush waits for unreachable nodes only so long.
            await send(batch, api, state, patience: await state.isStopping ? configuration.requestTimeout * 2 : nil)
        }
    }

    /// Sends completions until each is answered: a lost answer is retried (on the next node),
    /// and the server tells a repeat that it counted. Gives up on an item only once its lease
    /// is long gone (its work is then another worker's).
    private func send(_ items: [CompletionItem], _ api: APIClient, _ state: WorkerState, patience: Duration?) async {
        var pending = items
        var delay = Duration.milliseconds(50)
        let until = patience.map { Date().addingTimeInterval($0.seconds) }
        while !pending.isEmpty && !Task.isCancelled {
            let batch = Array(pending.prefix(1000))
            do {
                let answer = try await api.post("/v1/leases/complete-batch", ["completions": .array(batch.map(\.json))], timeout: configuration.requestTimeout)
                guard answer.status == 200 else {
                    logger.error("completions refused", metadata: ["status": "\(answer.status)", "code": "\(answer.errorCode)", "message": "\(answer.errorMessage)"])
                    if answer.status == 429 || answer.status >= 500 { throw APIClient.Unreachable(node: answer.node, reason: "\(answer.status)") }
                    for _ in batch { count(.dropped) }
                    pending.removeFirst(batch.count)
                    continue
                }
                report(batch, answer, state)
                pending.removeFirst(batch.count)
                delay = .milliseconds(50)
            } catch {
                let now = Date()
                let outOfPatience = until.map { now >= $0 } ?? false
                let (keep, gone) = outOfPatience ? ([], pending) : (pending.filter { $0.giveUpAt > now }, pending.filter { $0.giveUpAt <= now })
                for item in gone {
                    logger.error(
                        outOfPatience ? "could not send a completion before the worker stopped; dropping it (its lease will expire and the step run again)"
                            : "could not send a completion before its lease ran out long ago; dropping it",
                        metadata: ["execution_id": "\(item.executionID)"])
                    count(.dropped)
                }
                pending = keep
                if pending.isEmpty { break }
                logger.warning("completions not sent; retrying", metadata: ["error": "\(error)", "items": "\(pending.count)", "retry_in": "\(delay)"])
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(2))
            }
        }
    }

    /// Tallies what a complete-batch or complete-and-claim answer says of `items`.
    private func report(_ items: [CompletionItem], _ answer: APIClient.Answer, _ state: WorkerState) {
        guard !items.isEmpty else { return }
        let stale = Set((answer.body["stale"]?.arrayValue ?? []).compactMap(\.stringValue))
        for item in items {
            if stale.contains(item.executionID) {
                logger.warning("completion refused: the lease was lost (reclaimed, or the run was cancelled or finished)", metadata: ["execution_id": "\(item.executionID)"])
                count(.lost)
            } else {
                count(.completed)
            }
        }
    }

    // MARK: - One step

    private enum StepEnd: Sendable {
        case returned(JSONValue)
        case threw(any Error)
        case leaseLost
    }

    /// Runs one claimed step with its renewals, and reports how it ended.
    private func perform(_ lease: Lease, _ api: APIClient, _ state: WorkerState) async {
        await performStep(lease, api, state)
        await state.finished()
    }

    private func performStep(_ lease: Lease, _ api: APIClient, _ state: WorkerState) async {
        let started = ContinuousClock.now
        let instanceID = configuration.instanceID
        let ctx = StepContext(lease: lease, logger: logger) { path in
            let body: JSONValue = [
                "execution_id": .string(lease.executionID), "lease_epoch": .integer(lease.epoch), "worker_instance_id": .string(instanceID),
                "path": .string(path),
            ]
            let answer = try await api.post("/v1/vault/lease-read", body, timeout: .seconds(10))
            guard answer.status == 200 else {
                throw NonRetryable("reading secret \(path) was refused (\(answer.status) \(answer.errorCode)): \(answer.errorMessage)")
            }
            if let text = answer.body["value"]?.stringValue { return Array(text.utf8) }
            guard let encoded = answer.body["value_base64"]?.stringValue, let data = Data(base64Encoded: encoded) else {
                throw NonRetryable("reading secret \(path): the node's answer has no value")
            }
            return Array(data)
        }
        guard let handler = handlers.withLockedValue({ $0[lease.step ?? ""] }) ?? fallbackHandler.withLockedValue({ $0 }) else {
            await fail(lease, "worker \(configuration.instanceID) has no handler for step \(lease.step ?? "(none)")", retryable: true, api, state)
            return
        }
        let end: StepEnd = await withTaskGroup(of: StepEnd?.self) { group in
            group.addTask {
                do { return .returned(try await handler(ctx)) } catch { return .threw(error) }
            }
            group.addTask { await self.renewUntilLost(lease, api) ? .leaseLost : nil }
            var first: StepEnd?
            while let next = await group.next() {
                guard first == nil, let next else { continue }
                first = next
                group.cancelAll()
            }
            return first ?? .threw(CancellationError())
        }
        metrics.stepDuration.recordNanoseconds(Int64((ContinuousClock.now - started).seconds * 1e9))
        switch end {
        case .returned(let output):
            let object: JSONValue = output.objectValue == nil ? ["value": output] : output
            await state.post(CompletionItem(lease: lease, output: object, costs: ctx.costs.all, worker: configuration.instanceID))
        case .leaseLost:
            ctx.logger.warning("lease lost (the run was cancelled or finished, or the lease was reclaimed): the step was cancelled and its result dropped")
            count(.lost)
        case .threw(let error as NonRetryable):
            await fail(lease, error.message, retryable: false, api, state)
        case .threw(let error):
            let stopping = await state.isStopping
            guard error is CancellationError && stopping else {
                await fail(lease, "\(error)", retryable: true, api, state)
                return
            }
            // Handed back at shutdown: this task is cancelled, so the report goes from one that is not.
            let message = "handed back: worker \(configuration.instanceID) shut down before the step finished"
            await Task { await self.fail(lease, message, retryable: true, api, state) }.value
        }
    }

    /// Renews `lease` every third of its length until cancelled (false) or until the lease is
    /// lost (true): a renewal refused, or none got through before the lease ran out.
    private func renewUntilLost(_ lease: Lease, _ api: APIClient) async -> Bool {
        let body: JSONValue = [
            "execution_id": .string(lease.executionID), "lease_epoch": .integer(lease.epoch), "worker_instance_id": .string(configuration.instanceID),
        ]
        var expiresAt = lease.expiresAt
        var period = lease.length / 3
        while true {
            do { try await Task.sleep(for: period) } catch { return false }
            do {
                let answer = try await api.post("/v1/leases/renew", body, timeout: min(configuration.requestTimeout, max(period, .seconds(1))))
                switch answer.status {
                case 200:
                    if let next = answer.body["lease_expires_at"]?.stringValue.flatMap(Lease.parseInstant) { expiresAt = next }
                    period = max(.milliseconds(100), .milliseconds(Int64(expiresAt.timeIntervalSinceNow * 1000)) / 3)
                case 409, 404, 403:
                    return true
                default:
                    logger.warning("renewal answered \(answer.status) \(answer.errorCode)", metadata: ["execution_id": "\(lease.executionID)"])
                    period = .milliseconds(200)
                }
            } catch {
                if Task.isCancelled { return false }
                // Try the next node soon; once the lease has run out unrenewed, it is lost.
                if expiresAt.timeIntervalSinceNow <= 0 { return true }
                period = min(.seconds(1), .milliseconds(Int64(max(0.05, expiresAt.timeIntervalSinceNow) * 1000)) / 3)
            }
        }
    }

    /// Fails the attempt, retrying a lost answer until the lease is long gone. A 409 means it
    /// was no longer this worker's to fail (or an earlier try landed): nothing more to do.
    private func fail(_ lease: Lease, _ message: String, retryable: Bool, _ api: APIClient, _ state: WorkerState) async {
        count(.failed)
        let body: JSONValue = [
            "execution_id": .string(lease.executionID), "lease_epoch": .integer(lease.epoch), "worker_instance_id": .string(configuration.instanceID),
            "error": .string(String(message.prefix(1000))), "retryable": .bool(retryable),
        ]
        let giveUp = lease.expiresAt.addingTimeInterval(60)
        var delay = Duration.milliseconds(50)
        while Date() < giveUp && !Task.isCancelled {
            do {
                let answer = try await api.post("/v1/leases/fail", body, timeout: configuration.requestTimeout)
                if answer.status != 200 && answer.status != 409 {
                    logger.error("failing an attempt answered \(answer.status) \(answer.errorCode): \(answer.errorMessage)", metadata: ["execution_id": "\(lease.executionID)"])
                }
                return
            } catch {
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(2))
            }
        }
    }
}

/// A finished step's completion, waiting to be sent.
struct CompletionItem: Sendable {
    let executionID: String
    let json: JSONValue
    /// After this, the lease is long gone: the completion is dropped rather than retried.
    let giveUpAt: Date

    init(lease: Lease, output: JSONValue, costs: [JSONValue], worker: String) {
        executionID = lease.executionID
        var item: [String: JSONValue] = [
            "execution_id": .string(lease.executionID), "lease_epoch": .integer(lease.epoch), "worker_instance_id": .string(worker), "output": output,
        ]
        if let run = lease.runID { item["run_id"] = .string(run) }
        if !costs.isEmpty { item["cost"] = .array(costs) }
        json = .object(item)
        giveUpAt = max(lease.expiresAt, Date()).addingTimeInterval(120)
    }
}

/// The worker's shared state: free slots, the outbox of completions, whether the claimer is
/// parked (so the flusher sends) and whether the worker is stopping.
actor WorkerState {
    let capacity: Int
    private(set) var running = 0
    private var outbox: [CompletionItem] = []
    private var claimerParked = false
    private var outboxClosed = false
    private(set) var isStopping = false
    private var waiters: [CheckedContinuation<Void, Never>] = []
    /// Off: the claimer never carries completions, so the flusher sends each at once.
    let batching: Bool
    /// How long the claimer waits for more running steps to finish before a small batch.
    let linger: Duration

    init(capacity: Int, batching: Bool, linger: Duration = .milliseconds(2)) {
        self.capacity = capacity
        self.batching = batching
        self.linger = linger
    }

    private func wake() {
        let w = waiters
        waiters.removeAll()
        for c in w { c.resume() }
    }
    private func changed() async { await withCheckedContinuation { waiters.append($0) } }

    func beginStopping() {
        isStopping = true
        wake()
    }

    /// The room to claim into and the completions to send with the claim; nil once stopping.
    /// Waits while the worker is full (the flusher sends completions meanwhile).
    func nextClaim() async -> (Int, [CompletionItem])? {
        var lingerUntil: ContinuousClock.Instant?
        while true {
            if isStopping { return nil }
            if running < capacity {
                // Batching: while steps still run and fewer than half the slots are free, let more of
                // them finish (up to `linger`), so one request carries many completions and claims
                // many steps instead of one each.
                if batching && running > 0 && capacity - running < (capacity + 1) / 2 && linger > .zero {
                    let until = lingerUntil ?? ContinuousClock.now + linger
                    if lingerUntil == nil {
                        lingerUntil = until
                        _ = pokeAt(until)
                    }
                    if ContinuousClock.now < until {
                        await changed()
                        continue
                    }
                }
                let taken = batching ? outbox : []
                if batching { outbox.removeAll() }
                return (capacity - running, taken)
            }
            claimerParked = true
            wake()
            await changed()
            claimerParked = false
        }
    }

    func parkClaimer(_ parked: Bool) {
        claimerParked = parked
        if parked { wake() }
    }

    /// Completions to send now: when the claimer cannot carry them (it is waiting, or batching
    /// is off). nil once the outbox is closed and empty.
    func nextFlush() async -> [CompletionItem]? {
        while true {
            if !outbox.isEmpty && (claimerParked || outboxClosed || isStopping || !batching) {
                let batch = outbox
                outbox.removeAll()
                return batch
            }
            if outboxClosed && outbox.isEmpty { return nil }
            await changed()
        }
    }

    func post(_ item: CompletionItem) {
        outbox.append(item)
        wake()
    }

    func requeue(_ items: [CompletionItem]) {
        guard !items.isEmpty else { return }
        outbox.insert(contentsOf: items, at: 0)
        wake()
    }

    func closeOutbox() {
        outboxClosed = true
        wake()
    }

    func started() { running += 1 }
    func finished() {
        running -= 1
        wake()
    }

    /// Waits up to `limit` for the running steps to end; false if some still run.
    func waitIdle(for limit: Duration) async -> Bool {
        await wait(until: ContinuousClock.now + limit) { running > 0 }
        return running == 0
    }

    /// Sleeps `duration`; false when the outbox closed meanwhile (the worker is stopping).
    func nap(_ duration: Duration) async -> Bool {
        await wait(until: ContinuousClock.now + duration) { !outboxClosed }
        return !outboxClosed
    }

    /// Waits for changes while `condition` holds, until `deadline` (a timer wakes it then).
    private func wait(until deadline: ContinuousClock.Instant, while condition: () -> Bool) async {
        let timer = pokeAt(deadline)
        defer { timer.cancel() }
        while condition() && ContinuousClock.now < deadline { await changed() }
    }

    /// A wake-up of every waiter at `deadline`.
    private func pokeAt(_ deadline: ContinuousClock.Instant) -> Task<Void, Never> {
        Task { [weak self] in
            try? await Task.sleep(until: deadline)
            await self?.poke()
        }
    }
    private func poke() { wake() }

}

/// The worker's swift-metrics instruments (a Prometheus or other backend bootstrapped by the app).
struct WorkerMetrics: Sendable {
    enum Outcome: String, Sendable { case completed, failed, lost, dropped }
    let stepDuration = CoreMetrics.Timer(label: "regent_worker_step_duration_seconds")
    private let outcomes: [Outcome: Counter] = Dictionary(
        uniqueKeysWithValues: [Outcome.completed, .failed, .lost, .dropped].map { ($0, Counter(label: "regent_worker_steps_total", dimensions: [("outcome", $0.rawValue)])) })
    func steps(_ outcome: Outcome) { outcomes[outcome]?.increment() }
}

/// How the steps a worker took ended.
public final class StepTally: Sendable {
    private let counts = NIOLockedValueBox<[WorkerMetrics.Outcome: Int]>([:])
    func add(_ outcome: WorkerMetrics.Outcome) { counts.withLockedValue { $0[outcome, default: 0] += 1 } }
    /// Completions the cluster accepted (a repeat told `already_completed` counts once).
    public var completed: Int { counts.withLockedValue { $0[.completed, default: 0] } }
    /// Attempts failed (thrown errors, non-retryable ones, hand-backs at shutdown, steps with no handler).
    public var failed: Int { counts.withLockedValue { $0[.failed, default: 0] } }
    /// Steps whose lease was lost (cancelled runs, reclaimed leases): their results were dropped.
    public var lost: Int { counts.withLockedValue { $0[.lost, default: 0] } }
    /// Completions given up after their lease was long gone and no node could be reached.
    public var dropped: Int { counts.withLockedValue { $0[.dropped, default: 0] } }
    private let requests = NIOLockedValueBox((claims: 0, carried: 0, leases: 0))
    func claimed(completions: Int) { requests.withLockedValue { $0.claims += 1; $0.carried += completions } }
    func leased(_ n: Int) { requests.withLockedValue { $0.leases += n } }
    /// Claim requests sent (claim or complete-and-claim), the completions they carried, and the leases they brought.
    public var claims: (requests: Int, completionsCarried: Int, leases: Int) { requests.withLockedValue { ($0.claims, $0.carried, $0.leases) } }
}

extension RegentWorker {
    func count(_ outcome: WorkerMetrics.Outcome) {
        tally.add(outcome)
        metrics.steps(outcome)
    }
}
