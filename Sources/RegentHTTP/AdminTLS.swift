import Foundation
import HummingbirdCore
import Logging
import NIOCore
import NIOSSL
import RegentCore
import Synchronization

/// HTTPS for the admin API: a certificate chain and its key read from PEM files, optionally a
/// CA whose certificates clients must present (workers' client-certificate auth). `reload()`
/// (on SIGHUP) reads the files again: new connections get the new certificate, connections
/// already open keep theirs, and a reload that fails keeps the certificate in use.
public final class AdminTLS: Sendable {
    public struct Files: Sendable, Hashable {
        public var certificate: String
        public var key: String
        /// When given, every client must present a certificate this CA signed.
        public var clientCA: String?

        public init(certificate: String, key: String, clientCA: String? = nil) {
            self.certificate = certificate
            self.key = key
            self.clientCA = clientCA
        }
    }

    public let files: Files
    private let context: Mutex<NIOSSLContext>
    /// How many times the files were read successfully (1 at start).
    private let loads = Atomic<Int>(1)

    /// Reads and checks the files; throws naming the file and what is wrong with it.
    public init(files: Files) throws(RegentError) {
        self.files = files
        self.context = Mutex(try Self.load(files))
    }

    /// Reads the files again and serves the result to new connections.
    public func reload() throws(RegentError) {
        let fresh = try Self.load(files)
        context.withLock { $0 = fresh }
        loads.add(1, ordering: .relaxed)
    }

    public var loadCount: Int { loads.load(ordering: .relaxed) }

    var current: NIOSSLContext { context.withLock { $0 } }

    static func load(_ files: Files) throws(RegentError) -> NIOSSLContext {
        func readable(_ path: String, _ flag: String) throws(RegentError) {
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw RegentError(.invalidInput, "\(flag) \(path.debugDescription): no such file, or not readable by this process", hint: "give a PEM file the node's user can read")
            }
        }
        try readable(files.certificate, "--tls-cert-file")
        try readable(files.key, "--tls-key-file")
        if let ca = files.clientCA { try readable(ca, "--tls-client-ca-file") }
        let chain: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMFile(files.certificate) } catch {
            throw RegentError(.invalidInput, "--tls-cert-file \(files.certificate.debugDescription): not a PEM certificate chain (\(error))")
        }
        guard !chain.isEmpty else { throw RegentError(.invalidInput, "--tls-cert-file \(files.certificate.debugDescription): holds no certificate") }
        let key: NIOSSLPrivateKey
        do { key = try NIOSSLPrivateKey(file: files.key, format: .pem) } catch {
            throw RegentError(.invalidInput, "--tls-key-file \(files.key.debugDescription): not a PEM private key (or it is encrypted) (\(error))")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        if let ca = files.clientCA {
            let roots: [NIOSSLCertificate]
            do { roots = try NIOSSLCertificate.fromPEMFile(ca) } catch {
                throw RegentError(.invalidInput, "--tls-client-ca-file \(ca.debugDescription): not a PEM certificate (\(error))")
            }
            configuration.trustRoots = .certificates(roots)
            configuration.certificateVerification = .noHostnameVerification
        }
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw RegentError(
                .invalidInput,
                "--tls-key-file \(files.key.debugDescription) does not match the certificate in --tls-cert-file \(files.certificate.debugDescription), or they cannot be used together (\(error))",
                hint: "give the key the certificate was issued for")
        }
    }

    /// HTTP/1.1 with `configuration`, each new connection wrapped in TLS with the context
    /// current when it arrives.
    func serverBuilder(_ configuration: HTTP1Channel.Configuration) -> HTTPServerBuilder {
        HTTPServerBuilder { responder in
            ReloadingTLSChannel(base: HTTP1Channel(responder: responder, configuration: configuration), tls: self)
        }
    }
}

/// A child channel that puts a TLS handler in front of `base`, reading the TLS context at each
/// connection's setup (so a reload reaches new connections only).
struct ReloadingTLSChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let tls: AdminTLS

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let context = tls.current
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
