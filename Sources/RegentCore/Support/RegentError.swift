/// An error Regent reports to an operator: what happened, and what to do about it.
public struct RegentError: Error, Sendable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        enum Base: String, Sendable {
            case invalidInput, databaseNewerThanBinary, migrationChecksumMismatch, migrationFailed
            case unknownModule, schemaNotCurrent, bootFailed, notLeader, timeout, staleLease, notRegistered
            case instanceBound, notFound, conflict, notLeaseHolder, forbidden, idempotencyConflict
            case unknownSignal, runFinished, signalConflict
            case vaultSealed, secretCorrupt
        }
        let base: Base
        /// Input (flag, config value, name, body) was rejected; nothing was changed.
        public static let invalidInput = Code(base: .invalidInput)
        /// The database holds migrations this binary does not know.
        public static let databaseNewerThanBinary = Code(base: .databaseNewerThanBinary)
        /// An applied migration file's text differs from the one compiled in.
        public static let migrationChecksumMismatch = Code(base: .migrationChecksumMismatch)
        /// A migration file failed; its schema's transaction was rolled back.
        public static let migrationFailed = Code(base: .migrationFailed)
        /// No module of that name exists.
        public static let unknownModule = Code(base: .unknownModule)
        /// The schema is not migrated to what this binary needs.
        public static let schemaNotCurrent = Code(base: .schemaNotCurrent)
        /// A boot step failed.
        public static let bootFailed = Code(base: .bootFailed)
        /// A leader-only action was attempted without (or after losing) leadership.
        public static let notLeader = Code(base: .notLeader)
        /// A worker presented a lease epoch that is no longer current; nothing was changed.
        public static let staleLease = Code(base: .staleLease)
        /// The worker instance is not registered (or its liveness lapsed).
        public static let notRegistered = Code(base: .notRegistered)
        /// A worker instance id is bound to another worker id; nothing was changed.
        public static let instanceBound = Code(base: .instanceBound)
        /// No step of the run waits for a signal of that name; nothing was changed.
        public static let unknownSignal = Code(base: .unknownSignal)
        /// The run has finished and takes no more signals; nothing was changed.
        public static let runFinished = Code(base: .runFinished)
        /// A signal id was used before with another name or payload; nothing was changed.
        public static let signalConflict = Code(base: .signalConflict)
        /// The named thing (a package version, a run) does not exist; nothing was changed.
        public static let notFound = Code(base: .notFound)
        /// The request contradicts the current state (a routed or pinned version, a finished
        /// run); nothing was changed. The message says what holds it.
        public static let conflict = Code(base: .conflict)
        /// A lease was presented by a worker instance or token other than the one that holds it;
        /// nothing was changed.
        public static let notLeaseHolder = Code(base: .notLeaseHolder)
        /// The caller's token may not do this (outside its scope, or a reserved name); nothing was changed.
        public static let forbidden = Code(base: .forbidden)
        /// An idempotency key was reused with a different input; nothing was changed.
        public static let idempotencyConflict = Code(base: .idempotencyConflict)
        /// The vault cannot seal or open: this process holds no key, or not the key the secret
        /// was sealed under. Nothing was read or changed; the message says which key is needed.
        public static let vaultSealed = Code(base: .vaultSealed)
        /// A stored secret version does not open under its own path and version: its ciphertext
        /// was altered or moved from another row. Nothing was returned.
        public static let secretCorrupt = Code(base: .secretCorrupt)
        /// Something did not happen within its deadline.
        public static let timeout = Code(base: .timeout)
        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String
    public var hint: String?

    public init(_ code: Code, _ message: String, hint: String? = nil) {
        self.code = code
        self.message = message
        self.hint = hint
    }

    public var description: String { hint.map { "\(message); \($0)" } ?? message }
}
