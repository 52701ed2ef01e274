import Logging

/// One piece of housekeeping only the leader does. A duty runs from election to
/// demotion; every write it makes goes through the fence it is given.
public protocol LeaderDuty: Sendable {
    var name: String { get }
    /// Runs until cancelled. Throwing reports a failed round; the runner retries.
    func run(fence: LeaderFence) async throws
}

/// Starts every duty on election, cancels and awaits them on demotion.
/// A duty that fails three times in a row without progress asks the elector to resign
/// (a leader that cannot do its job should let another node try).
public actor DutyRunner {
    let duties: [any LeaderDuty]
    let logger: Logger
    private var running: Task<Void, Never>?
    let onRepeatedFailure: @Sendable (String) async -> Void

    public init(duties: [any LeaderDuty], logger: Logger = Logger(label: "regent.duties"), onRepeatedFailure: @escaping @Sendable (String) async -> Void) {
        self.duties = duties
        self.logger = logger
        self.onRepeatedFailure = onRepeatedFailure
    }

    public func start(_ fence: LeaderFence) {
        running?.cancel()
        let duties = self.duties
        let logger = self.logger
        let onRepeatedFailure = self.onRepeatedFailure
        running = Task {
            await withTaskGroup(of: Void.self) { group in
                for duty in duties {
                    group.addTask {
                        var failures = 0
                        while !Task.isCancelled {
                            do {
                                try await duty.run(fence: fence)
                                return
                            } catch let error as RegentError where error.code == .notLeader {
                                logger.warning("duty stopped: not leader", metadata: ["duty": "\(duty.name)", "term": "\(fence.term)"])
                                return
                            } catch {
                                if Task.isCancelled { return }
                                failures += 1
                                logger.error("leader duty failed", metadata: ["duty": "\(duty.name)", "error": "\(error)", "failures": "\(failures)"])
                                if failures >= 3 {
                                    await onRepeatedFailure("duty \(duty.name) failed \(failures) times in a row: \(error)")
                                    return
                                }
                                try? await Task.sleep(for: .milliseconds(500 * failures))
                            }
                        }
                    }
                }
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
