import Foundation
import Logging
import PostgresClient

/// A private PostgreSQL cluster for development, demos and tests ("the embedded default").
///
/// `start` runs `initdb` in a directory of its own and starts `postgres` on a free
/// loopback port with its own socket directory. PostgreSQL refuses to run as root,
/// so when this process is root the server runs as the `postgres` system user via
/// `runuser`. `stop` shuts it down; nothing outside its directory is touched.
public final class EmbeddedPostgres: Sendable {
    public let directory: String
    public let port: Int
    /// The server's `max_connections`.
    public let maxConnections: Int
    public let binDirectory: String
    let runAs: String?
    let logger: Logger
    /// More server settings (`name=value`, each passed as `-c`), e.g. `ssl=on` and its files.
    let settings: [String]
    /// The system user the server runs as (nil: this process's user): files it must read, such
    /// as a TLS key, belong to it.
    public var serverUser: String? { runAs }

    public var dataDirectory: String { directory + "/data" }
    public var socketDirectory: String { directory + "/socket" }
    public var logFile: String { directory + "/postgres.log" }

    /// A URL for database `database` (TCP on loopback, trust authentication).
    public func url(database: String = "postgres") -> String {
        "postgres://postgres@127.0.0.1:\(port)/\(database)?sslmode=disable"
    }

    init(directory: String, port: Int, binDirectory: String, runAs: String?, maxConnections: Int = 400, settings: [String] = [], logger: Logger) {
        self.settings = settings
        self.maxConnections = maxConnections
        self.directory = directory
        self.port = port
        self.binDirectory = binDirectory
        self.runAs = runAs
        self.logger = logger
    }

    /// Finds `initdb`, `pg_ctl` and `postgres`: `pg_config --bindir`, then the newest
    /// `/usr/lib/postgresql/*/bin`. Throws naming the Debian package to install.
    public static func locateBinaries(
        pgConfig: String = "pg_config", installRoot root: String = "/usr/lib/postgresql"
    ) throws(EmbeddedPostgresError) -> String {
        var candidates: [String] = []
        if let result = try? run([pgConfig, "--bindir"], runAs: nil), result.status == 0 {
            candidates.append(result.output.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
            .compactMap(Int.init).sorted(by: >)
        candidates += versions.map { "\(root)/\($0)/bin" }
        for dir in candidates where FileManager.default.isExecutableFile(atPath: dir + "/initdb")
            && FileManager.default.isExecutableFile(atPath: dir + "/pg_ctl")
        {
            return dir
        }
        throw EmbeddedPostgresError(
            "no PostgreSQL server binaries (initdb, pg_ctl) found in `pg_config --bindir` or /usr/lib/postgresql/*/bin",
            hint: "install the server: apt-get install -y postgresql (Debian/Ubuntu), or pass --database-url to use an existing server")
    }

    /// Creates and starts a cluster. With `directory` nil a fresh temporary directory is used.
    /// `settings`: more server settings (`name=value`, no spaces or quotes), e.g. TLS.
    public static func start(
        directory: String? = nil, maxConnections: Int = 400, settings: [String] = [], logger: Logger = Logger(label: "regent.embedded-postgres")
    ) throws -> EmbeddedPostgres {
        for setting in settings where !setting.contains("=") || setting.contains(where: { $0 == " " || $0 == "'" || $0 == "\"" }) {
            throw EmbeddedPostgresError("invalid server setting \(setting.debugDescription): use name=value without spaces or quotes")
        }
        let bin = try locateBinaries()
        let runAs: String? = geteuid() == 0 ? "postgres" : nil
        let dir: String
        if let directory {
            dir = directory
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        } else {
            var template = Array((NSTemporaryDirectory().replacingOccurrences(of: "/$", with: "", options: .regularExpression) + "/regent-pg-XXXXXX").utf8CString)  // a directory: mkdtemp
            guard let p = mkdtemp(&template) else { throw EmbeddedPostgresError("cannot create a temporary directory") }
            dir = String(cString: p)
        }
        let socketDir = dir + "/socket"
        try? FileManager.default.createDirectory(atPath: socketDir, withIntermediateDirectories: true)
        if let runAs {
            guard let pw = getpwnam(runAs) else {
                throw EmbeddedPostgresError(
                    "running as root, but there is no '\(runAs)' user to run PostgreSQL as",
                    hint: "install the postgresql package (it creates the user) or run as an ordinary user")
            }
            for path in [dir, socketDir] { chown(path, pw.pointee.pw_uid, pw.pointee.pw_gid) }
        }
        let pg = EmbeddedPostgres(directory: dir, port: 0, binDirectory: bin, runAs: runAs, maxConnections: maxConnections, logger: logger)
        if !FileManager.default.fileExists(atPath: pg.dataDirectory + "/PG_VERSION") {
            let result = try run(
                [bin + "/initdb", "-D", pg.dataDirectory, "--no-sync", "--no-locale", "-E", "UTF8", "-U", "postgres", "--auth=trust"],
                runAs: runAs)
            guard result.status == 0 else {
                throw EmbeddedPostgresError("initdb failed in \(pg.dataDirectory): \(result.output.suffix(400))")
            }
        }
        // Retry on a port lost to a race with another process.
        var lastError: EmbeddedPostgresError?
        for _ in 0..<5 {
            let port = try freeLoopbackPort()
            let started = EmbeddedPostgres(
                directory: dir, port: port, binDirectory: bin, runAs: runAs, maxConnections: maxConnections, settings: settings, logger: logger)
            do {
                try started.startServer()
                logger.info("private PostgreSQL started", metadata: ["port": "\(port)", "directory": "\(dir)"])
                return started
            } catch {
                lastError = error
            }
        }
        throw lastError ?? EmbeddedPostgresError("could not start PostgreSQL")
    }

    /// Server settings: durability off (a throwaway cluster), fast dead-peer detection on.
    var serverOptions: String {
        [
            "-p \(port)", "-k \(socketDirectory)", "-c listen_addresses=127.0.0.1",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_connections=\(maxConnections)", "-c shared_buffers=64MB",
            "-c tcp_keepalives_idle=5", "-c tcp_keepalives_interval=2", "-c tcp_keepalives_count=3",
            "-c tcp_user_timeout=10000", "-c client_connection_check_interval=1000",
            "-c idle_in_transaction_session_timeout=60000",
        ].joined(separator: " ") + settings.map { " -c \($0)" }.joined()
    }

    func startServer() throws(EmbeddedPostgresError) {
        let result = try Self.run(
            [binDirectory + "/pg_ctl", "-D", dataDirectory, "-l", logFile, "-w", "-t", "60", "-o", serverOptions, "start"],
            runAs: runAs)
        guard result.status == 0 else {
            let log = (try? String(contentsOfFile: logFile, encoding: .utf8))?.suffix(600) ?? ""
            throw EmbeddedPostgresError("pg_ctl start failed on port \(port): \(result.output.suffix(300)) \(log)")
        }
    }

    /// Stops the server (fast mode: sessions are disconnected). Safe to call twice.
    public func stop() {
        _ = try? Self.run([binDirectory + "/pg_ctl", "-D", dataDirectory, "-m", "fast", "-w", "-t", "30", "stop"], runAs: runAs)
        logger.info("private PostgreSQL stopped", metadata: ["port": "\(port)"])
    }

    /// A streaming standby of this server in a directory of its own (`pg_basebackup -R`), started
    /// on a port of its own: for failover drills that promote it.
    public func startStandby() throws(EmbeddedPostgresError) -> EmbeddedPostgres {
        var template = Array((NSTemporaryDirectory().replacingOccurrences(of: "/$", with: "", options: .regularExpression) + "/regent-pg-XXXXXX").utf8CString)
        guard let p = mkdtemp(&template) else { throw EmbeddedPostgresError("cannot create a temporary directory") }
        let dir = String(cString: p)
        try? FileManager.default.createDirectory(atPath: dir + "/socket", withIntermediateDirectories: true)
        if let runAs, let pw = getpwnam(runAs) {
            for path in [dir, dir + "/socket"] { chown(path, pw.pointee.pw_uid, pw.pointee.pw_gid) }
        }
        let backup = try Self.run(
            [binDirectory + "/pg_basebackup", "-D", dir + "/data", "-R", "-X", "stream", "-c", "fast", "-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres"],
            runAs: runAs)
        guard backup.status == 0 else { throw EmbeddedPostgresError("pg_basebackup failed: \(backup.output.suffix(400))") }
        var lastError: EmbeddedPostgresError?
        for _ in 0..<5 {
            let standby = EmbeddedPostgres(
                directory: dir, port: try Self.freeLoopbackPort(), binDirectory: binDirectory, runAs: runAs, maxConnections: maxConnections, logger: logger)
            do {
                try standby.startServer()
                return standby
            } catch {
                lastError = error
            }
        }
        throw lastError ?? EmbeddedPostgresError("could not start the standby")
    }

    /// Promotes a standby to a writable primary on a new timeline (waits until it is).
    public func promote() throws(EmbeddedPostgresError) {
        let result = try Self.run([binDirectory + "/pg_ctl", "-D", dataDirectory, "-w", "-t", "60", "promote"], runAs: runAs)
        guard result.status == 0 else { throw EmbeddedPostgresError("pg_ctl promote failed: \(result.output.suffix(300))") }
    }

    /// Starts a stopped server again on the same port (outage drills: `stop()`, wait, this).
    public func startAgain() throws(EmbeddedPostgresError) { try startServer() }

    /// Stops the server and starts it again on the same port (every session is cut).
    public func restart() throws(EmbeddedPostgresError) {
        stop()
        try startServer()
    }

    /// Stops the server and deletes its directory.
    public func destroy() {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Creates a database and returns its configuration.
    public func createDatabase(_ name: String) async throws -> ConnectionConfiguration {
        let identifier = try SQLIdentifier(name)
        return try await PostgresConnection.withConnection(try ConnectionConfiguration(url())) { admin in
            try await admin.query("CREATE DATABASE \(identifier: identifier)", purpose: "create test database")
            return try ConnectionConfiguration(url(database: name))
        }
    }

    public static func freeLoopbackPort() throws(EmbeddedPostgresError) -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw EmbeddedPostgresError("cannot open a socket to find a free port") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p in
                bind(fd, p, len) == 0 && getsockname(fd, p, &len) == 0
            }
        }
        guard bound else { throw EmbeddedPostgresError("cannot find a free loopback port") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// Runs a command to its end (through `runuser` when `runAs` is set) and returns its
    /// exit status and output.
    @discardableResult
    public static func run(_ argv: [String], runAs: String?) throws(EmbeddedPostgresError) -> (status: Int32, output: String) {
        let full = runAs.map { ["runuser", "-u", $0, "--"] + argv } ?? argv
        let outPath = try ChildProcess.temporaryFile(prefix: "regent-cmd")
        defer { unlink(outPath) }
        let pid = try ChildProcess.spawn(full, outputPath: outPath)
        let status = ChildProcess.exitStatus(pid, wait: true) ?? -1
        return (status, (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "")
    }
}

/// Why the private PostgreSQL could not be set up, and what to do.
public struct EmbeddedPostgresError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var hint: String?
    public init(_ message: String, hint: String? = nil) {
        self.message = message
        self.hint = hint
    }
    public var description: String { hint.map { "\(message); \($0)" } ?? message }
}
