import CoreMetrics
import Logging

/// One piece of housekeeping only the leader does, as one round at a time: the runner owns
/// the loop, the pacing, the failure counting and the metrics; a duty is only its query.
/// Every write a round makes goes through the fence it is given.
public protocol LeaderDuty: Sendable {
    var name: String { get }
    /// The pause between rounds that found nothing more to do.
    var interval: Duration { get }
    /// One round. Returns true when more work is waiting (a full page): the next round runs at once.
    func runOnce(fence: LeaderFence) async throws -> Bool
}

/// Starts every duty on election, cancels and awaits them on demotion.
///
/// A duty whose rounds fail `maxConsecutiveFailures` times in a row asks the elector to
/// resign (a leader that cannot do its job should let another node try); a successful round
/// resets the count, so rare transient errors spread over days never add up. A refused fence
/// (`notLeader`) counts like any other failure: a node that keeps the lock but whose writes
/// are refused (a pooler faking its session, a lost term) must not keep the title.
public actor DutyRunner {
    let duties: [any LeaderDuty]
    let logger: Logger
    let maxConsecutiveFailures: Int
    let retryDelay: Duration
    private var running: Task<Void, Never>?
    let onRepeatedFailure: @Sendable (String) async -> Void
    let metrics: RegentMetrics

    public init(
        duties: [any LeaderDuty], maxConsecutiveFailures: Int = 3, retryDelay: Duration = .milliseconds(500), metrics: RegentMetrics = .discarded,
        logger: Logger = Logger(label: "regent.duties"), onRepeatedFailure: @escaping @Sendable (String) async -> Void
    ) {
        self.duties = duties
        self.maxConsecutiveFailures = maxConsecutiveFailures
        self.retryDelay = retryDelay
        self.metrics = metrics
        self.logger = logger
        self.onRepeatedFailure = onRepeatedFailure
    }

    public func start(_ fence: LeaderFence) {
        running?.cancel()
        let duties = self.duties
        let (logger, metrics, limit, retryDelay) = (self.logger, self.metrics, self.maxConsecutiveFailures, self.retryDelay)
        let onRepeatedFailure = self.onRepeatedFailure
        // Duties are not latency-critical: back on the cooperative pool, off the leadership thread.
        running = Task(executorPreference: globalConcurrentExecutor) {
            await withTaskGroup(of: Void.self) { group in
                for duty in duties {
                    group.addTask {
                        await Self.loop(duty, fence: fence, limit: limit, retryDelay: retryDelay, metrics: metrics, logger: logger, onRepeatedFailure: onRepeatedFailure)
                    }
                }
            }
        }
    }

    private static func loop(
        _ duty: any LeaderDuty, fence: LeaderFence, limit: Int, retryDelay: Duration, metrics: RegentMetrics, logger: Logger,
        onRepeatedFailure: @Sendable (String) async -> Void
    ) async {
        let failuresTotal = Counter(label: "regent_duty_failures_total", dimensions: [("duty", duty.name)], factory: metrics.factory)
        let failing = Gauge(label: "regent_duty_consecutive_failures", dimensions: [("duty", duty.name)], factory: metrics.factory)
        var failures = 0
        failing.record(0)
        while !Task.isCancelled {
            do {
                let more = try await duty.runOnce(fence: fence)
                if failures > 0 { logger.info("leader duty recovered", metadata: ["duty": "\(duty.name)", "after_failures": "\(failures)"]) }
                failures = 0
                failing.record(0)
                if !more { try await Task.sleep(for: duty.interval) }
            } catch {
                if Task.isCancelled { return }
                failures += 1
                failuresTotal.increment()
                failing.record(Double(failures))
                let refused = (error as? RegentError)?.code == .notLeader
                logger.error(
                    refused ? "leader duty refused by the fence" : "leader duty failed",
                    metadata: ["duty": "\(duty.name)", "error": "\(error)", "consecutive_failures": "\(failures)", "term": "\(fence.term)"])
                if failures >= limit {
                    await onRepeatedFailure("duty \(duty.name) failed \(failures) times in a row: \(error)")
                    return
                }
                try? await Task.sleep(for: retryDelay * failures)
            }
        }
    }

    /// Cancels the duties and waits until every one of them has returned.
    public func stop() async {
        guard let task = running else { return }
        running = nil
        task.cancel()
        await task.value
    }
}
