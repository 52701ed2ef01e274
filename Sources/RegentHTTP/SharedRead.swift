import Foundation

/// One database read shared by every request that asks within `maxAge` of it: the console's
/// live views (cluster, queues) are read by as many browsers as are open, and each of them
/// re-reading the database on its own would make the node's load grow with its viewers. A
/// request arriving while a read is in flight waits for that read instead of starting another.
/// A failed read is not kept: the next request tries again.
actor SharedRead<Value: Sendable> {
    private let maxAge: Duration
    private let read: @Sendable () async throws -> Value
    private var latest: (value: Value, at: ContinuousClock.Instant)?
    private var inFlight: Task<Value, any Error>?
    /// How many reads reached the database (the bench and tests compare it with requests).
    private(set) var reads = 0

    init(maxAge: Duration, read: @escaping @Sendable () async throws -> Value) {
        self.maxAge = maxAge
        self.read = read
    }

    func value() async throws -> Value {
        if let latest, ContinuousClock.now - latest.at < maxAge { return latest.value }
        if let inFlight { return try await inFlight.value }
        reads += 1
        let task = Task { try await read() }
        inFlight = task
        defer { inFlight = nil }
        do {
            let value = try await task.value
            latest = (value, .now)
            return value
        } catch {
            latest = nil
            throw error
        }
    }
}

/// ``SharedRead``s by key (a run's page, read for every viewer of that run): entries unused for a
/// minute are dropped when the table is full, and past `maxEntries` live keys a read is not shared.
actor SharedReads<Key: Hashable & Sendable, Value: Sendable> {
    private let maxAge: Duration
    private let maxEntries: Int
    private let read: @Sendable (Key) async throws -> Value
    private var entries: [Key: (read: SharedRead<Value>, used: ContinuousClock.Instant)] = [:]

    init(maxAge: Duration, maxEntries: Int = 10_000, read: @escaping @Sendable (Key) async throws -> Value) {
        self.maxAge = maxAge
        self.maxEntries = maxEntries
        self.read = read
    }

    func value(_ key: Key) async throws -> Value {
        let now = ContinuousClock.now
        if entries[key] == nil, entries.count >= maxEntries {
            entries = entries.filter { now - $0.value.used < .seconds(60) }
            if entries.count >= maxEntries { return try await read(key) }
        }
        let read = self.read
        let shared = entries[key]?.read ?? SharedRead(maxAge: maxAge) { try await read(key) }
        entries[key] = (shared, now)
        return try await shared.value()
    }
}
