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
public struct WorkflowManifest: Sendable, Hashable {
    public struct Step: Sendable, Hashable {
        public let name: String
        public let lane: Lane
        public let capabilities: [Capability]
        public let after: [String]
        public let maxAttempts: Int
        /// The step's lease: how long one attempt may run without renewing.
        public let timeout: Duration
        public let backoff: RetryPolicy
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
    public let steps: [Step]

    public static let maxSteps = 256
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
        let top = try Fields(value, "workflow.json", allowed: ["workflow_type", "description", "budget", "steps"])
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
        guard case .array(let items)? = top.optional("steps") else {
            throw RegentError(.invalidInput, "workflow.json: steps is required: a list of 1 to \(Self.maxSteps) steps")
        }
        guard (1...Self.maxSteps).contains(items.count) else {
            throw RegentError(.invalidInput, "workflow.json: steps holds \(items.count) steps; a workflow has 1 to \(Self.maxSteps)")
        }
        var steps: [Step] = []
        var names = Set<String>()
        for (n, item) in items.enumerated() {
            let at = "steps[\(n)]"
            let f = try Fields(item, at, allowed: ["name", "lane", "capabilities", "after", "max_attempts", "timeout", "backoff"])
            let name = try f.string("name")
            guard StepName.isValid(name) else {
                throw RegentError(.invalidInput, "workflow.json: \(at).name \(quoted(name)): use 1-64 lowercase letters, digits, _ or -, starting with a letter")
            }
            guard names.insert(name).inserted else { throw RegentError(.invalidInput, "workflow.json: \(at).name \(quoted(name)) is used by an earlier step") }
            let lane: Lane
            do { lane = try Lane(try f.string("lane")) } catch { throw RegentError(.invalidInput, "workflow.json: \(at).lane: \(error.message)") }
            var capabilities: [Capability] = []
            for c in try f.optionalStrings("capabilities") ?? [] {
                do { capabilities.append(try Capability(c)) } catch { throw RegentError(.invalidInput, "workflow.json: \(at).capabilities: \(error.message)") }
            }
            let after = try f.optionalStrings("after") ?? (n == 0 ? [] : [steps[n - 1].name])
            guard Set(after).count == after.count else { throw RegentError(.invalidInput, "workflow.json: \(at).after names a step twice") }
            let maxAttempts = try f.optionalInt("max_attempts") ?? 3
            guard (1...1000).contains(maxAttempts) else { throw RegentError(.invalidInput, "workflow.json: \(at).max_attempts must be 1 to 1000, got \(maxAttempts)") }
            let timeout = try f.optionalString("timeout").map { t throws(RegentError) in try parseDuration(t, flag: "workflow.json \(at).timeout") } ?? Self.defaultTimeout
            guard timeout >= .seconds(1), timeout <= .seconds(86_400) else {
                throw RegentError(.invalidInput, "workflow.json: \(at).timeout must be 1s to 24h")
            }
            var backoff = Self.defaultBackoff
            if let b = f.optional("backoff") {
                let bf = try Fields(b, "\(at).backoff", allowed: ["base", "max"])
                let base = try bf.optionalString("base").map { t throws(RegentError) in try parseDuration(t, flag: "workflow.json \(at).backoff.base") } ?? backoff.base
                let max = try bf.optionalString("max").map { t throws(RegentError) in try parseDuration(t, flag: "workflow.json \(at).backoff.max") } ?? Swift.max(base, backoff.maximum)
                do { backoff = try RetryPolicy(base: base, maximum: max) } catch { throw RegentError(.invalidInput, "workflow.json: \(at).backoff: \(error.message)") }
            }
            steps.append(Step(name: name, lane: lane, capabilities: capabilities, after: after, maxAttempts: maxAttempts, timeout: timeout, backoff: backoff))
        }
        for (n, step) in steps.enumerated() {
            for name in step.after where !names.contains(name) {
                throw RegentError(.invalidInput, "workflow.json: steps[\(n)].after names \(quoted(name)), which is not a step of this workflow")
            }
        }
        if let cycle = Self.cycle(steps) {
            throw RegentError(.invalidInput, "workflow.json: the steps' after lists form a cycle: \(cycle.joined(separator: " → "))")
        }
        self.steps = steps
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
            steps.append(.object([
                "name": .string(s.name), "lane": .string(s.lane.value), "capabilities": .array(s.capabilities.map { .string($0.value) }),
                "after": .array(s.after.map { .string($0) }), "max_attempts": .integer(Int64(s.maxAttempts)),
                "timeout_ms": .integer(Int64(s.timeout.milliseconds)), "backoff_base_ms": .integer(Int64(s.backoff.base.milliseconds)),
                "backoff_max_ms": .integer(Int64(s.backoff.maximum.milliseconds)),
            ]))
        }
        var top: [String: JSONValue] = ["workflow_type": .string(workflowType.value), "steps": .array(steps)]
        if let description { top["description"] = .string(description) }
        if let budget { top["budget"] = .object(["limit": .number(budget.limit), "unit": .string(budget.unit)]) }
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
