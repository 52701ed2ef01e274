import Foundation
import PostgresClient
@testable import RegentCore
@testable import RegentHTTP
import RegentTestSupport
import Testing
import Yams

/// The repository root (this file is Tests/RegentHTTPTests/DeployFilesTests.swift).
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

func repositoryFile(_ path: String) throws -> String {
    try String(contentsOf: repositoryRoot.appendingPathComponent(path), encoding: .utf8)
}

/// The API's route table, from an API object that needs no database.
func servedRoutes() -> [AdminAPI.Route] {
    let pool = ConnectionPool(configuration: try! ConnectionConfiguration("host=127.0.0.1 port=1 dbname=none"))
    return AdminAPI(pool: pool, node: nil).routeTable()
}

/// The `--flags` that `regent serve` accepts, read from its help text.
func serveFlags() async throws -> Set<String> {
    try #require(FileManager.default.isExecutableFile(atPath: RegentProcess.binary), "build the regent binary first (swift build)")
    let process = try RegentProcess(["serve", "--help"], logPath: NSTemporaryDirectory() + "regent-serve-help-\(UUID().uuidString).txt")
    #expect(await process.waitForExit(timeout: .seconds(10)) == 0)
    let flags = process.log.split(whereSeparator: { " ,\n\t[]<>=".contains($0) }).filter { $0.hasPrefix("--") }.map(String.init)
    #expect(flags.contains("--http-address") && flags.contains("--shutdown-timeout"), "could not read the flags of regent serve")
    return Set(flags)
}

/// Checks a `regent serve` argument list: every flag exists, and returns the value of each.
func checkServeArguments(_ args: [String], flags: Set<String>, sourceLocation: SourceLocation = #_sourceLocation) -> [String: String] {
    #expect(args.first == "serve", sourceLocation: sourceLocation)
    var values: [String: String] = [:]
    var i = 1
    while i < args.count {
        let flag = args[i]
        #expect(flags.contains(flag), "regent serve has no \(flag)", sourceLocation: sourceLocation)
        if i + 1 < args.count, !args[i + 1].hasPrefix("--") {
            values[flag] = args[i + 1]
            i += 2
        } else {
            i += 1
        }
    }
    return values
}

func seconds(_ text: String?) throws -> Int {
    let text = try #require(text)
    return Int((try parseDuration(text, flag: "test")).milliseconds / 1000)
}

@Suite("OpenAPI document and deploy files")
struct DeployFilesTests {
    @Test func openAPIDocumentMatchesTheServedRoutes() throws {
        let doc = try #require(try Yams.load(yaml: try repositoryFile("docs/openapi.yaml")) as? [String: Any])
        #expect((doc["openapi"] as? String)?.hasPrefix("3.") == true)
        let paths = try #require(doc["paths"] as? [String: Any])
        var documented: [String: String] = [:]  // "GET /path" -> role
        for (path, item) in paths {
            for (method, operation) in try #require(item as? [String: Any]) {
                let op = try #require(operation as? [String: Any])
                documented["\(method.uppercased()) \(path)"] = op["x-regent-role"] as? String ?? "missing"
                #expect(op["responses"] != nil, "\(method) \(path) has no responses")
            }
        }
        let served = Dictionary(uniqueKeysWithValues: servedRoutes().map { ("\($0.method) \($0.path)", $0.role?.rawValue ?? "none") })
        #expect(Set(served.keys).subtracting(documented.keys).sorted() == [], "served but not documented")
        #expect(Set(documented.keys).subtracting(served.keys).sorted() == [], "documented but not served")
        for (route, role) in served { #expect(documented[route] == role, "\(route): served role \(role), documented \(documented[route] ?? "-")") }
    }

    @Test func kubernetesFilesProbeRealRoutesOnTheServedPortAndLeaveTimeToHandOver() async throws {
        let flags = try await serveFlags()
        let open = Set(servedRoutes().filter { $0.role == nil && $0.method == "GET" }.map(\.path))
        let deployment = try #require(try Yams.load(yaml: try repositoryFile("deploy/kubernetes/deployment.yaml")) as? [String: Any])
        #expect(deployment["kind"] as? String == "Deployment")
        let spec = try #require(deployment["spec"] as? [String: Any])
        #expect(spec["replicas"] as? Int == 3)
        let labels = try #require((spec["selector"] as? [String: Any])?["matchLabels"] as? [String: String])
        let template = try #require(spec["template"] as? [String: Any])
        #expect((template["metadata"] as? [String: Any])?["labels"] as? [String: String] == labels)
        let pod = try #require(template["spec"] as? [String: Any])
        let container = try #require((pod["containers"] as? [[String: Any]])?.first)
        let args = try #require(container["args"] as? [String])
        let values = checkServeArguments(args, flags: flags)
        let (_, httpPort) = try NodeConfiguration.parseHTTPAddress(try #require(values["--http-address"]))
        let port = try #require((container["ports"] as? [[String: Any]])?.first)
        #expect(port["containerPort"] as? Int == httpPort)
        let portName = try #require(port["name"] as? String)
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = try #require((container[probe] as? [String: Any])?["httpGet"] as? [String: Any])
            #expect(get["path"] as? String == path)
            #expect(open.contains(try #require(get["path"] as? String)), "\(probe) must hit an open route")
            #expect(get["port"] as? String == portName || get["port"] as? Int == httpPort)
        }
        // The grace period covers the preStop pause plus the bounded drain.
        let preStop = try #require(((container["lifecycle"] as? [String: Any])?["preStop"] as? [String: Any])?["exec"] as? [String: Any])
        let pause = Int(try #require((preStop["command"] as? [String])?.last)) ?? 0
        let grace = try #require(pod["terminationGracePeriodSeconds"] as? Int)
        #expect(grace > pause + (try seconds(values["--shutdown-timeout"])))
        #expect((container["resources"] as? [String: Any])?["requests"] != nil)
        // The database URL comes from the Secret, under the key the Secret defines.
        let env = try #require(container["env"] as? [[String: Any]])
        let ref = try #require(env.first { $0["name"] as? String == "REGENT_DATABASE_URL" }.flatMap {
            ($0["valueFrom"] as? [String: Any])?["secretKeyRef"] as? [String: String]
        })
        let secret = try #require(try Yams.load(yaml: try repositoryFile("deploy/kubernetes/secret.yaml")) as? [String: Any])
        #expect(secret["kind"] as? String == "Secret")
        #expect((secret["metadata"] as? [String: Any])?["name"] as? String == ref["name"])
        #expect((secret["stringData"] as? [String: String])?[try #require(ref["key"])] != nil)
        // The Service and the PodDisruptionBudget select these pods and this port.
        let service = try #require(try Yams.load(yaml: try repositoryFile("deploy/kubernetes/service.yaml")) as? [String: Any])
        let serviceSpec = try #require(service["spec"] as? [String: Any])
        #expect(serviceSpec["selector"] as? [String: String] == labels)
        let target = (serviceSpec["ports"] as? [[String: Any]])?.first?["targetPort"]
        #expect(target as? String == portName || target as? Int == httpPort)
        let pdb = try #require(try Yams.load(yaml: try repositoryFile("deploy/kubernetes/pdb.yaml")) as? [String: Any])
        #expect(pdb["kind"] as? String == "PodDisruptionBudget")
        let pdbSpec = try #require(pdb["spec"] as? [String: Any])
        #expect((pdbSpec["selector"] as? [String: Any])?["matchLabels"] as? [String: String] == labels)
        #expect(pdbSpec["maxUnavailable"] as? Int == 1)
        let kustomization = try #require(try Yams.load(yaml: try repositoryFile("deploy/kubernetes/kustomization.yaml")) as? [String: Any])
        for file in try #require(kustomization["resources"] as? [String]) {
            #expect(FileManager.default.fileExists(atPath: repositoryRoot.appendingPathComponent("deploy/kubernetes/\(file)").path))
        }
    }

    @Test func composeRunsPostgresAndThreeHealthCheckedNodes() async throws {
        let flags = try await serveFlags()
        let open = Set(servedRoutes().filter { $0.role == nil }.map(\.path))
        let compose = try #require(try Yams.load(yaml: try repositoryFile("deploy/compose/docker-compose.yml")) as? [String: Any])
        let services = try #require(compose["services"] as? [String: Any])
        let postgres = try #require(services["postgres"] as? [String: Any])
        #expect(postgres["healthcheck"] != nil)
        let nodes = services.keys.filter { $0.hasPrefix("regent-") }.sorted()
        #expect(nodes == ["regent-1", "regent-2", "regent-3"])
        var published: Set<String> = []
        for name in nodes {
            let node = try #require(services[name] as? [String: Any])  // Yams resolves the YAML merge key
            let values = checkServeArguments(try #require(node["command"] as? [String]), flags: flags)
            #expect(values["--node-name"] == name)
            let (_, httpPort) = try NodeConfiguration.parseHTTPAddress(try #require(values["--http-address"]))
            let ports = try #require(node["ports"] as? [String])
            #expect(ports.count == 1 && ports[0].hasSuffix(":\(httpPort)"))
            published.insert(String(ports[0].split(separator: ":")[0]))
            let test = try #require((node["healthcheck"] as? [String: Any])?["test"] as? [String])
            let url = try #require(test.last.flatMap(URL.init(string:)))
            #expect(url.port == httpPort)
            #expect(open.contains(url.path), "the health check must hit an open route, not \(url.path)")
            let dependsOn = try #require(node["depends_on"] as? [String: Any])
            #expect((dependsOn["postgres"] as? [String: String])?["condition"] == "service_healthy")
            #expect(try seconds(node["stop_grace_period"] as? String) > (try seconds(values["--shutdown-timeout"])))
            let env = try #require(node["environment"] as? [String: String])
            #expect(try ConnectionConfiguration(try #require(env["REGENT_DATABASE_URL"])).conninfo.contains("postgres"))
        }
        #expect(published.count == 3, "each node is published on its own host port")
        #expect(FileManager.default.fileExists(atPath: repositoryRoot.appendingPathComponent("Dockerfile").path))
    }

    @Test func dockerfileBuildsTheBinaryAndSystemdUnitDrainsWithinItsStopTimeout() async throws {
        let flags = try await serveFlags()
        let dockerfile = try repositoryFile("Dockerfile")
        let lines = dockerfile.split(separator: "\n").map(String.init)
        #expect(lines.filter { $0.hasPrefix("FROM ") }.count == 2, "a build stage and a runtime stage")
        #expect(dockerfile.contains("swift build -c release --product regent"))
        #expect(lines.contains("EXPOSE 8080"))
        let cmd = try #require(lines.first { $0.hasPrefix("CMD ") })
        let cmdArgs = try #require(try JSONSerialization.jsonObject(with: Data(cmd.dropFirst(4).utf8)) as? [String])
        let values = checkServeArguments(cmdArgs, flags: flags)
        #expect(try NodeConfiguration.parseHTTPAddress(try #require(values["--http-address"])).1 == 8080)
        // Every source directory the package needs is copied into the build stage.
        for dir in ["Sources", "Plugins", "sql", "Tests"] { #expect(dockerfile.contains("COPY \(dir) ./\(dir)")) }

        let unit = try repositoryFile("deploy/systemd/regent.service")
        var sections: [String: [String: String]] = [:]
        var current = ""
        for raw in unit.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("[") { current = String(line.dropFirst().dropLast()); continue }
            let kv = line.split(separator: "=", maxSplits: 1).map(String.init)
            #expect(kv.count == 2, "not a key=value line: \(line)")
            if kv.count == 2 { sections[current, default: [:]][kv[0]] = kv[1] }
        }
        #expect(Set(sections.keys) == ["Unit", "Service", "Install"])
        let service = try #require(sections["Service"])
        let exec = try #require(service["ExecStart"]).split(separator: " ").map(String.init)
        #expect(exec.first == "/usr/local/bin/regent")
        let unitValues = checkServeArguments(Array(exec.dropFirst()), flags: flags)
        #expect(service["KillSignal"] == "SIGTERM")
        #expect(Int(try #require(service["TimeoutStopSec"]))! > (try seconds(unitValues["--shutdown-timeout"])))
        #expect(service["EnvironmentFile"] != nil)
    }
}
