import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import PostgresClient
@testable import RegentCore
@testable import RegentHTTP
import RegentTestSupport
import Testing

/// `/v1/schedules` (issue 31): admin writes, read lists; refusals name the field; the fixture's
/// leader fires what is created.
@Suite("Schedules over HTTP", .serialized)
struct ScheduleAPITests {
    @Test func createListShowPauseResumeTriggerDeleteEachWithItsRole() async throws {
        try await Fixture.with { f in
            try await RunAPITests().deploy(f, steps: [#"{"name": "first", "lane": "l"}"#])
            try await f.app().test(.router) { client in
                let body = #"{"name":"tick","workflow_type":"flow","cron":"* * * * * *","timezone":"Europe/Paris","input":{"n":1},"catch_up":"latest","jitter_ms":0}"#
                for weaker in [f.reader, f.worker] {
                    let refused = try await client.call(.post, "/v1/schedules", token: weaker, json: body)
                    #expect(refused.status == .forbidden)
                }
                let created = try await client.call(.post, "/v1/schedules", token: f.admin, json: body)
                #expect(created.status == .created, "\(String(buffer: created.body))")
                let doc = try object(created.body)
                #expect(doc["timezone"] as? String == "Europe/Paris" && doc["catch_up"] as? String == "latest" && (doc["input"] as? [String: Any])?["n"] as? Int == 1)
                #expect(try await client.call(.post, "/v1/schedules", token: f.admin, json: body).status == .conflict)
                // Refusals name what is wrong and create nothing.
                let bad: [(String, String)] = [
                    (#"{"name":"x","workflow_type":"flow","cron":"* * *"}"#, "3 fields"),
                    (#"{"name":"x","workflow_type":"flow","cron":"* * * * *","timezone":"Moon/Base"}"#, "IANA"),
                    (#"{"name":"x","workflow_type":"flow","cron":"* * * * *","catch_up":"never"}"#, "catch-up"),
                    (#"{"name":"x","workflow_type":"flow","cron":"* * * * *","jitter_ms":-1}"#, "jitter_ms"),
                    (#"{"name":"x y","workflow_type":"flow","cron":"* * * * *"}"#, "schedule name"),
                    (#"{"name":"x","workflow_type":"flow","cron":"* * * * *","input":[1]}"#, "input"),
                    (#"{"name":"x","workflow_type":"flow","cron":"* * * * *","color":"red"}"#, "color"),
                ]
                for (json, says) in bad {
                    let r = try await client.call(.post, "/v1/schedules", token: f.admin, json: json)
                    #expect(r.status == .badRequest && (errorMessage(r) ?? "").contains(says), "\(json): \(errorMessage(r) ?? "")")
                }
                let listed = try object(try await client.call(.get, "/v1/schedules", token: f.reader).body)
                #expect((listed["schedules"] as? [[String: Any]])?.map { $0["name"] as? String } == ["tick"])
                // The leader fires it: the show lists what became of its slots.
                var fires: [[String: Any]] = []
                let deadline = ContinuousClock.now + .seconds(30)
                while fires.isEmpty, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(200))
                    fires = (try object(try await client.call(.get, "/v1/schedules/tick", token: f.reader).body)["recent_fires"] as? [[String: Any]]) ?? []
                }
                #expect(fires.first?["outcome"] as? String == "started" && (fires.first?["run_id"] as? String)?.hasPrefix("run_") == true)
                #expect(try await client.call(.post, "/v1/schedules/tick/pause", token: f.worker).status == .forbidden)
                let paused = try await client.call(.post, "/v1/schedules/tick/pause", token: f.admin)
                let pausedDoc = try object(paused.body)
                #expect(paused.status == .ok && pausedDoc["paused"] as? Bool == true)
                let resumed = try await client.call(.post, "/v1/schedules/tick/resume", token: f.admin)
                let resumedDoc = try object(resumed.body)
                #expect(resumed.status == .ok && resumedDoc["paused"] as? Bool == false)
                let t1 = try await client.call(.post, "/v1/schedules/tick/trigger", token: f.admin, json: #"{"key":"k1"}"#)
                let t2 = try await client.call(.post, "/v1/schedules/tick/trigger", token: f.admin, json: #"{"key":"k1"}"#)
                #expect(t1.status == .created && t2.status == .ok)
                let (r1, r2) = (try object(t1.body), try object(t2.body))
                #expect(r1["run_id"] as? String == r2["run_id"] as? String)
                #expect(try await client.call(.post, "/v1/schedules/tick/trigger", token: f.admin, json: #"{"key":"no spaces"}"#).status == .badRequest)
                #expect(try await client.call(.post, "/v1/schedules/nope/pause", token: f.admin).status == .notFound)
                #expect(try await client.call(.delete, "/v1/schedules/tick", token: f.worker).status == .forbidden)
                #expect(try await client.call(.delete, "/v1/schedules/tick", token: f.admin).status == .ok)
                #expect(try await client.call(.get, "/v1/schedules/tick", token: f.reader).status == .notFound)
            }
        }
    }

    @Test func laneLimitsOverHTTPWithRolesAndTheirMetrics() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let body = #"{"max_running": 4, "rate_per_s": 25.5, "burst": 10}"#
                for weaker in [f.reader, f.worker] {
                    #expect(try await client.call(.put, "/v1/lanes/tenant-a/mail", token: weaker, json: body).status == .forbidden)
                }
                let set = try await client.call(.put, "/v1/lanes/tenant-a/mail", token: f.admin, json: body)
                #expect(set.status == .ok, "\(String(buffer: set.body))")
                let doc = try object(set.body)
                #expect(doc["max_running"] as? Int == 4 && doc["rate_per_s"] as? Double == 25.5 && doc["burst"] as? Int == 10)
                for (bad, says) in [(#"{}"#, "max running, a rate"), (#"{"burst": 3}"#, "burst needs a rate"), (#"{"max_running": 0}"#, "max_running"),
                                    (#"{"rate_per_s": -1}"#, "rate_per_s"), (#"{"max_running": 1, "color": 1}"#, "color")] {
                    let r = try await client.call(.put, "/v1/lanes/tenant-a/mail", token: f.admin, json: bad)
                    #expect(r.status == .badRequest && (errorMessage(r) ?? "").contains(says), "\(bad): \(errorMessage(r) ?? "")")
                }
                // A colon in a path segment arrives percent-encoded.
                #expect(try await client.call(.put, "/v1/lanes/ns%3Aone/l", token: f.admin, json: #"{"max_running": 1}"#).status == .ok)
                let listed = try object(try await client.call(.get, "/v1/lanes", token: f.reader).body)
                #expect((listed["lanes"] as? [[String: Any]])?.map { $0["namespace"] as? String } == ["ns:one", "tenant-a"])
                let metrics = String(buffer: try await client.call(.get, "/metrics", token: nil).body)
                #expect(metrics.contains(#"regent_lane_running{lane="mail",namespace="tenant-a"} 0"#) || metrics.contains(#"regent_lane_running{namespace="tenant-a",lane="mail"} 0"#), "\(metrics.split(separator: "\n").filter { $0.contains("lane") })")
                #expect(try await client.call(.delete, "/v1/lanes/tenant-a/mail", token: f.worker).status == .forbidden)
                #expect(try await client.call(.delete, "/v1/lanes/tenant-a/mail", token: f.admin).status == .ok)
                #expect(try await client.call(.delete, "/v1/lanes/tenant-a/mail", token: f.admin).status == .notFound)
            }
        }
    }
}
