import Foundation
import Hummingbird
import Logging
import PostgresClient
import RegentCore

/// Requires a bearer token whose role is at least `minimum`. Missing, malformed, unknown
/// and revoked tokens get 401 (with `WWW-Authenticate: Bearer`), a weaker role gets 403;
/// the answers say nothing about which of these it was beyond that. Each failure is
/// written to `engine.audit` through ``AuthFailureLog`` (rate-limited per client address).
struct AuthMiddleware: RouterMiddleware {
    typealias Context = RegentRequestContext
    let minimum: TokenRole
    let authenticator: Authenticator

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let address = context.clientAddress
        if await authenticator.failures.isThrottled(address) {
            throw APIError(status: .tooManyRequests, code: "too_many_auth_failures",
                           message: "too many failed authentications from this address; retry later")
        }
        guard let token = Self.bearerToken(request) else {
            await authenticator.failures.record(address: address, reason: "missing_token", request: request)
            throw APIError.unauthorized
        }
        guard let identity = try await authenticator.authenticate(token) else {
            await authenticator.failures.record(address: address, reason: "invalid_token", request: request)
            throw APIError.unauthorized
        }
        guard identity.role >= minimum else {
            await authenticator.failures.record(address: address, reason: "insufficient_role", request: request, token: identity)
            throw APIError(status: .forbidden, code: "forbidden", message: "this token's role (\(identity.role.rawValue)) may not use this route; it needs \(minimum.rawValue)")
        }
        var context = context
        context.identity = identity
        return try await next(request, context)
    }

    static func bearerToken(_ request: Request) -> String? {
        guard let header = request.headers[.authorization] else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        let token = parts[1].trimmingCharacters(in: .whitespaces)
        return token.isEmpty ? nil : token
    }
}

/// Checks tokens against `auth.tokens`.
struct Authenticator: Sendable {
    let pool: ConnectionPool
    let failures: AuthFailureLog

    func authenticate(_ token: String) async throws -> TokenIdentity? {
        do {
            return try await pool.withConnection { try await TokenStore().authenticate(token, on: $0) }
        } catch let error as PostgresError where error.sqlState == "42P01" || error.sqlState == "3F000" {
            // Fail closed: no token table, no access.
            throw APIError(status: .serviceUnavailable, code: "auth_unavailable",
                           message: "the auth module's tables are missing; enable it (regent modules enable auth) and let the leader migrate")
        }
    }
}

/// Writes failed authentications to `engine.audit`, at most one row per client address
/// per `window` (a row's `unlogged_before` counts the previous window's failures that got no
/// row of their own), and throttles an address that
/// fails more than `throttleAfter` times within one window. Memory is bounded: at most
/// `maxAddresses` addresses are tracked; the oldest windows are dropped first.
actor AuthFailureLog {
    struct Entry {
        var windowStart: ContinuousClock.Instant
        var failures: Int
        var written: Bool
    }

    let pool: ConnectionPool
    let window: Duration
    let throttleAfter: Int
    let maxAddresses: Int
    let logger: Logger
    private var entries: [String: Entry] = [:]
    /// Audit rows written (for tests and metrics).
    private(set) var rowsWritten = 0

    init(pool: ConnectionPool, window: Duration = .seconds(10), throttleAfter: Int = 50, maxAddresses: Int = 10_000,
         logger: Logger = Logger(label: "regent.http.auth")) {
        self.pool = pool
        self.window = window
        self.throttleAfter = throttleAfter
        self.maxAddresses = maxAddresses
        self.logger = logger
    }

    func isThrottled(_ address: String) -> Bool {
        guard let entry = entries[address], ContinuousClock.now - entry.windowStart < window else { return false }
        return entry.failures >= throttleAfter
    }

    func record(address: String, reason: String, request: Request, token: TokenIdentity? = nil) async {
        let now = ContinuousClock.now
        var entry = entries[address] ?? Entry(windowStart: now, failures: 0, written: false)
        var unlogged = 0  // failures of the previous window that got no row of their own
        if now - entry.windowStart >= window {
            unlogged = max(0, entry.failures - 1)
            entry = Entry(windowStart: now, failures: 0, written: false)
        }
        entry.failures += 1
        let write = !entry.written
        entry.written = true
        if entries[address] == nil, entries.count >= maxAddresses { evictOldest() }
        entries[address] = entry
        guard write else { return }
        rowsWritten += 1
        let detail: [String: String] = [
            "address": address, "reason": reason, "method": request.method.rawValue,
            "path": String(request.uri.path.prefix(256)), "token": token?.name ?? "",
            "unlogged_before": String(unlogged),
        ]
        do {
            let json = String(decoding: try JSONSerialization.data(withJSONObject: detail, options: [.sortedKeys]), as: UTF8.self)
            try await pool.query(
                "INSERT INTO engine.audit (actor, action, detail) VALUES (\("http:\(address)"), 'auth.failed', \(json)::jsonb)",
                purpose: "audit a failed authentication")
        } catch {
            logger.warning("could not audit a failed authentication", metadata: ["address": "\(address)", "error": "\(error)"])
        }
    }

    private func evictOldest() {
        let victims = entries.sorted { $0.value.windowStart < $1.value.windowStart }.prefix(max(1, maxAddresses / 10))
        for (key, _) in victims { entries.removeValue(forKey: key) }
    }
}
