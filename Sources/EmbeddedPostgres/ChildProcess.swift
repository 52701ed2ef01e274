import Foundation

/// Starting child processes without Foundation's `Process` (which needs run-loop threads
/// that are gone in an atexit handler): posix_spawnp, stdin from /dev/null, stdout and
/// stderr appended to one file.
public enum ChildProcess {
    /// Starts `argv` (looked up on PATH) and returns its pid; `environment` is added to this
    /// process's (secrets go there, not into argv where `ps` shows them).
    public static func spawn(_ argv: [String], outputPath: String, environment: [String: String] = [:]) throws(EmbeddedPostgresError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        // The child starts with no signal blocked and SIGTERM, SIGINT and SIGHUP at their
        // defaults, whatever this process did with them (signal handling here blocks or ignores
        // them, and both are inherited across exec: a child would never see its SIGTERM).
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for sig in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&defaults, sig) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let rc: Int32
        if environment.isEmpty {
            rc = posix_spawnp(&pid, argv[0], &actions, &attributes, cArgs, environ)
        } else {
            let merged = ProcessInfo.processInfo.environment.merging(environment) { $1 }
            let cEnv = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
            defer { cEnv.forEach { free($0) } }
            rc = posix_spawnp(&pid, argv[0], &actions, &attributes, cArgs, cEnv)
        }
        guard rc == 0 else { throw EmbeddedPostgresError("cannot run \(argv[0]): \(String(cString: strerror(rc)))") }
        return pid
    }

    /// The exit code of a child that ended (128 + signal when killed), or nil while it runs
    /// (`wait: false`).
    public static func exitStatus(_ pid: pid_t, wait: Bool) -> Int32? {
        var status: Int32 = 0
        var rc: pid_t
        repeat { rc = waitpid(pid, &status, wait ? 0 : WNOHANG) } while rc < 0 && errno == EINTR
        guard rc == pid else { return nil }
        return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// A fresh temporary file path with `prefix` (the file exists, empty).
    public static func temporaryFile(prefix: String) throws(EmbeddedPostgresError) -> String {
        var template = Array((NSTemporaryDirectory().replacingOccurrences(of: "/$", with: "", options: .regularExpression) + "/\(prefix)-XXXXXX").utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { throw EmbeddedPostgresError("cannot create a temporary file") }
        close(fd)
        return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
