import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import PostgresClient
@testable import RegentCore
@testable import RegentHTTP
import RegentTestSupport
import Testing

@Suite("Workflow runs over HTTP", .serialized)
struct RunAPITests {
    func deploy(_ f: Fixture, steps: [String]) async throws {
        let p = try PackageFixture(files: ["workflow.json": PackageFixture.manifest(type: "flow", steps: steps)])
        defer { p.remove() }
        let contents = try PackageContents(path: p.directory.path, limits: .default)
        _ = try await f.api.pool.withConnection { try await PackageStore().deploy(contents, actor: .named("test"), on: $0) }
    }

    @Test func startClaimCompleteWithOutputAndCostShowListAndCancel() async throws {
        try await Fixture.with { f in
            try await deploy(f, steps: [#"{"name": "first", "lane": "l"}"#, #"{"name": "second", "lane": "l"}"#])
            try await f.app().test(.router) { client in
                let body = #"{"workflow_type":"flow","input":{"order":5},"idempotency_key":"o-5","budget":{"limit":100,"unit":"cents"}}"#
                #expect(try await client.call(.post, "/v1/runs", token: f.reader, json: body).status == .forbidden)
                let started = try await client.call(.post, "/v1/runs", token: f.worker, json: body)
                #expect(started.status == .created)
                let runID = try #require(try object(started.body)["run_id"] as? String)
                let again = try await client.call(.post, "/v1/runs", token: f.worker, json: body)
                let againDoc = try object(again.body)
                #expect(again.status == .ok && againDoc["run_id"] as? String == runID && againDoc["created"] as? Bool == false)

                let register = #"{"namespace":"runs","worker_instance_id":"w-1","worker_id":"w","lanes":["l"],"liveness_ttl_ms":30000}"#
                #expect(try await client.call(.post, "/v1/workers/register", token: f.worker, json: register).status == .created)
                let claimed = try await client.call(.post, "/v1/leases/claim", token: f.worker, json: #"{"namespace":"runs","worker_instance_id":"w-1","lanes":["l"]}"#)
                let lease = try #require((try object(claimed.body)["leases"] as? [[String: Any]])?.first)
                #expect(lease["run_id"] as? String == runID && lease["step"] as? String == "first" && (lease["package_hash"] as? String)?.count == 64)
                let id = try #require(lease["execution_id"] as? String), epoch = try #require(lease["lease_epoch"] as? Int)
                let negative = try await client.call(.post, "/v1/leases/complete", token: f.worker, json: #"{"execution_id":"\#(id)","lease_epoch":\#(epoch),"cost":-1}"#)
                #expect(negative.status == .badRequest)
                let both = try await client.call(.post, "/v1/leases/complete", token: f.worker, json: #"{"execution_id":"\#(id)","lease_epoch":\#(epoch),"output":{},"result":{}}"#)
                #expect(both.status == .badRequest)
                let done = try await client.call(
                    .post, "/v1/leases/complete", token: f.worker,
                    json: #"{"execution_id":"\#(id)","lease_epoch":\#(epoch),"output":{"ok":1},"cost":[{"amount":30},{"amount":2,"unit":"tokens"}]}"#)
                #expect(done.status == .ok)

                let shown = try object(try await client.call(.get, "/v1/runs/\(runID)", token: f.reader).body)
                #expect(shown["state"] as? String == "running")
                let steps = try #require(shown["steps"] as? [[String: Any]])
                #expect(steps.map { $0["state"] as? String } == ["succeeded", "queued"])
                #expect((steps[0]["output"] as? [String: Any])?["ok"] as? Int == 1 && steps[0]["worker"] as? String == "w-1")
                let budget = try #require(shown["budget"] as? [String: Any])
                #expect(budget["spent"] as? Double == 30 && budget["remaining"] as? Double == 70)
                #expect((shown["ledger"] as? [Any])?.count == 2)
                let list = try object(try await client.call(.get, "/v1/runs?type=flow&state=running", token: f.reader).body)
                #expect((list["runs"] as? [[String: Any]])?.map { $0["run_id"] as? String } == [runID])

                // Cancel while the second step is queued: the worker that claims nothing more.
                let second = try await client.call(.post, "/v1/leases/claim", token: f.worker, json: #"{"namespace":"runs","worker_instance_id":"w-1","lanes":["l"]}"#)
                let l2 = try #require((try object(second.body)["leases"] as? [[String: Any]])?.first)
                #expect(try await client.call(.post, "/v1/runs/\(runID)/cancel", token: f.reader, json: #"{"reason":"x"}"#).status == .forbidden)
                let cancelled = try await client.call(.post, "/v1/runs/\(runID)/cancel", token: f.worker, json: #"{"reason":"operator said so"}"#)
                #expect(try object(cancelled.body)["outcome"] as? String == "cancelled")
                let late = try await client.call(
                    .post, "/v1/leases/complete", token: f.worker, json: #"{"execution_id":"\#(l2["execution_id"] as! String)","lease_epoch":\#(l2["lease_epoch"] as! Int)}"#)
                #expect(late.status == .conflict && errorCode(late) == "stale_lease")
                let final = try object(try await client.call(.get, "/v1/runs/\(runID)", token: f.reader).body)
                #expect(final["state"] as? String == "cancelled" && final["finished_by"] as? String == "token:test-worker")
            }
        }
    }

    @Test func badRunInputIsRefusedClearlyWithNothingStarted() async throws {
        try await Fixture.with { f in
            try await deploy(f, steps: [#"{"name": "first", "lane": "l"}"#])
            try await f.app().test(.router) { client in
                let unknown = try await client.call(.post, "/v1/runs", token: f.worker, json: #"{"workflow_type":"nope"}"#)
                #expect(unknown.status == .notFound && errorMessage(unknown)?.contains("no routed package version") == true)
                for body in [
                    #"{"workflow_type":"flow","input":[1]}"#, #"{"workflow_type":"flow","idempotency_key":""}"#,
                    #"{"workflow_type":"flow","deadline_ms":0}"#, #"{"workflow_type":"flow","budget":{"limit":-1,"unit":"c"}}"#,
                    #"{"workflow_type":"flow","budget":{"limit":1,"unit":"c","x":1}}"#, #"{"workflow_type":"bad type"}"#,
                    #"{"workflow_type":"flow","surprise":1}"#,
                ] {
                    let r = try await client.call(.post, "/v1/runs", token: f.worker, json: body)
                    #expect(r.status == .badRequest, "\(body): \(r.status)")
                }
                #expect(try await client.call(.get, "/v1/runs/run_\(String(repeating: "0", count: 26))", token: f.reader).status == .notFound)
                #expect(try await client.call(.get, "/v1/runs/nope", token: f.reader).status == .badRequest)
                #expect(try await client.call(.get, "/v1/runs?state=sleeping", token: f.reader).status == .badRequest)
                #expect(try await client.call(.post, "/v1/runs/run_\(String(repeating: "0", count: 26))/cancel", token: f.worker, json: #"{"reason":"x"}"#).status == .notFound)
                #expect(try await count(f.api.pool, "workflow.runs") == 0)
            }
        }
    }
}
