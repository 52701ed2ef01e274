import Hummingbird
import NIOCore
import RegentCore

/// The request context of the admin API: the client's address (for auth-failure audit and
/// rate limiting) and, once the auth middleware accepted a token, who presented it.
public struct RegentRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?
    /// Set by the auth middleware on `/v1` routes.
    public var identity: TokenIdentity?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }

    /// Bodies larger than this are refused with 413 before they are parsed.
    public var maxUploadSize: Int { AdminAPI.maxBodyBytes }

    /// The client's IP address (no port), or "unknown".
    var clientAddress: String { remoteAddress?.ipAddress ?? "unknown" }

    /// The audit actor for a change made through the API.
    var actor: String { (identity.map { AuditActor.token($0.name) } ?? .http(address: clientAddress)).description }
}

extension RegentRequestContext {
    /// The lease store acting for this request's token: its claims record the token, and its
    /// renewals, completions and failures change only leases claimed with it.
    var leases: LeaseStore { LeaseStore(token: identity?.tokenID) }

    /// Refuses (403) what a scoped token may not do in `namespace` and `lanes`.
    func checkScope(namespace: Namespace, lanes: [Lane] = [], action: String) throws {
        try identity?.scope?.check(namespace: namespace, lanes: lanes, action: action)
    }
}
