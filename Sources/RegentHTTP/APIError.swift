import Foundation
import Hummingbird
import Logging
import NIOCore
import PostgresClient
import RegentCore

/// An API error with its status, machine code and message.
struct APIError: Error {
    let status: HTTPResponse.Status
    let code: String
    let message: String
    var retryAfterSeconds: Int? = nil
    static func badRequest(_ code: String, _ message: String) -> APIError { APIError(status: .badRequest, code: code, message: message) }
    static func conflict(_ code: String, _ message: String) -> APIError { APIError(status: .conflict, code: code, message: message) }
    static func notFound(_ code: String, _ message: String) -> APIError { APIError(status: .notFound, code: code, message: message) }
    static let unauthorized = APIError(
        status: .unauthorized, code: "unauthorized", message: "a valid bearer token is required (Authorization: Bearer rgt_...)")
}

/// Turns every error into the JSON error document; no internal detail leaks for 5xx. A path
/// served for other methods answers 405 with `Allow`; database trouble answers 503 with
/// `Retry-After`, a refused fence 409.
struct JSONErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let routes: RouteIndex

    func unavailable(_ code: String, _ message: String) throws -> Response { try unavailableResponse(code, message) }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            var response = try errorResponse(error.status, code: error.code, message: error.message)
            if error.status == .unauthorized { response.headers[.wwwAuthenticate] = "Bearer" }
            if let retry = error.retryAfterSeconds { response.headers[.retryAfter] = "\(retry)" }
            return response
        } catch let error as RegentError {
            switch error.code {
            case .invalidInput: return try errorResponse(.badRequest, code: "invalid_input", message: error.description)
            case .unknownModule: return try errorResponse(.notFound, code: "unknown_module", message: error.description)
            case .staleLease: return try errorResponse(.conflict, code: "stale_lease", message: error.description)
            case .notRegistered: return try errorResponse(.notFound, code: "not_registered", message: error.description)
            case .notLeader: return try errorResponse(.conflict, code: "not_leader", message: error.description)
            case .instanceBound: return try errorResponse(.conflict, code: "instance_bound", message: error.description)
            case .notFound: return try errorResponse(.notFound, code: "not_found", message: error.description)
            case .conflict: return try errorResponse(.conflict, code: "conflict", message: error.description)
            case .notLeaseHolder: return try errorResponse(.forbidden, code: "not_lease_holder", message: error.description)
            case .forbidden: return try errorResponse(.forbidden, code: "forbidden", message: error.description)
            case .idempotencyConflict: return try errorResponse(.conflict, code: "idempotency_conflict", message: error.description)
            case .unknownSignal: return try errorResponse(.notFound, code: "unknown_signal", message: error.description)
            case .runFinished: return try errorResponse(.conflict, code: "run_finished", message: error.description)
            case .signalConflict: return try errorResponse(.conflict, code: "signal_conflict", message: error.description)
            case .vaultSealed: return try unavailable("vault_sealed", error.description)
            case .secretCorrupt: return try errorResponse(.conflict, code: "secret_corrupt", message: error.description)
            case .timeout: return try unavailable("timeout", "the database did not answer in time; retry shortly")
            default:
                context.logger.error("request failed", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
                return try errorResponse(.internalServerError, code: "internal", message: "internal error; see the node's log")
            }
        } catch let error as PostgresError where error.sqlState == "40001" || error.sqlState == "40P01" {
            // Retried inside the server first (retryingConflicts); one that still reaches here is transient.
            context.logger.warning("request failed: transaction conflict after retries", metadata: ["path": "\(request.uri.path)", "sqlstate": "\(error.sqlState ?? "")"])
            return try unavailable("conflict_retry", "the database broke a lock conflict with this request (SQLSTATE \(error.sqlState ?? "")); nothing was changed, retry it")
        } catch let error as PostgresError where error.code == .poolExhausted || error.code == .timeout {
            return try unavailable(error.code == .timeout ? "timeout" : "pool_exhausted", "the node's database connections are all busy; retry shortly")
        } catch let error as PostgresError where error.code == .connectionFailed || error.code == .connectionClosed || error.code == .poolClosed {
            context.logger.warning("request failed: database unavailable", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
            return try unavailable("database_unavailable", "the database is not reachable from this node; retry shortly")
        } catch let error as HTTPError {
            let code: String
            let message: String
            switch error.status {
            case .notFound where request.method == .options || !routes.allowed(request.uri.path).isEmpty:
                let allowed = routes.allowed(request.uri.path)
                var response = try errorResponse(
                    .methodNotAllowed, code: "method_not_allowed",
                    message: "\(request.method) is not allowed on \(String(request.uri.path.prefix(200))); allowed: \(allowed.joined(separator: ", "))")
                if allowed.isEmpty { return try errorResponse(.notFound, code: "not_found", message: "no route \(request.method) \(String(request.uri.path.prefix(200)))") }
                response.headers[.allow] = allowed.joined(separator: ", ")
                return response
            case .notFound: (code, message) = ("not_found", "no route \(request.method) \(String(request.uri.path.prefix(200)))")
            case .methodNotAllowed: (code, message) = ("method_not_allowed", "\(request.method) is not allowed on \(String(request.uri.path.prefix(200)))")
            case .contentTooLarge: (code, message) = ("body_too_large", "the body is larger than \(AdminAPI.maxBodyBytes) bytes")
            default: (code, message) = ("http_\(error.status.code)", error.body ?? error.status.reasonPhrase)
            }
            return try errorResponse(error.status, code: code, message: message)
        } catch {
            context.logger.error("request failed", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
            return try errorResponse(.internalServerError, code: "internal", message: "internal error; see the node's log")
        }
    }
}

let jsonEncoder: JSONEncoder = {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    // RFC 3339 with the stored precision (PostgreSQL keeps microseconds): 2026-12-05T19:02:14.123456Z.
    e.dateEncodingStrategy = .custom { date, encoder in
        var c = encoder.singleValueContainer()
        try c.encode(rfc3339Micros(date))
    }
    return e
}()

/// `date` as RFC 3339 in UTC with six fractional digits.
func rfc3339Micros(_ date: Date) -> String {
    let micros = Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
    let seconds = micros >= 0 ? micros / 1_000_000 : (micros - 999_999) / 1_000_000
    let fraction = micros - seconds * 1_000_000
    var t = time_t(seconds)
    var parts = tm()
    gmtime_r(&t, &parts)
    return String(
        format: "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday), Int(parts.tm_hour),
        Int(parts.tm_min), Int(parts.tm_sec), fraction)
}

/// Runs `body` on a connection of `pool`, again (up to `attempts` times in all, each on a
/// connection of its own) when PostgreSQL ended its transaction with a serialization failure
/// (40001) or broke a deadlock (40P01): both changed nothing, and the lock order makes the
/// second rare. A client sees one only as a 503 with Retry-After.
func retryingConflicts<T: Sendable>(
    on pool: ConnectionPool, attempts: Int = 3, isolation: isolated (any Actor)? = #isolation, _ body: (PostgresConnection) async throws -> T
) async throws -> T {
    var attempt = 1
    while true {
        do {
            return try await pool.withConnection { try await body($0) }
        } catch let error as PostgresError where (error.sqlState == "40001" || error.sqlState == "40P01") && attempt < attempts {
            attempt += 1
            try await Task.sleep(for: .milliseconds(Int.random(in: 5...25) * attempt))
        }
    }
}

func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) throws -> Response {
    Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: try encodeJSON(value))))
}

func errorResponse(_ status: HTTPResponse.Status, code: String, message: String) throws -> Response {
    try json(["error": ["code": code, "message": message]], status: status)
}

/// A 503 with `Retry-After: 1`, as every 503 of the API (the condition passes on its own).
func unavailableResponse(_ code: String, _ message: String) throws -> Response {
    var response = try errorResponse(.serviceUnavailable, code: code, message: message)
    response.headers[.retryAfter] = "1"
    return response
}
