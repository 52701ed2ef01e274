/// The version of this build, recorded in `engine.instances` and `engine.modules`.
public enum RegentVersion {
    public static let current = "0.3.0-dev"
}

/// Advisory-lock keys (two-int form) used by Regent; `classID` namespaces them.
public enum AdvisoryLockKey {
    /// 'RGNT' as a 32-bit integer, so Regent's locks are recognisable in pg_locks.
    public static let classID: Int32 = 0x5247_4E54
    /// Held by a migration runner for its whole run.
    public static let migrations: Int32 = 1
    /// Held, on a dedicated session, by the leader.
    public static let leadership: Int32 = 2
    /// Taken (transaction-scoped) by the follower that ends a frozen leader's session, so
    /// exactly one follower acts.
    public static let takeover: Int32 = 3
}
