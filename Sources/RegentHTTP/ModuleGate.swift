import Foundation
import HTTPTypes
import PostgresClient
import RegentCore

/// Whether a module's routes may serve: a disabled module's routes answer 404
/// `module_disabled` (its resources are not offered while it is off; its tables and rows are
/// kept). The
/// answer is cached for a second, so a switch reaches every node within about a second
/// without a query on every request.
actor ModuleGate {
    let pool: ConnectionPool
    let module: String
    private var cached: (enabled: Bool, at: ContinuousClock.Instant)?

    init(pool: ConnectionPool, module: String) {
        self.pool = pool
        self.module = module
    }

    func require() async throws {
        let now = ContinuousClock.now
        let enabled: Bool
        if let cached, now - cached.at < .seconds(1) {
            enabled = cached.enabled
        } else {
            enabled = try await ModuleRegistry().isEnabled(module, on: pool)
            cached = (enabled, now)
        }
        guard enabled else {
            throw APIError(
                status: .notFound, code: "module_disabled",
                message: "the \(module) module is disabled; an admin can enable it (POST /v1/modules/\(module)/enable or regent modules enable \(module))")
        }
    }
}
