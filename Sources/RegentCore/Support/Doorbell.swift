/// Wakes one sleeper early: `wait(upTo:)` returns true when `ring()` was called (now or
/// since the last wait), false when the time ran out.
actor Doorbell {
    private var rung = false
    private var waiter: (id: Int, continuation: CheckedContinuation<Bool, Never>)?
    private var nextID = 0

    func ring() {
        if let waiter {
            self.waiter = nil
            waiter.continuation.resume(returning: true)
        } else {
            rung = true
        }
    }

    func wait(upTo duration: Duration) async -> Bool {
        if rung {
            rung = false
            return true
        }
        guard duration > .zero else { return false }
        nextID += 1
        let id = nextID
        // The timer is a child task (structured), so it inherits the caller's executor
        // preference: a leader waiting for its next confirmation wakes on the leadership
        // thread even while request handling saturates the cooperative pool (an unstructured
        // timer task ran there, and woke the leader seconds late under load). Leaving the
        // scope cancels and awaits it.
        async let _ = expire(id, after: duration)
        return await withCheckedContinuation { waiter = (id, $0) }
    }

    private nonisolated func expire(_ id: Int, after duration: Duration) async {
        do { try await Task.sleep(for: duration) } catch { return }
        await expire(id)
    }

    private func expire(_ id: Int) {
        guard let waiter, waiter.id == id else { return }
        self.waiter = nil
        waiter.continuation.resume(returning: false)
    }
}
