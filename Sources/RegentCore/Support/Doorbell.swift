import Synchronization

/// Wakes one sleeper early: `wait(upTo:)` returns true when `ring()` was called (now or
/// since the last wait), false when the time ran out. `ring()` is synchronous, so callbacks
/// that cannot suspend (a fence that found its term over) ring it directly.
public final class Doorbell: Sendable {
    private struct State {
        var rung = false
        var waiter: (id: Int, continuation: CheckedContinuation<Bool, Never>)?
        var nextID = 0
    }
    private let state = Mutex(State())

    public init() {}

    public func ring() {
        let waiter = state.withLock { s -> CheckedContinuation<Bool, Never>? in
            guard let waiter = s.waiter else {
                s.rung = true
                return nil
            }
            s.waiter = nil
            return waiter.continuation
        }
        waiter?.resume(returning: true)
    }

    /// One sleeper at a time.
    public func wait(upTo duration: Duration) async -> Bool {
        let id = state.withLock { s -> Int? in
            if s.rung {
                s.rung = false
                return nil
            }
            s.nextID += 1
            return s.nextID
        }
        guard let id else { return true }
        guard duration > .zero else { return false }
        // The timer is a child task (structured), so it inherits the caller's executor
        // preference: a leader waiting for its next confirmation wakes on the leadership
        // thread even while request handling saturates the cooperative pool (an unstructured
        // timer task ran there, and woke the leader seconds late under load). Leaving the
        // scope cancels and awaits it.
        async let _ = expire(id, after: duration)
        return await withCheckedContinuation { (cont: CheckedContinuation<Bool, Never>) in
            let rang = state.withLock { s -> Bool in
                if s.rung {
                    s.rung = false
                    return true
                }
                s.waiter = (id, cont)
                return false
            }
            if rang { cont.resume(returning: true) }
        }
    }

    private func expire(_ id: Int, after duration: Duration) async {
        // Cancelled (the waiting task was): the waiter returns now, as if the time ran out.
        // After a ring the waiter is gone already, so this resumes nothing.
        try? await Task.sleep(for: duration)
        let waiter = state.withLock { s -> CheckedContinuation<Bool, Never>? in
            guard let waiter = s.waiter, waiter.id == id else { return nil }
            s.waiter = nil
            return waiter.continuation
        }
        waiter?.resume(returning: false)
    }
}
