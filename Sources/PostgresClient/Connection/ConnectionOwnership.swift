/// Who may use a connection's `PGconn` right now: a pure state machine, kept under the
/// connection's lock, that returns what to run and in what order.
///
/// libpq forbids two threads on one connection. Work normally runs as blocks on the
/// connection's serial queue. A statement on an idle connection may instead be sent, and
/// its result awaited, by the caller's own thread: the caller *takes* the connection, and
/// while it holds it, submitted blocks are held back instead of queued; when the caller
/// lets go they are released, after the block that finishes the caller's statement if it
/// handed the rest of its wait to the queue. `ended` counts finished pieces of work, so a
/// cancel request sent late can tell whether the statement it was meant for still runs.
/// `Work` is generic so that tests drive it with plain values.
struct ConnectionOwnership<Work> {
    /// Blocks queued or running (and a statement held by a caller's thread).
    private(set) var outstanding = 0
    /// Pieces of work that have ended.
    private(set) var ended = 0
    /// A caller's thread holds the connection: submitted blocks wait in `held`.
    private(set) var callerOwns = false
    private var held: [Work] = []
    private(set) var closed = false
    private(set) var broken = false

    /// Nothing runs or waits to: a caller may take the connection, a pool may look at it.
    var isIdle: Bool { outstanding == 0 }
    var isUsable: Bool { !closed && !broken }

    /// Counts `work` as outstanding; returns it when it is to be queued now, nil when it is
    /// held until the caller that owns the connection lets go.
    mutating func submit(_ work: Work) -> Work? {
        outstanding += 1
        if callerOwns {
            held.append(work)
            return nil
        }
        return work
    }

    /// A block (or a statement a caller finished itself) has ended.
    mutating func workEnded() {
        precondition(outstanding > 0, "connection work ended that never began")
        outstanding -= 1
        ended += 1
    }

    /// Takes the connection for the caller's thread when nothing runs or waits and it is
    /// usable; false: the caller must submit its statement as a block instead.
    mutating func takeForCaller() -> Bool {
        guard isUsable, isIdle, !callerOwns else { return false }
        outstanding += 1
        callerOwns = true
        return true
    }

    /// The caller lets go. `finishing`: a block that completes its statement (the result
    /// did not come in time), queued before everything held; nil when the caller's
    /// statement has ended. Returns the blocks to queue, in order.
    mutating func callerReleases(finishing: Work?, broken: Bool) -> [Work] {
        precondition(callerOwns, "released a connection the caller did not own")
        callerOwns = false
        if broken { self.broken = true }
        var run: [Work] = []
        if let finishing { run.append(finishing) } else { workEnded() }
        run.append(contentsOf: held)
        held.removeAll()
        return run
    }

    mutating func markBroken() { if !closed { broken = true } }
    mutating func markClosed() { closed = true }

    /// Whether a cancel request made when `endedThen` pieces of work had ended would now
    /// reach a statement other than the one it was meant for (or none).
    func cancelIsStale(endedThen: Int) -> Bool { closed || isIdle || ended != endedThen }
}

/// The statements prepared on one session (``PostgresQuery/prepared()``): text → name.
/// Names are never reused on a session, even for a statement it lost.
struct PreparedStatementCache {
    private var names: [String: String] = [:]
    private var issued = 0

    func name(for sql: String) -> String? { names[sql] }

    /// A fresh name to prepare `sql` under.
    mutating func newName() -> String {
        issued += 1
        return "regent_\(issued)"
    }

    /// Added only by the connection's owner of the moment, after the server said yes.
    mutating func remember(_ sql: String, as name: String) { names[sql] = name }

    /// The session lost it (DISCARD ALL, DEALLOCATE ALL): prepare it again next time.
    mutating func forget(_ sql: String) { names.removeValue(forKey: sql) }
}
extension ConnectionOwnership: Sendable where Work: Sendable {}
