import AsyncHTTPClient
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOSSL

/// The worker's side of the admin API: JSON requests with the bearer token to one node at a
/// time, moving to the next node when one cannot be reached or cannot serve.
final class APIClient: Sendable {
    let http: HTTPClient
    let urls: [String]
    let token: String
    let logger: Logger
    /// The node requests go to now (an index into `urls`).
    private let current = NIOLockedValueBox(0)

    init(configuration: WorkerConfiguration, logger: Logger) throws {
        urls = configuration.urls.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        token = configuration.token
        self.logger = logger
        http = try Self.client(configuration.tls)
    }

    /// An HTTP client that verifies https against `tls.caFile` (or the system's roots), with an
    /// optional client certificate; throws naming the file at fault.
    static func client(_ tls: WorkerConfiguration.TLS) throws -> HTTPClient {
        var config = TLSConfiguration.makeClientConfiguration()
        config.minimumTLSVersion = .tlsv12
        if let ca = tls.caFile {
            do { config.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) } catch {
                throw RegentWorkerError.invalidConfiguration("tls.caFile \(ca.debugDescription): not a readable PEM certificate (\(error))")
            }
        }
        if let cert = tls.clientCertificateFile, let key = tls.clientKeyFile {
            do {
                config.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
                config.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            } catch {
                throw RegentWorkerError.invalidConfiguration("tls.clientCertificateFile/clientKeyFile: not a readable PEM certificate and key (\(error))")
            }
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: config)
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 64)
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    func shutdown() async {
        try? await http.shutdown()
    }

    /// An answer: its status and its JSON body (`.null` when it had none or none that parses).
    struct Answer: Sendable {
        let status: Int
        let body: JSONValue
        let node: String
        var errorCode: String { body["error"]?["code"]?.stringValue ?? body["code"]?.stringValue ?? "" }
        var errorMessage: String { body["error"]?["message"]?.stringValue ?? body["message"]?.stringValue ?? "\(body)" }
    }

    /// Why a request got no answer this node could give: it did not reach the node or the node
    /// cannot serve now (502/503/504, draining). The client has moved to the next node.
    struct Unreachable: Error, CustomStringConvertible {
        let node: String
        let reason: String
        var description: String { "\(node): \(reason)" }
    }

    /// POSTs `body` to the current node. Transport failures and 502/503/504 move on to the next
    /// node and throw ``Unreachable``; any other answer is returned.
    func post(_ path: String, _ body: JSONValue, timeout: Duration) async throws -> Answer {
        let index = current.withLockedValue { $0 }
        let node = urls[index % urls.count]
        var request = HTTPClientRequest(url: node + path)
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: body.text))
        let status: Int
        let bytes: ByteBuffer
        do {
            let response = try await http.execute(request, timeout: .milliseconds(Int64(timeout.seconds * 1000)))
            status = Int(response.status.code)
            bytes = try await response.body.collect(upTo: 64 << 20)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            if Task.isCancelled { throw CancellationError() }
            moveOn(from: index, node: node, reason: "\(error)")
            throw Unreachable(node: node, reason: "\(error)")
        }
        let json = (try? StrictJSON.parse(Array(bytes.readableBytesView), maxDepth: 512)) ?? .null
        let answer = Answer(status: status, body: json, node: node)
        if [502, 503, 504].contains(status) {
            moveOn(from: index, node: node, reason: "\(status) \(answer.errorCode)")
            throw Unreachable(node: node, reason: "answered \(status) \(answer.errorCode): \(answer.errorMessage)")
        }
        return answer
    }

    /// The next node, unless another request moved on already.
    private func moveOn(from index: Int, node: String, reason: String) {
        guard urls.count > 1 else { return }
        let moved = current.withLockedValue { value -> Bool in
            guard value == index else { return false }
            value = (index + 1) % urls.count
            return true
        }
        if moved { logger.warning("node unavailable; moving to the next", metadata: ["node": "\(node)", "reason": "\(reason)", "next": "\(urls[(index + 1) % urls.count])"]) }
    }
}

extension Duration {
    /// Seconds as a Double.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
