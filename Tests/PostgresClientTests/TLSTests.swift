import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentTestSupport
import Testing

/// Verified TLS to PostgreSQL (issue 28): libpq does the TLS; these tests prove that a
/// `sslmode=verify-full` URL reaches a server whose certificate a test CA signed for the host
/// named, and that a wrong CA or a wrong host name is refused. The certificates are made per
/// run with `openssl` (never committed).
@Suite("TLS to PostgreSQL", .serialized)
struct TLSTests {
    static let openssl = TestCertificates.openssl
    typealias Certificates = TestCertificates

    @Test(.enabled(if: TLSTests.openssl != nil, "openssl is not installed (apt-get install openssl)"))
    func verifyFullReachesTheRightServerAndRefusesAWrongCAOrHost() async throws {
        let certs = try await Certificates.make()
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
