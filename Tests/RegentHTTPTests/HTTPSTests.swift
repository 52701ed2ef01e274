import Foundation
import Hummingbird
import HummingbirdTesting
@testable import RegentCore
@testable import RegentHTTP
import RegentTestSupport
import Testing

/// HTTPS on the admin API (issue 28): the certificate is served and verified by clients that
/// trust its CA, refused by clients that do not, reloaded for new connections without dropping
/// open ones, client certificates are required when a client CA is given, and bad files are
/// refused at start naming the flag. `curl` and `openssl s_client` are the clients.
@Suite("HTTPS on the admin API", .serialized)
struct HTTPSTests {
    static let curl = ["/usr/bin/curl", "/bin/curl"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static var tools: Bool { curl != nil && TestCertificates.openssl != nil }

    /// Runs `argv`, off the cooperative pool; its exit status and output (stdout + stderr).
    static func run(_ argv: [String], input: String? = nil, keepOpen: Duration = .zero) async throws -> (status: Int32, output: String) {
        try await offThePool {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: argv[0])
            p.arguments = Array(argv.dropFirst())
            let out = Pipe()
            p.standardOutput = out
            p.standardError = out
            p.standardInput = FileHandle.nullDevice
            try p.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return (p.terminationStatus, String(decoding: data, as: UTF8.self))
        }
    }

    static func curl(_ args: [String]) async throws -> (status: Int32, output: String) {
        try await run([curl!, "-sS", "--max-time", "20", "-w", "\nHTTP %{http_code}\n"] + args)
    }

    @Test(.enabled(if: tools, "curl or openssl is not installed"))
    func httpsIsVerifiedRefusedWithoutItsCAAndReloadedForNewConnectionsOnly() async throws {
        let certs = try await TestCertificates.make()
        defer { certs.remove() }
        let tls = try AdminTLS(files: .init(certificate: certs.cert, key: certs.key))
        try await Fixture.with { f in
            try await f.api.application(host: "127.0.0.1", port: 0, tls: tls).test(.live) { client in
                let port = try #require(client.port)
                let url = "https://127.0.0.1:\(port)"
                let ok = try await Self.curl(["--cacert", certs.ca, "\(url)/healthz"])
                #expect(ok.status == 0 && ok.output.contains("HTTP 200"), "\(ok.output)")
                let leader = try await Self.curl(["--cacert", certs.ca, "-H", "Authorization: Bearer \(f.reader)", "\(url)/v1/leader"])
                #expect(leader.output.contains("HTTP 200"), "a bearer token over HTTPS: \(leader.output)")
                // A client that does not trust the CA refuses the server (curl: 60, peer certificate).
                let wrong = try await Self.curl(["--cacert", certs.otherCA, "\(url)/healthz"])
                #expect(wrong.status == 60, "\(wrong.output)")
                // Plain HTTP to the HTTPS port gets no HTTP answer.
                let plain = try await Self.curl(["http://127.0.0.1:\(port)/healthz"])
                #expect(!plain.output.contains("HTTP 200"), "\(plain.output)")

                // An open connection, then a reload with a new certificate.
                let session = try await offThePool { try OpenTLSSession(port: port, ca: certs.ca) }
                let fresh = try await certs.issued("renewed", subject: "/CN=renewed", altNames: "IP:127.0.0.1")
                try FileManager.default.removeItem(atPath: certs.cert)
                try FileManager.default.removeItem(atPath: certs.key)
                try FileManager.default.copyItem(atPath: fresh.cert, toPath: certs.cert)
                try FileManager.default.copyItem(atPath: fresh.key, toPath: certs.key)
                try tls.reload()
                #expect(tls.loadCount == 2)
                let renewed = try await Self.curl(["-v", "--cacert", certs.ca, "\(url)/healthz"])
                #expect(renewed.output.contains("CN=renewed") && renewed.output.contains("HTTP 200"), "\(renewed.output)")
                // The connection opened before the reload still works.
                let answer = try await offThePool { try session.get("/healthz") }
                #expect(answer.contains("200 OK"), "\(answer)")
                session.close()
                // A reload that fails keeps serving the certificate in use.
                try "not a certificate".write(toFile: certs.cert, atomically: true, encoding: .utf8)
                #expect(throws: RegentError.self) { try tls.reload() }
                let still = try await Self.curl(["-v", "--cacert", certs.ca, "\(url)/healthz"])
                #expect(still.output.contains("CN=renewed") && still.output.contains("HTTP 200"), "\(still.output)")
            }
        }
    }

    @Test(.enabled(if: tools, "curl or openssl is not installed"))
    func aClientCAMakesClientCertificatesRequired() async throws {
        let certs = try await TestCertificates.make()
        defer { certs.remove() }
        let worker = try await certs.issued("worker", subject: "/CN=worker-1")
        let stranger = try await certs.issued("stranger", subject: "/CN=stranger", by: "other-ca")
        let tls = try AdminTLS(files: .init(certificate: certs.cert, key: certs.key, clientCA: certs.ca))
        try await Fixture.with { f in
            try await f.api.application(host: "127.0.0.1", port: 0, tls: tls).test(.live) { client in
                let url = "https://127.0.0.1:\(try #require(client.port))/healthz"
                let with = try await Self.curl(["--cacert", certs.ca, "--cert", worker.cert, "--key", worker.key, url])
                #expect(with.output.contains("HTTP 200"), "\(with.output)")
                let without = try await Self.curl(["--cacert", certs.ca, url])
                #expect(!without.output.contains("HTTP 200"), "no client certificate: \(without.output)")
                let foreign = try await Self.curl(["--cacert", certs.ca, "--cert", stranger.cert, "--key", stranger.key, url])
                #expect(!foreign.output.contains("HTTP 200"), "a certificate of another CA: \(foreign.output)")
            }
        }
    }

    @Test(.enabled(if: tools, "openssl is not installed"))
    func badFilesAreRefusedNamingTheFlag() async throws {
        let certs = try await TestCertificates.make()
        defer { certs.remove() }
        let other = try await certs.issued("other", subject: "/CN=other")
        let garbage = certs.directory + "/garbage.pem"
        try "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".write(toFile: garbage, atomically: true, encoding: .utf8)
        let cases: [(AdminTLS.Files, String)] = [
            (.init(certificate: certs.directory + "/missing.crt", key: certs.key), "--tls-cert-file"),
            (.init(certificate: certs.cert, key: certs.directory + "/missing.key"), "--tls-key-file"),
            (.init(certificate: garbage, key: certs.key), "--tls-cert-file"),
            (.init(certificate: certs.cert, key: garbage), "--tls-key-file"),
            (.init(certificate: certs.cert, key: other.key), "does not match the certificate"),
            (.init(certificate: certs.cert, key: certs.key, clientCA: certs.directory + "/nope.crt"), "--tls-client-ca-file"),
        ]
        for (files, says) in cases {
            do {
                _ = try AdminTLS(files: files)
                Issue.record("\(files) must be refused")
            } catch {
                #expect(error.code == .invalidInput)
                #expect(error.message.contains(says), "\(error.message)")
            }
        }
    }
}

/// A TLS connection kept open across a reload (`openssl s_client`, fed through a pipe).
final class OpenTLSSession: @unchecked Sendable {
    // @unchecked: used by one test at a time, strictly in sequence (open, get, close).
    let process = Process()
    let input = Pipe()
    let output = Pipe()

    init(port: Int, ca: String) throws {
        process.executableURL = URL(fileURLWithPath: TestCertificates.openssl!)
        process.arguments = ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", ca, "-quiet", "-verify_return_error"]
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        usleep(300_000)  // the handshake
    }

    /// Sends one request on the open connection and reads until the answer's body arrives.
    func get(_ path: String) throws -> String {
        input.fileHandleForWriting.write(Data("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8))
        var answer = ""
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, !answer.contains("\r\n\r\n") || !answer.contains("}") {
            let data = output.fileHandleForReading.availableData
            if data.isEmpty { break }
            answer += String(decoding: data, as: UTF8.self)
        }
        return answer
    }

    func close() {
        try? input.fileHandleForWriting.close()
        process.terminate()
    }
}
