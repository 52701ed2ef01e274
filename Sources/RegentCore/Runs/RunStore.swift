import Foundation
import PostgresClient

/// Workflow runs (`workflow.runs`, `workflow.run_steps`, `workflow.budget_ledger`).
public struct RunStore: Sendable {
    /// The namespace run steps are enqueued in; workers claim them there, by lane.
    public static let namespace = try! Namespace("runs")
    public static let maxInputBytes = 1 << 20

    public struct Started: Sendable, Hashable {
        public let runID: String
        /// False when the idempotency key had started a run already (this is that run).
        public let created: Bool
        public let packageHash: String
    }

    public struct StartRequest: Sendable {
        public var workflowType: WorkflowType
        /// A JSON object.
        public var input: String
        public var idempotencyKey: String?
        /// The run fails with `deadline_exceeded` once this much time has passed.
        public var deadline: Duration?
        public var budget: WorkflowManifest.Budget?
        /// The namespace its steps are enqueued in (a scoped token's; else ``RunStore/namespace``).
        public var namespace: Namespace = RunStore.namespace
        /// With a lane-scoped token: the lanes its steps may use (a manifest with another is refused).
        public var allowedLanes: [Lane]?
        /// Start on this stored version of the type (its content hash), routed or not: a canary.
        /// nil: the version the type is routed to.
        public var version: String?

        public init(workflowType: WorkflowType, input: String = "{}", idempotencyKey: String? = nil, deadline: Duration? = nil,
                    budget: WorkflowManifest.Budget? = nil) {
            self.workflowType = workflowType
            self.input = input
            self.idempotencyKey = idempotencyKey
            self.deadline = deadline
            self.budget = budget
        }

        /// Refuses bad input, naming the field.
        public func check() throws(RegentError) {
            guard input.utf8.count <= RunStore.maxInputBytes else {
                throw RegentError(.invalidInput, "input is \(input.utf8.count) bytes; the limit is \(RunStore.maxInputBytes)")
            }
            let parsed: JSONValue
            do { parsed = try StrictJSON.parse(Array(input.utf8)) } catch { throw RegentError(.invalidInput, "input: \(error.message)") }
            guard case .object = parsed else { throw RegentError(.invalidInput, "input must be a JSON object, e.g. {\"order\": 42}") }
            if let key = idempotencyKey { try RunStore.checkIdempotencyKey(key) }
            if let version, !PackageStore.isHash(version) {
                throw RegentError(.invalidInput, "version \(quoted(String(version.prefix(80)))) is not a package version: use the 64 lowercase hex digits of its content hash (regent packages list)")
            }
            try RunStore.checkDeadline(deadline)
            if let budget {
                try RunStore.checkBudgetLimit(budget.limit)
                guard Lane.isValid(budget.unit) else { throw RegentError(.invalidInput, "budget unit \(quoted(budget.unit)): use 1-128 letters, digits or _ . : -") }
            }
        }
    }

    let publisher: UUID?
    public init(publisher: UUID? = nil) { self.publisher = publisher }

    /// An idempotency key, as a start takes it and the runs filter looks it up: 1-255 characters
    /// (the column's own rule counts characters) without control characters.
    static func checkIdempotencyKey(_ key: String) throws(RegentError) {
        guard (1...255).contains(key.unicodeScalars.count), !key.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
            throw RegentError(.invalidInput, "idempotency key must be 1-255 characters without control characters")
        }
    }

    /// A run's deadline (at a start or a retry): after now, at most a year away.
    static func checkDeadline(_ deadline: Duration?) throws(RegentError) {
        if let deadline, deadline <= .zero || deadline > .seconds(86_400 * 365) {
            throw RegentError(.invalidInput, "deadline must be after now and at most a year away")
        }
    }

    /// A run's budget limit (at a start or a retry): above 0, at most 1e15.
    static func checkBudgetLimit(_ limit: Double) throws(RegentError) {
        guard limit > 0, limit <= 1e15 else { throw RegentError(.invalidInput, "budget limit must be above 0 and at most 1e15") }
    }

    /// Starts a run on the version the type is routed to, pinned to it (see
    /// `workflow.start_run`, sql/workflow/0006): the run, its steps and its root steps'
    /// executions in one transaction.
    public func start(_ request: StartRequest, actor: AuditActor, on conn: PostgresConnection) async throws -> Started {
        try request.check()
        // The deadline is computed by the database (its clock is the one the deadline duty reads).
        let deadlineMs = request.deadline.map { Int64($0.milliseconds) }
        // No row: the type has no route, or the version it named was unloaded between this
        // statement's snapshot and its lock (then the route has moved on: look again once).
        for _ in 0..<2 {
            let rows = try await conn.query(
                """
                SELECT run_id, created, package_hash, same_input, refused FROM workflow.start_run(
                    \(request.workflowType.value), \(request.input)::jsonb, \(request.idempotencyKey), \(deadlineMs)::bigint,
                    \(request.budget.map { String($0.limit) })::numeric, \(request.budget?.unit), \(actor.description), \(request.namespace.value),
                    \(publisher)::uuid, \(request.allowedLanes?.map(\.value))::text[], \(request.version)::text)
                """, purpose: "runs: start")
            if let row = rows.first {
                if let refused = try row.decodeOptional("refused", as: String.self) {
                    throw RegentError(.forbidden, "workflow type \(quoted(request.workflowType.value)): \(refused)",
                                      hint: "start it with a token whose scope covers every lane of the workflow")
                }
                let started = Started(runID: try row.decode("run_id"), created: try row.decode("created"), packageHash: try row.decode("package_hash"))
                if !started.created, try row.decodeOptional("same_input", as: Bool.self) == false {
                    let what = request.version.map { "a different input or version (it runs \(started.packageHash), this start named \($0))" } ?? "a different input"
                    throw RegentError(
                        .idempotencyConflict,
                        "idempotency key \(quoted(request.idempotencyKey ?? "")) already started run \(started.runID) of \(request.workflowType.value) with \(what)",
                        hint: "use a new key for a new start, or send the same start to get that run")
                }
                return started
            }
            if let version = request.version {
                throw RegentError(
                    .notFound, "version \(version) of workflow type \(quoted(request.workflowType.value)) is not stored",
                    hint: "regent packages list shows the stored versions; deploy the package first")
            }
        }
        throw RegentError(
            .notFound, "workflow type \(quoted(request.workflowType.value)) has no routed package version",
            hint: "deploy a package for it first (regent packages deploy)")
    }
}

// MARK: Reading and cancelling

extension RunStore {
    /// `queued`: waiting for a free slot of its concurrency key (docs/flow-control.md); nothing of it has begun.
    public static let states = ["queued", "running", "succeeded", "failed", "cancelled"]

    /// A run as `runs show` and `GET /v1/runs/{id}` present it.
    public struct Run: Sendable, Encodable {
        public let runID: String
        public let workflowType: String
        public let packageHash: String
        public let state: String
        public let reason: String?
        public let error: String?
        public let input: String
        public let output: String?
        public let idempotencyKey: String?
        public let deadline: Date?
        public let budgetLimit: Double?
        public let budgetUnit: String?
        public let budgetSpent: Double
        public let startedBy: String
        public let finishedBy: String?
        public let term: Int64?
        public let startedAt: Date
        public let finishedAt: Date?
        public var namespace: String? = nil
        /// A child run's parent run and the parent's step that started it.
        public var parentRunID: String? = nil
        public var parentStep: String? = nil
        /// A run of a workflow with a run concurrency key: the key's value, and when a slot admitted it.
        public var concurrencyKey: String? = nil
        public var admittedAt: Date? = nil
        public var steps: [Step] = []
        public var ledger: [LedgerEntry] = []
        public var signals: [Signal] = []
        /// The database's clock when the steps were read: a viewer's countdowns (lease expiry,
        /// timers) are `due - read_at`, whatever its own clock says (nil without steps).
        public var readAt: Date? = nil
        /// A listing's summary: input, output, steps and ledger are left out (unless `include` asked for input or output).
        public var summary = false

        /// What is left of the budget (nil without one; never below zero).
        public var budgetRemaining: Double? { budgetLimit.map { max(0, $0 - budgetSpent) } }

        enum CodingKeys: String, CodingKey {
            case runID = "run_id", workflowType = "workflow_type", packageHash = "package_hash", state, reason, error, input, output
            case idempotencyKey = "idempotency_key", deadline, budget, startedBy = "started_by", finishedBy = "finished_by", term
            case startedAt = "started_at", finishedAt = "finished_at", steps, ledger, namespace, signals
            case parentRunID = "parent_run_id", parentStep = "parent_step", readAt = "read_at"
            case concurrencyKey = "concurrency_key", admittedAt = "admitted_at"
        }
        enum BudgetKeys: String, CodingKey { case limit, unit, spent, remaining }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(runID, forKey: .runID)
            try c.encode(workflowType, forKey: .workflowType)
            try c.encode(packageHash, forKey: .packageHash)
            try c.encode(state, forKey: .state)
            try c.encode(reason, forKey: .reason)
            try c.encode(error, forKey: .error)
            try c.encode(namespace ?? RunStore.namespace.value, forKey: .namespace)
            try c.encode(parentRunID, forKey: .parentRunID)
            if !summary { try c.encode(parentStep, forKey: .parentStep) }
            if !summary || !input.isEmpty { try c.encode(input.isEmpty ? nil : RawJSON(input), forKey: .input) }
            if !summary || output != nil { try c.encode(output.map(RawJSON.init), forKey: .output) }
            try c.encode(idempotencyKey, forKey: .idempotencyKey)
            try c.encode(deadline, forKey: .deadline)
            var b = c.nestedContainer(keyedBy: BudgetKeys.self, forKey: .budget)
            try b.encode(budgetLimit, forKey: .limit)
            try b.encode(budgetUnit, forKey: .unit)
            try b.encode(budgetSpent, forKey: .spent)
            try b.encode(budgetRemaining, forKey: .remaining)
            try c.encode(startedBy, forKey: .startedBy)
            try c.encode(finishedBy, forKey: .finishedBy)
            try c.encode(term, forKey: .term)
            try c.encode(startedAt, forKey: .startedAt)
            try c.encode(finishedAt, forKey: .finishedAt)
            if let concurrencyKey { try c.encode(concurrencyKey, forKey: .concurrencyKey) }
            if let admittedAt { try c.encode(admittedAt, forKey: .admittedAt) }
            if !summary {
                try c.encode(steps, forKey: .steps)
                try c.encode(ledger, forKey: .ledger)
                try c.encode(signals, forKey: .signals)
                if let readAt { try c.encode(readAt, forKey: .readAt) }
            }
        }
    }

    public struct Step: Sendable, Encodable {
        public let name: String
        public let after: [String]
        public let state: String
        /// worker, timer, signal or child.
        public var kind = "worker"
        /// What a waiting (or finished) timer, signal or child step waits for: due time, signal name, child run.
        public var wait: Wait? = nil
        public let attempts: Int
        public let maxAttempts: Int?
        public let worker: String?
        public let executionID: UUID?
        public let queuedAt: Date?
        public let finishedAt: Date?
        public let output: String?
        public let error: String?
        /// While a worker holds the step's lease: when it expires (database time).
        public var leaseExpiresAt: Date? = nil
        /// A worker step's attempts at its current execution, oldest first.
        public var attemptHistory: [Attempt] = []

        enum CodingKeys: String, CodingKey {
            case name, after, state, attempts, maxAttempts = "max_attempts", worker, executionID = "execution_id", queuedAt = "queued_at"
            case finishedAt = "finished_at", output, error, kind, wait, leaseExpiresAt = "lease_expires_at", attemptHistory = "attempt_history"
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(name, forKey: .name)
            try c.encode(kind, forKey: .kind)
            try c.encode(after, forKey: .after)
            try c.encode(state, forKey: .state)
            if kind != "worker" { try c.encode(wait, forKey: .wait) }
            try c.encode(attempts, forKey: .attempts)
            try c.encode(maxAttempts, forKey: .maxAttempts)
            try c.encode(worker, forKey: .worker)
            if let leaseExpiresAt { try c.encode(leaseExpiresAt, forKey: .leaseExpiresAt) }
            try c.encode(executionID?.lowercasedText, forKey: .executionID)
            try c.encode(queuedAt, forKey: .queuedAt)
            try c.encode(finishedAt, forKey: .finishedAt)
            try c.encode(output.map(RawJSON.init), forKey: .output)
            try c.encode(error, forKey: .error)
            if kind == "worker" { try c.encode(attemptHistory, forKey: .attemptHistory) }
        }
    }

    /// One attempt of a worker step: who held it under which epoch, and how it ended.
    public struct Attempt: Sendable, Encodable {
        public let attemptIndex: Int
        public let epoch: Int64
        public let worker: String
        /// leased, completed, failed, expired or cancelled.
        public let state: String
        public let startedAt: Date
        public let endedAt: Date?
        enum CodingKeys: String, CodingKey {
            case attemptIndex = "attempt_index", epoch = "lease_epoch", worker, state, startedAt = "started_at", endedAt = "ended_at"
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(attemptIndex, forKey: .attemptIndex)
            try c.encode(epoch, forKey: .epoch)
            try c.encode(worker, forKey: .worker)
            try c.encode(state, forKey: .state)
            try c.encode(startedAt, forKey: .startedAt)
            try c.encode(endedAt, forKey: .endedAt)  // null while the attempt lasts
        }
    }

    /// A timer, signal or child step's wait, as `runs show` and `GET /v1/runs/{id}` present it.
    public struct Wait: Sendable, Encodable {
        /// Since when it waits (nil until it began).
        public let since: Date?
        /// A timer's due time, or a signal wait's timeout (database time).
        public let dueAt: Date?
        /// The signal a signal step waits for.
        public let signal: String?
        /// fail or continue, when a signal wait has a timeout.
        public let onTimeout: String?
        /// A child step's workflow type, the version recorded for it, and its run.
        public let childType: String?
        public let childVersion: String?
        public let childRunID: String?
        /// How long it has waited (or waited, once finished), in milliseconds.
        public let waitedMs: Int64?
        enum CodingKeys: String, CodingKey {
            case since, dueAt = "due_at", signal, onTimeout = "on_timeout", childType = "child_type", childVersion = "child_version"
            case childRunID = "child_run_id", waitedMs = "waited_ms"
        }
    }

    /// A signal sent to a run, consumed by a step or kept (listed, not consumed).
    public struct Signal: Sendable, Encodable {
        public let signalID: String
        public let name: String
        public let sentBy: String
        public let receivedAt: Date
        public let consumedBy: String?
        public let consumedAt: Date?
        public let payload: String
        enum CodingKeys: String, CodingKey {
            case signalID = "signal_id", name, sentBy = "sent_by", receivedAt = "received_at", consumedBy = "consumed_by", consumedAt = "consumed_at", payload
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(signalID, forKey: .signalID)
            try c.encode(name, forKey: .name)
            try c.encode(sentBy, forKey: .sentBy)
            try c.encode(receivedAt, forKey: .receivedAt)
            try c.encode(consumedBy, forKey: .consumedBy)
            try c.encode(consumedAt, forKey: .consumedAt)
            try c.encode(RawJSON(payload), forKey: .payload)
        }
    }

    public struct LedgerEntry: Sendable, Encodable {
        public let entryID: String
        public let step: String
        public let amount: Double
        public let unit: String
        public let at: Date
        enum CodingKeys: String, CodingKey { case entryID = "entry_id", step, amount, unit, at }
    }

    /// A run id as Regent writes them: `run_` and a lowercase ULID.
    public static func isRunID(_ text: String) -> Bool {
        text.utf8.count == 30 && text.hasPrefix("run_")
            && text.utf8.dropFirst(4).allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 122) }
    }

    public static func checkRunID(_ text: String) throws(RegentError) {
        guard isRunID(text) else {
            throw RegentError(.invalidInput, "invalid run id \(quoted(String(text.prefix(64)))): run_ and 26 lowercase letters or digits (regent runs list shows them)")
        }
    }

    static let runColumns = """
        run_id, workflow_type, package_hash, state, reason, error, input::text AS input, output::text AS output, idempotency_key, deadline,
        budget_limit::float8 AS budget_limit, budget_unit, budget_spent::float8 AS budget_spent, started_by, finished_by, term, started_at, finished_at,
        namespace, parent_run_id, substr(flow_key, length(workflow_type) + 4) AS concurrency_key, admitted_at
        """

    /// A listing's columns: input and output only when asked for (`include`).
    static func summaryColumns(input: Bool, output: Bool) -> String {
        """
        run_id, workflow_type, package_hash, state, reason, left(error, 1024) AS error, \(input ? "input::text" : "''::text") AS input,
        \(output ? "output::text" : "NULL::text") AS output, idempotency_key, deadline,
        budget_limit::float8 AS budget_limit, budget_unit, budget_spent::float8 AS budget_spent, started_by, finished_by, term, started_at, finished_at,
        namespace, parent_run_id, substr(flow_key, length(workflow_type) + 4) AS concurrency_key, admitted_at
        """
    }

    static func run(_ row: PostgresRow) throws -> Run {
        var run = Run(
            runID: try row.decode("run_id"), workflowType: try row.decode("workflow_type"), packageHash: try row.decode("package_hash"),
            state: try row.decode("state"), reason: try row.decodeOptional("reason"), error: try row.decodeOptional("error"),
            input: try row.decode("input"), output: try row.decodeOptional("output"), idempotencyKey: try row.decodeOptional("idempotency_key"),
            deadline: try row.decodeOptional("deadline"), budgetLimit: try row.decodeOptional("budget_limit"), budgetUnit: try row.decodeOptional("budget_unit"),
            budgetSpent: try row.decode("budget_spent"), startedBy: try row.decode("started_by"), finishedBy: try row.decodeOptional("finished_by"),
            term: try row.decodeOptional("term"), startedAt: try row.decode("started_at"), finishedAt: try row.decodeOptional("finished_at"))
        run.namespace = try row.decodeOptional("namespace")
        run.parentRunID = try row.decodeOptional("parent_run_id")
        run.concurrencyKey = try row.decodeOptional("concurrency_key")
        run.admittedAt = try row.decodeOptional("admitted_at")
        return run
    }

    /// A run with its steps (in manifest order) and ledger; nil when there is none.
    public func get(_ runID: String, on conn: PostgresConnection) async throws -> Run? {
        try Self.checkRunID(runID)
        guard let row = try await conn.query(
            PostgresQuery(unsafeSQL: "SELECT \(Self.runColumns) FROM workflow.runs WHERE run_id = $1", binds: [runID.postgresBind]),
            purpose: "runs: get"
        ).first else { return nil }
        var run = try Self.run(row)
        var readAt: Date?
        run.steps = try await conn.query(
            """
            SELECT s.name, s.after_steps, CASE WHEN s.state = 'queued' AND e.state = 'running' THEN 'running' ELSE s.state END AS state,
                   COALESCE(e.attempts, 0) AS attempts, s.max_attempts, s.execution_id, s.queued_at, s.finished_at,
                   COALESCE(s.output, e.result)::text AS output, COALESCE(s.error, e.last_error) AS error,
                   (SELECT a.worker_instance_id FROM workflow.attempts a WHERE a.execution_id = e.execution_id ORDER BY a.attempt_index DESC LIMIT 1) AS worker,
                   (SELECT l.lease_expires_at FROM workflow.leases l WHERE l.execution_id = e.execution_id) AS lease_expires_at,
                   clock_timestamp() AS read_at, s.kind, s.waiting_since, s.due_at, s.wait ->> 'signal' AS signal, s.wait ->> 'on_timeout' AS on_timeout, s.child_type, s.child_hash,
                   s.child_run_id,
                   (extract(epoch FROM (COALESCE(s.finished_at, clock_timestamp()) - s.waiting_since)) * 1000)::bigint AS waited_ms
            FROM workflow.run_steps s LEFT JOIN workflow.executions e ON e.execution_id = s.execution_id
            WHERE s.run_id = \(runID) ORDER BY s.position
            """, purpose: "runs: steps"
        ).map { r in
            var step = Step(
                name: try r.decode("name"), after: try r.decode("after_steps"), state: try r.decode("state"), attempts: try r.decode("attempts"),
                maxAttempts: try r.decodeOptional("max_attempts"), worker: try r.decodeOptional("worker"), executionID: try r.decodeOptional("execution_id"),
                queuedAt: try r.decodeOptional("queued_at"), finishedAt: try r.decodeOptional("finished_at"), output: try r.decodeOptional("output"),
                error: try r.decodeOptional("error"))
            step.kind = try r.decode("kind")
            step.leaseExpiresAt = try r.decodeOptional("lease_expires_at")
            readAt = try r.decode("read_at")
            if step.kind != "worker" {
                step.wait = Wait(
                    since: try r.decodeOptional("waiting_since"), dueAt: try r.decodeOptional("due_at"), signal: try r.decodeOptional("signal"),
                    onTimeout: try r.decodeOptional("on_timeout"), childType: try r.decodeOptional("child_type"),
                    childVersion: try r.decodeOptional("child_hash"), childRunID: try r.decodeOptional("child_run_id"),
                    waitedMs: try r.decodeOptional("waited_ms"))
            }
            return step
        }
        run.readAt = readAt
        let executions = run.steps.compactMap(\.executionID)
        if !executions.isEmpty {
            var attempts: [UUID: [Attempt]] = [:]
            for r in try await conn.query(
                """
                SELECT execution_id, attempt_index, lease_epoch, worker_instance_id, state, started_at, ended_at FROM workflow.attempts
                WHERE execution_id = ANY (\(executions.map { $0.lowercasedText })::uuid[]) ORDER BY execution_id, attempt_index LIMIT 10000
                """, purpose: "runs: attempts")
            {
                attempts[try r.decode("execution_id", as: UUID.self), default: []].append(Attempt(
                    attemptIndex: try r.decode("attempt_index"), epoch: try r.decode("lease_epoch"), worker: try r.decode("worker_instance_id"),
                    state: try r.decode("state"), startedAt: try r.decode("started_at"), endedAt: try r.decodeOptional("ended_at")))
            }
            for i in run.steps.indices { if let id = run.steps[i].executionID { run.steps[i].attemptHistory = attempts[id] ?? [] } }
        }
        if let parent = run.parentRunID {
            run.parentStep = try await conn.query(
                "SELECT s.name FROM workflow.runs r JOIN workflow.run_steps s ON s.step_id = r.parent_step_id WHERE r.run_id = \(runID) AND s.run_id = \(parent)",
                purpose: "runs: parent step"
            ).first?.decode("name")
        }
        run.signals = try await conn.query(
            """
            SELECT signal_id, name, sent_by, received_at, consumed_by, consumed_at, left(payload::text, 65536) AS payload
            FROM workflow.signals WHERE run_id = \(runID) ORDER BY seq LIMIT 1000
            """, purpose: "runs: signals"
        ).map { r in
            Signal(
                signalID: try r.decode("signal_id"), name: try r.decode("name"), sentBy: try r.decode("sent_by"), receivedAt: try r.decode("received_at"),
                consumedBy: try r.decodeOptional("consumed_by"), consumedAt: try r.decodeOptional("consumed_at"), payload: try r.decode("payload"))
        }
        run.ledger = try await conn.query(
            "SELECT entry_id, step_name, amount::float8 AS amount, unit, at FROM workflow.budget_ledger WHERE run_id = \(runID) ORDER BY at, entry_id",
            purpose: "runs: ledger"
        ).map { r in
            LedgerEntry(entryID: try r.decode("entry_id"), step: try r.decode("step_name"), amount: try r.decode("amount"), unit: try r.decode("unit"), at: try r.decode("at"))
        }
        return run
    }

    public struct Page: Sendable, Encodable {
        public let runs: [Run]
        public let nextCursor: String?
        enum CodingKeys: String, CodingKey { case runs, nextCursor = "next_cursor" }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(runs, forKey: .runs)
            try c.encode(nextCursor, forKey: .nextCursor)
        }
    }

    /// A page of a listing holds at most this many bytes of input and output (`include`);
    /// the page ends early (with a cursor) when the next run would pass it. At least one run.
    public static let pageByteBudget = 4 << 20

    /// What a runs listing is narrowed to. Every combination walks an index in
    /// `started_at DESC` order (sql/workflow/indexes/, built online by the leader), so a page
    /// costs the rows it returns whatever the table holds: type, state, type and state, version
    /// (package hash), or an idempotency key (unique per type; without a type, every type's run
    /// with that key), each with an optional `started_at` window.
    public struct ListFilter: Sendable, Hashable {
        public var type: WorkflowType?
        public var state: String?
        public var packageHash: String?
        public var idempotencyKey: String?
        public var startedAfter: Date?
        public var startedBefore: Date?
        public init(
            type: WorkflowType? = nil, state: String? = nil, packageHash: String? = nil, idempotencyKey: String? = nil,
            startedAfter: Date? = nil, startedBefore: Date? = nil
        ) {
            self.type = type
            self.state = state
            self.packageHash = packageHash
            self.idempotencyKey = idempotencyKey
            self.startedAfter = startedAfter
            self.startedBefore = startedBefore
        }

        func validate() throws {
            if let state, !RunStore.states.contains(state) {
                throw RegentError(.invalidInput, "invalid state \(quoted(state)): one of \(RunStore.states.joined(separator: ", "))")
            }
            if let packageHash, !PackageStore.isHash(packageHash) {
                throw RegentError(.invalidInput, "version must be a package's content hash (64 lowercase hex digits), got \(quoted(String(packageHash.prefix(80))))")
            }
            if let key = idempotencyKey { try RunStore.checkIdempotencyKey(key) }
        }
    }

    /// The listing statement (also what the plan tests EXPLAIN).
    package static func listQuery(_ filter: ListFilter, cursor: (micros: Int64, runID: String)?, limit: Int, input: Bool = false, output: Bool = false) -> PostgresQuery {
        PostgresQuery(
            unsafeSQL: """
                SELECT \(summaryColumns(input: input, output: output)),
                       (extract(epoch FROM started_at) * 1000000)::bigint AS started_us FROM workflow.runs
                WHERE ($1::text IS NULL OR workflow_type = $1) AND ($2::text IS NULL OR state = $2)
                  AND ($3::bigint IS NULL OR (started_at, run_id) < (to_timestamp($3::float8 / 1000000), $4::text))
                  AND ($6::text IS NULL OR package_hash = $6) AND ($7::text IS NULL OR idempotency_key = $7)
                  AND ($8::timestamptz IS NULL OR started_at >= $8) AND ($9::timestamptz IS NULL OR started_at < $9)
                ORDER BY started_at DESC, run_id DESC LIMIT $5
                """,
            binds: [filter.type?.value.postgresBind ?? .null, filter.state?.postgresBind ?? .null,
                    cursor.map { String($0.micros) }?.postgresBind ?? .null, cursor?.runID.postgresBind ?? .null,
                    String(limit + 1).postgresBind, filter.packageHash?.postgresBind ?? .null, filter.idempotencyKey?.postgresBind ?? .null,
                    filter.startedAfter?.postgresBind ?? .null, filter.startedBefore?.postgresBind ?? .null])
    }

    /// Runs, newest first, as summaries (no input, output, steps or ledger: `get` has those),
    /// paged by `after` (a `next_cursor`). `includeInput`/`includeOutput` add those documents,
    /// within ``pageByteBudget`` per page.
    public func list(
        type: WorkflowType? = nil, state: String? = nil, after cursor: String? = nil, limit: Int = 100, includeInput: Bool = false,
        includeOutput: Bool = false, on conn: PostgresConnection
    ) async throws -> Page {
        try await list(ListFilter(type: type, state: state), after: cursor, limit: limit, includeInput: includeInput, includeOutput: includeOutput, on: conn)
    }

    public func list(
        _ filter: ListFilter, after cursor: String? = nil, limit: Int = 100, includeInput: Bool = false,
        includeOutput: Bool = false, on conn: PostgresConnection
    ) async throws -> Page {
        guard (1...1000).contains(limit) else { throw RegentError(.invalidInput, "limit must be 1 to 1000, got \(limit)") }
        try filter.validate()
        var position: (micros: Int64, runID: String)?
        if let cursor {
            let parts = cursor.split(separator: ".", maxSplits: 1).map(String.init)
            guard parts.count == 2, let micros = Int64(parts[0]), Self.isRunID(parts[1]) else {
                throw RegentError(.invalidInput, "invalid cursor \(quoted(String(cursor.prefix(100)))): pass the next_cursor of the previous page")
            }
            position = (micros, parts[1])
        }
        let rows = try await conn.query(
            Self.listQuery(filter, cursor: position, limit: limit, input: includeInput, output: includeOutput), purpose: "runs: list")
        var runs: [Run] = []
        var bytes = 0
        var more = rows.count > limit
        for row in rows.prefix(limit) {
            var run = try Self.run(row)
            run.summary = true
            let size = run.input.utf8.count + (run.output?.utf8.count ?? 0)
            if !runs.isEmpty, bytes + size > Self.pageByteBudget {
                more = true
                break
            }
            bytes += size
            runs.append(run)
        }
        let next = more ? "\(try rows[runs.count - 1].decode("started_us", as: Int64.self)).\(runs[runs.count - 1].runID)" : nil
        return Page(runs: runs, nextCursor: next)
    }

    public enum CancelOutcome: String, Sendable { case cancelled, alreadyFinished = "already_finished" }

    /// Cancels a running run: not-started steps skipped, queued and running ones fenced
    /// (their workers' completions are refused). `reason` is recorded with the actor.
    public func cancel(_ runID: String, reason: String, actor: AuditActor, on conn: PostgresConnection) async throws -> CancelOutcome {
        try Self.checkRunID(runID)
        guard (1...1024).contains(reason.unicodeScalars.count), !reason.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
            throw RegentError(.invalidInput, "the reason must be 1-1024 characters without control characters")
        }
        let before = try await conn.query(
            "SELECT workflow.cancel_run(\(runID), \(reason), \(actor.description)) AS before", purpose: "runs: cancel"
        ).single().decodeOptional("before", as: String.self)
        guard let before else { throw RegentError(.notFound, "no run \(runID)") }
        return before == "running" || before == "queued" ? .cancelled : .alreadyFinished
    }
}

// MARK: Resuming

extension RunStore {
    /// Which finished runs `retry` resumes.
    public enum RetryMode: String, Sendable, CaseIterable {
        /// Only a run in which a step failed (re-running it after a fix).
        case failed
        /// Any failed or cancelled run (a cancel, a deadline, a budget stop too).
        case allUnfinished = "all-unfinished"

        public init(parsing text: String) throws(RegentError) {
            guard let mode = RetryMode(rawValue: text) else {
                throw RegentError(.invalidInput, "invalid --steps \(quoted(text)): use failed or all-unfinished")
            }
            self = mode
        }
    }

    public struct RetryRequest: Sendable {
        public var mode: RetryMode = .failed
        /// Raises the budget's limit (above what the ledger spent).
        public var budgetLimit: Double?
        /// A new deadline from now; nil: the run's original allowance again, if it had one.
        public var deadline: Duration?
        public init(mode: RetryMode = .failed, budgetLimit: Double? = nil, deadline: Duration? = nil) {
            self.mode = mode
            self.budgetLimit = budgetLimit
            self.deadline = deadline
        }

        public func check() throws(RegentError) {
            if let budgetLimit { try RunStore.checkBudgetLimit(budgetLimit) }
            try RunStore.checkDeadline(deadline)
        }
    }

    public struct Retried: Sendable, Hashable {
        public let runID: String
        /// Queued again now (their `after` steps had all succeeded).
        public let requeued: [String]
        /// Every step set back to pending (the requeued ones included).
        public let reset: [String]
    }

    /// Resumes a failed or cancelled run on its pinned version (`workflow.retry_run`,
    /// sql/workflow/0015): succeeded steps keep their outputs, the others run again with fresh
    /// attempts. One transaction with its audit row; the `run.retried` event names the actor.
    public func retry(_ runID: String, _ request: RetryRequest, actor: AuditActor, on conn: PostgresConnection) async throws -> Retried {
        try Self.checkRunID(runID)
        try request.check()
        let deadlineMs = request.deadline.map { Int64($0.milliseconds) }
        return try await conn.withTransaction { conn in
            let row = try await conn.query(
                """
                SELECT outcome, requeued, reset FROM workflow.retry_run(
                    \(runID), \(request.mode.rawValue), \(request.budgetLimit.map { String($0) })::numeric, \(deadlineMs)::bigint,
                    \(actor.description), \(publisher)::uuid)
                """, purpose: "runs: retry").single()
            let outcome: String = try row.decode("outcome")
            switch outcome {
            case "retried": break
            case "not_found": throw RegentError(.notFound, "no run \(runID)")
            case "running": throw RegentError(.conflict, "run \(runID) is still running: only a failed or cancelled run can be retried")
            case "queued": throw RegentError(.conflict, "run \(runID) is queued for its concurrency key and has not begun: only a failed or cancelled run can be retried")
            case "succeeded": throw RegentError(.conflict, "run \(runID) succeeded: there is nothing to retry", hint: "start a new run")
            case "no_failed_step":
                throw RegentError(.conflict, "no step of run \(runID) failed (it was cancelled, or passed its deadline or budget)",
                                  hint: "resume it with --steps all-unfinished (HTTP: \"steps\": \"all-unfinished\")")
            case "nothing_to_retry":
                throw RegentError(.conflict, "every step of run \(runID) succeeded: it failed after its last step (its budget); there is nothing to run again")
            case "budget_exhausted":
                throw RegentError(.conflict, "run \(runID) spent its whole budget", hint: "raise the limit with --budget (HTTP: \"budget_limit\")")
            case "budget_too_low":
                throw RegentError(.invalidInput, "the new budget limit \(request.budgetLimit ?? 0) is not above what run \(runID) spent already")
            case "children_live":
                throw RegentError(.conflict, "a child run of run \(runID)'s last round is still being cancelled",
                                  hint: "its parent's finish cancels it within moments; retry then")
            case "executions_live":
                throw RegentError(.conflict, "a step execution of run \(runID)'s last round is still being fenced",
                                  hint: "the leader's deadline duty fences it within seconds; retry then")
            default: throw RegentError(.conflict, "run \(runID) cannot be retried: \(outcome)")
            }
            let retried = Retried(
                runID: runID, requeued: try row.decodeOptional("requeued", as: [String].self) ?? [], reset: try row.decodeOptional("reset", as: [String].self) ?? [])
            let detail = AuditLog.detail([
                "run_id": runID, "mode": request.mode.rawValue, "requeued": retried.requeued, "reset": retried.reset,
                "budget_limit": request.budgetLimit as Any,
            ])
            try await conn.query(AuditLog.insert(actor: actor, action: "run.retry", detailJSON: detail), purpose: "runs: audit")
            return retried
        }
    }
}

/// A JSON document kept as its text, encoded as the document itself.
struct RawJSON: Encodable {
    let text: String
    init(_ text: String) { self.text = text }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        guard let value = try? StrictJSON.parse(Array(text.utf8)) else { return try c.encodeNil() }
        try c.encode(JSONValueBox(value))
    }
}

struct JSONValueBox: Encodable {
    let value: JSONValue
    init(_ value: JSONValue) { self.value = value }
    func encode(to encoder: any Encoder) throws {
        switch value {
        case .null:
            var c = encoder.singleValueContainer()
            try c.encodeNil()
        case .bool(let b):
            var c = encoder.singleValueContainer()
            try c.encode(b)
        case .integer(let i):
            var c = encoder.singleValueContainer()
            try c.encode(i)
        case .number(let d):
            var c = encoder.singleValueContainer()
            try c.encode(d)
        case .string(let s):
            var c = encoder.singleValueContainer()
            try c.encode(s)
        case .array(let items):
            var c = encoder.unkeyedContainer()
            for item in items { try c.encode(JSONValueBox(item)) }
        case .object(let fields):
            var c = encoder.container(keyedBy: AnyKey.self)
            for (k, v) in fields { try c.encode(JSONValueBox(v), forKey: AnyKey(k)) }
        }
    }
}

struct AnyKey: CodingKey {
    let stringValue: String
    init(_ s: String) { stringValue = s }
    init?(stringValue: String) { self.stringValue = stringValue }
    var intValue: Int? { nil }
    init?(intValue: Int) { nil }
}

// MARK: Signals

extension RunStore {
    /// A signal payload's limit, in bytes of JSON.
    public static let maxSignalBytes = 64 << 10

    public struct Signalled: Sendable, Hashable {
        public let runID: String
        public let name: String
        public let signalID: String
        /// The step that consumed it (nil: kept until a step of the run waits for it).
        public let consumedBy: String?
        /// This signal_id was delivered before (with the same name and payload): the first delivery's answer.
        public let duplicate: Bool
        /// The run's state after the signal (a consumed signal may have finished it).
        public let runState: String
    }

    /// A signal id a client chooses for idempotency: 1-128 of `A-Z a-z 0-9 _ . : -`.
    public static func checkSignalID(_ id: String) throws(RegentError) {
        guard (1...128).contains(id.utf8.count),
            id.utf8.allSatisfy({ ($0 >= 48 && $0 <= 58) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 95 || $0 == 46 || $0 == 45 })
        else {
            throw RegentError(.invalidInput, "invalid signal id \(quoted(String(id.prefix(64)))): use 1-128 letters, digits or _ . : -")
        }
    }

    /// Sends signal `name` with `payloadJSON` (a JSON document) to a run (`workflow.send_signal`,
    /// sql/workflow/0016): the step waiting for it succeeds with the payload as its output and the
    /// run advances in the same transaction; with no step waiting yet, it is kept for the first
    /// wait of that name. `signalID` makes a resend the same delivery. One transaction with its audit row.
    public func signal(
        _ runID: String, name: String, payloadJSON: String, signalID: String?, actor: AuditActor, on conn: PostgresConnection
    ) async throws -> Signalled {
        try Self.checkRunID(runID)
        guard StepName.isValid(name) else {
            throw RegentError(.invalidInput, "invalid signal name \(quoted(String(name.prefix(64)))): 1-64 lowercase letters, digits, _ or -, starting with a letter")
        }
        if let signalID { try Self.checkSignalID(signalID) }
        guard payloadJSON.utf8.count <= Self.maxSignalBytes else {
            throw RegentError(.invalidInput, "the signal's data is \(payloadJSON.utf8.count) bytes; the limit is \(Self.maxSignalBytes)")
        }
        do { _ = try StrictJSON.parse(Array(payloadJSON.utf8)) } catch {
            throw RegentError(.invalidInput, "the signal's data is not JSON: \(error.message)")
        }
        return try await conn.withTransaction { conn in
            let row = try await conn.query(
                """
                SELECT outcome, signal_id, consumed_by, run_state FROM workflow.send_signal(
                    \(runID), \(name), \(payloadJSON)::jsonb, \(signalID), \(actor.description), \(publisher)::uuid)
                """, purpose: "runs: signal").single()
            let outcome: String = try row.decode("outcome")
            switch outcome {
            case "consumed", "kept", "duplicate": break
            case "not_found": throw RegentError(.notFound, "no run \(runID)")
            case "unknown_signal":
                throw RegentError(.unknownSignal, "no step of run \(runID) waits for a signal named \(quoted(name))", hint: "regent runs show \(runID) lists its steps and what they wait for")
            case "run_finished":
                throw RegentError(.runFinished, "run \(runID) has finished (\(try row.decode("run_state", as: String.self))): it takes no more signals")
            case "signal_conflict":
                throw RegentError(.signalConflict, "signal id \(signalID ?? "") was already used for run \(runID) with another name or payload", hint: "send a new signal with a new id")
            default: throw RegentError(.conflict, "the signal was refused: \(outcome)")
            }
            let sent = Signalled(
                runID: runID, name: name, signalID: try row.decode("signal_id"), consumedBy: try row.decodeOptional("consumed_by"),
                duplicate: outcome == "duplicate", runState: try row.decode("run_state"))
            if !sent.duplicate {
                let detail = AuditLog.detail(["run_id": runID, "name": name, "signal_id": sent.signalID, "consumed_by": sent.consumedBy as Any])
                try await conn.query(AuditLog.insert(actor: actor, action: "run.signal", detailJSON: detail), purpose: "runs: audit")
            }
            return sent
        }
    }
}
