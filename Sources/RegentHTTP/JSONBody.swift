import Foundation
import Hummingbird
import NIOCore

/// A request body that must be one JSON object with only known fields, each of the
/// right type. Every refusal names the field and changes nothing.
struct JSONBody {
    let fields: [String: JSONValue]

    /// Reads and checks the body: `application/json`, at most the context's upload limit,
    /// an object, no field outside `allowed`.
    static func read(_ request: Request, context: RegentRequestContext, allowed: Set<String>) async throws -> JSONBody {
        guard let type = request.headers[.contentType], type.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased() == "application/json"
        else {
            throw APIError(status: .unsupportedMediaType, code: "unsupported_media_type", message: "send the body as Content-Type: application/json")
        }
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: context.maxUploadSize)
        } catch let error as HTTPError where error.status == .contentTooLarge {
            throw APIError(status: .contentTooLarge, code: "body_too_large", message: "the body is larger than \(context.maxUploadSize) bytes")
        } catch is NIOTooManyBytesError {
            throw APIError(status: .contentTooLarge, code: "body_too_large", message: "the body is larger than \(context.maxUploadSize) bytes")
        }
        return try parse(Data(buffer.readableBytesView), allowed: allowed)
    }

    static func parse(_ data: Data, allowed: Set<String>) throws -> JSONBody {
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: data)
        } catch {
            throw APIError.badRequest("malformed_json", "the body is not valid JSON")
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

    private func wrongType(_ name: String, _ expected: String) -> APIError {
        APIError.badRequest("invalid_field", "field \(Self.quotedField(name)) must be \(expected)")
    }

    private func required<T>(_ name: String, _ value: T?) throws -> T {
        guard let value else { throw APIError.badRequest("missing_field", "field \(Self.quotedField(name)) is required") }
        return value
    }

    func optionalString(_ name: String) throws -> String? {
        switch fields[name] {
        case nil, .null?: return nil
        case .string(let s)?: return s
        default: throw wrongType(name, "a string")
        }
    }

    func string(_ name: String) throws -> String { try required(name, try optionalString(name)) }

    func optionalStrings(_ name: String) throws -> [String]? {
        switch fields[name] {
        case nil, .null?: return nil
        case .array(let items)?:
            return try items.map { item in
                guard case .string(let s) = item else { throw wrongType(name, "an array of strings") }
                return s
            }
        default: throw wrongType(name, "an array of strings")
        }
    }

    func strings(_ name: String) throws -> [String] { try required(name, try optionalStrings(name)) }

    func optionalInt(_ name: String) throws -> Int64? {
        switch fields[name] {
        case nil, .null?: return nil
        case .integer(let v)?: return v
        default: throw wrongType(name, "an integer")
        }
    }

    func int(_ name: String) throws -> Int64 { try required(name, try optionalInt(name)) }

    func optionalBool(_ name: String) throws -> Bool? {
        switch fields[name] {
        case nil, .null?: return nil
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
        case nil, .null?: return nil
        case .object?: return String(decoding: try jsonEncoder.encode(fields[name]!), as: UTF8.self)
        default: throw wrongType(name, "a JSON object")
        }
    }

    func objectJSON(_ name: String) throws -> String { try required(name, try optionalObjectJSON(name)) }
}

/// Any JSON document, decodable and encodable; integers stay integers.
enum JSONValue: Codable, Equatable {
    case null, bool(Bool), integer(Int64), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let v = try? c.decode(Bool.self) { self = .bool(v) }
        else if let v = try? c.decode(Int64.self) { self = .integer(v) }
        else if let v = try? c.decode(Double.self) { self = .number(v) }
        else if let v = try? c.decode(String.self) { self = .string(v) }
        else if let v = try? c.decode([JSONValue].self) { self = .array(v) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let v): try c.encode(v)
        case .integer(let v): try c.encode(v)
        case .number(let v): try c.encode(v)
        case .string(let v): try c.encode(v)
        case .array(let v): try c.encode(v)
        case .object(let v): try c.encode(v)
        }
    }
}

/// A JSON value kept as its text, encoded as itself (not as a string).
struct AnyJSON: Encodable {
    let text: String
    func encode(to encoder: any Encoder) throws {
        let value = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
        try value.encode(to: encoder)
    }
}
