import Foundation
import Synchronization
import Hummingbird
import NIOCore
import RegentCore

/// A request body that must be one JSON object with only known fields, each of the
/// right type. Every refusal names the field and changes nothing.
struct JSONBody {
    let fields: [String: JSONValue]
    /// Where this object sits in the request (`executions[3].`), for error messages.
    var path = ""

    /// Reads and checks the body: `application/json`, at most the context's upload limit,
    /// an object, no field outside `allowed`.
    static func read(_ request: Request, context: RegentRequestContext, allowed: Set<String>, limit: Int? = nil) async throws -> JSONBody {
        let limit = limit ?? context.maxUploadSize
        guard let type = request.headers[.contentType], type.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased() == "application/json"
        else {
            throw APIError(status: .unsupportedMediaType, code: "unsupported_media_type", message: "send the body as Content-Type: application/json")
        }
        return try parse(Data(try await collect(request, limit: limit).readableBytesView), allowed: allowed)
    }

    static func tooLarge(_ limit: Int) -> APIError {
        APIError(status: .contentTooLarge, code: "body_too_large", message: "the body is larger than \(limit) bytes")
    }

    /// The whole body, at most `limit` bytes; 413 `body_too_large` past it. A declared
    /// Content-Length past it is refused before any of the body is read.
    static func collect(_ request: Request, limit: Int) async throws -> ByteBuffer {
        if let declared = request.headers[.contentLength].flatMap({ Int($0) }), declared > limit {
            throw tooLarge(limit)
        }
        do {
            return try await request.body.collect(upTo: limit)
        } catch let error as HTTPError where error.status == .contentTooLarge {
            throw tooLarge(limit)
        } catch is NIOTooManyBytesError {
            throw tooLarge(limit)
        }
    }

    static func parse(_ data: Data, allowed: Set<String>) throws -> JSONBody {
        let value: JSONValue
        do {
            value = try StrictJSON.parse(Array(data))
        } catch {
            throw APIError.badRequest(error.code, error.message)
        }
        guard case .object(let fields) = value else { throw APIError.badRequest("invalid_body", "the body must be a JSON object") }
        if let unknown = fields.keys.filter({ !allowed.contains($0) }).sorted().first {
            throw APIError.badRequest(
                "unknown_field", "unknown field \(quotedField(unknown)); allowed: \(allowed.sorted().joined(separator: ", "))")
        }
        return JSONBody(fields: fields)
    }

    static func quotedField(_ name: String) -> String {
        "\"" + String(name.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? "?" : Character($0) }.prefix(64)) + "\""
    }

    func wrongType(_ name: String, _ expected: String) -> APIError {
        APIError.badRequest("invalid_field", "field \(Self.quotedField(path + name)) must be \(expected)")
    }

    private func required<T>(_ name: String, _ value: T?) throws -> T {
        guard let value else { throw APIError.badRequest("missing_field", "field \(Self.quotedField(path + name)) is required") }
        return value
    }

    /// A failure's error text: at most 1024 characters, as the API document says (so at most
    /// 4096 bytes of UTF-8, what the store keeps).
    func errorText(_ name: String) throws -> String {
        let text = try string(name)
        guard text.unicodeScalars.count <= 1024 else { throw wrongType(name, "at most 1024 characters") }
        return text
    }

    /// An array of 1 to `max` objects, each with only fields from `allowed`.
    func objects(_ name: String, allowed: Set<String>, max: Int, min: Int = 1) throws -> [JSONBody] {
        guard case .array(let items)? = fields[name] else {
            if fields[name] == nil { throw APIError.badRequest("missing_field", "field \(Self.quotedField(path + name)) is required") }
            throw wrongType(name, "an array of objects")
        }
        guard (min...max).contains(items.count) else {
            throw APIError.badRequest("invalid_field", "field \(Self.quotedField(path + name)) must hold \(min) to \(max) items, got \(items.count)")
        }
        return try items.enumerated().map { i, item in
            let at = "\(path)\(name)[\(i)]."
            guard case .object(let fields) = item else {
                throw APIError.badRequest("invalid_field", "field \(Self.quotedField(String(at.dropLast()))) must be an object")
            }
            if let unknown = fields.keys.filter({ !allowed.contains($0) }).sorted().first {
                throw APIError.badRequest(
                    "unknown_field", "unknown field \(Self.quotedField(at + unknown)); allowed: \(allowed.sorted().joined(separator: ", "))")
            }
            return JSONBody(fields: fields, path: at)
        }
    }

    // An optional field is either absent or of its type: an explicit `null` is refused, as
    // the OpenAPI document says (no field is nullable).
    func optionalString(_ name: String) throws -> String? {
        switch fields[name] {
        case nil: return nil
        case .string(let s)?: return s
        default: throw wrongType(name, "a string")
        }
    }

    func string(_ name: String) throws -> String { try required(name, try optionalString(name)) }

    func optionalStrings(_ name: String) throws -> [String]? {
        switch fields[name] {
        case nil: return nil
        case .array(let items)?:
            return try items.map { item in
                guard case .string(let s) = item else { throw wrongType(name, "an array of strings") }
                return s
            }
        default: throw wrongType(name, "an array of strings")
        }
    }

    func strings(_ name: String) throws -> [String] { try required(name, try optionalStrings(name)) }

    /// A set of names given as an array: duplicates are refused, naming the first one.
    func optionalNameSet(_ name: String) throws -> [String]? {
        guard let items = try optionalStrings(name) else { return nil }
        var seen: Set<String> = []
        for item in items where !seen.insert(item).inserted {
            throw APIError.badRequest("invalid_field", "field \(Self.quotedField(name)) lists \(Self.quotedField(item)) twice")
        }
        return items
    }

    func nameSet(_ name: String) throws -> [String] { try required(name, try optionalNameSet(name)) }

    func optionalInt(_ name: String) throws -> Int64? {
        switch fields[name] {
        case nil: return nil
        case .integer(let v)?: return v
        // JSON has one number type: 12.0 is the integer 12 (as JSON Schema says).
        case .number(let d)? where d.rounded() == d && abs(d) < 9.2e18: return Int64(d)
        default: throw wrongType(name, "an integer")
        }
    }

    func int(_ name: String) throws -> Int64 { try required(name, try optionalInt(name)) }

    func optionalBool(_ name: String) throws -> Bool? {
        switch fields[name] {
        case nil: return nil
        case .bool(let v)?: return v
        default: throw wrongType(name, "true or false")
        }
    }

    func uuid(_ name: String) throws -> UUID {
        guard let uuid = UUID(uuidString: try string(name)) else { throw wrongType(name, "a UUID") }
        return uuid
    }

    /// A JSON object field as compact JSON text (for payloads kept as jsonb).
    func optionalObjectJSON(_ name: String) throws -> String? {
        switch fields[name] {
        case nil: return nil
        case .object?: return fields[name]!.text
        default: throw wrongType(name, "a JSON object")
        }
    }

    /// Any JSON value of a field as compact JSON text (nil when absent).
    func optionalJSON(_ name: String) throws -> String? { fields[name]?.text }

    func objectJSON(_ name: String) throws -> String { try required(name, try optionalObjectJSON(name)) }

    /// A nested object with only `allowed` fields; its errors name `name.field`.
    func optionalObject(_ name: String, allowed: Set<String>) throws -> JSONBody? {
        switch fields[name] {
        case nil, .null?: return nil
        case .object(let f)?:
            if let unknown = f.keys.filter({ !allowed.contains($0) }).sorted().first {
                throw APIError.badRequest(
                    "unknown_field", "unknown field \(Self.quotedField(path + name + "." + unknown)); allowed: \(allowed.sorted().joined(separator: ", "))")
            }
            return JSONBody(fields: f, path: path + name + ".")
        default: throw wrongType(name, "a JSON object")
        }
    }

    func optionalNumber(_ name: String) throws -> Double? {
        switch fields[name] {
        case nil: return nil
        case .integer(let i)?: return Double(i)
        case .number(let d)?: return d
        default: throw wrongType(name, "a number")
        }
    }

    /// A run's `deadline_ms` (start, retry): 1 ms to a year.
    func optionalDeadline() throws -> Duration? {
        guard let ms = try optionalInt("deadline_ms") else { return nil }
        guard (1...31_536_000_000).contains(ms) else { throw wrongType("deadline_ms", "1 to 31536000000 (a year)") }
        return .milliseconds(ms)
    }

    /// The fields of one completion in a batch.
    static let completionFields: Set<String> = ["execution_id", "lease_epoch", "result", "output", "cost", "worker_instance_id", "run_id"]
    static let failureFields: Set<String> = ["execution_id", "lease_epoch", "error", "retryable", "worker_instance_id"]

    /// One completion (of `complete-batch` or `complete-and-claim`). With `worker_instance_id`,
    /// only that instance's lease is completed; `run_id` (a step's, as its claim gave it) lets a
    /// batch of steps skip the statement for plain executions.
    func completion() throws -> Completion {
        let runID = try optionalString("run_id")
        if let runID, !RunStore.isRunID(runID) { throw wrongType("run_id", "a run id (run_ followed by 26 characters), as the claim gave it") }
        return Completion(
            executionID: try uuid("execution_id"), epoch: LeaseEpoch(try int("lease_epoch")), result: try output(), cost: try costs(),
            worker: try optionalString("worker_instance_id").map { try WorkerInstanceID($0) }, runID: runID)
    }

    /// One failure (of `fail` or `fail-batch`).
    func failure() throws -> Failure {
        Failure(
            executionID: try uuid("execution_id"), epoch: LeaseEpoch(try int("lease_epoch")), error: try errorText("error"),
            retryable: try optionalBool("retryable") ?? true, worker: try optionalString("worker_instance_id").map { try WorkerInstanceID($0) })
    }

    /// A completion's result: `output` (a workflow step's name for it) or `result`, not both; `{}` when neither.
    func output() throws -> String {
        let output = try optionalObjectJSON("output"), result = try optionalObjectJSON("result")
        if output != nil && result != nil { throw APIError.badRequest("invalid_field", "give \(path)output or \(path)result, not both") }
        return output ?? result ?? "{}"
    }

    /// A completion's `cost`: a number (in the run's budget unit) or a list of `{"amount", "unit"?}`, at most 64.
    func costs() throws -> [Cost] {
        func amount(_ value: JSONValue, _ at: String) throws -> Double {
            switch value {
            case .integer(let i): return Double(i)
            case .number(let d): return d
            default: throw wrongType(at, "a number from 0 to 1e15")
            }
        }
        func cost(_ amount: Double, _ unit: String?, _ at: String) throws -> Cost {
            do { return try Cost(amount: amount, unit: unit) } catch { throw APIError.badRequest("invalid_field", "\(path)\(at): \(error.message)") }
        }
        switch fields["cost"] {
        case nil: return []
        case .integer?, .number?: return [try cost(try amount(fields["cost"]!, "cost"), nil, "cost")]
        case .array(let items)?:
            guard items.count <= 64 else { throw wrongType("cost", "at most 64 amounts") }
            return try items.enumerated().map { n, item in
                guard case .object(let f) = item, Set(f.keys).isSubset(of: ["amount", "unit"]), let a = f["amount"] else {
                    throw wrongType("cost", "a list of {\"amount\": number, \"unit\"?: identifier}")
                }
                var unit: String?
                if let u = f["unit"] {
                    guard case .string(let text) = u else { throw wrongType("cost", "a list of {\"amount\": number, \"unit\"?: identifier}") }
                    unit = text
                }
                return try cost(try amount(a, "cost[\(n)].amount"), unit, "cost[\(n)]")
            }
        default: throw wrongType("cost", "a number or a list of {\"amount\", \"unit\"}")
        }
    }
}

/// A JSON value kept as its text (a jsonb column read as text), written into a response as
/// itself: ``encodeJSON(_:)`` splices the stored text in, so no stored document is decoded
/// and re-encoded on the way out, however deep or large it is.
struct AnyJSON: Encodable {
    let text: String
    func encode(to encoder: any Encoder) throws {
        guard let slots = RawJSONSlots.current else {
            throw EncodingError.invalidValue(
                text, .init(codingPath: encoder.codingPath, debugDescription: "stored JSON is written only by encodeJSON(_:), which splices it in"))
        }
        var c = encoder.singleValueContainer()
        try c.encode(slots.add(text))
    }
}

/// Stored JSON texts collected while one response is encoded, each replaced by a marker
/// string that carries a random nonce (so no value a client sent can look like one).
final class RawJSONSlots: Sendable {
    @TaskLocal static var current: RawJSONSlots?
    let nonce = String(UInt64.random(in: 1...UInt64.max), radix: 36)
    private let texts = Mutex<[String]>([])

    func add(_ text: String) -> String {
        let n = texts.withLock { $0.append(text); return $0.count - 1 }
        return "@@rgtraw:\(nonce):\(n)@@"
    }

    var all: [String] { texts.withLock { $0 } }
}

/// Encodes `value` as JSON, splicing stored JSON texts (``AnyJSON``) in as they are: one
/// linear pass over the encoder's output.
func encodeJSON<T: Encodable>(_ value: T) throws -> [UInt8] {
    let slots = RawJSONSlots()
    let data = try RawJSONSlots.$current.withValue(slots) { try jsonEncoder.encode(value) }
    let texts = slots.all
    guard !texts.isEmpty else { return Array(data) }
    let prefix = Array("\"@@rgtraw:\(slots.nonce):".utf8)
    let bytes = Array(data)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count + texts.reduce(0) { $0 + $1.utf8.count })
    var i = 0
    while i < bytes.count {
        if bytes[i] == 0x22, i + prefix.count < bytes.count, bytes[i..<(i + prefix.count)].elementsEqual(prefix) {
            var j = i + prefix.count
            var n = 0
            while j < bytes.count, bytes[j] >= 0x30, bytes[j] <= 0x39 {
                n = n * 10 + Int(bytes[j] - 0x30)
                j += 1
            }
            // "@@" and the closing quote
            if j + 2 < bytes.count, bytes[j] == 0x40, bytes[j + 1] == 0x40, bytes[j + 2] == 0x22, n < texts.count {
                out.append(contentsOf: texts[n].utf8)
                i = j + 3
                continue
            }
        }
        out.append(bytes[i])
        i += 1
    }
    return out
}
