import Foundation
import Synchronization

/// A serial executor, and task executor, on one thread of its own.
///
/// Each node's leadership loop (lock confirmations, the elector's deadlines) and membership
/// heartbeat run on one of these (one per node, so nodes sharing a process — tests — do not
/// wait for each other), not on Swift's cooperative pool: on a two-core machine that pool has
/// two threads, and request handling that keeps both busy (CPU-heavy bodies, many large
/// pages) would otherwise delay a confirmation past the lease window and depose a healthy
/// leader. Work that prefers this executor (`withTaskExecutorPreference`) runs its child
/// tasks, timers' wake-ups and default actors' jobs here too.
public final class DedicatedExecutor: TaskExecutor, SerialExecutor {
    private struct State: ~Copyable {
        var jobs: [UnownedJob] = []
        var waiting = false
    }

    private let state = Mutex(State())
    private let wake = DispatchSemaphore(value: 0)
    public let name: String

    public init(name: String) {
        self.name = name
        // The thread keeps the executor alive for the process's life (executors are long-lived).
        let thread = Thread { self.loop() }
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        let signal = state.withLock { s -> Bool in
            s.jobs.append(unowned)
            if s.waiting {
                s.waiting = false
                return true
            }
            return false
        }
        if signal { wake.signal() }
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor { UnownedSerialExecutor(ordinary: self) }

    private func loop() {
        while true {
            let batch = state.withLock { s -> [UnownedJob] in
                let jobs = s.jobs
                s.jobs.removeAll(keepingCapacity: true)
                if jobs.isEmpty { s.waiting = true }
                return jobs
            }
            if batch.isEmpty {
                wake.wait()
                continue
            }
            for job in batch {
                job.runSynchronously(isolatedTo: asUnownedSerialExecutor(), taskExecutor: asUnownedTaskExecutor())
            }
        }
    }

}
