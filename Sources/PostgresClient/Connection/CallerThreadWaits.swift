import Foundation
import Synchronization

/// How many threads wait for a result in ``PostgresConnection/query(_:purpose:)`` at once.
///
/// Those are threads of Swift's cooperative pool (one per core): with every one of them
/// waiting on the network, nothing else in the process would run — a leader's lock
/// confirmation included — until a wait ended. So at most half of them (one at least) may
/// wait; a statement that finds no room hands its wait to its connection's queue, as a
/// statement that outlasts the wait does.
enum CallerThreadWaits {
    static let limit = max(1, ProcessInfo.processInfo.activeProcessorCount / 2)
    private static let current = Atomic<Int>(0)

    static func enter() -> Bool {
        var now = current.load(ordering: .relaxed)
        while now < limit {
            let (exchanged, original) = current.compareExchange(expected: now, desired: now + 1, ordering: .acquiringAndReleasing)
            if exchanged { return true }
            now = original
        }
        return false
    }

    static func leave() { current.subtract(1, ordering: .releasing) }
}
