import EmbeddedPostgres
import Foundation
import PostgresClient
import Testing

/// Verified TLS to PostgreSQL (issue 28): libpq does the TLS; these tests prove that a
/// `sslmode=verify-full` URL reaches a server whose certificate a test CA signed for the host
/// named, and that a wrong CA or a wrong host name is refused. The certificates are made per
/// run with `openssl` (never committed).
@Suite("TLS to PostgreSQL", .serialized)
struct TLSTests {
    static let openssl = ["/usr/bin/openssl", "/bin/openssl"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// A CA, a server certificate it signed for IP 127.0.0.1 only, and a second, unrelated CA.
    struct Certificates {
        let directory: String
        var ca: String { directory + "/ca.crt" }
        var otherCA: String { directory + "/other-ca.crt" }
        var cert: String { directory + "/server.crt" }
        var key: String { directory + "/server.key" }

        init() throws {
            directory = NSTemporaryDirectory() + "regent-tls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: directory)
            let d = directory
            try Self.run(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d + "/ca.key", "-out", d + "/ca.crt", "-days", "2",
                          "-subj", "/CN=regent test CA"])
            try Self.run(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d + "/other-ca.key", "-out", d + "/other-ca.crt", "-days", "2",
                          "-subj", "/CN=another CA"])
            try Self.run(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", d + "/server.key", "-out", d + "/server.csr", "-subj", "/CN=127.0.0.1"])
            try "subjectAltName=IP:127.0.0.1\n".write(toFile: d + "/san.ext", atomically: true, encoding: .utf8)
            try Self.run(["x509", "-req", "-in", d + "/server.csr", "-CA", d + "/ca.crt", "-CAkey", d + "/ca.key", "-CAcreateserial",
                          "-out", d + "/server.crt", "-days", "2", "-extfile", d + "/san.ext"])
        }

        /// The server's key must be its user's and private (PostgreSQL refuses it otherwise).
        func handOver(to user: String?) throws {
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: key)
            guard let user, let pw = getpwnam(user) else { return }
            for path in [key, cert] { chown(path, pw.pointee.pw_uid, pw.pointee.pw_gid) }
        }

        func remove() { try? FileManager.default.removeItem(atPath: directory) }

        static func run(_ args: [String]) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: TLSTests.openssl!)
            p.arguments = args
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            p.waitUntilExit()
            guard p.terminationStatus == 0 else { throw EmbeddedPostgresError("openssl \(args.prefix(2).joined(separator: " ")) failed") }
        }
    }

    @Test(.enabled(if: TLSTests.openssl != nil, "openssl is not installed (apt-get install openssl)"))
    func verifyFullReachesTheRightServerAndRefusesAWrongCAOrHost() async throws {
        let certs = try Certificates()
        defer { certs.remove() }
        // Hand the key over before the server starts (initdb runs inside start; the key's owner
        // is the server's user, which start decides: root runs it as `postgres`).
        try certs.handOver(to: geteuid() == 0 ? "postgres" : nil)
        let pg = try EmbeddedPostgres.start(settings: ["ssl=on", "ssl_cert_file=\(certs.cert)", "ssl_key_file=\(certs.key)"])
        defer { pg.destroy() }
        let base = "host=127.0.0.1 port=\(pg.port) user=postgres dbname=postgres connect_timeout=5"

        let verified = try await PostgresConnection.connect(try ConnectionConfiguration("\(base) sslmode=verify-full sslrootcert=\(certs.ca)"))
        let row = try await verified.query("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").single()
        #expect(try row.decode("ssl", as: Bool.self))
        #expect(try row.decode("version", as: String.self).hasPrefix("TLS"))
        await verified.close()

        await #expect(throws: (any Error).self, "a certificate another CA signed is refused") {
            let c = try await PostgresConnection.connect(try ConnectionConfiguration("\(base) sslmode=verify-full sslrootcert=\(certs.otherCA)"))
            await c.close()
        }
        do {
            let c = try await PostgresConnection.connect(try ConnectionConfiguration("\(base) sslmode=verify-full sslrootcert=\(certs.otherCA)"))
            await c.close()
        } catch {
            #expect("\(error)".contains("certificate"), "\(error)")
        }
        // The certificate names 127.0.0.1 only: reached as `localhost`, verify-full refuses it
        // (verify-ca, which checks the signature but not the name, accepts it).
        let byName = "host=localhost hostaddr=127.0.0.1 port=\(pg.port) user=postgres dbname=postgres connect_timeout=5 sslrootcert=\(certs.ca)"
        await #expect(throws: (any Error).self, "a certificate for another host name is refused") {
            let c = try await PostgresConnection.connect(try ConnectionConfiguration("\(byName) sslmode=verify-full"))
            await c.close()
        }
        let caOnly = try await PostgresConnection.connect(try ConnectionConfiguration("\(byName) sslmode=verify-ca"))
        await caOnly.close()
    }
}
