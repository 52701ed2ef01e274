/// A package's `workflow.json`: the workflow type and its steps, a DAG.
///
/// ```json
/// {"workflow_type": "orders.fulfil", "description": "…", "budget": {"limit": 500, "unit": "cents"},
///  "steps": [{"name": "reserve", "lane": "stock", "capabilities": ["warehouse"], "max_attempts": 5,
///             "timeout": "30s", "backoff": {"base": "1s", "max": "1m"}},
///            {"name": "charge", "lane": "payments", "after": ["reserve"]}]}
/// ```
/// A step without `after` runs after the step listed before it (the first step is a root);
/// `"after": []` makes it a root. Unknown keys are refused, so a typo is never ignored.
///
/// A step has one kind, named by its key: `lane` (a worker step), `sleep`/`sleep_until` (a
/// timer), `wait_for` (a signal, e.g. a person's approval), `child` (a child workflow):
/// ```json
/// {"name": "cool-off", "sleep": "72h"}
/// {"name": "send", "sleep_until": "$.input.send_at"}
/// {"name": "approve", "wait_for": "approval", "timeout": "7d", "on_timeout": "fail"}
/// {"name": "ship", "child": "shipping.dispatch", "input": "$.steps.pack.output"}
/// ```
public struct WorkflowManifest: Sendable, Hashable {
    public struct Step: Sendable, Hashable {
        public let name: String
        public let kind: Kind
        /// A worker step's lane (nil for the other kinds).
        public let lane: Lane?
        public let capabilities: [Capability]
        public let after: [String]
        public let maxAttempts: Int
        /// The step's lease: how long one attempt may run without renewing.
        public let timeout: Duration
        public let backoff: RetryPolicy
        /// A worker step's concurrency key or fair key (docs/flow-control.md), read from the run.
        public var flow: StepFlow? = nil
        /// The vault secrets a worker holding this step's lease may read (docs/vault.md).
        public var secrets: [String] = []
    }

    /// `"concurrency": {"key": "$.input.customer_id", "limit": 1}`: at most `limit` executions
    /// of this step (of this workflow type) with the same key value queued or running at once;
    /// `"fair_key": "$.input.tenant"` (`"fair_window"`, default 10): tenants interleave in the lane.
    public enum StepFlow: Sendable, Hashable {
        case concurrency(key: RunPath, limit: Int)
        case fair(key: RunPath, window: Int)
    }

    /// What a step is: work a worker claims, or a wait the engine advances.
    public enum Kind: Sendable, Hashable {
        /// Claimed and run by a worker of its lane (`lane`, `capabilities`, `max_attempts`, `timeout`, `backoff`).
        case worker
        /// Sleeps for a duration (`sleep`) or until a time the run holds (`sleep_until`, RFC 3339).
        case timer(TimerSpec)
        /// Waits for a signal of this name (`wait_for`), at most `timeout`, then fails or continues (`on_timeout`).
        case signal(name: String, timeout: Duration?, continueOnTimeout: Bool)
        /// Runs a workflow of another type (`child`) on the input the path reads (`input`; the run's own input when absent).
        case child(type: WorkflowType, input: RunPath?)

        public var label: String {
            switch self {
            case .worker: "worker"
            case .timer: "timer"
            case .signal: "signal"
            case .child: "child"
            }
        }
    }

    public enum TimerSpec: Sendable, Hashable {
        case sleep(Duration)
        case until(RunPath)
    }

    /// A path into a run, as a manifest writes it: `$.input.send_at` (into the run's input) or
    /// `$.steps.pack.output.parcel` (into an earlier step's output). Each key is 1-128 of
    /// `A-Z a-z 0-9 _ -`; a key of digits indexes an array.
    public struct RunPath: Sendable, Hashable, CustomStringConvertible {
        public let segments: [String]
        public var description: String { "$." + segments.joined(separator: ".") }
        /// The step whose output it reads (nil: the run's input).
        public var step: String? { segments.first == "steps" ? segments[1] : nil }

        public init(_ text: String, at: String) throws(RegentError) {
            let wrong = RegentError(
                .invalidInput, "workflow.json: \(at) \(quoted(String(text.prefix(200)))): use $.input[.key…] or $.steps.<step>.output[.key…]")
            guard text.hasPrefix("$."), text.utf8.count <= 1024 else { throw wrong }
            let parts = text.dropFirst(2).split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            guard parts.allSatisfy({ p in
                (1...128).contains(p.utf8.count) && p.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 95 || $0 == 45 }
            }) else { throw wrong }
            if parts.first == "input" {
                segments = parts
            } else if parts.count >= 3, parts[0] == "steps", parts[2] == "output", StepName.isValid(parts[1]) {
                segments = parts
            } else {
                throw wrong
            }
        }
    }

    public struct Budget: Sendable, Hashable {
        public let limit: Double
        public let unit: String
        /// Unchecked here; ``RunStore/StartRequest/check()`` and the manifest parser check it.
        public init(limit: Double, unit: String) {
            self.limit = limit
            self.unit = unit
        }
    }

    public let workflowType: WorkflowType
    public let description: String?
    public let budget: Budget?
    /// `"concurrency": {"key": "$.input.customer_id", "limit": 1}` at the top: at most `limit`
    /// runs of this type with the same key value running at once; the others wait `queued`.
    public let concurrency: RunConcurrency?
    public let steps: [Step]

    /// A run concurrency key (docs/flow-control.md, "Run concurrency"): read from the run's input.
    public struct RunConcurrency: Sendable, Hashable {
        public let key: RunPath
        public let limit: Int
    }

    public static let maxSteps = 256
    /// Child steps per workflow (its fan-out); runs nest at most ``maxChildDepth`` deep.
    public static let maxChildSteps = 32
    public static let maxChildDepth = 8
    /// The longest timer sleep and signal timeout.
    public static let maxWait = Duration.seconds(366 * 86_400)
    static let defaultTimeout = Duration.seconds(300)
    static let defaultBackoff = try! RetryPolicy(base: .seconds(1), maximum: .seconds(300))

    /// Parses and validates; every error names the field (`steps[2].after`).
    public static func parse(_ bytes: [UInt8]) throws(RegentError) -> WorkflowManifest {
        guard bytes.count <= PackageLimits.maxManifestBytes else {
            throw RegentError(.invalidInput, "workflow.json is \(bytes.count) bytes; the limit is \(PackageLimits.maxManifestBytes)")
        }
        let value: JSONValue
        do { value = try StrictJSON.parse(bytes) } catch { throw RegentError(.invalidInput, "workflow.json: \(error.message)") }
        return try WorkflowManifest(value)
    }

    init(_ value: JSONValue) throws(RegentError) {
        let top = try Fields(value, "workflow.json", allowed: ["workflow_type", "description", "budget", "concurrency", "steps"])
        workflowType = try WorkflowType(try top.string("workflow_type"))
        description = try top.optionalString("description")
        if let d = description, d.utf8.count > 1024 || d.unicodeScalars.contains(where: { $0.value < 0x20 && $0 != "\n" && $0 != "\t" }) {
            throw RegentError(.invalidInput, "workflow.json: description must be at most 1024 bytes without control characters")
        }
        if let b = top.optional("budget") {
            let budget = try Fields(b, "budget", allowed: ["limit", "unit"])
            let limit = try budget.number("limit")
            guard limit > 0, limit <= 1e15 else { throw RegentError(.invalidInput, "workflow.json: budget.limit must be above 0 and at most 1e15") }
            let unit = try budget.string("unit")
            guard Lane.isValid(unit) else { throw RegentError(.invalidInput, "workflow.json: budget.unit \(quoted(unit)): use 1-128 letters, digits or _ . : -") }
            self.budget = Budget(limit: limit, unit: unit)
        } else {
            budget = nil
        }
        if let c = top.optional("concurrency") {
            let cf = try Fields(c, "concurrency", allowed: ["key", "limit"])
            let key = try RunPath(try cf.string("key"), at: "concurrency.key")
            guard key.step == nil else {
                throw RegentError(
                    .invalidInput, "workflow.json: concurrency.key \(quoted(key.description)) reads a step's output; a run's key is read from its input when it starts: use $.input[.key…]")
            }
            let limit = try cf.optionalInt("limit") ?? 1
            guard (1...FlowGate.maxLimit).contains(limit) else {
                throw RegentError(.invalidInput, "workflow.json: concurrency.limit must be 1 to \(FlowGate.maxLimit), got \(limit)")
            }
            concurrency = RunConcurrency(key: key, limit: limit)
        } else {
            concurrency = nil
        }
        guard case .array(let items)? = top.optional("steps") else {
            throw RegentError(.invalidInput, "workflow.json: steps is required: a list of 1 to \(Self.maxSteps) steps")
        }
        guard (1...Self.maxSteps).contains(items.count) else {
            throw RegentError(.invalidInput, "workflow.json: steps holds \(items.count) steps; a workflow has 1 to \(Self.maxSteps)")
        }
        var steps: [Step] = []
        var names = Set<String>()
        var signals: [String: String] = [:]
        for (n, item) in items.enumerated() {
            let at = "steps[\(n)]"
            steps.append(try Self.step(item, at: at, index: n, previous: steps.last?.name, signals: &signals))
            guard names.insert(steps[n].name).inserted else {
                throw RegentError(.invalidInput, "workflow.json: \(at).name \(quoted(steps[n].name)) is used by an earlier step")
            }
            if case .child(let type, _) = steps[n].kind, type == workflowType {
                throw RegentError(.invalidInput, "workflow.json: \(at).child names this workflow's own type: a workflow cannot start itself")
            }
        }
        let children = steps.filter { if case .child = $0.kind { true } else { false } }.count
        guard children <= Self.maxChildSteps else {
            throw RegentError(.invalidInput, "workflow.json: \(children) child steps; a workflow starts at most \(Self.maxChildSteps) children")
        }
        for (n, step) in steps.enumerated() {
            for name in step.after where !names.contains(name) {
                throw RegentError(.invalidInput, "workflow.json: steps[\(n)].after names \(quoted(name)), which is not a step of this workflow")
            }
        }
        if let cycle = Self.cycle(steps) {
            throw RegentError(.invalidInput, "workflow.json: the steps' after lists form a cycle: \(cycle.joined(separator: " → "))")
        }
        for (n, step) in steps.enumerated() {
            let path: RunPath?
            switch step.kind {
            case .timer(.until(let p)): path = p
            case .child(_, let p): path = p
            default:
                switch step.flow {
                case .concurrency(let p, _), .fair(let p, _): path = p
                case nil: path = nil
                }
            }
            if let name = path?.step, !Self.runsAfter(step.name, name, steps) {
                throw RegentError(
                    .invalidInput, "workflow.json: steps[\(n)] reads \(path!) but does not run after step \(quoted(name)) (list it in after, directly or through another step)")
            }
        }
        self.steps = steps
    }

    /// Whether `step` runs after `earlier`, directly or through other steps.
    static func runsAfter(_ step: String, _ earlier: String, _ steps: [Step]) -> Bool {
        let index = Dictionary(uniqueKeysWithValues: steps.map { ($0.name, $0) })
        var seen = Set<String>()
        var todo = index[step]?.after ?? []
        while let next = todo.popLast() {
            if next == earlier { return true }
            if seen.insert(next).inserted { todo += index[next]?.after ?? [] }
        }
        return false
    }

    static let commonKeys: Set<String> = ["name", "after"]
    static let kindKeys: [(kind: String, marker: [String], keys: Set<String>)] = [
        ("worker", ["lane"], ["lane", "capabilities", "max_attempts", "timeout", "backoff", "concurrency", "fair_key", "fair_window", "secrets"]),
        ("timer", ["sleep", "sleep_until"], ["sleep", "sleep_until"]),
        ("signal", ["wait_for"], ["wait_for", "timeout", "on_timeout"]),
        ("child", ["child"], ["child", "input"]),
    ]

    /// One step: its kind is named by the one marker key it has (`lane`, `sleep`/`sleep_until`,
    /// `wait_for`, `child`); a key of another kind is refused, naming both.
    static func step(_ item: JSONValue, at: String, index n: Int, previous: String?, signals: inout [String: String]) throws(RegentError) -> Step {
        guard case .object(let raw) = item else { throw RegentError(.invalidInput, "workflow.json: \(at) must be an object") }
        let present = kindKeys.filter { k in k.marker.contains { raw[$0] != nil && raw[$0] != .null } }
        guard present.count <= 1 else {
            throw RegentError(
                .invalidInput, "workflow.json: \(at) is both a \(present[0].kind) step and a \(present[1].kind) step (\(present.map { $0.marker.filter { raw[$0] != nil }.joined(separator: "/") }.joined(separator: " and "))); a step has exactly one kind")
        }
        guard let kind = present.first else {
            throw RegentError(
                .invalidInput, "workflow.json: \(at) has no kind: give it lane (a worker step), sleep or sleep_until (a timer), wait_for (a signal) or child (a child workflow)")
        }
        if let stray = raw.keys.sorted().first(where: { key in !commonKeys.contains(key) && !kind.keys.contains(key) }) {
            let owner = kindKeys.first { $0.keys.contains(stray) }
            throw RegentError(
                .invalidInput,
                owner.map { "workflow.json: \(at).\(stray) belongs to a \($0.kind) step, and this is a \(kind.kind) step; it has: \(commonKeys.union(kind.keys).sorted().joined(separator: ", "))" }
                    ?? "workflow.json: \(at) has an unknown key \(quoted(stray)); a \(kind.kind) step has: \(commonKeys.union(kind.keys).sorted().joined(separator: ", "))")
        }
        let f = try Fields(item, at, allowed: commonKeys.union(kind.keys))
        let name = try f.string("name")
        guard StepName.isValid(name) else {
            throw RegentError(.invalidInput, "workflow.json: \(at).name \(quoted(name)): use 1-64 lowercase letters, digits, _ or -, starting with a letter")
        }
        let after = try f.optionalStrings("after") ?? (previous.map { [$0] } ?? [])
        guard Set(after).count == after.count else { throw RegentError(.invalidInput, "workflow.json: \(at).after names a step twice") }
        func wait(_ key: String, minimum: Duration) throws(RegentError) -> Duration? {
            guard let text = try f.optionalString(key) else { return nil }
            let d = try parseDuration(text, flag: "workflow.json \(at).\(key)", maximum: maxWait)
            guard d >= minimum else { throw RegentError(.invalidInput, "workflow.json: \(at).\(key) must be at least \(minimum)") }
            return d
        }
        switch kind.kind {
        case "timer":
            let spec: TimerSpec
            if let sleep = try wait("sleep", minimum: .milliseconds(1)) {
                guard f.optional("sleep_until") == nil else {
                    throw RegentError(.invalidInput, "workflow.json: \(at) has both sleep and sleep_until; a timer has one")
                }
                spec = .sleep(sleep)
            } else {
                spec = .until(try RunPath(try f.string("sleep_until"), at: "\(at).sleep_until"))
            }
            return Step(name: name, kind: .timer(spec), lane: nil, capabilities: [], after: after, maxAttempts: 1, timeout: defaultTimeout, backoff: defaultBackoff)
        case "signal":
            let signal = try f.string("wait_for")
            guard StepName.isValid(signal) else {
                throw RegentError(.invalidInput, "workflow.json: \(at).wait_for \(quoted(signal)): use 1-64 lowercase letters, digits, _ or -, starting with a letter")
            }
            if let other = signals[signal] {
                throw RegentError(.invalidInput, "workflow.json: \(at).wait_for \(quoted(signal)) is already awaited by step \(quoted(other)); a signal name has one step")
            }
            signals[signal] = name
            let timeout = try wait("timeout", minimum: .seconds(1))
            let onTimeout = try f.optionalString("on_timeout") ?? "fail"
            guard onTimeout == "fail" || onTimeout == "continue" else {
                throw RegentError(.invalidInput, "workflow.json: \(at).on_timeout must be fail or continue, not \(quoted(onTimeout))")
            }
            guard timeout != nil || f.optional("on_timeout") == nil else {
                throw RegentError(.invalidInput, "workflow.json: \(at).on_timeout needs a timeout")
            }
            return Step(
                name: name, kind: .signal(name: signal, timeout: timeout, continueOnTimeout: onTimeout == "continue"), lane: nil, capabilities: [],
                after: after, maxAttempts: 1, timeout: defaultTimeout, backoff: defaultBackoff)
        case "child":
            let type: WorkflowType
            do { type = try WorkflowType(try f.string("child")) } catch { throw RegentError(.invalidInput, "workflow.json: \(at).child: \(error.message)") }
            let input = try f.optionalString("input").map { t throws(RegentError) in try RunPath(t, at: "\(at).input") }
            return Step(name: name, kind: .child(type: type, input: input), lane: nil, capabilities: [], after: after, maxAttempts: 1, timeout: defaultTimeout, backoff: defaultBackoff)
        default:
            let lane: Lane
            do { lane = try Lane(try f.string("lane")) } catch { throw RegentError(.invalidInput, "workflow.json: \(at).lane: \(error.message)") }
            var capabilities: [Capability] = []
            for c in try f.optionalStrings("capabilities") ?? [] {
                do { capabilities.append(try Capability(c)) } catch { throw RegentError(.invalidInput, "workflow.json: \(at).capabilities: \(error.message)") }
            }
            let maxAttempts = try f.optionalInt("max_attempts") ?? 3
            guard (1...1000).contains(maxAttempts) else { throw RegentError(.invalidInput, "workflow.json: \(at).max_attempts must be 1 to 1000, got \(maxAttempts)") }
            let timeout = try f.optionalString("timeout").map { t throws(RegentError) in try parseDuration(t, flag: "workflow.json \(at).timeout") } ?? defaultTimeout
            guard timeout >= .seconds(1), timeout <= .seconds(86_400) else {
                throw RegentError(.invalidInput, "workflow.json: \(at).timeout must be 1s to 24h")
            }
            var backoff = defaultBackoff
            if let b = f.optional("backoff") {
                let bf = try Fields(b, "\(at).backoff", allowed: ["base", "max"])
                let base = try bf.optionalString("base").map { t throws(RegentError) in try parseDuration(t, flag: "workflow.json \(at).backoff.base") } ?? backoff.base
                let max = try bf.optionalString("max").map { t throws(RegentError) in try parseDuration(t, flag: "workflow.json \(at).backoff.max") } ?? Swift.max(base, backoff.maximum)
                do { backoff = try RetryPolicy(base: base, maximum: max) } catch { throw RegentError(.invalidInput, "workflow.json: \(at).backoff: \(error.message)") }
            }
            var step = Step(name: name, kind: .worker, lane: lane, capabilities: capabilities, after: after, maxAttempts: maxAttempts, timeout: timeout, backoff: backoff)
            step.flow = try flow(f, at: at)
            step.secrets = try VaultStore.checkGrant(try f.optionalStrings("secrets") ?? [], at: "workflow.json: \(at).secrets").map(\.value)
            return step
        }
    }

    /// A worker step's `concurrency` object or `fair_key` (with `fair_window`), not both.
    static func flow(_ f: Fields, at: String) throws(RegentError) -> StepFlow? {
        let fairKey = try f.optionalString("fair_key")
        let window = try f.optionalInt("fair_window")
        if let c = f.optional("concurrency") {
            guard fairKey == nil, window == nil else {
                throw RegentError(.invalidInput, "workflow.json: \(at) has both concurrency and fair_key; a step has one or the other")
            }
            let cf = try Fields(c, "\(at).concurrency", allowed: ["key", "limit"])
            let key = try RunPath(try cf.string("key"), at: "\(at).concurrency.key")
            let limit = try cf.optionalInt("limit") ?? 1
            guard (1...FlowGate.maxLimit).contains(limit) else {
                throw RegentError(.invalidInput, "workflow.json: \(at).concurrency.limit must be 1 to \(FlowGate.maxLimit), got \(limit)")
            }
            return .concurrency(key: key, limit: limit)
        }
        guard let fairKey else {
            if window != nil { throw RegentError(.invalidInput, "workflow.json: \(at).fair_window needs fair_key") }
            return nil
        }
        let w = window ?? FlowGate.defaultFairWindow
        guard (1...FlowGate.maxLimit).contains(w) else {
            throw RegentError(.invalidInput, "workflow.json: \(at).fair_window must be 1 to \(FlowGate.maxLimit), got \(w)")
        }
        return .fair(key: try RunPath(fairKey, at: "\(at).fair_key"), window: w)
    }

    /// One cycle of the `after` graph, as names from a step back to itself; nil when acyclic.
    static func cycle(_ steps: [Step]) -> [String]? {
        let index = Dictionary(uniqueKeysWithValues: steps.enumerated().map { ($1.name, $0) })
        var color = [Int](repeating: 0, count: steps.count)  // 0 new, 1 on the path, 2 done
        var path: [Int] = []
        func visit(_ i: Int) -> [String]? {
            color[i] = 1
            path.append(i)
            for dep in steps[i].after {
                guard let j = index[dep] else { continue }
                if color[j] == 1 {
                    let loop = path[path.firstIndex(of: j)!...].map { steps[$0].name }
                    return loop + [steps[j].name]
                }
                if color[j] == 0, let found = visit(j) { return found }
            }
            path.removeLast()
            color[i] = 2
            return nil
        }
        for i in steps.indices where color[i] == 0 {
            if let found = visit(i) { return found }
        }
        return nil
    }

    /// The steps with no `after`: where a run starts.
    public var roots: [Step] { steps.filter { $0.after.isEmpty } }

    /// The normalized manifest, as stored (defaults filled in, durations in milliseconds):
    /// what run starts read in SQL.
    public var normalizedJSON: String {
        var steps: [JSONValue] = []
        for s in self.steps {
            var entry: [String: JSONValue] = ["name": .string(s.name), "after": .array(s.after.map { .string($0) }), "kind": .string(s.kind.label)]
            switch s.kind {
            case .worker:
                entry["lane"] = .string(s.lane!.value)
                entry["capabilities"] = .array(s.capabilities.map { .string($0.value) })
                entry["max_attempts"] = .integer(Int64(s.maxAttempts))
                entry["timeout_ms"] = .integer(Int64(s.timeout.milliseconds))
                entry["backoff_base_ms"] = .integer(Int64(s.backoff.base.milliseconds))
                entry["backoff_max_ms"] = .integer(Int64(s.backoff.maximum.milliseconds))
                switch s.flow {
                case .concurrency(let key, let limit):
                    entry["flow"] = .object(["kind": "c", "key": .array(key.segments.map { .string($0) }), "limit": .integer(Int64(limit))])
                case .fair(let key, let window):
                    entry["flow"] = .object(["kind": "f", "key": .array(key.segments.map { .string($0) }), "limit": .integer(Int64(window))])
                case nil: break
                }
                if !s.secrets.isEmpty { entry["secrets"] = .array(s.secrets.map { .string($0) }) }
            case .timer(.sleep(let d)):
                entry["sleep_ms"] = .integer(Int64(d.milliseconds.rounded(.up)))
            case .timer(.until(let path)):
                entry["sleep_until"] = .array(path.segments.map { .string($0) })
            case .signal(let name, let timeout, let continueOnTimeout):
                entry["signal"] = .string(name)
                if let timeout { entry["timeout_ms"] = .integer(Int64(timeout.milliseconds)) }
                entry["on_timeout"] = .string(continueOnTimeout ? "continue" : "fail")
            case .child(let type, let input):
                entry["child"] = .string(type.value)
                if let input { entry["input"] = .array(input.segments.map { .string($0) }) }
            }
            steps.append(.object(entry))
        }
        var top: [String: JSONValue] = ["workflow_type": .string(workflowType.value), "steps": .array(steps)]
        if let description { top["description"] = .string(description) }
        if let budget { top["budget"] = .object(["limit": .number(budget.limit), "unit": .string(budget.unit)]) }
        if let concurrency {
            top["flow"] = .object(["kind": "r", "key": .array(concurrency.key.segments.map { .string($0) }), "limit": .integer(Int64(concurrency.limit))])
        }
        return JSONValue.object(top).text
    }
}

/// A workflow type's name: 1-128 letters, digits or `_ . : -`.
public enum WorkflowTypeKind: IdentifierKind { public static let label = "workflow type" }
public typealias WorkflowType = Identifier<WorkflowTypeKind>

/// Step names: 1-64 of `a-z 0-9 _ -`, starting with a letter (they appear in step inputs as keys).
public enum StepName {
    public static func isValid(_ name: String) -> Bool {
        guard let first = name.utf8.first, first >= 97, first <= 122, name.utf8.count <= 64 else { return false }
        return name.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 || $0 == 45 }
    }
}

/// Field access on a JSON object with errors naming `where.field`.
struct Fields {
    let fields: [String: JSONValue]
    let at: String

    init(_ value: JSONValue, _ at: String, allowed: Set<String>) throws(RegentError) {
        guard case .object(let fields) = value else { throw RegentError(.invalidInput, "workflow.json: \(at) must be an object") }
        if let unknown = fields.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw RegentError(.invalidInput, "workflow.json: \(at) has an unknown key \(quoted(unknown)); allowed: \(allowed.sorted().joined(separator: ", "))")
        }
        self.fields = fields
        self.at = at
    }

    private func name(_ key: String) -> String { at == "workflow.json" ? key : "\(at).\(key)" }
    private func wrong(_ key: String, _ expected: String) -> RegentError {
        RegentError(.invalidInput, "workflow.json: \(name(key)) must be \(expected)")
    }

    func optional(_ key: String) -> JSONValue? {
        if case .null? = fields[key] { return nil }
        return fields[key]
    }

    func optionalString(_ key: String) throws(RegentError) -> String? {
        guard let v = optional(key) else { return nil }
        guard case .string(let s) = v else { throw wrong(key, "a string") }
        return s
    }

    func string(_ key: String) throws(RegentError) -> String {
        guard let s = try optionalString(key) else { throw RegentError(.invalidInput, "workflow.json: \(name(key)) is required") }
        return s
    }

    func optionalStrings(_ key: String) throws(RegentError) -> [String]? {
        guard let v = optional(key) else { return nil }
        guard case .array(let items) = v else { throw wrong(key, "a list of strings") }
        var out: [String] = []
        for item in items {
            guard case .string(let s) = item else { throw wrong(key, "a list of strings") }
            out.append(s)
        }
        return out
    }

    func optionalInt(_ key: String) throws(RegentError) -> Int? {
        guard let v = optional(key) else { return nil }
        guard case .integer(let i) = v, let n = Int(exactly: i) else { throw wrong(key, "an integer") }
        return n
    }

    func number(_ key: String) throws(RegentError) -> Double {
        switch optional(key) {
        case .integer(let i)?: return Double(i)
        case .number(let d)?: return d
        case nil: throw RegentError(.invalidInput, "workflow.json: \(name(key)) is required")
        default: throw wrong(key, "a number")
        }
    }
}
