import Foundation
import Logging
import PostgresClient

/// A worker for workflow steps, for demos, drills and benchmarks: it registers in the runs
/// namespace, keeps its registration alive, claims steps of its lanes (long-polling), "does"
/// each one (a pause of `work`), and completes it with an output naming itself and the step
/// and with a cost of `costPerStep`. A completion refused as stale (its run was cancelled or
/// failed, or its lease was reclaimed) is dropped, as a real worker must. It stops when its
/// task is cancelled.
///
/// What a real worker does is the same loop with real work in the middle: claim → run →
/// complete with output and cost (docs/runs.md).
public struct StepWorker: Sendable {
    public var instanceID: WorkerInstanceID
    public var lanes: [Lane]
    public var capabilities: [Capability]
    /// Steps claimed at once (and completed in one batch).
    public var batch = 1
    public var work: Duration = .zero
    public var costPerStep: Double = 1
    public var livenessTTL: Duration = .seconds(10)

    public init(instanceID: WorkerInstanceID, lanes: [Lane], capabilities: [Capability] = []) {
        self.instanceID = instanceID
        self.lanes = lanes
        self.capabilities = capabilities
    }

    /// How many steps it completed (accepted), and how many completions were refused as stale.
    public struct Tally: Sendable {
        public var completed = 0
        public var stale = 0
        public init() {}
    }

    public func run(pool: ConnectionPool, waker: QueueWaker? = nil, logger: Logger = Logger(label: "regent.worker")) async -> Tally {
        var tally = Tally()
        let ns = RunStore.namespace
        // Registered before the first claim (retrying until it is, or the worker is cancelled).
        let register: @Sendable () async throws -> Void = {
            _ = try await pool.withConnection { conn in
                try await WorkerRegistry().register(
                    namespace: ns, workerInstanceID: instanceID, workerID: try WorkerID("step-worker"), lanes: lanes,
                    capabilities: capabilities, livenessTTL: livenessTTL, on: conn)
            }
        }
        while !Task.isCancelled {
            do {
                try await register()
                break
            } catch {
                logger.warning("worker registration failed; retrying", metadata: ["worker": "\(instanceID)", "error": "\(error)"])
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        await withTaskGroup(of: Void.self) { group in
            // Liveness: re-register (which refreshes) well within the TTL; a swept worker comes back.
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: livenessTTL / 4)
                    do { try await register() } catch {
                        if Task.isCancelled { return }
                        logger.warning("worker registration failed; retrying", metadata: ["worker": "\(instanceID)", "error": "\(error)"])
                    }
                }
            }
            // Completions ride on the next claim (one round trip per batch); when that claim finds
            // nothing, the worker long-polls.
            var leases: [Lease] = []
            while !Task.isCancelled {
                do {
                    if leases.isEmpty {
                        leases = try await LeaseStore().claim(
                            namespace: ns, lanes: lanes, workerInstanceID: instanceID, capabilities: capabilities, leaseDuration: nil,
                            limit: batch, wait: .seconds(1), waker: waker, pool: pool)
                        if leases.isEmpty { continue }
                    }
                    if work > .zero { try await Task.sleep(for: work) }
                    let completions = try leases.map { lease in
                        Completion(
                            executionID: lease.executionID, epoch: lease.epoch,
                            result: #"{"step":"\#(lease.step?.name ?? "")","by":"\#(instanceID.value)","attempt":\#(lease.attemptIndex)}"#,
                            cost: costPerStep > 0 ? [try Cost(amount: costPerStep)] : [], runID: lease.step?.runID)
                    }
                    let (outcome, next) = try await pool.withConnection {
                        try await LeaseStore().completeAndClaim(
                            completions, namespace: ns, lanes: lanes, workerInstanceID: instanceID, capabilities: capabilities,
                            leaseDuration: nil, limit: batch, on: $0)
                    }
                    tally.completed += outcome.done.count
                    tally.stale += outcome.stale.count
                    leases = next
                } catch is CancellationError {
                    break
                } catch let error as RegentError where error.code == .notRegistered {
                    leases = []
                    try? await Task.sleep(for: .milliseconds(100))
                } catch {
                    if Task.isCancelled { break }
                    logger.warning("worker round failed; retrying", metadata: ["worker": "\(instanceID)", "error": "\(error)"])
                    leases = []
                    try? await Task.sleep(for: .milliseconds(200))
                }
            }
            group.cancelAll()
        }
        return tally
    }
}
