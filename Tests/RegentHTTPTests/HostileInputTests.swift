import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import PostgresClient
@testable import RegentCore
@testable import RegentHTTP
import RegentTestSupport
import Testing

@Suite("Strict JSON reader (no server)")
struct StrictJSONTests {
    func failure(_ text: String) -> StrictJSON.Failure? {
        do { _ = try StrictJSON.parse(Array(text.utf8)); return nil } catch { return error }
    }

    @Test func deepNestingIsRefusedAtTheLimitWithoutReadingFurther() throws {
        let deep = String(repeating: "[", count: 500) + String(repeating: "]", count: 500)
        #expect(failure(deep)?.code == "json_too_deep")
        let ok = String(repeating: "[", count: 32) + String(repeating: "]", count: 32)
        #expect(failure(ok) == nil)
        #expect(failure(String(repeating: "[", count: 33) + String(repeating: "]", count: 33))?.code == "json_too_deep")
        let objects = String(repeating: #"{"a":"#, count: 40) + "1" + String(repeating: "}", count: 40)
        #expect(failure(objects)?.code == "json_too_deep")
    }

    @Test func duplicateKeysNulAndEncodingsAreRefusedNamingTheField() throws {
        #expect(failure(#"{"topic":"a","topic":"b"}"#)?.code == "duplicate_key")
        let nul = failure(#"{"payload":{"note":"before\u0000after"}}"#)
        #expect(nul?.code == "invalid_character")
        #expect(nul?.message.contains("payload.note") == true)
        #expect(failure(#"{"error":"x\u0000"}"#)?.message.contains("\"error\"") == true)
        #expect(failure("\u{FEFF}{}")?.code == "invalid_encoding")
        var utf16: [UInt8] = [0xFF, 0xFE]
        for b in Array("{}".utf8) { utf16 += [b, 0] }
        #expect(throws: StrictJSON.Failure.self) { _ = try StrictJSON.parse(utf16) }
        #expect(failure("{\"a\":\"\u{1}\"}")?.code == "malformed_json")  // a raw control character
        #expect(failure(#"{"a":"\ud800"}"#)?.code == "malformed_json")  // a lone surrogate
        #expect(failure(#"{"a":01}"#)?.code == "malformed_json")
        #expect(failure(#"{"a":1} x"#)?.code == "malformed_json")
    }

    @Test func valuesRoundTripThroughTheCompactWriter() throws {
        let text = #"{"b":[1,-2.5,true,null,"é\n\"q\""],"a":{"x":9223372036854775807}}"#
        let value = try StrictJSON.parse(Array(text.utf8))
        #expect(value.text == #"{"a":{"x":9223372036854775807},"b":[1,-2.5,true,null,"é\n\"q\""]}"#)
        #expect(try StrictJSON.parse(Array(value.text.utf8)) == value)
    }

    @Test func storedJSONIsSplicedIntoResponsesAsItIs() throws {
        struct Doc: Encodable { let name: String; let payload: AnyJSON }
        let deep = String(repeating: "[", count: 300) + "1" + String(repeating: "]", count: 300)
        let out = String(decoding: try encodeJSON([Doc(name: "@@rgtraw:x:0@@", payload: AnyJSON(text: deep))]), as: UTF8.self)
        #expect(out == #"[{"name":"@@rgtraw:x:0@@","payload":"# + deep + "}]")
    }
}

@Suite("The admin API under hostile input", .serialized)
struct HostileInputTests {
    @Test func deepDuplicateNulAndNonUTF8BodiesGet400NamingTheProblemAndChangeNothing() async throws {
        try await Fixture.with { f in
            let before = try await count(f.api.pool, "engine.events")
            try await f.app().test(.router) { client in
                let deep = #"{"topic":"t","payload":"# + String(repeating: "[", count: 500) + String(repeating: "]", count: 500) + "}"
                var r = try await client.call(.post, "/v1/events", token: f.worker, json: deep)
                #expect(r.status == .badRequest && errorCode(r) == "json_too_deep")
                r = try await client.call(.post, "/v1/events", token: f.worker, json: #"{"topic":"t","topic":"u","payload":{}}"#)
                #expect(r.status == .badRequest && errorCode(r) == "duplicate_key")
                r = try await client.call(.post, "/v1/events", token: f.worker, json: #"{"topic":"t","payload":{"n":"a\u0000b"}}"#)
                #expect(r.status == .badRequest && errorCode(r) == "invalid_character")
                #expect(errorMessage(r)?.contains("payload.n") == true)
                r = try await client.call(.post, "/v1/events", token: f.worker, json: "\u{FEFF}" + #"{"topic":"t","payload":{}}"#)
                #expect(r.status == .badRequest && errorCode(r) == "invalid_encoding")
                r = try await client.call(
                    .post, "/v1/workers/register", token: f.worker,
                    json: #"{"namespace":"n","worker_instance_id":"w","worker_id":"x","lanes":["a","a"]}"#)
                #expect(r.status == .badRequest && errorMessage(r)?.contains("\"a\" twice") == true)
                r = try await client.call(
                    .post, "/v1/leases/fail", token: f.worker,
                    json: #"{"execution_id":"8e1f3c3e-6f1f-4a39-9a9e-5f3f3f3f3f3f","lease_epoch":1,"error":"before\u0000after"}"#)
                #expect(r.status == .badRequest && errorCode(r) == "invalid_character")
                #expect(errorMessage(r)?.contains("\"error\"") == true)
            }
            #expect(try await count(f.api.pool, "engine.events") == before)
            #expect(try await count(f.api.pool, "workflow.workers") == 0)
        }
    }

    @Test func aDeepStoredPayloadReachesReadersAsItWasStored() async throws {
        try await Fixture.with { f in
            let deep = String(repeating: #"{"a":"#, count: 200) + "1" + String(repeating: "}", count: 200)
            try await f.api.pool.query(
                "INSERT INTO engine.audit (actor, action, detail) VALUES ('test', 'deep.detail', \(deep)::jsonb)")
            try await f.app().test(.router) { client in
                let r = try await client.call(.get, "/v1/audit?limit=1000", token: f.reader)
                #expect(r.status == .ok)
                let body = String(buffer: r.body)
                #expect(body.contains(#""detail":"# + deep.replacingOccurrences(of: ":", with: ": ")) || body.contains(#""detail":"# + deep))
            }
        }
    }
}

@Suite("The admin API's methods, cursors and module switches", .serialized)
struct APIContractTests {
    @Test func otherMethodsGet405WithAllowAndHeadWorksOnGetRoutes() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                var r = try await client.call(.delete, "/v1/leader", token: f.admin)
                #expect(r.status == .methodNotAllowed && errorCode(r) == "method_not_allowed")
                #expect(r.headers[.allow] == "GET, HEAD")
                r = try await client.call(.put, "/v1/modules/auth/enable", token: f.admin)
                #expect(r.status == .methodNotAllowed && r.headers[.allow] == "POST")
                r = try await client.call(.get, "/v1/events/nowhere", token: f.admin)
                #expect(r.status == .notFound)
                r = try await client.call(.head, "/v1/leader", token: f.reader)
                #expect(r.status == .ok && r.body.readableBytes == 0)
                #expect(r.headers[.contentType] == "application/json")
                r = try await client.call(.head, "/healthz", token: nil)
                #expect(r.status == .ok)
                r = try await client.call(.head, "/v1/events", token: f.reader)
                #expect(r.status == .ok && r.headers[.contentType] == "text/event-stream")
            }
        }
    }

    @Test func modulesAnswerSnakeCaseAuthCannotBeDisabledAndADisabledWorkflowModuleAnswers503() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let list = try #require(try parse(try await client.call(.get, "/v1/modules", token: f.reader).body) as? [[String: Any]])
                #expect(list.allSatisfy { Set($0.keys) == ["name", "version", "enabled", "updated_at"] })
                var r = try await client.call(.post, "/v1/modules/auth/disable", token: f.admin)
                #expect(r.status == .badRequest && errorMessage(r)?.contains("auth cannot be disabled") == true)
                r = try await client.call(.post, "/v1/modules/workflow/disable", token: f.admin)
                #expect(r.status == .ok)
                try await Task.sleep(for: .milliseconds(1100))  // the gate caches for a second
                r = try await client.call(.get, "/v1/workers", token: f.reader)
                #expect(r.status == .serviceUnavailable && errorCode(r) == "module_disabled")
                r = try await client.call(
                    .post, "/v1/workers/register", token: f.worker,
                    json: #"{"namespace":"n","worker_instance_id":"w","worker_id":"x","lanes":["a"]}"#)
                #expect(r.status == .serviceUnavailable && errorCode(r) == "module_disabled")
                r = try await client.call(.post, "/v1/modules/workflow/enable", token: f.admin)
                try await Task.sleep(for: .milliseconds(1100))
                r = try await client.call(.get, "/v1/workers", token: f.reader)
                #expect(r.status == .ok)
            }
            #expect(try await count(f.api.pool, "workflow.workers") == 0)
        }
    }

    @Test func theEventCursorIsExclusiveZeroMeansFromTheStartAndABadLastEventIDIsRefused() async throws {
        try await Fixture.with { f in
            let app = Application(router: f.api.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
            try await app.test(.live) { client in
                let port = try #require(client.port)
                var ids: [Int] = []
                for n in 1...2 {
                    let r = try await client.call(.post, "/v1/events", token: f.worker, json: #"{"topic":"cursor.test","payload":{"n":\#(n)}}"#)
                    ids.append(try #require(try object(r.body)["id"] as? Int))
                }
                // after=N: starts after N (N itself is not sent again).
                var stream = try RawHTTPStream(port: port, path: "/v1/events?after=\(ids[0])&topic=cursor.test", token: f.reader)
                var text = try stream.read(until: "id: \(ids[1])\n", timeout: .seconds(5))
                #expect(!text.contains("id: \(ids[0])\n"))
                stream.close()
                // after=0: from the oldest kept event.
                stream = try RawHTTPStream(port: port, path: "/v1/events?after=0&topic=cursor.test", token: f.reader)
                text = try stream.read(until: "id: \(ids[1])\n", timeout: .seconds(5))
                #expect(text.contains("id: \(ids[0])\n"))
                stream.close()
                // Last-Event-ID: the same exclusive cursor; garbage is refused.
                let bad = try await client.execute(
                    uri: "/v1/events", method: .get, headers: [.authorization: "Bearer \(f.reader)", lastEventIDName: "yesterday"])
                #expect(bad.status == .badRequest && errorCode(bad) == "invalid_last_event_id")
                let zero = try await client.execute(
                    uri: "/v1/events?after=-1", method: .get, headers: [.authorization: "Bearer \(f.reader)"])
                #expect(zero.status == .badRequest && errorCode(zero) == "invalid_cursor")
            }
        }
    }
}

let lastEventIDName = HTTPField.Name("Last-Event-ID")!
