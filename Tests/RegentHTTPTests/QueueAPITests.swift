import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import PostgresClient
@testable import RegentCore
@testable import RegentHTTP
import RegentTestSupport
import Testing

@Suite("The queue over HTTP", .serialized)
struct QueueAPITests {
    @Test func completeAndClaimOverHTTP() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let register = #"{"namespace":"cc","worker_instance_id":"w-1","worker_id":"w","lanes":["a"],"liveness_ttl_ms":30000}"#
                #expect(try await client.call(.post, "/v1/workers/register", token: f.worker, json: register).status == .created)
                _ = try await client.call(.post, "/v1/executions", token: f.worker, json: #"{"namespace":"cc","executions":[{"lane":"a"},{"lane":"a"}]}"#)
                let claim = #""namespace":"cc","worker_instance_id":"w-1","lanes":["a"]"#
                #expect(try await client.call(.post, "/v1/leases/complete-and-claim", token: f.reader, json: "{\(claim)}").status == .forbidden)
                let first = try object(try await client.call(.post, "/v1/leases/complete-and-claim", token: f.worker, json: "{\(claim)}").body)
                let lease = try #require((first["leases"] as? [[String: Any]])?.first)
                #expect((first["done"] as? [Any])?.isEmpty == true)
                let id = try #require(lease["execution_id"] as? String), epoch = try #require(lease["lease_epoch"] as? Int)
                let second = try object(try await client.call(
                    .post, "/v1/leases/complete-and-claim", token: f.worker,
                    json: #"{"completions":[{"execution_id":"\#(id)","lease_epoch":\#(epoch),"result":{"n":1}}],\#(claim)}"#).body)
                #expect((second["done"] as? [[String: Any]])?.first?["execution_id"] as? String == id)
                #expect((second["leases"] as? [[String: Any]])?.count == 1)
                let bad = try await client.call(.post, "/v1/leases/complete-and-claim", token: f.worker, json: #"{"completions":[{"execution_id":"x"}],\#(claim)}"#)
                #expect(bad.status == .badRequest)
            }
        }
    }

    @Test func enqueueClaimCompleteAndFailInBatchesThenCancel() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let register = #"{"namespace":"ns","worker_instance_id":"w-1","worker_id":"w","lanes":["a"],"liveness_ttl_ms":30000}"#
                #expect(try await client.call(.post, "/v1/workers/register", token: f.worker, json: register).status == .created)
                let enqueued = try await client.call(.post, "/v1/executions", token: f.worker, json: """
                    {"namespace":"ns","executions":[
                      {"lane":"a","payload":{"n":1},"priority":5},
                      {"lane":"a","payload":{"n":2},"unique_key":"k"},
                      {"lane":"a","unique_key":"k"},
                      {"lane":"a","run_at":"2999-01-01T00:00:00Z"},
                      {"lane":"a","max_attempts":2,"retry_base_ms":1,"retry_max_ms":1}]}
                    """)
                #expect(enqueued.status == .ok)
                let made = try #require(try object(enqueued.body)["executions"] as? [[String: Any]])
                #expect(made.count == 5)
                #expect(made.map { $0["created"] as? Bool } == [true, true, false, true, true])
                #expect(made[1]["execution_id"] as? String == made[2]["execution_id"] as? String)
                let ids = made.compactMap { $0["execution_id"] as? String }

                let claimed = try await client.call(
                    .post, "/v1/leases/claim", token: f.worker, json: #"{"namespace":"ns","worker_instance_id":"w-1","lanes":["a"],"limit":10}"#)
                let leases = try #require(try object(claimed.body)["leases"] as? [[String: Any]])
                // Not the scheduled one; priority 5 is among them.
                #expect(Set(leases.compactMap { $0["execution_id"] as? String }) == Set([ids[0], ids[1], ids[4]]))
                func epoch(_ id: String) -> Int { leases.first { $0["execution_id"] as? String == id }?["lease_epoch"] as? Int ?? -1 }

                let completed = try await client.call(.post, "/v1/leases/complete-batch", token: f.worker, json: """
                    {"completions":[{"execution_id":"\(ids[0])","lease_epoch":\(epoch(ids[0])),"result":{"ok":true}},
                                    {"execution_id":"\(ids[1])","lease_epoch":\(epoch(ids[1]) + 9)}]}
                    """)
                #expect(completed.status == .ok)
                let doc = try object(completed.body)
                #expect((doc["done"] as? [[String: Any]])?.map { $0["execution_id"] as? String } == [ids[0]])
                #expect(doc["stale"] as? [String] == [ids[1]])

                let failed = try await client.call(.post, "/v1/leases/fail-batch", token: f.worker, json: """
                    {"failures":[{"execution_id":"\(ids[4])","lease_epoch":\(epoch(ids[4])),"error":"boom"}]}
                    """)
                #expect((try object(failed.body)["done"] as? [[String: Any]])?.first?["state"] as? String == "queued")

                // Cancel the running one: its worker's completion is then refused.
                let cancelled = try await client.call(.post, "/v1/executions/\(ids[1])/cancel", token: f.worker)
                #expect(try object(cancelled.body)["outcome"] as? String == "cancelled_running")
                let late = try await client.call(
                    .post, "/v1/leases/complete", token: f.worker, json: #"{"execution_id":"\#(ids[1])","lease_epoch":\#(epoch(ids[1]))}"#)
                #expect(late.status == .conflict)
                #expect(errorCode(late) == "stale_lease")
                #expect(try object(try await client.call(.post, "/v1/executions/\(ids[3])/cancel", token: f.worker).body)["outcome"] as? String
                    == "cancelled_queued")
                #expect(try await client.call(.post, "/v1/executions/\(UUID())/cancel", token: f.worker).status == .notFound)
                #expect(try await client.call(.post, "/v1/executions/not-a-uuid/cancel", token: f.worker).status == .badRequest)
                #expect(try await client.call(.post, "/v1/executions/\(ids[0])/cancel", token: f.reader).status == .forbidden)
            }
        }
    }

    @Test func aThousandExecutionsWithKilobytePayloadsFitInOneRequest() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let item = #"{"lane":"a","payload":{"blob":"\#(String(repeating: "x", count: 1000))"}}"#
                let body = #"{"namespace":"ns","executions":["# + Array(repeating: item, count: 1000).joined(separator: ",") + "]}"
                #expect(body.utf8.count > 1_000_000)
                let response = try await client.call(.post, "/v1/executions", token: f.worker, json: body)
                #expect(response.status == .ok)
                #expect((try object(response.body)["executions"] as? [Any])?.count == 1000)
            }
        }
    }

    @Test func aLongPollClaimReturnsWhenWorkArrives() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let register = #"{"namespace":"ns","worker_instance_id":"w-1","worker_id":"w","lanes":["a"],"liveness_ttl_ms":30000}"#
                #expect(try await client.call(.post, "/v1/workers/register", token: f.worker, json: register).status == .created)
                // The node's waker listens on the event bus's session.
                let waker = try #require(await f.node.queueWaker)
                #expect(await eventually { waker.isListening })
                async let polled = client.call(
                    .post, "/v1/leases/claim", token: f.worker,
                    json: #"{"namespace":"ns","worker_instance_id":"w-1","lanes":["a"],"wait_ms":20000}"#)
                // Past the waiter's first empty claim and its first periodic look (1 s), so only
                // the enqueue's notification can wake it in time.
                try await Task.sleep(for: .milliseconds(1300))
                let sent = ContinuousClock.now
                let enqueued = try await client.call(.post, "/v1/executions", token: f.worker, json: #"{"namespace":"ns","executions":[{"lane":"a"}]}"#)
                #expect(enqueued.status == .ok)
                let response = try await polled
                #expect((try object(response.body)["leases"] as? [Any])?.count == 1)
                #expect(sent.duration(to: .now) < .milliseconds(500), "woken \(sent.duration(to: .now)) after the enqueue")
                // An empty wait ends on time, with no leases.
                let t0 = ContinuousClock.now
                let empty = try await client.call(
                    .post, "/v1/leases/claim", token: f.worker, json: #"{"namespace":"ns","worker_instance_id":"w-1","lanes":["a"],"wait_ms":700}"#)
                #expect((try object(empty.body)["leases"] as? [Any])?.isEmpty == true)
                #expect(t0.duration(to: .now) >= .milliseconds(700))
            }
        }
    }

    @Test func badBatchesAreRefusedNamingTheItemAndChangeNothing() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                for (body, expected) in [
                    (#"{"namespace":"ns","executions":[]}"#, "executions"),
                    (#"{"namespace":"ns","executions":[{"lane":"a"},{"lane":"a","run_at":"tomorrow"}]}"#, "executions[1].run_at"),
                    (#"{"namespace":"ns","executions":[{"lane":"a","run_at":"1969-12-31T23:59:59Z"}]}"#, "executions[0].run_at"),
                    (#"{"namespace":"ns","executions":[{"lane":"a","priority":-1}]}"#, "priority"),
                    (#"{"namespace":"ns","executions":[{"lane":"a","unique_key":"\#(String(repeating: "k", count: 256))"}]}"#, "unique key"),
                    (#"{"namespace":"ns","executions":[{"lane":"a","nope":1}]}"#, "executions[0].nope"),
                    (#"{"namespace":"ns","executions":[{"lane":"a","retry_base_ms":0}]}"#, "retry_base_ms"),
                    (#"{"namespace":"ns","executions":[3]}"#, "executions[0]"),
                ] {
                    let response = try await client.call(.post, "/v1/executions", token: f.worker, json: body)
                    #expect(response.status == .badRequest, "\(body)")
                    #expect(errorMessage(response)?.contains(expected) == true, "\(body): \(errorMessage(response) ?? "")")
                }
                let tooMany = "[" + Array(repeating: #"{"lane":"a"}"#, count: 1001).joined(separator: ",") + "]"
                #expect(try await client.call(.post, "/v1/executions", token: f.worker, json: #"{"namespace":"ns","executions":\#(tooMany)}"#).status
                    == .badRequest)
                let waitTooLong = try await client.call(
                    .post, "/v1/leases/claim", token: f.worker, json: #"{"namespace":"ns","worker_instance_id":"w","lanes":["a"],"wait_ms":30001}"#)
                #expect(waitTooLong.status == .badRequest)
            }
            let count = try await f.api.pool.query("SELECT count(*) AS n FROM workflow.executions").single().decode("n", as: Int.self)
            #expect(count == 0)
        }
    }
}
