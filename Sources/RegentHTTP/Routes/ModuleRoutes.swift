import CoreMetrics
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import PostgresClient
import Prometheus
import RegentCore
import ServiceLifecycle

/// Leadership and module switches.
extension AdminAPI {
    func setModule(_ context: RegentRequestContext, enabled: Bool) async throws -> Response {
        let name = try context.parameters.require("name")
        guard SQLIdentifier.isValid(name) else {
            throw APIError.badRequest("invalid_module_name", "invalid module name \(SQLIdentifier.printable(String(name.prefix(64)))): use lowercase letters, digits and underscores")
        }
        if !enabled, BuiltinModule.all.first(where: { $0.name == name })?.alwaysEnabled == true {
            throw APIError.conflict(
                "module_required",
                name == "auth"
                    ? "module auth cannot be disabled: every /v1 route of the admin API authenticates with its tokens (revoke tokens instead)"
                    : "module \(name) cannot be disabled: the engine needs it")
        }
        let state = try await pool.withConnection { try await ModuleRegistry().setEnabled(name, enabled, actor: context.actor, on: $0) }
        // The leader migrates an enabled module's schema (ModuleMigrationDuty); readiness shows when it is done.
        return try json(state)
    }
}
