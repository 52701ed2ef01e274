import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import RegentCore

/// The demo step worker over the admin API instead of the database: `regent worker --api-url
/// https://node:8443 --token …`. It registers in the runs namespace (refreshing before its
/// liveness TTL runs out), long-polls `/v1/leases/claim`, "works" each step for `work` and
/// completes it with the same output and cost as the database worker; a completion refused as
/// stale (409) is dropped. HTTPS is verified against `--ca-file` (or the system's roots), with
/// an optional client certificate for nodes that require one.
struct HTTPStepWorker: Sendable {
    struct TLSFiles: Sendable {
        var ca: String?
        var clientCertificate: String?
        var clientKey: String?
    }

    let base: String
    let token: String
    let instanceID: String
    let lanes: [String]
    let capabilities: [String]
    let work: Duration
    let batch: Int
    let cost: Double

    /// An HTTP client for `files` (for https URLs); throws naming the file at fault.
    static func client(_ files: TLSFiles) throws -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        do {
            if let ca = files.ca { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) }
        } catch { throw RegentError(.invalidInput, "--ca-file \(files.ca!.debugDescription): not a readable PEM certificate (\(error))") }
        if let cert = files.clientCertificate, let key = files.clientKey {
            do {
                tls.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            } catch {
                throw RegentError(.invalidInput, "--client-cert/--client-key: not a readable PEM certificate and key (\(error))")
            }
        }
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
    }

    /// POSTs `body` as JSON; the status and the decoded JSON object of the answer.
    func post(_ client: HTTPClient, _ path: String, _ body: [String: Any], timeout: Duration) async throws -> (status: Int, json: [String: Any]) {
        var request = HTTPClientRequest(url: base + path)
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
        let response = try await client.execute(request, timeout: .milliseconds(Int64(timeout.milliseconds)))
        let bytes = try await response.body.collect(upTo: 16 << 20)
        let json = (try? JSONSerialization.jsonObject(with: Data(bytes.readableBytesView))) as? [String: Any] ?? [:]
        return (Int(response.status.code), json)
    }

    /// Runs until cancelled; returns the steps completed and the completions refused as stale.
    func run(client: HTTPClient, logger: Logger) async -> StepWorker.Tally {
        var tally = StepWorker.Tally()
        var registeredAt: ContinuousClock.Instant?
        var delay = Duration.milliseconds(100)
        while !Task.isCancelled {
            do {
                if registeredAt.map({ $0.duration(to: .now) > .seconds(10) }) ?? true {
                    let r = try await post(client, "/v1/workers/register", [
                        "namespace": RunStore.namespace.value, "worker_instance_id": instanceID, "worker_id": "step-worker",
                        "lanes": lanes, "capabilities": capabilities, "liveness_ttl_ms": 30_000,
                    ], timeout: .seconds(15))
                    guard r.status == 200 || r.status == 201 else { throw RegentError(.invalidInput, "register answered \(r.status): \(r.json)") }
                    registeredAt = .now
                }
                let claimed = try await post(client, "/v1/leases/claim", [
                    "namespace": RunStore.namespace.value, "worker_instance_id": instanceID, "lanes": lanes, "capabilities": capabilities,
                    "limit": batch, "wait_ms": 5000,
                ], timeout: .seconds(20))
                guard claimed.status == 200 else { throw RegentError(.invalidInput, "claim answered \(claimed.status): \(claimed.json)") }
                for lease in claimed.json["leases"] as? [[String: Any]] ?? [] {
                    guard let id = lease["execution_id"] as? String, let epoch = lease["lease_epoch"] as? Int else { continue }
                    if work > .zero { try await Task.sleep(for: work) }
                    var body: [String: Any] = [
                        "execution_id": id, "lease_epoch": epoch, "worker_instance_id": instanceID,
                        "output": ["step": lease["step"] as? String ?? "", "by": instanceID, "attempt": lease["attempt_index"] as? Int ?? 0],
                    ]
                    if cost > 0 { body["cost"] = cost }
                    if let run = lease["run_id"] as? String { body["run_id"] = run }
                    let done = try await post(client, "/v1/leases/complete", body, timeout: .seconds(15))
                    switch done.status {
                    case 200: tally.completed += 1
                    case 409: tally.stale += 1
                    default: throw RegentError(.invalidInput, "complete answered \(done.status): \(done.json)")
                    }
                }
                delay = .milliseconds(100)
            } catch is CancellationError {
                break
            } catch {
                if Task.isCancelled { break }
                logger.error("worker request failed; retrying", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
        return tally
    }
}
