import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import PostgresClient
@testable import RegentCore
@testable import RegentHTTP
import RegentTestSupport
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

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
            let before = try await requestEvents(f.api.pool)
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
            #expect(try await requestEvents(f.api.pool) == before)
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

    @Test func modulesAnswerSnakeCaseAuthCannotBeDisabledAndADisabledWorkflowModuleAnswers404() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let list = try #require(try parse(try await client.call(.get, "/v1/modules", token: f.reader).body) as? [[String: Any]])
                #expect(list.allSatisfy { Set($0.keys) == ["name", "version", "enabled", "updated_at"] })
                var r = try await client.call(.post, "/v1/modules/auth/disable", token: f.admin)
                #expect(r.status == .conflict && errorCode(r) == "module_required")
                r = try await client.call(.post, "/v1/modules/workflow/disable", token: f.admin)
                #expect(r.status == .ok)
                try await Task.sleep(for: .milliseconds(1100))  // the gate caches for a second
                r = try await client.call(.get, "/v1/workers", token: f.reader)
                #expect(r.status == .notFound && errorCode(r) == "module_disabled")
                r = try await client.call(
                    .post, "/v1/workers/register", token: f.worker,
                    json: #"{"namespace":"n","worker_instance_id":"w","worker_id":"x","lanes":["a"]}"#)
                #expect(r.status == .notFound && errorCode(r) == "module_disabled")
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
                // The node's bus must have taken both events in before the streams start: an event
                // whose notification is still on its way while a stream pages from the table can
                // reach that stream as a late release (docs/events.md), even at its own cursor.
                let bus = try #require(await f.node.eventBus)
                let seen = try await bus.subscribe(topics: ["cursor.test"])
                var ids: [Int] = []
                for n in 1...2 {
                    let r = try await client.call(.post, "/v1/events", token: f.worker, json: #"{"topic":"cursor.test","payload":{"n":\#(n)}}"#)
                    ids.append(try #require(try object(r.body)["id"] as? Int))
                }
                var taken: [Int64] = []
                let giveUp = Task { try await Task.sleep(for: .seconds(10)); seen.cancel() }
                for try await event in seen {
                    taken.append(event.id)
                    if event.id == Int64(ids[1]) { break }
                }
                giveUp.cancel()
                seen.cancel()
                #expect(taken == ids.map { Int64($0) })
                // after=N: starts after N (N itself is not sent again).
                var stream = try RawHTTPStream(port: port, path: "/v1/events?after=\(ids[0])&topic=cursor.test", token: f.reader)
                var text = try await stream.read(until: "id: \(ids[1])\n", timeout: .seconds(5))
                #expect(!text.contains("id: \(ids[0])\n"))
                stream.close()
                // after=0: from the oldest kept event.
                stream = try RawHTTPStream(port: port, path: "/v1/events?after=0&topic=cursor.test", token: f.reader)
                text = try await stream.read(until: "id: \(ids[1])\n", timeout: .seconds(5))
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

/// A raw loopback TCP connection that sends what it is told and can tell when the server closed it.
/// Sendable: its only state is an immutable descriptor number.
final class RawSocket: Sendable {
    let fd: Int32
    init(port: Int) throws { fd = try connectLoopback(port: port) }
    func send(_ text: String) { _ = text.withCString { Glibc.send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) } }
    /// True once the server closed the connection (a read returns 0 or an error) within `timeout`.
    func closedByServer(within timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 4096)
        while ContinuousClock.now < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 50) > 0 else { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { return true }
        }
        return false
    }
    deinit { Glibc.close(fd) }
}

@Suite("The admin API's connection limits", .serialized)
struct ConnectionLimitTests {
    @Test func silentAndTricklingConnectionsAreClosedAfterTheIdleTimeoutAndTheCapHolds() async throws {
        try await Fixture.with { f in
            let api = AdminAPI(pool: f.api.pool, node: f.node, options: .init(staleAfter: .seconds(1), idleTimeout: .seconds(1), maxConnections: 3))
            try await api.application(host: "127.0.0.1", port: 0).test(.live) { client in
                let port = try #require(client.port)
                // Five connections against a cap of three: at least two are closed at once.
                let sockets = try (0..<5).map { _ in try RawSocket(port: port) }
                try await Task.sleep(for: .milliseconds(200))
                let closedAtOnce = sockets.filter { $0.closedByServer(within: .milliseconds(100)) }.count
                #expect(closedAtOnce >= 2, "\(closedAtOnce) closed at once")
                #expect(api.connections.current <= 3)
                #expect(api.connections.refusedCount >= 2)
                // The rest: one silent, the others trickle header bytes (slowloris) but never
                // complete a request. All are closed by the 1 s idle timeout.
                for s in sockets.dropFirst() { s.send("GET /healthz HTTP/1.1\r\n") }
                for n in 0..<5 {
                    for s in sockets.dropFirst() { s.send("X-Slow-\(n): y\r\n") }
                    try await Task.sleep(for: .milliseconds(300))
                }
                #expect(try await offThePool { sockets.allSatisfy { $0.closedByServer(within: .seconds(8)) } })
                // Served again once the slots are free (the server counts a closed connection out
                // when its channel goes inactive, which a loaded machine can take a moment to do).
                #expect(await eventually { api.connections.current == 0 }, "\(api.connections.current) connections still counted")
                let fresh = try RawHTTPStream(port: port, path: "/healthz", token: nil, close: true)
                #expect(try await fresh.read(until: "ok", timeout: .seconds(20)).contains("200"))
                fresh.close()
            }
        }
    }
}

extension RawSocket {
    /// Sends `bytes` zero bytes in chunks; returns false once the peer refuses them (reset).
    func sendZeros(_ bytes: Int) -> Bool {
        let chunk = [UInt8](repeating: 0x20, count: 16_384)
        var sent = 0
        while sent < bytes {
            let n = chunk.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, min(chunk.count, bytes - sent), Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n < 0 {
                if errno == EAGAIN { usleep(10_000); continue }
                return false
            }
            sent += n
        }
        return true
    }
    func readAll(timeout: Duration) -> String {
        var out = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 50) > 0 else { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            out += buffer[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }
}

@Suite("Refused requests close their connections", .serialized)
struct RefusedConnectionTests {
    @Test func anOversizedBodyIsAnswered413AndTheSocketIsClosedNotHalfClosed() async throws {
        try await Fixture.with { f in
            try await f.api.application(host: "127.0.0.1", port: 0).test(.live) { client in
                let port = try #require(client.port)
                let s = try RawSocket(port: port)
                s.send("POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(f.worker)\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n")
                // A little of the body only, before reading (see the 401 case below).
                _ = s.sendZeros(4096)
                // Off the cooperative pool: the blocking read must not starve the in-process server.
                let answer = try await offThePool { s.readAll(timeout: .seconds(30)) }
                #expect(answer.contains("413"))
                // The client keeps sending: a fully closed socket refuses it (reset) soon.
                var refused = false
                for _ in 0..<50 where !refused {
                    refused = !s.sendZeros(65_536)
                    try await Task.sleep(for: .milliseconds(20))
                }
                #expect(refused, "the server kept reading a refused request's body")
                // The same for a body sent without a valid token: 401, then closed. (A little of the
                // body only, before reading: once the server has closed, more data in flight makes
                // its kernel answer with a reset, which can discard the 401 before it is read.)
                let u = try RawSocket(port: port)
                u.send("POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n")
                _ = u.sendZeros(4096)
                #expect(try await offThePool { u.readAll(timeout: .seconds(30)) }.contains("401"))
                var refusedToo = false
                for _ in 0..<50 where !refusedToo {
                    refusedToo = !u.sendZeros(65_536)
                    try await Task.sleep(for: .milliseconds(20))
                }
                #expect(refusedToo, "the server kept reading an unauthenticated request's body")
            }
        }
    }
}

@Suite("Request load never reaches the lock", .serialized)
struct StarvationTests {
    @Test func saturatingTheAPIForLongerThanTheLeaseWindowDeposesNobody() async throws {
        try await Fixture.with { f in
            // Pages worth encoding: 1000 audit rows.
            try await f.api.pool.query(
                """
                INSERT INTO engine.audit (actor, action, detail)
                SELECT 'load', 'load.row', jsonb_build_object('note', repeat('x', 200), 'n', g) FROM generate_series(1, 1000) g
                """)
            let elector = try #require(await f.node.leaderElector)
            #expect(await eventually { await f.node.isLeader })
            let wonBefore = await elector.electionsWon
            let termBefore = try await f.api.pool.query("SELECT term FROM engine.leadership").single().decode("term", as: Int64.self)
            // A body as expensive to read as the limits allow (256 KB of small numbers) that is
            // refused after it was read (an unknown field): CPU on the request path, no database.
            let heavy = #"{"topic":"load.t","extra":1,"payload":{"n":["# + Array(repeating: "1", count: 120_000).joined(separator: ",") + "]}}"
            let until = ContinuousClock.now + .seconds(3)  // three lease windows of the test node
            let requests = Atomic<Int>(0)
            try await f.app().test(.router) { client in
                try await withThrowingTaskGroup(of: Int.self) { group in
                    // Far more busy tasks than the cooperative pool has threads (two here): a job
                    // queued behind them waits seconds. Almost all of it is CPU on the request
                    // path (PostgreSQL stays nearly idle, so other tests' servers are not starved).
                    for worker in 0..<128 {
                        group.addTask {
                            var n = 0
                            while ContinuousClock.now < until {
                                if worker == 0 {
                                    _ = try await client.call(.get, "/v1/audit?limit=1000", token: f.reader)
                                } else {
                                    _ = try await client.call(.post, "/v1/events", token: f.worker, json: heavy)
                                }
                                n += 1
                            }
                            return n
                        }
                    }
                    for try await n in group { requests.add(n, ordering: .relaxed) }
                }
            }
            print("saturation: \(requests.load(ordering: .relaxed)) expensive requests in 3 s")
            #expect(requests.load(ordering: .relaxed) > 6)
            #expect(await f.node.isLeader)
            #expect(await elector.electionsWon == wonBefore, "the leader stepped down and was re-elected under load")
            let termAfter = try await f.api.pool.query("SELECT term FROM engine.leadership").single().decode("term", as: Int64.self)
            #expect(termAfter == termBefore)
        }
    }
}

@Suite("Database trouble reaches clients as 503", .serialized)
struct UnavailableTests {
    @Test func anExhaustedPoolAnswers503WithRetryAfterNot500() async throws {
        try await Fixture.with { f in
            let pool = ConnectionPool(configuration: f.database, options: .init(maxConnections: 1, checkoutTimeout: .milliseconds(200)))
            let api = AdminAPI(pool: pool, node: f.node, options: .init(staleAfter: .seconds(1)))
            let held = try await pool.checkout()
            try await Application(router: api.router()).test(.router) { client in
                let r = try await client.call(.get, "/v1/instances", token: f.reader)
                #expect(r.status == .serviceUnavailable)
                #expect(errorCode(r) == "pool_exhausted")
                #expect(r.headers[.retryAfter] == "1")
            }
            await pool.checkin(held)
            await pool.shutdown()
        }
    }
}
