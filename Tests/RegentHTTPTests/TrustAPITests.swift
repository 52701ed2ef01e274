import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import PostgresClient
@testable import RegentCore
@testable import RegentHTTP
import RegentTestSupport
import Testing

/// The trust boundaries between API clients (issue 26 §3): engine topics no client can
/// forge, leases bound to the worker instance and token that claimed them, scoped worker
/// tokens, idempotency keys that do not silently answer for another input.
@Suite("Trust boundaries between clients", .serialized)
struct TrustAPITests {
    /// A second worker token, and a scoped one (namespace `tenant-a`, optionally some lanes).
    static func token(_ f: Fixture, _ name: String, scope: TokenScope? = nil) async throws -> String {
        try await PostgresConnection.withConnection(f.database) {
            try await TokenStore().create(name: name, role: .worker, scope: scope, actor: "test", on: $0).1
        }
    }

    @Test func clientsCannotPublishTheEnginesTopics() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let pool = ConnectionPool(configuration: f.database, options: .init(maxConnections: 1))
                let before = try await requestEvents(pool)
                for topic in ["run.succeeded", "package.unloaded", "Run.started", "leader.elected", "step:failed", "worker/registered", "instance.left",
                              "lease.x", "auth.token", "module.enabled"] {
                    for token in [f.worker, f.admin] {
                        let r = try await client.call(
                            .post, "/v1/events", token: token, json: #"{"topic":"\#(topic)","payload":{"run_id":"run_00000000000000000000000000"}}"#)
                        #expect(r.status == .forbidden, "\(topic)")
                        #expect(errorCode(r) == "reserved_topic", "\(topic)")
                    }
                }
                #expect(try await requestEvents(pool) == before)
                // A topic of the client's own family is fine, even one that mentions a reserved word later on.
                let ok = try await client.call(.post, "/v1/events", token: f.worker, json: #"{"topic":"app.run.succeeded","payload":{}}"#)
                #expect(ok.status == .created)
                await pool.shutdown()
            }
        }
    }

    /// Claims a lease in namespace `ns` as instance `w-1` registered with `token`.
    static func claimOne(_ client: some TestClientProtocol, token: String, ns: String = "trust") async throws -> (id: String, epoch: Int) {
        let register = #"{"namespace":"\#(ns)","worker_instance_id":"w-1","worker_id":"w","lanes":["a"],"liveness_ttl_ms":30000}"#
        let registered = try await client.call(.post, "/v1/workers/register", token: token, json: register).status
        #expect(registered == .created || registered == .ok)
        #expect(try await client.call(.post, "/v1/executions", token: token, json: #"{"namespace":"\#(ns)","executions":[{"lane":"a"}]}"#).status == .ok)
        let claimed = try object(try await client.call(
            .post, "/v1/leases/claim", token: token, json: #"{"namespace":"\#(ns)","worker_instance_id":"w-1","lanes":["a"]}"#).body)
        let lease = try #require((claimed["leases"] as? [[String: Any]])?.first)
        return (try #require(lease["execution_id"] as? String), try #require(lease["lease_epoch"] as? Int))
    }

    @Test func aLeaseIsCompletedRenewedAndFailedOnlyByItsHolder() async throws {
        try await Fixture.with { f in
            let other = try await Self.token(f, "other-worker")
            try await f.app().test(.router) { client in
                let (id, epoch) = try await Self.claimOne(client, token: f.worker)
                let lease = #""execution_id":"\#(id)","lease_epoch":\#(epoch)"#
                // Another token: cannot complete, fail or renew, nor claim as w-1, nor re-register w-1.
                for (path, body) in [("/v1/leases/complete", "{\(lease),\"result\":{\"forged\":true}}"), ("/v1/leases/fail", "{\(lease),\"error\":\"x\"}"),
                                     ("/v1/leases/renew", "{\(lease)}")] {
                    let r = try await client.call(.post, path, token: other, json: body)
                    #expect(r.status == .forbidden, "\(path)")
                    #expect(errorCode(r) == "not_lease_holder", "\(path)")
                }
                let batch = try object(try await client.call(
                    .post, "/v1/leases/complete-batch", token: other, json: #"{"completions":[{\#(lease)}]}"#).body)
                #expect((batch["stale"] as? [String]) == [id])
                let register = #"{"namespace":"trust","worker_instance_id":"w-1","worker_id":"w","lanes":["a"],"liveness_ttl_ms":30000}"#
                let rebind = try await client.call(.post, "/v1/workers/register", token: other, json: register)
                #expect(rebind.status == .conflict && errorCode(rebind) == "instance_bound")
                _ = try await client.call(.post, "/v1/executions", token: other, json: #"{"namespace":"trust","executions":[{"lane":"a"}]}"#)
                let asOther = try await client.call(.post, "/v1/leases/claim", token: other, json: #"{"namespace":"trust","worker_instance_id":"w-1","lanes":["a"]}"#)
                #expect(asOther.status == .notFound && errorCode(asOther) == "not_registered")
                // The holder's token with another worker instance named: refused too.
                let wrongWorker = try await client.call(.post, "/v1/leases/complete", token: f.worker, json: #"{\#(lease),"worker_instance_id":"w-2"}"#)
                #expect(wrongWorker.status == .forbidden && errorCode(wrongWorker) == "not_lease_holder")
                // Nothing changed: the lease is still running at its epoch, and its holder completes it.
                try await PostgresConnection.withConnection(f.database) { conn in
                    let row = try await conn.query("SELECT state::text AS state, lease_epoch, result::text AS result FROM workflow.executions WHERE execution_id = \(UUID(uuidString: id)!)").single()
                    #expect(try row.decode("state", as: String.self) == "running")
                    #expect(try row.decode("lease_epoch", as: Int64.self) == Int64(epoch))
                    #expect(try row.decodeOptional("result", as: String.self) == nil)
                }
                let renewed = try await client.call(.post, "/v1/leases/renew", token: f.worker, json: #"{\#(lease),"worker_instance_id":"w-1"}"#)
                #expect(renewed.status == .ok)
                let done = try await client.call(.post, "/v1/leases/complete", token: f.worker, json: #"{\#(lease),"worker_instance_id":"w-1","result":{"n":1}}"#)
                #expect(done.status == .ok)
                // An epoch never granted is told so, not "reclaimed".
                let ahead = try await client.call(.post, "/v1/leases/complete", token: f.worker, json: #"{"execution_id":"\#(id)","lease_epoch":\#(epoch + 5)}"#)
                #expect(ahead.status == .conflict && errorCode(ahead) == "stale_lease")
                #expect(errorMessage(ahead)?.contains("never granted") == true)
                // Another instance's completion of the completed execution is told what happened to it.
                let late = try await client.call(.post, "/v1/leases/complete", token: f.worker, json: #"{\#(lease),"worker_instance_id":"w-2"}"#)
                #expect(errorMessage(late)?.contains("it was completed") == true)
            }
        }
    }

    /// Issue 29: a completion whose answer was lost is sent again and must be told it counted
    /// (200 `already_completed`), alone, in a batch and with the next claim; anyone else (another
    /// token, another instance, a later epoch's holder) still hears stale, and nothing changes.
    @Test func aRepeatedCompletionAnswersWithItsOriginalOutcomeOnlyToItsSender() async throws {
        try await Fixture.with { f in
            let other = try await Self.token(f, "other-worker")
            try await f.app().test(.router) { client in
                let (id, epoch) = try await Self.claimOne(client, token: f.worker)
                let body = #"{"execution_id":"\#(id)","lease_epoch":\#(epoch),"worker_instance_id":"w-1","result":{"n":1}}"#
                let first = try await client.call(.post, "/v1/leases/complete", token: f.worker, json: body)
                #expect(first.status == .ok)
                #expect(try object(first.body)["state"] as? String == "completed")
                // Again, with another result: the first one stands.
                let again = try await client.call(
                    .post, "/v1/leases/complete", token: f.worker,
                    json: #"{"execution_id":"\#(id)","lease_epoch":\#(epoch),"worker_instance_id":"w-1","result":{"n":2}}"#)
                #expect(again.status == .ok)
                #expect(try object(again.body)["state"] as? String == "already_completed")
                let batch = try object(try await client.call(
                    .post, "/v1/leases/complete-batch", token: f.worker,
                    json: #"{"completions":[{"execution_id":"\#(id)","lease_epoch":\#(epoch),"worker_instance_id":"w-1"}]}"#).body)
                #expect((batch["done"] as? [[String: Any]])?.first?["state"] as? String == "already_completed")
                #expect((batch["stale"] as? [String]) == [])
                let withClaim = try object(try await client.call(
                    .post, "/v1/leases/complete-and-claim", token: f.worker,
                    json: #"{"namespace":"trust","worker_instance_id":"w-1","lanes":["a"],"completions":[{"execution_id":"\#(id)","lease_epoch":\#(epoch),"worker_instance_id":"w-1"}]}"#).body)
                #expect((withClaim["done"] as? [[String: Any]])?.first?["state"] as? String == "already_completed")
                // Not the sender: another instance, an epoch never granted, another token.
                for (token, json) in [
                    (f.worker, #"{"execution_id":"\#(id)","lease_epoch":\#(epoch),"worker_instance_id":"w-9"}"#),
                    (f.worker, #"{"execution_id":"\#(id)","lease_epoch":\#(epoch + 1),"worker_instance_id":"w-1"}"#),
                    (other, #"{"execution_id":"\#(id)","lease_epoch":\#(epoch),"worker_instance_id":"w-1"}"#),
                ] {
                    let r = try await client.call(.post, "/v1/leases/complete", token: token, json: json)
                    #expect(r.status == .conflict && errorCode(r) == "stale_lease", "\(json)")
                }
                let result = try await f.api.pool.query(
                    "SELECT result::text AS r FROM workflow.executions WHERE execution_id = \(UUID(uuidString: id)!)").first?.decode("r", as: String.self)
                #expect(result == #"{"n": 1}"#)

                // A cancelled lease's holder is not told its completion counted.
                let (cancelled, cancelledEpoch) = try await Self.claimOne(client, token: f.worker)
                #expect(try await client.call(.post, "/v1/executions/\(cancelled)/cancel", token: f.worker, json: "{}").status == .ok)
                let late = try await client.call(
                    .post, "/v1/leases/complete", token: f.worker,
                    json: #"{"execution_id":"\#(cancelled)","lease_epoch":\#(cancelledEpoch),"worker_instance_id":"w-1"}"#)
                #expect(late.status == .conflict && errorCode(late) == "stale_lease")

                // Deregistration: only by the token that registered the instance; then its claims are refused.
                let leave = #"{"namespace":"trust","worker_instance_id":"w-1"}"#
                let foreign = try await client.call(.post, "/v1/workers/deregister", token: other, json: leave)
                #expect(foreign.status == .notFound && errorCode(foreign) == "not_registered")
                let left = try await client.call(.post, "/v1/workers/deregister", token: f.worker, json: leave)
                #expect(left.status == .ok)
                #expect(try object(left.body)["registration"] as? String == "deregistered")
                let claimAfter = try await client.call(
                    .post, "/v1/leases/claim", token: f.worker, json: #"{"namespace":"trust","worker_instance_id":"w-1","lanes":["a"]}"#)
                #expect(claimAfter.status == .notFound && errorCode(claimAfter) == "not_registered")
                #expect(try await client.call(.post, "/v1/workers/deregister", token: f.worker, json: leave).status == .notFound)
            }
        }
    }

    @Test func aScopedTokenActsOnlyInsideItsScope() async throws {
        try await Fixture.with { f in
            let scoped = try await Self.token(f, "tenant-a", scope: try TokenScope(namespace: Namespace("tenant-a"), lanes: [Lane("a")]))
            try await f.app().test(.router) { client in
                let pool = ConnectionPool(configuration: f.database, options: .init(maxConnections: 1))
                let workers = try await count(pool, "workflow.workers"), executions = try await count(pool, "workflow.executions")
                let refused: [(String, String)] = [
                    ("/v1/workers/register", #"{"namespace":"tenant-b","worker_instance_id":"w","worker_id":"w","lanes":["a"]}"#),
                    ("/v1/workers/register", #"{"namespace":"tenant-a","worker_instance_id":"w","worker_id":"w","lanes":["a","b"]}"#),
                    ("/v1/executions", #"{"namespace":"tenant-b","executions":[{"lane":"a"}]}"#),
                    ("/v1/executions", #"{"namespace":"tenant-a","executions":[{"lane":"a"},{"lane":"zzz"}]}"#),
                    ("/v1/leases/claim", #"{"namespace":"tenant-b","worker_instance_id":"w","lanes":["a"]}"#),
                    ("/v1/leases/complete-and-claim", #"{"namespace":"tenant-a","worker_instance_id":"w","lanes":["b"]}"#),
                ]
                for (path, body) in refused {
                    let r = try await client.call(.post, path, token: scoped, json: body)
                    #expect(r.status == .forbidden && errorCode(r) == "forbidden", "\(path) \(body)")
                }
                #expect(try await count(pool, "workflow.workers") == workers)
                #expect(try await count(pool, "workflow.executions") == executions)
                // Inside the scope it works; another tenant's execution cannot be cancelled by it.
                let (id, _) = try await Self.claimOne(client, token: scoped, ns: "tenant-a")
                #expect(!id.isEmpty)
                let theirs = try object(try await client.call(.post, "/v1/executions", token: f.worker, json: #"{"namespace":"tenant-b","executions":[{"lane":"a"}]}"#).body)
                let theirID = try #require((theirs["executions"] as? [[String: Any]])?.first?["execution_id"] as? String)
                let cancel = try await client.call(.post, "/v1/executions/\(theirID)/cancel", token: scoped)
                #expect(cancel.status == .forbidden)
                // Runs it starts carry its namespace; a workflow with a lane outside its lanes is refused.
                try await PostgresConnection.withConnection(f.database) { conn in
                    for (type, lane) in [("scoped-ok", "a"), ("scoped-wide", "b")] {
                        let fixture = try PackageFixture(files: ["workflow.json": PackageFixture.manifest(type: type, steps: [#"{"name": "s", "lane": "\#(lane)"}"#])])
                        defer { fixture.remove() }
                        _ = try await PackageStore().deploy(try PackageContents(path: fixture.directory.path, limits: .default), actor: .named("test"), on: conn)
                    }
                }
                let started = try await client.call(.post, "/v1/runs", token: scoped, json: #"{"workflow_type":"scoped-ok"}"#)
                #expect(started.status == .created)
                let runID = try #require(try object(started.body)["run_id"] as? String)
                let shown = try object(try await client.call(.get, "/v1/runs/\(runID)", token: f.reader).body)
                #expect(shown["namespace"] as? String == "tenant-a")
                try await PostgresConnection.withConnection(f.database) { conn in
                    let ns = try await conn.query("SELECT namespace::text AS ns FROM workflow.executions WHERE run_id = \(runID)").single().decode("ns", as: String.self)
                    #expect(ns == "tenant-a")
                }
                let wide = try await client.call(.post, "/v1/runs", token: scoped, json: #"{"workflow_type":"scoped-wide"}"#)
                #expect(wide.status == .forbidden && errorCode(wide) == "forbidden")
                // An unscoped worker token's run of the same type goes to `runs`, and the scoped token may not cancel it.
                let other = try object(try await client.call(.post, "/v1/runs", token: f.worker, json: #"{"workflow_type":"scoped-ok"}"#).body)
                let otherID = try #require(other["run_id"] as? String)
                #expect(try await client.call(.post, "/v1/runs/\(otherID)/cancel", token: scoped, json: #"{"reason":"x"}"#).status == .forbidden)
                #expect(try await client.call(.post, "/v1/runs/\(runID)/cancel", token: scoped, json: #"{"reason":"x"}"#).status == .ok)
                await pool.shutdown()
            }
        }
    }

    @Test func anIdempotencyKeyReusedWithAnotherInputIsAConflict() async throws {
        try await Fixture.with { f in
            try await PostgresConnection.withConnection(f.database) { conn in
                let fixture = try PackageFixture(files: ["workflow.json": PackageFixture.manifest(type: "idem")])
                defer { fixture.remove() }
                _ = try await PackageStore().deploy(try PackageContents(path: fixture.directory.path, limits: .default), actor: .named("test"), on: conn)
            }
            try await f.app().test(.router) { client in
                let first = try await client.call(.post, "/v1/runs", token: f.worker, json: #"{"workflow_type":"idem","idempotency_key":"k1","input":{"order":1}}"#)
                #expect(first.status == .created)
                let again = try await client.call(.post, "/v1/runs", token: f.worker, json: #"{"workflow_type":"idem","idempotency_key":"k1","input":{"order":1}}"#)
                #expect(again.status == .ok)
                #expect(try object(again.body)["run_id"] as? String == (try object(first.body)["run_id"] as? String))
                let other = try await client.call(.post, "/v1/runs", token: f.worker, json: #"{"workflow_type":"idem","idempotency_key":"k1","input":{"order":2}}"#)
                #expect(other.status == .conflict && errorCode(other) == "idempotency_conflict")
            }
        }
    }

    /// A run on a chosen version (a canary): admin only; a version that is not stored, or not of
    /// the type, is 404 and starts nothing; a malformed one is 400.
    @Test func aRunStartsOnAChosenVersionOnlyForAnAdmin() async throws {
        try await Fixture.with { f in
            var hashes: [String] = []
            try await PostgresConnection.withConnection(f.database) { conn in
                for steps in [[#"{"name": "one", "lane": "work"}"#], [#"{"name": "two", "lane": "work"}"#]] {
                    let fixture = try PackageFixture(files: ["workflow.json": PackageFixture.manifest(type: "canary", steps: steps)])
                    defer { fixture.remove() }
                    hashes.append(try await PackageStore().deploy(try PackageContents(path: fixture.directory.path, limits: .default), actor: .named("test"), on: conn).contentHash)
                }
            }
            let (old, routed) = (hashes[0], hashes[1])
            try await f.app().test(.router) { client in
                let pool = ConnectionPool(configuration: f.database, options: .init(maxConnections: 1))
                let runs = try await count(pool, "workflow.runs")
                let byWorker = try await client.call(.post, "/v1/runs", token: f.worker, json: #"{"workflow_type":"canary","version":"\#(old)"}"#)
                #expect(byWorker.status == .forbidden && errorCode(byWorker) == "forbidden")
                let missing = try await client.call(.post, "/v1/runs", token: f.admin, json: #"{"workflow_type":"canary","version":"\#(String(repeating: "0", count: 64))"}"#)
                #expect(missing.status == .notFound && errorCode(missing) == "not_found")
                let malformed = try await client.call(.post, "/v1/runs", token: f.admin, json: #"{"workflow_type":"canary","version":"v1"}"#)
                #expect(malformed.status == .badRequest)
                #expect(try await count(pool, "workflow.runs") == runs, "nothing started")
                let canary = try await client.call(.post, "/v1/runs", token: f.admin, json: #"{"workflow_type":"canary","version":"\#(old)","idempotency_key":"c"}"#)
                #expect(try canary.status == .created && (object(canary.body)["package_hash"] as? String) == old)
                let plain = try await client.call(.post, "/v1/runs", token: f.worker, json: #"{"workflow_type":"canary"}"#)
                #expect(try plain.status == .created && (object(plain.body)["package_hash"] as? String) == routed)
                // The same key naming another version is not the same start.
                let otherVersion = try await client.call(.post, "/v1/runs", token: f.admin, json: #"{"workflow_type":"canary","version":"\#(routed)","idempotency_key":"c"}"#)
                #expect(otherVersion.status == .conflict && errorCode(otherVersion) == "idempotency_conflict")
            }
        }
    }

    /// POST /v1/runs/{id}/retry: a read token is refused, bad modes are 400, a failed run
    /// resumes (200 with the steps queued), a running one is 409, an unknown one 404.
    @Test func aFailedRunIsRetriedOverHTTP() async throws {
        try await Fixture.with { f in
            let runID: String = try await PostgresConnection.withConnection(f.database) { conn in
                let fixture = try PackageFixture(files: ["workflow.json": PackageFixture.manifest(type: "retry.http", steps: [
                    #"{"name": "first", "lane": "work"}"#, #"{"name": "second", "lane": "work", "after": ["first"]}"#,
                ])])
                defer { fixture.remove() }
                _ = try await PackageStore().deploy(try PackageContents(path: fixture.directory.path, limits: .default), actor: .named("test"), on: conn)
                let run = try await RunStore().start(.init(workflowType: try WorkflowType("retry.http")), actor: .named("test"), on: conn)
                _ = try await WorkerRegistry().register(
                    namespace: RunStore.namespace, workerInstanceID: try WorkerInstanceID("w-retry"), workerID: try WorkerID("w"), lanes: [try Lane("work")],
                    capabilities: [], livenessTTL: .seconds(300), on: conn)
                let lease = try #require(try await LeaseStore().claim(
                    namespace: RunStore.namespace, lanes: [try Lane("work")], workerInstanceID: try WorkerInstanceID("w-retry"), capabilities: [],
                    leaseDuration: nil, limit: 1, on: conn).first)
                _ = try await LeaseStore().fail(executionID: lease.executionID, epoch: lease.epoch, error: "boom", retryable: false, on: conn)
                return run.runID
            }
            try await f.app().test(.router) { client in
                let byReader = try await client.call(.post, "/v1/runs/\(runID)/retry", token: f.reader, json: "{}")
                #expect(byReader.status == .forbidden)
                let badMode = try await client.call(.post, "/v1/runs/\(runID)/retry", token: f.worker, json: #"{"steps":"everything"}"#)
                #expect(badMode.status == .badRequest)
                let lowBudget = try await client.call(.post, "/v1/runs/\(runID)/retry", token: f.worker, json: #"{"budget_limit":-1}"#)
                #expect(lowBudget.status == .badRequest)
                let unknown = try await client.call(.post, "/v1/runs/run_00000000000000000000000000/retry", token: f.worker, json: "{}")
                #expect(unknown.status == .notFound)
                let retried = try await client.call(.post, "/v1/runs/\(runID)/retry", token: f.worker, json: #"{"steps":"failed"}"#)
                #expect(retried.status == .ok)
                let body = try object(retried.body)
                #expect(body["requeued"] as? [String] == ["first"] && body["reset"] as? [String] == ["first", "second"])
                let again = try await client.call(.post, "/v1/runs/\(runID)/retry", token: f.worker, json: "{}")
                #expect(again.status == .conflict && errorCode(again) == "conflict")
            }
        }
    }

    /// Signals over HTTP: the worker role may signal (a token scoped to another namespace may
    /// not), a reader may not; each refusal has its code; a resend with the same signal_id is the
    /// same delivery (200, duplicate) and the first is 202.
    @Test func aRunIsSignalledOverHTTPWithEachRefusalNamed() async throws {
        try await Fixture.with { f in
            let runID: String = try await PostgresConnection.withConnection(f.database) { conn in
                let fixture = try PackageFixture(files: ["workflow.json": PackageFixture.manifest(type: "signal.http", steps: [
                    #"{"name": "approve", "wait_for": "approval"}"#, #"{"name": "after", "lane": "work"}"#,
                ])])
                defer { fixture.remove() }
                _ = try await PackageStore().deploy(try PackageContents(path: fixture.directory.path, limits: .default), actor: .named("test"), on: conn)
                return try await RunStore().start(.init(workflowType: try WorkflowType("signal.http")), actor: .named("test"), on: conn).runID
            }
            let elsewhere = try await Self.token(f, "tenant-b", scope: try TokenScope(namespace: Namespace("tenant-b"), lanes: nil))
            try await f.app().test(.router) { client in
                let path = "/v1/runs/\(runID)/signals/approval"
                #expect(try await client.call(.post, path, token: f.reader, json: "{}").status == .forbidden)
                #expect(try await client.call(.post, path, token: elsewhere, json: "{}").status == .forbidden)
                let unknown = try await client.call(.post, "/v1/runs/\(runID)/signals/nope", token: f.worker, json: "{}")
                #expect(unknown.status == .notFound && errorCode(unknown) == "unknown_signal")
                let badName = try await client.call(.post, "/v1/runs/\(runID)/signals/Not%20A%20Name", token: f.worker, json: "{}")
                #expect(badName.status == .badRequest)
                let badField = try await client.call(.post, path, token: f.worker, json: #"{"payload": 1}"#)
                #expect(badField.status == .badRequest)
                let noRun = try await client.call(.post, "/v1/runs/run_00000000000000000000000000/signals/approval", token: f.worker, json: "{}")
                #expect(noRun.status == .notFound && errorCode(noRun) == "not_found")
                let sent = try await client.call(.post, path, token: f.worker, json: #"{"data": {"by": "ana"}, "signal_id": "ticket-1"}"#)
                #expect(sent.status == .accepted)
                let body = try object(sent.body)
                #expect(body["consumed_by"] as? String == "approve" && body["signal_id"] as? String == "ticket-1" && body["consumed"] as? Bool == true)
                let resent = try await client.call(.post, path, token: f.worker, json: #"{"data": {"by": "ana"}, "signal_id": "ticket-1"}"#)
                let resentBody = try object(resent.body)
                #expect(resent.status == .ok && resentBody["duplicate"] as? Bool == true)
                let conflicting = try await client.call(.post, path, token: f.worker, json: #"{"data": {"by": "eve"}, "signal_id": "ticket-1"}"#)
                #expect(conflicting.status == .conflict && errorCode(conflicting) == "signal_conflict")
                let shown = try object(try await client.call(.get, "/v1/runs/\(runID)", token: f.reader).body)
                let steps = try #require(shown["steps"] as? [[String: Any]])
                #expect(steps.first?["kind"] as? String == "signal" && (steps.first?["wait"] as? [String: Any])?["signal"] as? String == "approval")
                #expect((shown["signals"] as? [[String: Any]])?.first?["consumed_by"] as? String == "approve")
                #expect(try await client.call(.post, "/v1/runs/\(runID)/cancel", token: f.worker, json: #"{"reason":"done"}"#).status == .ok)
                let late = try await client.call(.post, path, token: f.worker, json: "{}")
                #expect(late.status == .conflict && errorCode(late) == "run_finished")
            }
        }
    }

    /// Listings are summaries: no input or output unless asked for; timestamps carry microseconds.
    @Test func runListingsAreSummariesWithPreciseTimestamps() async throws {
        try await Fixture.with { f in
            try await PostgresConnection.withConnection(f.database) { conn in
                let fixture = try PackageFixture(files: ["workflow.json": PackageFixture.manifest(type: "listed")])
                defer { fixture.remove() }
                _ = try await PackageStore().deploy(try PackageContents(path: fixture.directory.path, limits: .default), actor: .named("test"), on: conn)
            }
            try await f.app().test(.router) { client in
                let big = String(repeating: "x", count: 200_000)
                for _ in 0..<3 {
                    #expect(try await client.call(.post, "/v1/runs", token: f.worker, json: #"{"workflow_type":"listed","input":{"blob":"\#(big)"}}"#).status == .created)
                }
                let plain = try await client.call(.get, "/v1/runs?limit=10", token: f.reader)
                #expect(plain.body.readableBytes < 10_000)
                let runs = try #require(try object(plain.body)["runs"] as? [[String: Any]])
                #expect(runs.count == 3 && runs.allSatisfy { $0["input"] == nil && $0["steps"] == nil })
                let started = try #require(runs.first?["started_at"] as? String)
                #expect(started.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z/) != nil, "\(started)")
                let full = try object(try await client.call(.get, "/v1/runs?limit=10&include=input", token: f.reader).body)
                #expect((full["runs"] as? [[String: Any]])?.allSatisfy { ($0["input"] as? [String: Any])?["blob"] as? String == big } == true)
                let bad = try await client.call(.get, "/v1/runs?include=steps", token: f.reader)
                #expect(bad.status == .badRequest)
            }
        }
    }
}
