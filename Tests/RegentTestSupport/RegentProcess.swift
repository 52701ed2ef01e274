import EmbeddedPostgres
import Foundation

/// A `regent` child process built from this package (`.build/debug/regent`), for tests
/// that need real processes (SIGKILL, SIGTERM drains).
public final class RegentProcess {
    public let pid: pid_t
    public let logPath: String

    public static var binary: String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/regent").path
    }

    public init(_ arguments: [String], logPath: String) throws {
        self.logPath = logPath
        unlink(logPath)
        let pid = try ChildProcess.spawn([Self.binary] + arguments, outputPath: logPath)
        self.pid = pid
    }

    public func signal(_ sig: Int32) { _ = kill(pid, sig) }

    /// Waits up to `timeout` for the process to exit; returns its exit status, or nil if it is still running.
    public func waitForExit(timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let code = ChildProcess.exitStatus(pid, wait: false) { return code }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
}
