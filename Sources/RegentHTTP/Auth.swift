import CoreMetrics
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
        if let retryAfter = await authenticator.failures.throttledFor(address) {
            // A request that carries a valid token is not a guess: it passes, so one client's
            // failures cannot lock out every other client behind the same address.
            let valid = try await Self.bearerToken(request).asyncMap { try await authenticator.authenticate($0) } ?? nil
            guard let identity = valid else {
                await authenticator.failures.recordThrottled(address: address, request: request)
                var error = APIError(
                    status: .tooManyRequests, code: "too_many_auth_failures",
                    message: "too many failed authentications from this address; retry after \(retryAfter) s, or send a valid token")
                error.retryAfterSeconds = retryAfter
                throw error
            }
            guard identity.role >= minimum else {
                throw APIError(status: .forbidden, code: "forbidden", message: "this token's role (\(identity.role.rawValue)) may not use this route; it needs \(minimum.rawValue)")
            }
            var context = context
            context.identity = identity
            return try await next(request, context)
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
        /// Requests refused with 429 in this window, and whether that got its audit row.
        var throttled = 0
        var throttledWritten = false
    }

    let pool: ConnectionPool
    let window: Duration
    let throttleAfter: Int
    let maxAddresses: Int
    let logger: Logger
    let throttledCounter: CoreMetrics.Counter
    private var entries: [String: Entry] = [:]
    /// Audit rows written (for tests and metrics).
    private(set) var rowsWritten = 0

    init(pool: ConnectionPool, window: Duration = .seconds(10), throttleAfter: Int = 50, maxAddresses: Int = 10_000,
         throttled: CoreMetrics.Counter = CoreMetrics.Counter(label: "regent_http_throttled_total", factory: NOOPMetricsHandler.instance),
         logger: Logger = Logger(label: "regent.http.auth")) {
        self.throttledCounter = throttled
        self.pool = pool
        self.window = window
        self.throttleAfter = throttleAfter
        self.maxAddresses = maxAddresses
        self.logger = logger
    }

    func isThrottled(_ address: String) -> Bool { throttledFor(address) != nil }

    /// Whole seconds until the address's window ends, while it is throttled; else nil.
    func throttledFor(_ address: String) -> Int? {
        guard let entry = entries[address], entry.failures >= throttleAfter else { return nil }
        let left = window - (ContinuousClock.now - entry.windowStart)
        guard left > .zero else { return nil }
        return max(1, Int((left.milliseconds / 1000).rounded(.up)))
    }

    /// Requests refused with 429: counted (`regent_http_throttled_total`) and audited, one
    /// `auth.throttled` row per address per window (`refused` counts the requests of the
    /// previous window that got no row of their own).
    func recordThrottled(address: String, request: Request) async {
        throttledCounter.increment()
        guard var entry = entries[address] else { return }
        entry.throttled += 1
        let write = !entry.throttledWritten
        entry.throttledWritten = true
        entries[address] = entry
        guard write else { return }
        rowsWritten += 1
        let detail: [String: String] = [
            "address": address, "method": request.method.rawValue, "path": String(request.uri.path.prefix(256)),
            "failures_in_window": String(entry.failures),
        ]
        await audit(action: "auth.throttled", address: address, detail: detail)
    }

    /// Requests refused with 429 since this address's window began (for tests).
    func throttledCount(_ address: String) -> Int { entries[address]?.throttled ?? 0 }

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
        await audit(action: "auth.failed", address: address, detail: detail)
    }

    private func audit(action: String, address: String, detail: [String: String]) async {
        do {
            try await AuditLog.record(action, actor: .http(address: address), detail: detail, on: pool)
        } catch {
            logger.warning("could not audit a refused request", metadata: ["address": "\(address)", "action": "\(action)", "error": "\(error)"])
        }
    }

    private func evictOldest() {
        let victims = entries.sorted { $0.value.windowStart < $1.value.windowStart }.prefix(max(1, maxAddresses / 10))
        for (key, _) in victims { entries.removeValue(forKey: key) }
    }
}

extension Optional {
    func asyncMap<U>(_ transform: (Wrapped) async throws -> U) async rethrows -> U? {
        guard let value = self else { return nil }
        return try await transform(value)
    }
}
