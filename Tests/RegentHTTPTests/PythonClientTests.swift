import Foundation
import PostgresClient
import RegentCore
import RegentTestSupport
import Testing

/// The Python package (clients/python) against the fixture the Swift tests use: a private
/// PostgreSQL and two real `regent serve` nodes, with an admin and a worker token. The
/// scenarios live in clients/python/tests (unittest): a cancelled run's handler, a completion
/// whose answer a proxy cuts after the commit, signals/listing/retry/events, and runs carried
/// exactly once while a node is SIGKILLed. Skipped, saying why, where python3 is missing.
@Suite("The Python client against two live nodes", .serialized)
struct PythonClientTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let python: String? = ["/usr/bin/python3", "/usr/local/bin/python3"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Runs `arguments` (off the cooperative pool) with `environment` added; exit code and output.
    static func run(_ executable: String, _ arguments: [String], in directory: String, environment: [String: String] = [:], timeout: Duration)
        async throws -> (code: Int32, output: String)
    {
        let logPath = NSTemporaryDirectory() + "regent-python-\(UUID().uuidString).log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: logPath) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = log
        process.standardError = log
        try process.run()
        let seconds = Double(timeout.components.seconds)
        let finished = try await offThePool { () -> Bool in
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning && Date() < deadline { usleep(50_000) }
            if process.isRunning { process.terminate(); usleep(500_000); if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
            process.waitUntilExit()
            return Date() < deadline
        }
        try? log.close()
        let output = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return (finished ? process.terminationStatus : -1, output)
    }

    @Test(.enabled(if: python != nil, "python3 is not installed"))
    func thePackageInstallsWithPipAndIsTyped() async throws {
        let venv = NSTemporaryDirectory() + "regent-py-venv-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: venv) }
        let made = try await Self.run(try #require(Self.python), ["-m", "venv", venv], in: Self.root, timeout: .seconds(120))
        guard made.code == 0 else {
            // A machine without python3-venv: say so rather than fail on a tool the package does not need.
            print("SKIPPED the pip install check: python3 -m venv failed (\(made.output.suffix(300)))")
            return
        }
        // pip builds it with setuptools from the index (PyPI), as a user's `pip install ./clients/python` does;
        // from a copy, so the build leaves nothing in the source tree.
        let copy = venv + "-src"
        defer { try? FileManager.default.removeItem(atPath: copy) }
        try FileManager.default.copyItem(atPath: Self.root + "/clients/python", toPath: copy)
        let installed = try await Self.run(venv + "/bin/pip", ["install", "-q", copy], in: NSTemporaryDirectory(), timeout: .seconds(240))
        if installed.code != 0, installed.output.contains("Could not find a version that satisfies"), ProcessInfo.processInfo.environment["REGENT_REQUIRE_TOOLS"] != "1" {
            print("SKIPPED the pip install check: the package index cannot be reached for setuptools (\(installed.output.suffix(300)))")
            return
        }
        #expect(installed.code == 0, "\(installed.output.suffix(3000))")
        let imported = try await Self.run(
            venv + "/bin/python", ["-c", "import regent_client, importlib.resources as r; print(regent_client.__version__, r.files('regent_client').joinpath('py.typed').is_file())"],
            in: NSTemporaryDirectory(), timeout: .seconds(60))
        #expect(imported.code == 0 && imported.output.contains("0.3.0.dev0 True"), "\(imported.output)")
    }

    @Test(.enabled(if: python != nil, "python3 is not installed"))
    func pythonWorkersAndTheClientAgainstTwoNodes() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary))
        let db = try await TestDatabase.shared.freshDatabase()
        let ports = [try RawHTTPStream.freePort(), try RawHTTPStream.freePort()]
        var nodes: [RegentProcess] = []
        defer { for n in nodes { n.signal(SIGKILL) } }
        let keyFile = NSTemporaryDirectory() + "regent-py-vault-\(UUID().uuidString).key"
        try VaultKey.write(VaultKey.generate(), to: keyFile)
        defer { unlink(keyFile) }
        for (i, port) in ports.enumerated() {
            nodes.append(try RegentProcess(
                ["serve", "--database-url", db.conninfo, "--node-name", "py\(i + 1)", "--http-address", "127.0.0.1:\(port)", "--log-level", "warning",
                 "--vault-key-file", keyFile],
                logPath: NSTemporaryDirectory() + "regent-py-node-\(UUID().uuidString).log"))
            // One at a time: the first is the leader, and it migrates before the second boots.
            #expect(await eventually(timeout: .seconds(45)) { try await RawHTTPStream.fetch(port: port, path: "/readyz").status == 200 }, "\(nodes[i].log)")
        }
        var tokens: [String: String] = [:]
        for role in ["admin", "worker"] {
            let p = try RegentProcess(
                ["tokens", "create", "--database-url", db.conninfo, "--role", role, "--name", "py-\(role)"],
                logPath: NSTemporaryDirectory() + "regent-py-token-\(UUID().uuidString).log")
            #expect(await p.waitForExit(timeout: .seconds(30)) == 0, "\(p.log)")
            tokens[role] = p.log.split(separator: "\n").last.map(String.init)
        }
        let result = try await Self.run(
            try #require(Self.python), ["-m", "unittest", "-v", "test_cluster"], in: Self.root + "/clients/python/tests",
            environment: [
                "PYTHONPATH": Self.root + "/clients/python/src",
                "REGENT_TEST_URLS": ports.map { "http://127.0.0.1:\($0)" }.joined(separator: ","),
                "REGENT_TEST_NODE_PIDS": nodes.map { "\($0.pid)" }.joined(separator: ","),
                "REGENT_TEST_ADMIN_TOKEN": try #require(tokens["admin"]),
                "REGENT_TEST_WORKER_TOKEN": try #require(tokens["worker"]),
            ],
            timeout: .seconds(420))
        #expect(result.code == 0, "\(result.output.suffix(8000))\n-- node py2:\n\(nodes[1].log.suffix(2000))")
        #expect(result.output.contains("Ran 5 tests") && !result.output.contains("skipped"), "\(result.output.suffix(3000))")
        print(result.output.split(separator: "\n").filter { $0.contains(" ... ") || $0.hasPrefix("Ran ") }.joined(separator: "\n"))
    }
}
