import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import PostgresClient
@testable import RegentCore
@testable import RegentHTTP
import RegentTestSupport
import RegentWorker
import Testing

/// `/v1/vault` (issue 32) through the API: roles, a sealed node, bad input changing nothing,
/// a corrupt secret answered 409 (not 500), and a worker (the SDK) reading the secrets its
/// step was granted with its lease, and nothing else.
@Suite("The vault's API", .serialized)
struct VaultAPITests {
    @Test func aNodeWithoutAKeyAnswersSealedAndStillListsMetadata() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let put = try await client.call(.put, "/v1/vault/secret?path=a/b", token: f.admin, json: #"{"value": "x"}"#)
                #expect(put.status == .serviceUnavailable)
                #expect(errorCode(put) == "vault_sealed")
                #expect(errorMessage(put)?.contains("REGENT_VAULT_KEY") == true)
                let get = try await client.call(.get, "/v1/vault/secret?path=a/b", token: f.admin)
                #expect(errorCode(get) == "vault_sealed")
                let status = try object(try await client.call(.get, "/v1/vault/status", token: f.reader).body)
                #expect(status["can_write"] as? Bool == false)
                #expect((status["sealed_reason"] as? String)?.contains("no vault key") == true)
                let list = try await client.call(.get, "/v1/vault/secrets", token: f.reader)
                #expect(list.status == .ok)
                #expect(try await count(f.api.pool, "vault.kv_meta") == 0)
            }
        }
    }

    @Test func rolesBadInputAndCorruptSecrets() async throws {
        let key = VaultKey.generate()
        try await Fixture.with(vaultKeyring: VaultKeyring(current: key)) { f in
            try await f.app().test(.router) { client in
                let put = try await client.call(.put, "/v1/vault/secret?path=pay/stripe", token: f.admin, json: #"{"value": "sk_live_123", "max_versions": 3}"#)
                #expect(put.status == .created)
                #expect(try object(put.body)["version"] as? Int == 1)
                let bytes: [UInt8] = [0, 159, 146, 150, 255]
                let bin = try await client.call(
                    .put, "/v1/vault/secret?path=pay/binary", token: f.admin, json: #"{"value_base64": "\#(Data(bytes).base64EncodedString())", "expires_in_s": 3600}"#)
                #expect(bin.status == .created)
                // Values only for admins; reads audited with their purpose; never cached.
                for token in [f.reader, f.worker] {
                    #expect(try await client.call(.get, "/v1/vault/secret?path=pay/stripe", token: token).status == .forbidden)
                    #expect(try await client.call(.put, "/v1/vault/secret?path=pay/stripe", token: token, json: #"{"value": "y"}"#).status == .forbidden)
                }
                let got = try await client.call(.get, "/v1/vault/secret?path=pay/stripe&purpose=rotate%20webhook", token: f.admin)
                #expect(got.status == .ok)
                #expect(got.headers[.cacheControl] == "no-store")
                #expect(try object(got.body)["value"] as? String == "sk_live_123")
                let gotBin = try object(try await client.call(.get, "/v1/vault/secret?path=pay/binary", token: f.admin).body)
                #expect(gotBin["value"] == nil)
                #expect(Data(base64Encoded: gotBin["value_base64"] as? String ?? "").map(Array.init) == bytes)
                let audit = try await f.api.pool.query(
                    "SELECT detail->>'purpose' AS purpose FROM engine.audit WHERE action = 'vault.secret_read' ORDER BY id LIMIT 1").single()
                #expect(try audit.decodeOptional("purpose", as: String.self) == "rotate webhook")
                // Metadata and listings for readers, with no value in them.
                let meta = try await client.call(.get, "/v1/vault/metadata?path=pay/stripe", token: f.reader)
                #expect(meta.status == .ok)
                #expect(!String(buffer: meta.body).contains("sk_live"))
                let list = try object(try await client.call(.get, "/v1/vault/secrets?prefix=pay/&limit=1", token: f.reader).body)
                #expect((list["secrets"] as? [[String: Any]])?.map { $0["path"] as? String } == ["pay/binary"])
                #expect(list["next_after"] as? String == "pay/binary")
                // Bad input: a clear 400 naming the problem, nothing changed.
                let before = try await count(f.api.pool, "vault.kv_versions")
                for (uri, body) in [
                    ("/v1/vault/secret?path=../etc", #"{"value": "x"}"#), ("/v1/vault/secret", #"{"value": "x"}"#),
                    ("/v1/vault/secret?path=a/b", #"{"value": "x", "value_base64": "eA=="}"#), ("/v1/vault/secret?path=a/b", #"{}"#),
                    ("/v1/vault/secret?path=a/b", #"{"value_base64": "***"}"#), ("/v1/vault/secret?path=a/b", #"{"value": "x", "max_versions": 0}"#),
                    ("/v1/vault/secret?path=a/b", #"{"value": "x", "nope": 1}"#),
                    ("/v1/vault/secret?path=a/b", #"{"value": "\#(String(repeating: "x", count: VaultStore.maxValueBytes + 1))"}"#),
                ] {
                    let r = try await client.call(.put, uri, token: f.admin, json: body)
                    #expect(r.status == .badRequest, "\(uri) \(body.prefix(80)) → \(r.status)")
                }
                #expect(try await count(f.api.pool, "vault.kv_versions") == before)
                #expect(try await client.call(.get, "/v1/vault/secret?path=pay/stripe&version=0", token: f.admin).status == .badRequest)
                #expect(try await client.call(.get, "/v1/vault/secret?path=pay/none", token: f.admin).status == .notFound)
                // Versions: delete, undelete, destroy.
                #expect(try await client.call(.post, "/v1/vault/versions/delete", token: f.admin, json: #"{"path": "pay/stripe", "versions": [1]}"#).status == .ok)
                #expect(try await client.call(.get, "/v1/vault/secret?path=pay/stripe", token: f.admin).status == .notFound)
                #expect(try await client.call(.post, "/v1/vault/versions/undelete", token: f.admin, json: #"{"path": "pay/stripe"}"#).status == .ok)
                #expect(try await client.call(.get, "/v1/vault/secret?path=pay/stripe", token: f.admin).status == .ok)
                #expect(try await client.call(.post, "/v1/vault/versions/destroy", token: f.admin, json: #"{"path": "pay/stripe", "versions": ["x"]}"#).status == .badRequest)
                // A ciphertext moved to another row: 409 secret_corrupt, not a 500.
                try await f.api.pool.query(
                    """
                    UPDATE vault.kv_versions d SET sealed_key = s.sealed_key, sealed_value = s.sealed_value
                    FROM vault.kv_versions s WHERE d.path = 'pay/binary' AND s.path = 'pay/stripe'
                    """)
                let corrupt = try await client.call(.get, "/v1/vault/secret?path=pay/binary", token: f.admin)
                #expect(corrupt.status == .conflict)
                #expect(errorCode(corrupt) == "secret_corrupt")
                #expect(!String(buffer: corrupt.body).contains("sk_live"))
                // Remove.
                #expect(try await client.call(.delete, "/v1/vault/secret?path=pay/binary", token: f.admin).status == .ok)
                #expect(try await client.call(.get, "/v1/vault/metadata?path=pay/binary", token: f.reader).status == .notFound)
                // A disabled module's routes are not offered.
                _ = try await f.api.pool.withConnection { try await ModuleRegistry().setEnabled("vault", false, actor: "test", on: $0) }
                #expect(await eventually(timeout: .seconds(5)) {
                    errorCode(try await client.call(.get, "/v1/vault/status", token: f.reader)) == "module_disabled"
                })
            }
        }
    }

    /// The SDK's `ctx.secret` reads a granted secret with the step's lease; an ungranted one
    /// fails the step for good; through the raw API, a lease read with another instance or
    /// after the lease ended is 403 and audited.
    @Test func aWorkerReadsItsStepsSecretsWithItsLease() async throws {
        let key = VaultKey.generate()
        try await Fixture.with(vaultKeyring: VaultKeyring(current: key)) { f in
            try await WorkerSDKTests.deploy(f, type: "billing", steps: [
                #"{"name": "charge", "lane": "sdk", "secrets": ["pay/stripe"]}"#, #"{"name": "snoop", "lane": "sdk", "after": ["charge"], "max_attempts": 1}"#,
            ])
            try await f.app().test(.live) { client in
                #expect(try await client.call(.put, "/v1/vault/secret?path=pay/stripe", token: f.admin, json: #"{"value": "sk_live_abc"}"#).status == .created)
                let worker = RegentWorker(configuration: WorkerSDKTests.configuration(f, port: try #require(client.port), name: "vault-1"))
                worker.on("charge") { ctx in
                    let secret = try await ctx.secret("pay/stripe")
                    return ["key_length": .integer(Int64(secret.count))]
                }
                worker.on("snoop") { ctx in
                    _ = try await ctx.secret("pay/stripe")
                    return [:]
                }
                try await WorkerSDKTests.with(worker) {
                    let id = try await WorkerSDKTests.start(client, f, type: "billing")
                    #expect(await eventually { try await WorkerSDKTests.run(client, f, id)["state"] as? String == "failed" })
                    let shown = try await WorkerSDKTests.run(client, f, id)
                    let steps = try #require(shown["steps"] as? [[String: Any]])
                    let charge = try #require(steps.first { $0["name"] as? String == "charge" })
                    #expect((charge["output"] as? [String: Any])?["key_length"] as? Int == 11)
                    let snoop = try #require(steps.first { $0["name"] as? String == "snoop" })
                    #expect((snoop["error"] as? String)?.contains("not granted secret pay/stripe") == true)
                }
                let reads = try await f.api.pool.query(
                    "SELECT action, detail->>'worker_instance_id' AS w FROM engine.audit WHERE action IN ('vault.secret_read', 'vault.read_denied') ORDER BY id")
                    .map { "\(try $0.decode("action", as: String.self)):\(try $0.decodeOptional("w", as: String.self) ?? "")" }
                #expect(reads == ["vault.secret_read:vault-1", "vault.read_denied:vault-1"])
                // A lease read for an execution with no lease, by the raw API: 403, audited.
                let stray = try await client.call(
                    .post, "/v1/vault/lease-read", token: f.worker,
                    json: #"{"execution_id": "\#(UUID().uuidString.lowercased())", "lease_epoch": 1, "worker_instance_id": "vault-1", "path": "pay/stripe"}"#)
                #expect(stray.status == .forbidden)
                #expect(!String(buffer: stray.body).contains("sk_live"))
                #expect(try await client.call(.post, "/v1/vault/lease-read", token: f.reader, json: "{}").status == .forbidden)
            }
        }
    }

    /// Executions enqueued with `secrets` grant them to their lease holder.
    @Test func anEnqueuedExecutionsSecretsAreReadableByItsHolderOnly() async throws {
        let key = VaultKey.generate()
        try await Fixture.with(vaultKeyring: VaultKeyring(current: key)) { f in
            try await f.app().test(.router) { client in
                #expect(try await client.call(.put, "/v1/vault/secret?path=mail/smtp", token: f.admin, json: #"{"value": "smtp-pass"}"#).status == .created)
                let reg = try await client.call(
                    .post, "/v1/workers/register", token: f.worker,
                    json: #"{"namespace": "jobs", "worker_instance_id": "m1", "worker_id": "mailer", "lanes": ["mail"]}"#)
                #expect(reg.status == .ok || reg.status == .created)
                let bad = try await client.call(
                    .post, "/v1/executions", token: f.worker, json: #"{"namespace": "jobs", "executions": [{"lane": "mail", "secrets": ["../x"]}]}"#)
                #expect(bad.status == .badRequest)
                // A worker token cannot grant secrets (it could grant itself any); an admin can.
                let byWorker = try await client.call(
                    .post, "/v1/executions", token: f.worker, json: #"{"namespace": "jobs", "executions": [{"lane": "mail", "secrets": ["mail/smtp"]}]}"#)
                #expect(byWorker.status == .forbidden)
                #expect(try await count(f.api.pool, "workflow.executions") == 0)
                let made = try await client.call(
                    .post, "/v1/executions", token: f.admin, json: #"{"namespace": "jobs", "executions": [{"lane": "mail", "secrets": ["mail/smtp"]}]}"#)
                #expect(made.status == .created || made.status == .ok)
                let claim = try object(try await client.call(
                    .post, "/v1/leases/claim", token: f.worker, json: #"{"namespace": "jobs", "worker_instance_id": "m1", "lanes": ["mail"], "limit": 1}"#).body)
                let lease = try #require((claim["leases"] as? [[String: Any]])?.first)
                let id = try #require(lease["execution_id"] as? String)
                let epoch = try #require(lease["lease_epoch"] as? Int)
                let read = try await client.call(
                    .post, "/v1/vault/lease-read", token: f.worker,
                    json: #"{"execution_id": "\#(id)", "lease_epoch": \#(epoch), "worker_instance_id": "m1", "path": "mail/smtp"}"#)
                #expect(read.status == .ok)
                #expect(try object(read.body)["value"] as? String == "smtp-pass")
                let other = try await client.call(
                    .post, "/v1/vault/lease-read", token: f.worker,
                    json: #"{"execution_id": "\#(id)", "lease_epoch": \#(epoch), "worker_instance_id": "m2", "path": "mail/smtp"}"#)
                #expect(other.status == .forbidden)
            }
        }
    }
}
