import Foundation

/// How a ``RegentWorker`` reaches the cluster and what it takes on.
public struct WorkerConfiguration: Sendable {
    /// Base URLs of the cluster's nodes (`https://regent-0.regent:8443`, …). Requests go to one
    /// at a time and move to the next when a node cannot be reached, answers 502/503/504 or
    /// is draining; every node serves every request.
    public var urls: [String]
    /// A bearer token of the worker role (`regent tokens create NAME --role worker`).
    public var token: String
    /// Workflow steps live in namespace `runs`; plain executions in the namespace they were enqueued in.
    public var namespace: String = "runs"
    /// The lanes claimed from (a step's manifest `lane`, "default" when it names none).
    public var lanes: [String] = ["default"]
    /// What this worker can do: a step that requires capabilities is claimed only by a worker that has them all.
    public var capabilities: [String] = []
    /// The worker's kind (`worker_id` in the registry), shared by its replicas.
    public var workerID: String = "regent-worker"
    /// This process: unique per running worker (a restarted worker takes a new one). Default:
    /// host name, process id and a random suffix.
    public var instanceID: String = WorkerConfiguration.defaultInstanceID()
    /// At most this many steps run at once; claims take up to the free slots.
    public var maxConcurrentSteps: Int = 8
    /// How long a claim that finds nothing waits on the node for work (a long poll: no polling
    /// in between, and no database connection held while it waits).
    public var longPoll: Duration = .seconds(10)
    /// Finished steps' completions are sent together with the next claim (one round trip,
    /// `complete-and-claim`) or in batches when no claim is due. Off: one request per completion.
    public var batchCompletions: Bool = true
    /// How long the registry keeps this worker alive without a heartbeat (heartbeats go every third of it).
    public var livenessTTL: Duration = .seconds(30)
    /// A single request's limit (a long-polling claim gets `longPoll` on top).
    public var requestTimeout: Duration = .seconds(15)
    /// On shutdown, in-flight steps get this long to finish; those still running are then
    /// cancelled and handed back (failed as retryable, so another worker takes them).
    public var shutdownGrace: Duration = .seconds(30)
    /// TLS for `https://` URLs.
    public var tls: TLS = TLS()

    public struct TLS: Sendable {
        /// A PEM file of the certificate authorities to trust (default: the system's).
        public var caFile: String?
        /// A client certificate and key (PEM) for nodes that require one (`--tls-client-ca-file`).
        public var clientCertificateFile: String?
        public var clientKeyFile: String?
        public init(caFile: String? = nil, clientCertificateFile: String? = nil, clientKeyFile: String? = nil) {
            self.caFile = caFile
            self.clientCertificateFile = clientCertificateFile
            self.clientKeyFile = clientKeyFile
        }
    }

    public init(urls: [String], token: String) {
        self.urls = urls
        self.token = token
    }

    /// Host name, process id and four random hex digits, cut to the identifier rules.
    public static func defaultInstanceID() -> String {
        let host = ProcessInfo.processInfo.hostName.map { c -> Character in
            c.isASCII && (c.isLetter || c.isNumber || "_.:-".contains(c)) ? c : "-"
        }
        let suffix = String(UInt16.random(in: 0...UInt16.max), radix: 16)
        return String("\(String(host.prefix(80)))-\(ProcessInfo.processInfo.processIdentifier)-\(suffix)".prefix(128))
    }

    /// Refuses what cannot work, naming the field.
    func validate() throws(RegentWorkerError) {
        guard !urls.isEmpty else { throw .invalidConfiguration("urls: give at least one node's base URL") }
        for url in urls {
            guard let parsed = URL(string: url), ["http", "https"].contains(parsed.scheme ?? ""), parsed.host != nil, parsed.query == nil else {
                throw .invalidConfiguration("urls: \(url.debugDescription) is not an http:// or https:// base URL")
            }
        }
        guard !token.isEmpty, token.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f }) else {
            throw .invalidConfiguration("token: empty or not printable ASCII")
        }
        for (field, value) in [("namespace", namespace), ("workerID", workerID), ("instanceID", instanceID)] + lanes.map({ ("lanes", $0) })
            + capabilities.map({ ("capabilities", $0) })
        {
            guard Self.isIdentifier(value) else {
                throw .invalidConfiguration("\(field): \(value.debugDescription) must be 1-128 letters, digits or _ . : -")
            }
        }
        guard !lanes.isEmpty else { throw .invalidConfiguration("lanes: give at least one lane") }
        guard (1...1000).contains(maxConcurrentSteps) else { throw .invalidConfiguration("maxConcurrentSteps: 1 to 1000, got \(maxConcurrentSteps)") }
        guard longPoll >= .zero, longPoll <= .seconds(30) else { throw .invalidConfiguration("longPoll: 0 to 30 s") }
        guard livenessTTL >= .seconds(1) else { throw .invalidConfiguration("livenessTTL: at least 1 s") }
        guard requestTimeout >= .milliseconds(100) else { throw .invalidConfiguration("requestTimeout: at least 100 ms") }
        guard shutdownGrace >= .zero else { throw .invalidConfiguration("shutdownGrace: not negative") }
        if (tls.clientCertificateFile == nil) != (tls.clientKeyFile == nil) {
            throw .invalidConfiguration("tls: give clientCertificateFile and clientKeyFile together")
        }
    }

    static func isIdentifier(_ value: String) -> Bool {
        (1...128).contains(value.utf8.count)
            && value.utf8.allSatisfy { b in
                (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b == 95 || b == 46 || b == 58 || b == 45
            }
    }
}

/// What a worker refuses or cannot get past; each says what to do.
public enum RegentWorkerError: Error, Sendable, CustomStringConvertible, Equatable {
    /// The configuration cannot work (the field is named).
    case invalidConfiguration(String)
    /// The token was refused (401) or lacks the worker role or scope (403): no retry can help.
    case unauthorized(status: Int, message: String)
    /// A request the API refused as malformed (a bug, or a server older than this library).
    case refused(path: String, status: Int, code: String, message: String)

    public var description: String {
        switch self {
        case .invalidConfiguration(let m): return "invalid worker configuration: \(m)"
        case .unauthorized(let status, let m):
            return "the cluster refused the worker's token (\(status)): \(m); give a token of the worker role whose scope covers the namespace and lanes"
        case .refused(let path, let status, let code, let m): return "\(path) answered \(status) \(code): \(m)"
        }
    }
}

/// Thrown by a handler: the step fails for good (no more attempts), with this message.
public struct NonRetryable: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
