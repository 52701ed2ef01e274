import CoreMetrics
import Synchronization
import Hummingbird
import PostgresClient
import RegentCore

/// Builds the router and, from the same calls, the table of routes (checked against
/// docs/openapi.yaml by a test). Routes of one role share one group with that role's auth
/// middleware.
final class RouteRegistrar {
    typealias Handler = @Sendable (Request, RegentRequestContext) async throws -> Response
    let router = Router(context: RegentRequestContext.self)
    let authenticator: Authenticator
    let index: RouteIndex
    private(set) var routes: [AdminAPI.Route] = []
    private var groups: [TokenRole: RouterGroup<RegentRequestContext>] = [:]

    init(authenticator: Authenticator, index: RouteIndex) {
        self.authenticator = authenticator
        self.index = index
    }

    /// `path` in OpenAPI form (`/v1/modules/{name}/enable`).
    /// A GET route also answers HEAD (headers only).
    func add(_ method: HTTPRequest.Method, _ path: String, role: TokenRole?, _ handler: @escaping Handler) {
        routes.append(AdminAPI.Route(method: method.rawValue, path: path, role: role))
        index.add(method: method.rawValue, path: path)
        if method == .get {
            index.add(method: "HEAD", path: path)
            register(.head, path, role: role) { request, context in
                var response = try await handler(request, context)
                response.body = ResponseBody()
                return response
            }
        }
        register(method, path, role: role, handler)
    }

    private func register(_ method: HTTPRequest.Method, _ path: String, role: TokenRole?, _ handler: @escaping Handler) {
        let hbPath = RouterPath(
            path.split(separator: "/", omittingEmptySubsequences: false).map { part in
                part.hasPrefix("{") && part.hasSuffix("}") ? ":" + part.dropFirst().dropLast() : String(part)
            }.joined(separator: "/"))
        guard let role else {
            router.on(hbPath, method: method, use: handler)
            return
        }
        let group = groups[role] ?? router.group().add(middleware: AuthMiddleware(minimum: role, authenticator: authenticator))
        groups[role] = group
        group.on(hbPath, method: method, use: handler)
    }
}

/// The served paths and their methods, for 405 answers with `Allow`.
final class RouteIndex: Sendable {
    private let entries = Mutex<[(method: String, segments: [Substring])]>([])

    func add(method: String, path: String) {
        entries.withLock { $0.append((method, path.split(separator: "/", omittingEmptySubsequences: false))) }
    }

    /// The methods served on `path` (a concrete request path), in a stable order.
    func allowed(_ path: String) -> [String] {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        let methods = entries.withLock { entries in
            entries.filter { entry in
                entry.segments.count == parts.count
                    && zip(entry.segments, parts).allSatisfy { pattern, part in
                        (pattern.hasPrefix("{") && pattern.hasSuffix("}") && !part.isEmpty) || pattern == part
                    }
            }.map(\.method)
        }
        let order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        return Array(Set(methods)).sorted { (order.firstIndex(of: $0) ?? 99) < (order.firstIndex(of: $1) ?? 99) }
    }
}
