import Foundation

/// Certificates made per test run with `openssl` (never committed): a test CA, an unrelated
/// second CA, and certificates the test CA issues on demand.
public struct TestCertificates: Sendable {
    public static let openssl = ["/usr/bin/openssl", "/bin/openssl"].first { FileManager.default.isExecutableFile(atPath: $0) }

    public let directory: String
    public var ca: String { directory + "/ca.crt" }
    public var otherCA: String { directory + "/other-ca.crt" }
    /// A server certificate for IP 127.0.0.1 (and its key), issued by `ca`.
    public var cert: String { directory + "/server.crt" }
    public var key: String { directory + "/server.key" }

    public init() throws {
        directory = NSTemporaryDirectory() + "regent-tls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: directory)
        for (name, subject) in [("ca", "/CN=regent test CA"), ("other-ca", "/CN=another CA")] {
            try Self.run(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).crt",
                          "-days", "2", "-subj", subject])
        }
        _ = try issue("server", subject: "/CN=127.0.0.1", altNames: "IP:127.0.0.1")
    }

    /// `init()` off the cooperative pool: key generation takes seconds on a loaded machine, and
    /// a test blocking one of CI's two cooperative threads that long stalls every other test.
    public static func make() async throws -> TestCertificates {
        try await offThePool { try TestCertificates() }
    }

    /// `issue` off the cooperative pool (see `make()`).
    @discardableResult
    public func issued(_ name: String, subject: String, altNames: String? = nil, by issuer: String = "ca") async throws -> (cert: String, key: String) {
        let certs = self
        let result = try await offThePool { try certs.issue(name, subject: subject, altNames: altNames, by: issuer) }
        return result
    }

    /// A certificate and key `ca` issues as `name.crt` / `name.key`; returns their paths.
    @discardableResult
    public func issue(_ name: String, subject: String, altNames: String? = nil, by issuer: String = "ca") throws -> (cert: String, key: String) {
        let d = directory
        try Self.run(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(d)/\(name).key", "-out", "\(d)/\(name).csr", "-subj", subject])
        var args = ["x509", "-req", "-in", "\(d)/\(name).csr", "-CA", "\(d)/\(issuer).crt", "-CAkey", "\(d)/\(issuer).key", "-CAcreateserial",
                    "-out", "\(d)/\(name).crt", "-days", "2"]
        if let altNames {
            try "subjectAltName=\(altNames)\n".write(toFile: "\(d)/\(name).ext", atomically: true, encoding: .utf8)
            args += ["-extfile", "\(d)/\(name).ext"]
        }
        try Self.run(args)
        return ("\(d)/\(name).crt", "\(d)/\(name).key")
    }

    /// The server's key must be its user's and private (PostgreSQL refuses it otherwise).
    public func handOver(to user: String?) throws {
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: key)
        guard let user, let pw = getpwnam(user) else { return }
        for path in [key, cert] { chown(path, pw.pointee.pw_uid, pw.pointee.pw_gid) }
    }

    public func remove() { try? FileManager.default.removeItem(atPath: directory) }

    public static func run(_ args: [String]) throws {
        guard let openssl else { throw NSError(domain: "TestCertificates", code: 1, userInfo: [NSLocalizedDescriptionKey: "openssl is not installed"]) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: openssl)
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw NSError(domain: "TestCertificates", code: 2, userInfo: [NSLocalizedDescriptionKey: "openssl \(args.prefix(2).joined(separator: " ")) failed"])
        }
    }
}
