import Foundation
import Logging

/// A private PgBouncer in front of a private PostgreSQL, for the pooler tests and drills.
///
/// Runs the Debian `pgbouncer` binary as a daemon on its own loopback port with trust
/// authentication (PgBouncer refuses to run as root: as root it runs as `postgres`).
public final class EmbeddedPgBouncer: Sendable {
    public enum PoolMode: String, Sendable { case session, transaction }

    public let port: Int
    public let mode: PoolMode
    public let directory: String
    let runAs: String?

    /// The pgbouncer binary, or nil when it is not installed.
    public static var binary: String? {
        ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    init(port: Int, mode: PoolMode, directory: String, runAs: String?) {
        self.port = port
        self.mode = mode
        self.directory = directory
        self.runAs = runAs
    }

    /// Starts PgBouncer in `mode` in front of `server`; throws naming the package when missing.
    public static func start(inFrontOf server: EmbeddedPostgres, mode: PoolMode, poolSize: Int = 100) throws -> EmbeddedPgBouncer {
        try start(serverHost: "127.0.0.1", serverPort: server.port, mode: mode, poolSize: poolSize)
    }

    public static func start(serverHost: String, serverPort: Int, mode: PoolMode, poolSize: Int = 100) throws -> EmbeddedPgBouncer {
        guard let bin = binary else {
            throw EmbeddedPostgresError("pgbouncer is not installed", hint: "apt-get install -y pgbouncer")
        }
        let runAs: String? = geteuid() == 0 ? "postgres" : nil
        var template = Array((NSTemporaryDirectory().replacingOccurrences(of: "/$", with: "", options: .regularExpression) + "/regent-pgb-XXXXXX").utf8CString)
        guard let p = mkdtemp(&template) else { throw EmbeddedPostgresError("cannot create a temporary directory") }
        let dir = String(cString: p)
        var lastError: EmbeddedPostgresError?
        for _ in 0..<5 {
            let port = try EmbeddedPostgres.freeLoopbackPort()
            let ini = """
                [databases]
                * = host=\(serverHost) port=\(serverPort)
                [pgbouncer]
                listen_addr = 127.0.0.1
                listen_port = \(port)
                unix_socket_dir =
                auth_type = trust
                auth_file = \(dir)/users.txt
                pool_mode = \(mode.rawValue)
                max_client_conn = 500
                default_pool_size = \(poolSize)
                server_reset_query = DISCARD ALL
                logfile = \(dir)/pgbouncer.log
                pidfile = \(dir)/pgbouncer.pid

                """
            try ini.write(toFile: dir + "/pgbouncer.ini", atomically: true, encoding: .utf8)
            try "\"postgres\" \"\"\n\"regent_plain\" \"\"\n".write(toFile: dir + "/users.txt", atomically: true, encoding: .utf8)
            if let runAs, let pw = getpwnam(runAs) {
                for path in [dir, dir + "/pgbouncer.ini", dir + "/users.txt"] { chown(path, pw.pointee.pw_uid, pw.pointee.pw_gid) }
            }
            let result = try EmbeddedPostgres.run([bin, "-d", dir + "/pgbouncer.ini"], runAs: runAs)
            let bouncer = EmbeddedPgBouncer(port: port, mode: mode, directory: dir, runAs: runAs)
            if result.status == 0, bouncer.waitUntilListening() { return bouncer }
            bouncer.stop()
            lastError = EmbeddedPostgresError("pgbouncer did not start on port \(port): \(result.output.suffix(300)) \(bouncer.log.suffix(400))")
        }
        throw lastError ?? EmbeddedPostgresError("could not start pgbouncer")
    }

    /// A URL for `database` through this pooler.
    public func url(database: String, user: String = "postgres") -> String {
        "postgres://\(user)@127.0.0.1:\(port)/\(database)?sslmode=disable"
    }

    public var log: String { (try? String(contentsOfFile: directory + "/pgbouncer.log", encoding: .utf8)) ?? "" }

    var daemonPID: pid_t? {
        (try? String(contentsOfFile: directory + "/pgbouncer.pid", encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    private func waitUntilListening() -> Bool {
        for _ in 0..<100 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let ok = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            close(fd)
            if ok { return true }
            usleep(50_000)
        }
        return false
    }

    /// Stops the daemon (every client and server connection is cut) and removes its files.
    public func stop() {
        if let pid = daemonPID {
            kill(pid, SIGTERM)
            for _ in 0..<100 where kill(pid, 0) == 0 { usleep(20_000) }
            if kill(pid, 0) == 0 { kill(pid, SIGKILL) }
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}
