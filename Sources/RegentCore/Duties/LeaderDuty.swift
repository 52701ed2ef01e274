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

/// Runs every duty of a term, each in a child task, for as long as the leader leads.
///
/// The elector calls ``run(fence:onRepeatedFailure:)`` inside its leading state, in a task
/// group that it cancels and awaits before it resigns or steps down: no duty round outlives
/// the term it was started for. A duty whose rounds fail `maxConsecutiveFailures` times in
/// a row asks the elector to resign (a leader that cannot do its job should let another
/// node try); a successful round resets the count, so rare transient errors spread over
/// days never add up. A refused fence (`notLeader`) counts like any other failure: a node
/// that keeps the lock but whose writes are refused (a pooler faking its session, a lost
/// term) must not keep the title.
public struct DutyRunner: Sendable {
    let duties: [any LeaderDuty]
    let logger: Logger
    let maxConsecutiveFailures: Int
    let retryDelay: Duration
    let metrics: RegentMetrics

    public init(
        duties: [any LeaderDuty], maxConsecutiveFailures: Int = 3, retryDelay: Duration = .milliseconds(500), metrics: RegentMetrics = .discarded,
        logger: Logger = Logger(label: "regent.duties")
    ) {
        self.duties = duties
        self.maxConsecutiveFailures = maxConsecutiveFailures
        self.retryDelay = retryDelay
        self.metrics = metrics
        self.logger = logger
    }

    /// Runs every duty under `fence` until cancelled (each duty also ends once it asked to resign).
    public func run(fence: LeaderFence, onRepeatedFailure: @escaping @Sendable (String) async -> Void) async {
        let (logger, metrics, limit, retryDelay) = (self.logger, self.metrics, self.maxConsecutiveFailures, self.retryDelay)
        await withTaskGroup(of: Void.self) { group in
            for duty in duties {
                // Duties are not latency-critical: on the cooperative pool, off the leadership thread.
                group.addTask(executorPreference: globalConcurrentExecutor) {
                    await Self.loop(duty, fence: fence, limit: limit, retryDelay: retryDelay, metrics: metrics, logger: logger, onRepeatedFailure: onRepeatedFailure)
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
}

/// What the duties that wait for a due time (timers, schedules) share: pages fired side by side,
/// and a sleep until the next due time that a doorbell cuts short.
enum DueTimeDuty {
    /// `parts` pages at once, page `part` of `parts` each (so they never take the same rows).
    static func sideBySide<Page: Sendable>(_ parts: Int, _ page: @escaping @Sendable (Int) async throws -> Page) async throws -> [Page] {
        try await withThrowingTaskGroup(of: Page.self) { group in
            for part in 0..<parts { group.addTask { try await page(part) } }
            var all: [Page] = []
            for try await p in group { all.append(p) }
            return all
        }
    }

    /// Sleeps until `nextMs` from now (nil: nothing due), at most `idleProbe`, or until `bell` rings.
    static func sleep(untilDueIn nextMs: Int64?, idleProbe: Duration, bell: Doorbell?) async throws {
        let sleep = nextMs.map { min(Duration.milliseconds($0), idleProbe) } ?? idleProbe
        if let bell {
            _ = await bell.wait(upTo: sleep)
        } else {
            try await Task.sleep(for: sleep)
        }
    }
}
