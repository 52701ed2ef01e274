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
            if let key = idempotencyKey {
                guard (1...255).contains(key.utf8.count), !key.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
                    throw RegentError(.invalidInput, "idempotency key must be 1-255 bytes without control characters")
                }
            }
            if let deadline, deadline <= .zero || deadline > .seconds(86_400 * 365) {
                throw RegentError(.invalidInput, "deadline must be after now and at most a year away")
            }
            if let budget {
                guard budget.limit > 0, budget.limit <= 1e15 else { throw RegentError(.invalidInput, "budget limit must be above 0 and at most 1e15") }
                guard Lane.isValid(budget.unit) else { throw RegentError(.invalidInput, "budget unit \(quoted(budget.unit)): use 1-128 letters, digits or _ . : -") }
            }
        }
    }

    let publisher: UUID?
    public init(publisher: UUID? = nil) { self.publisher = publisher }

    /// Starts a run on the version the type is routed to, pinned to it (see
    /// `workflow.start_run`, sql/workflow/0006): the run, its steps and its root steps'
    /// executions in one transaction.
    public func start(_ request: StartRequest, actor: AuditActor, on conn: PostgresConnection) async throws -> Started {
        try request.check()
        let deadline = request.deadline.map { Date().addingTimeInterval($0.milliseconds / 1000) }
        // No row: the type has no route, or the version it named was unloaded between this
        // statement's snapshot and its lock (then the route has moved on: look again once).
        for _ in 0..<2 {
            let rows = try await conn.query(
                """
                SELECT run_id, created, package_hash FROM workflow.start_run(
                    \(request.workflowType.value), \(request.input)::jsonb, \(request.idempotencyKey), \(deadline.map(PostgresTimestamp.format))::timestamptz,
                    \(request.budget.map { String($0.limit) })::numeric, \(request.budget?.unit), \(actor.description), \(Self.namespace.value),
                    \(publisher)::uuid)
                """, purpose: "runs: start")
            if let row = rows.first {
                return Started(runID: try row.decode("run_id"), created: try row.decode("created"), packageHash: try row.decode("package_hash"))
            }
        }
        throw RegentError(
            .notFound, "workflow type \(quoted(request.workflowType.value)) has no routed package version",
            hint: "deploy a package for it first (regent packages deploy)")
    }
}
