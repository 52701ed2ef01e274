import CoreMetrics
import Dispatch
import Foundation
import Logging
import ServiceLifecycle
import PostgresClient
import Synchronization

/// Runs the leadership protocol for one node on a dedicated lock connection.
///
/// A follower blocks in `pg_advisory_lock` (PostgreSQL hands a released lock to a
/// blocked waiter within a fraction of a millisecond, faster than any retry period).
/// On winning it bumps `engine.leadership.term` and writes `leader.elected` to the
/// audit log in one transaction on the lock session, then confirms the lock every
/// `confirmInterval` with a deadline at the end of its trust window; when a
/// confirmation fails or is late it stops all duties and reconnects as a follower.
public actor LeaderElector: Service {
    public struct Options: Sendable {
        public var leaseWindow: Duration = .seconds(5)
        public var confirmInterval: Duration = .seconds(1)
        public init(leaseWindow: Duration = .seconds(5), confirmInterval: Duration? = nil) {
            self.leaseWindow = leaseWindow
            self.confirmInterval = confirmInterval ?? min(.seconds(1), leaseWindow / 4)
        }
    }

    /// Receives leadership changes. `elected` starts duties; `demoted` must stop them
    /// before it returns.
    public struct Hooks: Sendable {
        public var elected: @Sendable (LeaderFence) async -> Void
        public var demoted: @Sendable (_ term: Term, _ reason: String) async -> Void
        public init(
            elected: @escaping @Sendable (LeaderFence) async -> Void = { _ in },
            demoted: @escaping @Sendable (Term, String) async -> Void = { _, _ in }
        ) {
            self.elected = elected
            self.demoted = demoted
        }
    }

    public let instanceID: InstanceID
    let configuration: ConnectionConfiguration
    let options: Options
    let hooks: Hooks
    /// The leader's duties, run inside the leading state (see ``DutyRunner``).
    let duties: DutyRunner?
    let logger: Logger
    private var machine: ElectionStateMachine<ContinuousClock.Instant>
    private var lockConnection: PostgresConnection?
    private let doorbell = Doorbell()
    private let finished = Doorbell()
    private var stopping = false
    private var resignRequested = false
    private var fence: LeaderFence?
    var timelineUnreadableWarned = false
    /// The server identity read before the election, recorded with the new term.
    var pendingTimeline: (String, Int)?
    /// When the current term was recorded (database time).
    private var electedAt = Date(timeIntervalSince1970: 0)
    private var elections = 0
    private var refused = 0
    let metrics: RegentMetrics
    /// When the lock was granted after a wait (someone else held it), else nil.
    private var takeoverGrantedAt: ContinuousClock.Instant?

    public init(
        instanceID: InstanceID, configuration: ConnectionConfiguration, options: Options = Options(), hooks: Hooks = Hooks(),
        duties: DutyRunner? = nil, metrics: RegentMetrics = .discarded, logger: Logger = Logger(label: "regent.leadership"),
        executor: DedicatedExecutor = DedicatedExecutor(name: "regent.leadership")
    ) {
        self.executor = executor
        self.metrics = metrics
        self.instanceID = instanceID
        self.configuration = configuration
        self.options = options
        self.hooks = hooks
        self.duties = duties
        self.logger = logger
        self.machine = ElectionStateMachine(leaseWindow: options.leaseWindow, confirmInterval: options.confirmInterval)
    }

    /// Runs on the leadership thread, never on the cooperative pool (see ``DedicatedExecutor``).
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
    /// The thread this elector runs on.
    public nonisolated let executor: DedicatedExecutor

    /// The fence of the current term while this node trusts its leadership, else nil.
    public var currentFence: LeaderFence? { machine.isLeader(at: .now) ? fence : nil }
    public var isLeader: Bool { machine.isLeader(at: .now) }
    public var state: ElectionStateMachine<ContinuousClock.Instant>.State { machine.state }
    /// How many times this node won an election.
    public var electionsWon: Int { elections }
    /// How many times it refused to lead: a transaction-mode pooler in front of its lock
    /// session, or a server it must not lead on (tests wait for this signal instead of
    /// sleeping while nothing should happen).
    public var refusals: Int { refused }

    /// Runs until `stop()` or graceful shutdown (a leader resigns first); never throws:
    /// database trouble means reconnecting.
    public func run() async {
        await runUntilGracefulShutdown({ await runLoop() }, onShutdown: { [weak self] in await self?.stop() })
        finished.ring()
    }

    /// Returns once `run()` has returned (after `stop()`: resigned and disconnected).
    public func waitUntilFinished() async {
        _ = await finished.wait(upTo: .seconds(86_400))
    }

    private func runLoop() async {
        var action = machine.start()
        while true {
            // A cancelled task (its owner cancelled it instead of stopping the elector) stops as
            // a shutdown would: every wait below returns at once once cancelled, and the loop
            // would otherwise reconnect (or confirm) without pause, forever.
            if Task.isCancelled, !stopping {
                stopping = true
                switch action {
                case .stop, .resignAndStop: break
                default: action = machine.shutdownRequested()
                }
            }
            switch action {
            case .connect(let delay):
                if delay > .zero { _ = await doorbell.wait(upTo: delay) }
                if stopping { action = machine.shutdownRequested(); continue }
                do {
                    // The lock needs one server session for its life: a transaction-mode pooler is refused here.
                    lockConnection = try await PostgresConnection.connect(configuration, requireSession: true)
                    logger.debug("lock connection open", metadata: ["backend_pid": "\(lockConnection!.backendPID)"])
                    action = machine.connected()
                } catch let error as PostgresError where error.code == .sessionNotPinned {
                    refused += 1
                    action = machine.connectFailed()
                    logger.error("refusing to lead through this connection", metadata: ["error": "\(error)", "retry_in": "\(action)"])
                } catch {
                    action = machine.connectFailed()
                    logger.warning("cannot reach the database; retrying", metadata: ["error": "\(error)", "retry_in": "\(action)"])
                }
            case .waitForLock:
                guard let conn = lockConnection else { action = machine.connectionLost("no connection"); continue }
                logger.info("following: waiting for the leadership lock")
                do {
                    // Try first: a lock taken at once means nobody led (a fresh start), which is
                    // not a failover; a lock granted after blocking is one.
                    takeoverGrantedAt = nil
                    let free = try await conn.query(LeadershipQueries.tryLock, purpose: "try the leadership lock").single()
                        .decode("locked", as: Bool.self)
                    if !free {
                        try await waitForTheLock(on: conn)
                        takeoverGrantedAt = .now
                    }
                    action = stopping ? machine.shutdownRequested() : machine.lockAcquired()
                } catch {
                    if stopping { action = machine.shutdownRequested(); continue }
                    action = machine.connectionLost("\(error)")
                    await dropConnection()
                    logger.warning("lock connection failed while following; reconnecting", metadata: ["error": "\(error)"])
                }
            case .recordTerm:
                guard let conn = lockConnection else { action = machine.connectionLost("no connection"); continue }
                if let refusal = await timelineRefusal(on: conn) {
                    logger.critical("refusing to lead on this server", metadata: ["reason": "\(refusal)"])
                    action = machine.connectionLost("refused to lead: \(refusal)")
                    await dropConnection()  // releases the lock for a node on the right server
                    refused += 1  // counted once the lock is released (tests read both)
                    _ = await doorbell.wait(upTo: .seconds(5))
                    continue
                }
                let started = ContinuousClock.now
                do {
                    let (term, electedAt) = try await recordTerm(on: conn)
                    self.electedAt = electedAt
                    if let (systemID, timeline) = pendingTimeline {
                        pendingTimeline = nil
                        try await conn.query(
                            LeadershipQueries.recordTimeline(systemID: systemID, timeline: timeline, term: term), purpose: "record the server's timeline")
                    }
                    action = machine.termRecorded(term, startedAt: started)
                } catch {
                    logger.error("won the lock but could not record the term; reconnecting", metadata: ["error": "\(error)"])
                    action = machine.connectionLost("recording the term failed: \(error)")
                    await dropConnection()
                }
            case .startDuties(let term):
                guard let conn = lockConnection else { action = machine.connectionLost("no connection"); continue }
                elections += 1
                metrics.elections.increment()
                metrics.isLeader.record(1)
                metrics.leaderTerm.record(Double(term.value))
                let trust = LeadershipTrust(leaseWindow: options.leaseWindow, validUntil: machine.validUntil)
                // A fenced write that found the term over rings the doorbell: the leader loop
                // re-confirms at once (an extra confirmation is harmless if the fence is stale).
                let fence = LeaderFence(term: term, instanceID: instanceID, lockBackendPID: conn.backendPID, trust: trust, electedAt: electedAt) {
                    [doorbell, logger] reason in
                    logger.warning("a fenced write found the term over; re-confirming now", metadata: ["reason": "\(reason)"])
                    doorbell.ring()
                }
                self.fence = fence
                logger.notice("became leader", metadata: ["term": "\(term)", "instance_id": "\(instanceID)"])
                await hooks.elected(fence)
                action = await leadWithDuties(conn: conn, fence: fence)
            case .demote(let reason):
                let term = fence?.term ?? 0
                fence?.trust.revoke()
                fence = nil
                metrics.isLeader.record(0)
                logger.warning("stepping down as leader", metadata: ["term": "\(term)", "reason": "\(reason)"])
                await hooks.demoted(term, reason)
                await dropConnection()
                // The machine is already `disconnected` (every demote comes from losing leadership).
                action = stopping ? machine.shutdownRequested() : .connect(after: .milliseconds(50))
            case .resignAndStop:
                await resign()
                return
            case .stop:
                await dropConnection()
                return
            case .confirm:
                action = machine.confirmationFailed("unexpected confirm outside the leader loop")
            }
        }
    }

    /// The leading state: the duties run in a child task while the leader loop confirms the
    /// lock; whatever ends the loop (demotion, resignation, stop), the duties are cancelled and
    /// awaited before the elector acts on it, so none writes after the term's end is handled.
    private func leadWithDuties(conn: PostgresConnection, fence: LeaderFence) async -> ElectionStateMachine<ContinuousClock.Instant>.Action {
        guard let duties else { return await lead(conn: conn, term: fence.term) }
        let logger = self.logger
        return await withTaskGroup(of: Void.self) { group in
            group.addTask { [weak self] in
                await duties.run(fence: fence) { [weak self] reason in
                    logger.error("a leader duty keeps failing; resigning so another node can try", metadata: ["reason": "\(reason)"])
                    _ = await self?.requestResign()
                }
            }
            let action = await lead(conn: conn, term: fence.term)
            group.cancelAll()
            await group.waitForAll()
            return action
        }
    }

    /// The leader loop: confirm on a period, each confirmation with a deadline at the end of the trust window.
    private func lead(conn: PostgresConnection, term: Term) async -> ElectionStateMachine<ContinuousClock.Instant>.Action {
        var lastStart = ContinuousClock.now
        while true {
            let next = machine.nextConfirmation(after: lastStart)
            _ = await doorbell.wait(upTo: ContinuousClock.now.duration(to: next))
            if stopping || Task.isCancelled {
                stopping = true
                return machine.shutdownRequested()
            }
            if resignRequested {
                resignRequested = false
                await resign()
                _ = machine.connectionLost("resigned")
                return .connect(after: .milliseconds(100))
            }
            if let lapsed = machine.tick(now: .now) { return lapsed }
            guard case .confirm(let deadline)? = machine.confirmationStarting() else { return .connect(after: .zero) }
            let started = ContinuousClock.now
            do {
                let ok = try await withDeadline(deadline, onTimeout: { conn.abort() }) {
                    let row = try await conn.query(LeadershipQueries.confirm(term: term), purpose: "confirm leadership").single()
                    return (try row.decode("holds", as: Bool.self), try row.decodeOptional("current", as: Bool.self) ?? false)
                }
                guard ok.0 else { return machine.confirmationFailed("this session no longer holds the lock") }
                guard ok.1 else { return machine.confirmationFailed("another term was recorded") }
                if let lapsed = machine.confirmationSucceeded(startedAt: started, now: .now) { return lapsed }
                if let until = machine.validUntil { fence?.trust.extend(to: until) }
            } catch {
                return machine.confirmationFailed("\(error)")
            }
            lastStart = started
        }
    }

    private func recordTerm(on conn: PostgresConnection) async throws -> (Term, Date) {
        // An earlier leader's fenced transaction (a long migration, say) holds the leadership row
        // FOR SHARE until it ends: wait briefly, then end it (it can no longer commit anything
        // meaningful: its term is over) instead of waiting for it.
        try await conn.query(LeadershipQueries.termLockTimeout, purpose: "bound the term's lock wait")
        var row: PostgresRow?
        var ended = 0
        for attempt in 1...20 {
            do {
                row = try await conn.query(
                    LeadershipQueries.recordElection(
                        instance: instanceID, actor: AuditActor.instance(instanceID).description,
                        lockWaitedMs: takeoverGrantedAt.map { (ContinuousClock.now - $0).milliseconds }),
                    purpose: "record the new term").single()
                break
            } catch let error as PostgresError where error.sqlState == "55P03" && attempt < 20 {
                ended += try await conn.query(LeadershipQueries.endEarlierFencedTransactions, purpose: "end an earlier term's fenced transactions")
                    .single().decode("ended", as: Int.self)
            }
        }
        try await conn.query(LeadershipQueries.noLockTimeout, purpose: "unbound lock waits")
        if ended > 0 {
            logger.warning("ended an earlier term's fenced transactions that held the leadership row", metadata: ["sessions": "\(ended)"])
        }
        guard let row else { throw RegentError(.timeout, "the new term could not be recorded: the leadership row stayed locked") }
        let term = try row.decode("term", as: Term.self)
        // A takeover: measure the leaderless time from the predecessor's resignation (if it
        // resigned within the last minute: older means the cluster was down, not failing over),
        // or, when it did not resign (crash, partition) and we had to wait for the lock, from
        // PostgreSQL releasing it to our recorded term. A lock taken at once with no recent
        // resignation is a fresh start, not a failover.
        let sinceResignation = try row.decodeOptional("since_resignation", as: Double.self).flatMap { $0 < 60 ? max(0, $0) : nil }
        if let seconds = sinceResignation ?? takeoverGrantedAt.map({ (ContinuousClock.now - $0).milliseconds / 1000 }) {
            metrics.failover.recordNanoseconds(Int64((seconds * 1e9).rounded()))
            logger.info("took over leadership", metadata: ["term": "\(term)", "leaderless_ms": "\(Int((seconds * 1000).rounded()))"])
        }
        return (term, try row.decode("elected_at", as: Date.self))
    }

    /// Waits for the leadership lock in rounds of at most 2 s (`lock_timeout`), each a new statement.
    /// A statement holds its snapshot for as long as it waits, and `CREATE INDEX CONCURRENTLY`
    /// (the online indexes the leader builds, or an operator's) waits for every snapshot older
    /// than its own to end: a single wait would hold it up for as long as the leader lives. A
    /// lock released between two rounds is taken by the next round at once (it tries first).
    private func waitForTheLock(on conn: PostgresConnection) async throws {
        try await conn.query(LeadershipQueries.boundedLockWait, purpose: "bound each wait for the leadership lock")
        while true {
            do {
                try await conn.query(LeadershipQueries.waitForLock, purpose: "wait for the leadership lock")
                try await conn.query(LeadershipQueries.noLockTimeout, purpose: "unbound lock waits")
                return
            } catch let error as PostgresError where error.sqlState == "55P03" {
                if stopping { throw error }
            }
        }
    }

    /// Graceful handover: duties off, `leader.resigned` audited and announced, lock released.
    private func resign() async {
        guard let fence, let conn = lockConnection else {
            await dropConnection()
            return
        }
        self.fence = nil
        fence.trust.revoke()
        metrics.isLeader.record(0)
        await hooks.demoted(fence.term, "resigned")
        do {
            // Audit and announce in one statement (still holding the lock), then release it.
            try await conn.query(
                LeadershipQueries.recordResignation(
                    term: fence.term, instance: instanceID, actor: AuditActor.instance(instanceID).description),
                purpose: "record the resignation")
            try await conn.query(LeadershipQueries.releaseLock, purpose: "release the leadership lock")
            logger.notice("resigned leadership", metadata: ["term": "\(fence.term)"])
        } catch {
            logger.warning("resignation could not be recorded; closing the session releases the lock", metadata: ["error": "\(error)"])
        }
        await dropConnection()
    }

    private func dropConnection() async {
        if let conn = lockConnection {
            lockConnection = nil
            await conn.close()
        }
    }

    /// Steps down as leader (if leading) and rejoins as a follower.
    public func requestResign() async -> Bool {
        guard machine.term != nil else { return false }
        resignRequested = true
        doorbell.ring()
        return true
    }

    /// Graceful stop: a leader resigns and releases the lock; a follower stops waiting.
    public func stop() async {
        stopping = true
        doorbell.ring()
        // A follower is blocked in pg_advisory_lock: cancel that statement (the request goes
        // out from a background thread). A leader just needs the doorbell.
        if case .following = machine.state, let conn = lockConnection {
            conn.cancelCurrentStatement()
        }
    }
}

/// Runs `body`; if `deadline` passes first, calls `onTimeout` (which must make `body`
/// return, e.g. by aborting its connection) and throws a timeout.
func withDeadline<T: Sendable>(
    _ deadline: ContinuousClock.Instant, onTimeout: @escaping @Sendable () -> Void, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(until: deadline, clock: .continuous)
            onTimeout()
            return nil
        }
        defer { group.cancelAll() }
        while let result = try await group.next() {
            if let value = result { return value }
            throw RegentError(.timeout, "no answer before the deadline")
        }
        throw RegentError(.timeout, "no answer before the deadline")
    }
}
