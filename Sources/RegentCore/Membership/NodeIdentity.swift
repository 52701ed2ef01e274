import Foundation

/// Who a node is: a UUID per process start (never the hostname: several processes
/// may share one), plus what an operator needs to find it.
public struct NodeIdentity: Sendable, Hashable, Codable {
    public let instanceID: InstanceID
    public let nodeName: String
    public let host: String
    public let pid: Int32
    public let version: String
    public var modules: [String]
    public var httpAddress: String?

    public init(
        instanceID: InstanceID = InstanceID(), nodeName: String? = nil, host: String = ProcessInfo.processInfo.hostName,
        pid: Int32 = ProcessInfo.processInfo.processIdentifier, version: String = RegentVersion.current,
        modules: [String] = [], httpAddress: String? = nil
    ) {
        self.instanceID = instanceID
        self.nodeName = nodeName ?? "\(host)-\(pid)"
        self.host = host
        self.pid = pid
        self.version = version
        self.modules = modules
        self.httpAddress = httpAddress
    }

    /// Node names: 1-128 printable characters without control characters.
    public static func validateNodeName(_ name: String) throws(RegentError) {
        guard !name.isEmpty, name.utf8.count <= 128,
            !name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f })
        else {
            throw RegentError(.invalidInput, "invalid node name \(quoted(name)): use 1-128 printable characters")
        }
    }
}
