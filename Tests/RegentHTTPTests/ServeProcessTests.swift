import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Testing

/// Real `regent` processes: the tokens CLI, and `serve` with its HTTP API, JSON logs,
/// metrics and SIGTERM drain.
@Suite("regent serve processes with the admin API", .serialized)
struct ServeProcessTests {
    func run(_ args: [String]) async throws -> (code: Int32?, output: String) {
        let p = try RegentProcess(args, logPath: NSTemporaryDirectory() + "regent-cli-\(UUID().uuidString).log")
        let code = await p.waitForExit(timeout: .seconds(30))
        return (code, p.log)
    }

    @Test func tokensAreCreatedOnceListedWithoutSecretsAndRevoked() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary))
        let db = try await TestDatabase.shared.freshDatabase()
        let created = try await run(["tokens", "create", "--database-url", db.conninfo, "--role", "admin", "--name", "ops"])
        #expect(created.code == 0, "\(created.output)")
        let token = try #require(created.output.split(separator: "\n").last.map(String.init))
        #expect(token.wholeMatch(of: /rgt_[0-9a-f]{16}_[0-9a-f]{64}/) != nil, "the token is alone on the last line")
        let listed = try await run(["tokens", "list", "--database-url", db.conninfo, "--json"])
        #expect(listed.code == 0)
        #expect(listed.output.contains("\"ops\""))
        #expect(!listed.output.contains(String(token.suffix(64))), "no secret in listings")
        try await PostgresConnection.withConnection(db) { conn in
            let stored = try await conn.query("SELECT secret_sha256 FROM auth.tokens WHERE name = 'ops'").single().decode("secret_sha256", as: String.self)
            #expect(!stored.contains(String(token.suffix(64))), "only a hash is stored")
            #expect(try await TokenStore().authenticate(token, on: conn)?.role == .admin)
            // A second live token of the same name is refused; bad input changes nothing.
            let duplicate = try await run(["tokens", "create", "--database-url", db.conninfo, "--role", "read", "--name", "ops"])
            #expect(duplicate.code != 0)
            #expect(duplicate.output.contains("already exists"))
            let badRole = try await run(["tokens", "create", "--database-url", db.conninfo, "--role", "root", "--name", "x"])
            #expect(badRole.code != 0)
            #expect(badRole.output.contains("admin, worker or read"))
            let badName = try await run(["tokens", "create", "--database-url", db.conninfo, "--role", "read", "--name", "bad name;"])
            #expect(badName.code != 0)
            #expect(try await conn.query("SELECT count(*) AS n FROM auth.tokens").single().decode("n", as: Int64.self) == 1)
            let revoked = try await run(["tokens", "revoke", "--database-url", db.conninfo, "ops"])
            #expect(revoked.code == 0)
            #expect(try await TokenStore().authenticate(token, on: conn) == nil)
            let audit = try await conn.query("SELECT action FROM engine.audit WHERE action LIKE 'token.%' ORDER BY id").map { try $0.decode("action", as: String.self) }
            #expect(audit == ["token.created", "token.revoked"])
        }
    }

    /// HTTPS in a real `regent serve`: bad TLS flags stop it with one line; a certificate
    /// renewed on disk is served after SIGHUP, and the node keeps running.
    @Test(.enabled(if: HTTPSTests.tools, "curl or openssl is not installed"))
    func serveOverHTTPSReloadsItsCertificateOnSIGHUP() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary))
        let db = try await TestDatabase.shared.freshDatabase()
        let certs = try await TestCertificates.make()
        defer { certs.remove() }
        let port = try RawHTTPStream.freePort()
        for (flags, says) in [
            (["--tls-cert-file", certs.cert], "--tls-cert-file needs --tls-key-file"),
            (["--http-address", "127.0.0.1:\(port)", "--tls-cert-file", certs.cert, "--tls-key-file", certs.directory + "/none.key"], "--tls-key-file"),
            (["--tls-cert-file", certs.cert, "--tls-key-file", certs.key], "need --http-address"),
        ] {
            let refused = try await run(["serve", "--database-url", db.conninfo] + flags)
            #expect(refused.code != nil && refused.code != 0, "\(flags)")
            #expect(refused.output.contains(says), "\(flags): \(refused.output)")
        }
        let node = try RegentProcess(
            ["serve", "--database-url", db.conninfo, "--http-address", "127.0.0.1:\(port)",
             "--tls-cert-file", certs.cert, "--tls-key-file", certs.key],
            logPath: NSTemporaryDirectory() + "regent-https-\(UUID().uuidString).log")
        defer { node.signal(SIGKILL) }
        let url = "https://127.0.0.1:\(port)/healthz"
        #expect(await eventually(timeout: .seconds(30)) { try await HTTPSTests.curl(["--cacert", certs.ca, url]).output.contains("HTTP 200") }, "\(node.log)")
        let fresh = try await certs.issued("renewed", subject: "/CN=renewed", altNames: "IP:127.0.0.1")
        try FileManager.default.removeItem(atPath: certs.cert)
        try FileManager.default.copyItem(atPath: fresh.cert, toPath: certs.cert)
        try FileManager.default.removeItem(atPath: certs.key)
        try FileManager.default.copyItem(atPath: fresh.key, toPath: certs.key)
        node.signal(SIGHUP)
        #expect(await eventually(timeout: .seconds(20)) { node.log.contains("TLS certificate reloaded") }, "\(node.log)")
        let renewed = try await HTTPSTests.curl(["-v", "--cacert", certs.ca, url])
        #expect(renewed.output.contains("CN=renewed") && renewed.output.contains("HTTP 200"), "\(renewed.output)")
        node.signal(SIGTERM)
        #expect(await node.waitForExit(timeout: .seconds(30)) == 0, "\(node.log)")
    }

    /// `regent worker --api-url https://…` carries a run through a node that requires client
    /// certificates: with the CA and its client certificate it completes every step; without
    /// the certificate it gets nowhere and says so; bad flags are refused.
    @Test(.enabled(if: HTTPSTests.tools, "curl or openssl is not installed"))
    func aWorkerOverHTTPSWithAClientCertificateCarriesARun() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary))
        let db = try await TestDatabase.shared.freshDatabase()
        let certs = try await TestCertificates.make()
        defer { certs.remove() }
        let client = try await certs.issued("worker", subject: "/CN=worker-1")
        let port = try RawHTTPStream.freePort()
        for (flags, says) in [
            (["--api-url", "ftp://127.0.0.1:1", "--token", "t"], "--api-url must be http://HOST[:PORT] or https://HOST[:PORT]"),
            (["--ca-file", certs.ca], "need --api-url"),
            (["--api-url", "http://127.0.0.1:1", "--token", "t", "--ca-file", certs.ca], "need an https --api-url"),
        ] {
            let refused = try await run(["worker", "--lane", "work"] + flags)
            #expect(refused.code != nil && refused.code != 0, "\(flags)")
            #expect(refused.output.contains(says), "\(flags): \(refused.output)")
        }
        let node = try RegentProcess(
            ["serve", "--database-url", db.conninfo, "--http-address", "127.0.0.1:\(port)", "--tls-cert-file", certs.cert,
             "--tls-key-file", certs.key, "--tls-client-ca-file", certs.ca],
            logPath: NSTemporaryDirectory() + "regent-https-worker-\(UUID().uuidString).log")
        defer { node.signal(SIGKILL) }
        #expect(await eventually(timeout: .seconds(30)) {
            try await HTTPSTests.curl(["--cacert", certs.ca, "--cert", client.cert, "--key", client.key, "https://127.0.0.1:\(port)/readyz"])
                .output.contains("HTTP 200")
        }, "\(node.log)")
        let token = try #require(try await run(["tokens", "create", "--database-url", db.conninfo, "--role", "worker", "--name", "w"])
            .output.split(separator: "\n").last.map(String.init))
        let package = certs.directory + "/package"
        try FileManager.default.createDirectory(atPath: package, withIntermediateDirectories: true)
        try #"{"workflow_type": "https.demo", "steps": [{"name": "a", "lane": "work"}, {"name": "b", "lane": "work", "after": ["a"]}]}"#
            .write(toFile: package + "/workflow.json", atomically: true, encoding: .utf8)
        #expect(try await run(["packages", "deploy", package, "--database-url", db.conninfo]).code == 0)
        let started = try await run(["runs", "start", "https.demo", "--database-url", db.conninfo])
        let runID = try #require(started.output.split(separator: "\n").last.map(String.init), "\(started.output)")
        // Without its client certificate a worker gets nowhere, and says so.
        let refused = try RegentProcess(
            ["worker", "--api-url", "https://127.0.0.1:\(port)", "--token", token, "--ca-file", certs.ca, "--lane", "work", "--name", "no-cert"],
            logPath: NSTemporaryDirectory() + "regent-https-nocert-\(UUID().uuidString).log")
        defer { refused.signal(SIGKILL) }
        #expect(await eventually(timeout: .seconds(30)) { refused.log.contains("could not register") }, "\(refused.log)")
        let worker = try RegentProcess(
            ["worker", "--api-url", "https://127.0.0.1:\(port)", "--token", token, "--ca-file", certs.ca,
             "--client-cert", client.cert, "--client-key", client.key, "--lane", "work", "--name", "with-cert"],
            logPath: NSTemporaryDirectory() + "regent-https-worker-\(UUID().uuidString).log")
        defer { worker.signal(SIGKILL) }
        try await PostgresConnection.withConnection(db) { conn in
            #expect(await eventually(timeout: .seconds(60)) {
                try await conn.query("SELECT state FROM workflow.runs WHERE run_id = \(runID)").single().decode("state", as: String.self) == "succeeded"
            }, "worker:\n\(worker.log)\nnode:\n\(node.log.suffix(3000))")
            let by = try await conn.query(
                """
                SELECT COALESCE(s.output, e.result) ->> 'by' AS by FROM workflow.run_steps s
                LEFT JOIN workflow.executions e ON e.execution_id = s.execution_id WHERE s.run_id = \(runID) ORDER BY s.name
                """)
                .map { try $0.decode("by", as: String.self) }
            #expect(by == ["with-cert", "with-cert"])
        }
        worker.signal(SIGTERM)
        #expect(await worker.waitForExit(timeout: .seconds(20)) == 0, "\(worker.log)")
        #expect(worker.log.contains("completed=2"), "\(worker.log)")
    }

    @Test func sigtermDrainsTheLeaderAndTheFollowersMetricsShowTheTakeover() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary))
        let db = try await TestDatabase.shared.freshDatabase()
        let created = try await run(["tokens", "create", "--database-url", db.conninfo, "--role", "read", "--name", "probe"])
        let token = try #require(created.output.split(separator: "\n").last.map(String.init))
        let ports = [try RawHTTPStream.freePort(), try RawHTTPStream.freePort()]
        let nodes = try (0..<2).map { i in
            try RegentProcess(
                ["serve", "--database-url", db.conninfo, "--node-name", "web\(i)", "--http-address", "127.0.0.1:\(ports[i])",
                 "--heartbeat-interval", "200ms", "--stale-after", "1s", "--lease-window", "1s", "--log-format", "json",
                 "--shutdown-timeout", "5s"],
                logPath: NSTemporaryDirectory() + "regent-web\(i)-\(UUID().uuidString).log")
        }
        defer { nodes.forEach { $0.signal(SIGKILL) } }
        // Both serve; find the leader through the API of either.
        #expect(await eventually(timeout: .seconds(20)) {
            guard let r = try? await RawHTTPStream.fetch(port: ports[0], path: "/v1/leader", token: token), r.status == 200,
                  let doc = try JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any],
                  doc["leader"] is [String: Any], (doc["instances"] as? [Any])?.count == 2
            else { return false }
            return (try? await RawHTTPStream.fetch(port: ports[1], path: "/readyz"))?.status == 200
        })
        let status = try await RawHTTPStream.fetch(port: ports[1], path: "/v1/leader", token: token)
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(status.body.utf8)) as? [String: Any])
        let leader = try #require(doc["leader"] as? [String: Any], "no leader; logs:\n\(nodes[0].log)\n\(nodes[1].log)")
        let leaderIndex = leader["node_name"] as? String == "web0" ? 0 : 1
        #expect(leader["http_address"] as? String == "127.0.0.1:\(ports[leaderIndex])")
        let follower = 1 - leaderIndex
        let before = try await RawHTTPStream.fetch(port: ports[follower], path: "/metrics")
        #expect(before.body.contains("regent_is_leader 0"))
        #expect(before.body.contains("regent_elections_total 0"))
        // SIGTERM the leader: it hands over, deletes its row and exits 0 within the timeout.
        let signalled = ContinuousClock.now
        nodes[leaderIndex].signal(SIGTERM)
        let code = await nodes[leaderIndex].waitForExit(timeout: .seconds(8))
        #expect(code == 0, "log:\n\(nodes[leaderIndex].log)")
        #expect(ContinuousClock.now - signalled < .seconds(6))
        #expect(await eventually(timeout: .seconds(5)) {
            let r = try await RawHTTPStream.fetch(port: ports[follower], path: "/metrics")
            return r.body.contains("regent_is_leader 1") && r.body.contains("regent_elections_total 1")
                && r.body.contains("regent_failover_seconds_count 1")
        })
        try await PostgresConnection.withConnection(db) { conn in
            let rows = try await conn.query("SELECT node_name FROM engine.instances").map { try $0.decode("node_name", as: String.self) }
            #expect(rows == ["web\(follower)"])
            // The drained node logged JSON, one object a line, including its resignation.
            let lines = nodes[leaderIndex].log.split(separator: "\n")
            #expect(!lines.isEmpty)
            for line in lines {
                let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                #expect(object?["message"] != nil && object?["level"] != nil, "not a JSON log line: \(line)")
            }
            #expect(lines.contains { $0.contains("resigned leadership") })
            nodes[follower].signal(SIGTERM)
            #expect(await nodes[follower].waitForExit(timeout: .seconds(8)) == 0)
            #expect(
                try await conn.query("SELECT count(*) AS n FROM engine.instances").single().decode("n", as: Int64.self) == 0,
                "log:\n\(nodes[follower].log)")
        }
    }

    /// A planted secret, written and read every way there is (CLI, API, a corrupt copy), never
    /// appears in a log line of the node or of the CLI, at trace level, as text, hex or base64.
    @Test func aPlantedSecretNeverReachesALogLine() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary))
        let db = try await TestDatabase.shared.freshDatabase()
        let dir = NSTemporaryDirectory() + "regent-vault-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let keyFile = dir + "/vault.key"
        let made = try await run(["vault", "init-key", "--out", keyFile])
        #expect(made.code == 0, "\(made.output)")
        #expect(try FileManager.default.attributesOfItem(atPath: keyFile)[.posixPermissions] as? Int == 0o600)
        #expect(try await run(["vault", "init-key", "--out", keyFile]).code != 0, "never overwrites a key")
        let planted = "PLANTED-\(UUID().uuidString)"
        let valueFile = dir + "/value"
        FileManager.default.createFile(atPath: valueFile, contents: Data((planted + "\n").utf8), attributes: [.posixPermissions: 0o600])
        let created = try await run(["tokens", "create", "--database-url", db.conninfo, "--role", "admin", "--name", "ops"])
        let token = try #require(created.output.split(separator: "\n").last.map(String.init))
        let port = try RawHTTPStream.freePort()
        let node = try RegentProcess(
            ["serve", "--database-url", db.conninfo, "--node-name", "vault0", "--http-address", "127.0.0.1:\(port)", "--vault-key-file", keyFile,
             "--log-level", "trace", "--log-format", "json", "--shutdown-timeout", "5s"],
            logPath: dir + "/serve.log")
        defer { node.signal(SIGKILL) }
        #expect(await eventually(timeout: .seconds(30)) {
            (try? await RawHTTPStream.fetch(port: port, path: "/v1/vault/status", token: token))?.status == 200
        }, "\(node.log)")
        var cliLogs: [String] = []
        let common = ["--database-url", db.conninfo, "--vault-key-file", keyFile, "--log-level", "trace"]
        let put = try await run(["vault", "put", "plant/x", "--from-file", valueFile] + common)
        #expect(put.code == 0, "\(put.output)")
        cliLogs.append(put.output)
        let got = try await run(["vault", "get", "plant/x", "--vault-key-file", keyFile, "--database-url", db.conninfo])
        #expect(got.output == planted, "get prints the value alone (the trailing newline of the file was dropped)")
        for args in [["vault", "metadata", "plant/x"], ["vault", "list"], ["vault", "status"]] {
            let r = try await run(args + common)
            #expect(r.code == 0, "\(r.output)")
            cliLogs.append(r.output)
        }
        let read = try await RawHTTPStream.fetch(port: port, path: "/v1/vault/secret?path=plant/x&purpose=test", token: token)
        #expect(read.status == 200 && read.body.contains(planted))
        // A corrupt copy, read through the API and the CLI: refused, nothing of the value said.
        try await PostgresConnection.withConnection(db) { conn in
            try await conn.query("INSERT INTO vault.kv_meta (path, current_version, created_by, updated_by) VALUES ('plant/y', 1, 't', 't')")
            try await conn.query(
                """
                INSERT INTO vault.kv_versions (path, version, key_id, sealed_key, sealed_value, size_bytes, created_by)
                SELECT 'plant/y', 1, key_id, sealed_key, sealed_value, size_bytes, created_by FROM vault.kv_versions WHERE path = 'plant/x'
                """)
        }
        #expect(try await RawHTTPStream.fetch(port: port, path: "/v1/vault/secret?path=plant/y", token: token).status == 409)
        let corrupt = try await run(["vault", "get", "plant/y"] + common)
        #expect(corrupt.code != 0)
        cliLogs.append(corrupt.output)
        node.signal(SIGTERM)
        _ = await node.waitForExit(timeout: .seconds(10))
        let serveLog = node.log
        #expect(serveLog.contains("vault keys loaded"))
        let forms = [planted, Array(planted.utf8).map { String(format: "%02x", $0) }.joined(), Data(planted.utf8).base64EncodedString()]
        for (name, log) in [("serve", serveLog)] + cliLogs.enumerated().map { ("cli \($0.offset)", $0.element) } {
            #expect(!log.isEmpty)
            for form in forms { #expect(!log.contains(form), "the \(name) log holds the planted secret") }
        }
    }

    /// A rotation SIGKILLed in the middle (a real process, not a polite stop) leaves every
    /// secret readable by a node holding both keys, and running the same command again
    /// finishes it: each page is its own transaction.
    @Test func aRotationKilledMidwayIsResumedByRunningItAgain() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary))
        let db = try await TestDatabase.shared.freshDatabase()
        let dir = NSTemporaryDirectory() + "regent-rotate-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let old = VaultKey.generate(), new = VaultKey.generate()
        try VaultKey.write(old, to: dir + "/old.key")
        try VaultKey.write(new, to: dir + "/new.key")
        let boot = try await Boot(options: .init(database: db, actor: "test")).run()
        await boot.pool.shutdown()
        let count = 2000
        try await PostgresConnection.withConnection(db) { conn in
            let vault = VaultStore(keyring: VaultKeyring(current: old))
            for n in 0..<count { _ = try await vault.put(try SecretPath("k/s\(n)"), value: Array("value-\(n)".utf8), actor: .named("test"), on: conn) }
        }
        func moved(_ conn: PostgresConnection) async throws -> Int {
            try await conn.query("SELECT count(*)::int AS n FROM vault.kv_versions WHERE key_id = \(new.id)").single().decode("n")
        }
        let args = ["vault", "rotate-key", "--database-url", db.conninfo, "--vault-key-file", dir + "/old.key", "--new-key-file", dir + "/new.key", "--page-size", "1"]
        let first = try RegentProcess(args, logPath: dir + "/rotate1.log")
        try await PostgresConnection.withConnection(db) { conn in
            #expect(await eventually(timeout: .seconds(60)) { try await moved(conn) >= 20 }, "\(first.log)")
            first.signal(SIGKILL)
            _ = await first.waitForExit(timeout: .seconds(10))
            let partial = try await moved(conn)
            #expect(partial > 0 && partial < count, "killed midway: \(partial) of \(count) moved")
            let both = VaultStore(keyring: VaultKeyring(current: new, previous: [old]))
            for n in stride(from: 0, to: count, by: 7) {
                #expect(try await both.get(try SecretPath("k/s\(n)"), actor: .named("test"), on: conn).value == Array("value-\(n)".utf8))
            }
            let again = try await run(args.dropLast(2) + ["--page-size", "100", "--json"])
            #expect(again.code == 0, "\(again.output)")
            #expect(again.output.contains("\"finished\" : true") || again.output.contains("\"finished\":true"), "\(again.output)")
            #expect(try await moved(conn) == count)
            let onlyNew = VaultStore(keyring: VaultKeyring(current: new))
            for n in 0..<count {
                #expect(try await onlyNew.get(try SecretPath("k/s\(n)"), actor: .named("test"), on: conn).value == Array("value-\(n)".utf8))
            }
            #expect(try await onlyNew.status(on: conn).keys.first { $0.keyID == old.id }?.state == "retired")
        }
    }
}
