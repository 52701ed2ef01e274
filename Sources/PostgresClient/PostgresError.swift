/// An error from the PostgreSQL client.
///
/// It keeps what an operator needs to act: the kind of failure, the server's
/// SQLSTATE and its message, detail and hint fields when the server sent them,
/// and what the statement was for. `description` is one line without secrets;
/// `String(reflecting:)` adds every field.
public struct PostgresError: Error, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    /// What went wrong, as an extensible set of codes.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        enum Base: String, Sendable {
            case invalidConfiguration
            case connectionFailed
            case connectionClosed
            case server
            case decoding
            case timeout
            case poolExhausted
            case poolClosed
            case protocolViolation
            case cancelled
            case sessionNotPinned
        }
        let base: Base
        /// The connection settings (URL, keyword string or a parameter) are malformed.
        public static let invalidConfiguration = Code(base: .invalidConfiguration)
        /// A connection could not be opened.
        public static let connectionFailed = Code(base: .connectionFailed)
        /// An open connection broke, or was closed while in use.
        public static let connectionClosed = Code(base: .connectionClosed)
        /// The server answered with an error; see `sqlState`.
        public static let server = Code(base: .server)
        /// A value could not be decoded into the requested Swift type.
        public static let decoding = Code(base: .decoding)
        /// An operation did not finish before its deadline.
        public static let timeout = Code(base: .timeout)
        /// No pooled connection became free before the checkout timeout.
        public static let poolExhausted = Code(base: .poolExhausted)
        /// The pool was shut down.
        public static let poolClosed = Code(base: .poolClosed)
        /// libpq returned something the client did not expect.
        public static let protocolViolation = Code(base: .protocolViolation)
        /// Consecutive statements of one client connection did not run on one server session
        /// (a transaction- or statement-mode pooler sits in between): session locks and LISTEN
        /// cannot work through it.
        public static let sessionNotPinned = Code(base: .sessionNotPinned)
        /// The operation was cancelled by its caller.
        public static let cancelled = Code(base: .cancelled)
        public var description: String { base.rawValue }
    }

    public var code: Code
    /// One line saying what happened.
    public var message: String
    /// The five-character SQLSTATE, when the server reported an error.
    public var sqlState: String?
    public var detail: String?
    public var hint: String?
    /// What the statement or operation was for (for example "migrations: record applied file").
    public var purpose: String?

    public init(
        _ code: Code, _ message: String, sqlState: String? = nil, detail: String? = nil,
        hint: String? = nil, purpose: String? = nil
    ) {
        self.code = code
        self.message = message
        self.sqlState = sqlState
        self.detail = detail
        self.hint = hint
        self.purpose = purpose
    }

    public var description: String {
        var s = ""
        if let purpose { s += "\(purpose): " }
        s += message
        if let sqlState { s += " (SQLSTATE \(sqlState))" }
        if let hint { s += "; hint: \(hint)" }
        return s
    }

    public var debugDescription: String {
        var s = "PostgresError(code: \(code), message: \(message)"
        if let sqlState { s += ", sqlState: \(sqlState)" }
        if let detail { s += ", detail: \(detail)" }
        if let hint { s += ", hint: \(hint)" }
        if let purpose { s += ", purpose: \(purpose)" }
        return s + ")"
    }

    /// True for SQLSTATE 23505 (unique_violation).
    public var isUniqueViolation: Bool { sqlState == "23505" }

    /// True when the failure is about the connection rather than the statement,
    /// so a retry on a fresh connection may succeed.
    public var isConnectionProblem: Bool {
        switch code.base {
        case .connectionFailed, .connectionClosed, .timeout: return true
        case .server:
            // Class 08 (connection exception), 57P01..57P03 (admin shutdown, crash shutdown, cannot connect now).
            guard let sqlState else { return false }
            return sqlState.hasPrefix("08") || ["57P01", "57P02", "57P03"].contains(sqlState)
        default: return false
        }
    }

    func with(purpose: String?) -> PostgresError {
        guard let purpose, self.purpose == nil else { return self }
        var copy = self
        copy.purpose = purpose
        return copy
    }
}
