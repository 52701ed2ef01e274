import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import PostgresClient
import Prometheus
@testable import RegentCore
@testable import RegentHTTP
import RegentTestSupport
import Testing

@Suite("Admin HTTP API against a real server", .serialized)
struct AdminAPITests {
    @Test func healthReadinessAndLeaderStatus() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let health = try await client.call(.get, "/healthz", token: nil)
                #expect(health.status == .ok)
                #expect(try object(health.body)["status"] as? String == "ok")
                let r1 = try await client.call(.get, "/readyz", token: nil)
                #expect(r1.status == .ok)
                let (leader, doc) = try await client.leaderOnceLeading(token: f.reader)
                #expect(leader.status == .ok)
                #expect(leader.headers[.contentType] == "application/json")
                #expect(doc["self_is_leader"] as? Bool == true)
                let l = try #require(doc["leader"] as? [String: Any])
                #expect(l["instance_id"] as? String == f.node.instanceID.uuidString.lowercased())
                #expect(l["node_name"] as? String == "api-node")
                #expect((doc["term"] as? Int ?? 0) >= 1)
                let instances = try await client.call(.get, "/v1/instances", token: f.reader)
                #expect((try parse(instances.body) as? [[String: Any]])?.count == 1)
                let modules = try await client.call(.get, "/v1/modules", token: f.reader)
                let list = try #require(try parse(modules.body) as? [[String: Any]])
                #expect(Set(list.compactMap { $0["name"] as? String }) == ["engine", "workflow", "auth", "vault"])
                let audit = try await client.call(.get, "/v1/audit?limit=5", token: f.reader)
                let items = try #require(try object(audit.body)["items"] as? [[String: Any]])
                #expect(items.contains { $0["action"] as? String == "leader.elected" })
            }
        }
    }

    @Test func readinessIsUnavailableWithTheReasonWhenASchemaIsBehind() async throws {
        try await Fixture.with { f in
            try await f.api.pool.query("DELETE FROM engine.migrations WHERE schema_name = 'workflow' AND version >= 4")
            try await f.app().test(.router) { client in
                let response = try await client.call(.get, "/readyz", token: nil)
                #expect(response.status == .serviceUnavailable)
                #expect(errorCode(response) == "schema_not_current")
                #expect(errorMessage(response)?.contains("workflow at 3 of ") == true)
            }
        }
    }

    @Test func leaderStatusOverARealSocket() async throws {
        try await Fixture.with { f in
            let app = Application(router: f.api.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
            try await app.test(.live) { client in
                let (response, doc) = try await client.leaderOnceLeading(token: f.reader)
                #expect(response.status == .ok)
                #expect(doc["self_is_leader"] as? Bool == true)
                #expect((doc["leader"] as? [String: Any])?["instance_id"] as? String == f.node.instanceID.uuidString.lowercased())
                // Without a token, over the socket too.
                let denied = try await client.call(.get, "/v1/leader", token: nil)
                #expect(denied.status == .unauthorized)
                #expect(denied.headers[.wwwAuthenticate] == "Bearer")
            }
        }
    }

    @Test func everyRouteDemandsItsRoleAndFailuresAreAuditedAtAModestRate() async throws {
        try await Fixture.with(authFailureLimit: 10_000) { f in
            let routes = f.api.routeTable()
            #expect(routes.count >= 20)
            let auditedBefore = try await count(f.api.pool, "engine.audit WHERE action = 'auth.failed'")
            try await f.app().test(.router) { client in
                for route in routes {
                    let method = HTTPRequest.Method(route.method)!
                    let uri = route.path.replacingOccurrences(of: "{name}", with: "workflow")
                    guard let role = route.role else {
                        // Open routes answer without a token.
                        let r = try await client.call(method, uri, token: nil)
                        #expect(r.status != .unauthorized && r.status != .forbidden, "\(route) should be open")
                        continue
                    }
                    let none = try await client.call(method, uri, token: nil)
                    #expect(none.status == .unauthorized, "\(route) without a token")
                    #expect(errorCode(none) == "unauthorized")
                    let forged = try await client.call(method, uri, token: "rgt_0123456789abcdef_" + String(repeating: "0", count: 64))
                    #expect(forged.status == .unauthorized, "\(route) with a forged token")
                    let garbage = try await client.call(method, uri, token: "not-a-token")
                    #expect(garbage.status == .unauthorized, "\(route) with garbage")
                    for weaker in TokenRole.allCases where weaker < role {
                        let r = try await client.call(method, uri, token: f.tokens[weaker])
                        #expect(r.status == .forbidden, "\(route) with a \(weaker) token")
                        #expect(errorCode(r) == "forbidden")
                    }
                    if route.path == "/v1/events" && route.method == "GET" { continue }  // a stream: see the SSE test
                    if route.path == "/v1/leader/resign" { continue }  // would hand over: see the resign test
                    for enough in TokenRole.allCases where enough >= role {
                        let r = try await client.call(method, uri, token: f.tokens[enough], json: method == .post ? "{}" : nil)
                        #expect(r.status != .unauthorized && r.status != .forbidden, "\(route) with a \(enough) token: \(r.status)")
                        #expect(errorCode(r) != "not_found", "\(route) is in the table but not served")
                    }
                }
            }
            // Dozens of failures from one address in seconds: one audit row per 10 s window, not dozens
            // (two if this loop happened to straddle a window on a slow machine).
            let audited = try await count(f.api.pool, "engine.audit WHERE action = 'auth.failed'") - auditedBefore
            #expect((1...2).contains(audited), "\(audited) rows")
            let row = try await f.api.pool.query(
                "SELECT actor, detail->>'reason' AS reason FROM engine.audit WHERE action = 'auth.failed' ORDER BY id DESC LIMIT 1").single()
            #expect(try row.decode("actor", as: String.self) == "http:unknown")
            #expect(try row.decode("reason", as: String.self) == "missing_token")
        }
    }

    @Test func aRevokedTokenStopsWorkingAndAThrottledAddressGets429() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let r2 = try await client.call(.get, "/v1/leader", token: f.reader)
                #expect(r2.status == .ok)
                let revoked = try await f.api.pool.withConnection { try await TokenStore().revoke("test-read", actor: "test", on: $0) }
                #expect(revoked)
                let r3 = try await client.call(.get, "/v1/leader", token: f.reader)
                #expect(r3.status == .unauthorized)
                // Keep failing from the same address: after the limit, 429 with Retry-After for
                // anything but a valid token; a valid token still passes (no lock-out of the
                // other clients behind the same address).
                for _ in 0..<50 { _ = try await client.call(.get, "/v1/leader", token: "nope") }
                let throttled = try await client.call(.get, "/v1/leader", token: "nope")
                #expect(throttled.status == .tooManyRequests)
                #expect(errorCode(throttled) == "too_many_auth_failures")
                let retryAfter = try #require(throttled.headers[.retryAfter].flatMap { Int($0) })
                #expect((1...10).contains(retryAfter))
                let anonymous = try await client.call(.get, "/v1/leader", token: nil)
                #expect(anonymous.status == .tooManyRequests)
                let good = try await client.call(.get, "/v1/leader", token: f.admin)
                #expect(good.status == .ok)
                // Counted and audited (one row per address per window).
                let counted = await f.api.authFailures.throttledCount("unknown")
                // The revoked token and 49 of the loop filled the window; the 50th, "nope" and the anonymous one were refused.
                #expect(counted == 3, "\(counted)")  // the router test client has no address
                let metrics = try await client.call(.get, "/metrics", token: nil)
                #expect(String(buffer: metrics.body).contains("regent_http_throttled_total 3"), "\(String(buffer: metrics.body).split(separator: "\n").filter { $0.contains("throttled") })")
            }
            #expect(try await f.api.pool.query("SELECT count(*) AS n FROM engine.audit WHERE action = 'auth.throttled'").single().decode("n", as: Int.self) == 1)
        }
    }

    @Test func metricsAreOpenByDefaultAndCanRequireAToken() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let r = try await client.call(.get, "/metrics", token: nil)
                #expect(r.status == .ok)
                #expect(r.headers[.contentType]?.hasPrefix("text/plain") == true)
                let text = String(buffer: r.body)
                for name in ["regent_is_leader", "regent_leader_term", "regent_elections_total", "regent_heartbeat_failures_total",
                             "regent_instances", "regent_events_published_total", "regent_events_delivered_total",
                             "regent_event_lag_seconds", "regent_events_late_total", "regent_event_gaps",
                             "regent_event_listener_reconnects_total", "regent_leases_reclaimed_total", "regent_stale_instances_swept_total",
                             "regent_run_wakeups_fired_total", "regent_run_wakeups_overdue_seconds",
                             "regent_db_pool_connections", "regent_db_pool_waiters", "regent_db_pool_max_connections"] {
                    #expect(text.contains(name), "missing \(name)")
                }
                #expect(text.contains("regent_is_leader 1"))
                #expect(text.contains("regent_elections_total 1"))
                #expect(text.contains(#"regent_instances{state="live"} 1"#))
            }
        }
        try await Fixture.with(metricsRequireToken: true) { f in
            try await f.app().test(.router) { client in
                let r4 = try await client.call(.get, "/metrics", token: nil)
                #expect(r4.status == .unauthorized)
                let r5 = try await client.call(.get, "/metrics", token: f.reader)
                #expect(r5.status == .ok)
            }
        }
    }

    @Test func badBodiesAndParametersGetClearErrorsAndChangeNothing() async throws {
        try await Fixture.with { f in
            let eventsBefore = try await requestEvents(f.api.pool)
            let workersBefore = try await count(f.api.pool, "workflow.workers")
            try await f.app().test(.router) { client in
                func expect(_ r: TestResponse, _ status: HTTPResponse.Status, _ code: String, mentions: String? = nil,
                            sourceLocation: SourceLocation = #_sourceLocation) {
                    #expect(r.status == status, sourceLocation: sourceLocation)
                    #expect(errorCode(r) == code, "\(errorMessage(r) ?? "")", sourceLocation: sourceLocation)
                    if let mentions { #expect(errorMessage(r)?.contains(mentions) == true, "\(errorMessage(r) ?? "")", sourceLocation: sourceLocation) }
                }
                expect(try await client.call(.post, "/v1/events", token: f.worker, json: "{not json"), .badRequest, "malformed_json")
                expect(try await client.call(.post, "/v1/events", token: f.worker, json: "[1]"), .badRequest, "invalid_body")
                expect(try await client.call(.post, "/v1/events", token: f.worker, json: #"{"topic":"a.b","payload":{},"extra":1}"#),
                       .badRequest, "unknown_field", mentions: "\"extra\"")
                expect(try await client.call(.post, "/v1/events", token: f.worker, json: #"{"topic":7,"payload":{}}"#),
                       .badRequest, "invalid_field", mentions: "\"topic\"")
                expect(try await client.call(.post, "/v1/events", token: f.worker, json: #"{"payload":{}}"#),
                       .badRequest, "missing_field", mentions: "\"topic\"")
                expect(try await client.call(.post, "/v1/events", token: f.worker, json: #"{"topic":"bad topic!","payload":{}}"#),
                       .badRequest, "invalid_input", mentions: "topic")
                expect(try await client.call(.post, "/v1/events", token: f.worker, json: #"{"topic":"a.b","payload":{}}"#, contentType: "text/plain"),
                       .unsupportedMediaType, "unsupported_media_type")
                let huge = #"{"topic":"a.b","payload":{"x":""# + String(repeating: "y", count: AdminAPI.maxBodyBytes) + #""}}"#
                expect(try await client.call(.post, "/v1/events", token: f.worker, json: huge), .contentTooLarge, "body_too_large")
                expect(try await client.call(.post, "/v1/workers/register", token: f.worker,
                                             json: #"{"namespace":"ns","worker_instance_id":"w\u0001","worker_id":"w","lanes":["a"]}"#),
                       .badRequest, "invalid_input", mentions: "worker instance id")
                expect(try await client.call(.post, "/v1/workers/register", token: f.worker,
                                             json: #"{"namespace":"ns","worker_instance_id":"w1","worker_id":"w","lanes":"a"}"#),
                       .badRequest, "invalid_field", mentions: "\"lanes\"")
                expect(try await client.call(.post, "/v1/leases/claim", token: f.worker,
                                             json: #"{"namespace":"ns","worker_instance_id":"w1","lanes":["a"],"limit":true}"#),
                       .badRequest, "invalid_field", mentions: "\"limit\"")
                expect(try await client.call(.post, "/v1/leases/renew", token: f.worker, json: #"{"execution_id":"nope","lease_epoch":1}"#),
                       .badRequest, "invalid_field", mentions: "\"execution_id\"")
                for uri in ["/v1/audit?limit=0", "/v1/audit?limit=abc", "/v1/audit?after=-1", "/v1/workers?after=nonsense",
                            "/v1/workers?namespace=bad%20ns", "/v1/leases/expired?after=yesterday,x", "/v1/leases/expired?limit=5000"] {
                    let r = try await client.call(.get, uri, token: f.reader)
                    #expect(r.status == .badRequest, "\(uri)")
                    #expect(errorMessage(r)?.isEmpty == false)
                }
                expect(try await client.call(.post, "/v1/modules/nosuch/enable", token: f.admin), .notFound, "unknown_module")
                expect(try await client.call(.post, "/v1/modules/Bad-Name/enable", token: f.admin), .badRequest, "invalid_module_name")
                expect(try await client.call(.get, "/no/such/route", token: nil), .notFound, "not_found")
            }
            #expect(try await requestEvents(f.api.pool) == eventsBefore)
            #expect(try await count(f.api.pool, "workflow.workers") == workersBefore)
        }
    }

    @Test func workersRegisterClaimRenewCompleteAndFailOverHTTP() async throws {
        try await Fixture.with { f in
            let store = LeaseStore()
            let ids = try await f.api.pool.withConnection { conn in
                [try await store.enqueue(namespace: Namespace("ns"), lane: Lane("default"), payload: #"{"n":1}"#, maxAttempts: 2, on: conn),
                 try await store.enqueue(namespace: Namespace("ns"), lane: Lane("default"), payload: #"{"n":2}"#, maxAttempts: 1, on: conn)]
            }
            try await f.app().test(.router) { client in
                let register = #"{"namespace":"ns","worker_instance_id":"w-1","worker_id":"py-worker","lanes":["default"],"capabilities":["gpu"],"liveness_ttl_ms":5000}"#
                let r1 = try await client.call(.post, "/v1/workers/register", token: f.worker, json: register)
                #expect(r1.status == .created)
                #expect(try object(r1.body)["registration"] as? String == "registered")
                let r2 = try await client.call(.post, "/v1/workers/register", token: f.worker, json: register)
                #expect(r2.status == .ok)
                #expect(try object(r2.body)["registration"] as? String == "refreshed")
                let hb = try await client.call(.post, "/v1/workers/heartbeat", token: f.worker, json: #"{"namespace":"ns","worker_instance_id":"w-1"}"#)
                #expect(hb.status == .ok)
                #expect(try object(hb.body)["expires_at"] is String)
                let unknown = try await client.call(.post, "/v1/workers/heartbeat", token: f.worker, json: #"{"namespace":"ns","worker_instance_id":"ghost"}"#)
                #expect(unknown.status == .notFound)
                #expect(errorCode(unknown) == "not_registered")

                let listed = try await client.call(.get, "/v1/workers?namespace=ns", token: f.reader)
                let workers = try #require(try object(listed.body)["items"] as? [[String: Any]])
                #expect(workers.map { $0["worker_instance_id"] as? String } == ["w-1"])

                let claimed = try await client.call(
                    .post, "/v1/leases/claim", token: f.worker,
                    json: #"{"namespace":"ns","worker_instance_id":"w-1","lanes":["default"],"capabilities":["gpu"],"lease_ms":5000,"limit":2}"#)
                #expect(claimed.status == .ok)
                let leases = try #require(try object(claimed.body)["leases"] as? [[String: Any]])
                #expect(leases.count == 2)
                #expect(Set(leases.compactMap { $0["execution_id"] as? String }) == Set(ids.map { $0.uuidString.lowercased() }))
                #expect(leases.allSatisfy { ($0["payload"] as? [String: Any])?["n"] != nil })
                let first = try #require(leases.first { $0["execution_id"] as? String == ids[0].uuidString.lowercased() })
                let second = try #require(leases.first { $0["execution_id"] as? String == ids[1].uuidString.lowercased() })
                let epoch1 = try #require(first["lease_epoch"] as? Int)
                let epoch2 = try #require(second["lease_epoch"] as? Int)

                let renewed = try await client.call(
                    .post, "/v1/leases/renew", token: f.worker, json: #"{"execution_id":"\#(ids[0])","lease_epoch":\#(epoch1),"lease_ms":8000}"#)
                #expect(renewed.status == .ok)
                let stale = try await client.call(
                    .post, "/v1/leases/renew", token: f.worker, json: #"{"execution_id":"\#(ids[0])","lease_epoch":\#(epoch1 + 7)}"#)
                #expect(stale.status == .conflict)
                #expect(errorCode(stale) == "stale_lease")
                let done = try await client.call(
                    .post, "/v1/leases/complete", token: f.worker, json: #"{"execution_id":"\#(ids[0])","lease_epoch":\#(epoch1),"result":{"ok":true}}"#)
                #expect(done.status == .ok)
                #expect(try object(done.body)["state"] as? String == "completed")
                // The same completion again (its answer lost, say): it counted, and nothing changes.
                let again = try await client.call(
                    .post, "/v1/leases/complete", token: f.worker, json: #"{"execution_id":"\#(ids[0])","lease_epoch":\#(epoch1)}"#)
                #expect(again.status == .ok)
                #expect(try object(again.body)["state"] as? String == "already_completed")
                // Another worker instance sending it is not told that its work counted.
                let other = try await client.call(
                    .post, "/v1/leases/complete", token: f.worker,
                    json: #"{"execution_id":"\#(ids[0])","lease_epoch":\#(epoch1),"worker_instance_id":"w-2"}"#)
                #expect(other.status == .conflict)
                #expect(errorCode(other) == "stale_lease")
                let failed = try await client.call(
                    .post, "/v1/leases/fail", token: f.worker,
                    json: #"{"execution_id":"\#(ids[1])","lease_epoch":\#(epoch2),"error":"boom","retryable":true}"#)
                #expect(failed.status == .ok)
                #expect(try object(failed.body)["state"] as? String == "dead_lettered")  // max_attempts 1
                let expired = try await client.call(.get, "/v1/leases/expired?namespace=ns", token: f.reader)
                #expect(expired.status == .ok)
                #expect((try object(expired.body)["items"] as? [Any])?.isEmpty == true)
            }
            let states = try await f.api.pool.query(
                "SELECT state FROM workflow.executions WHERE namespace = 'ns' ORDER BY state").map { try $0.decode("state", as: String.self) }
            #expect(states == ["completed", "dead_lettered"])
        }
    }

    @Test func aDrainingNodeTakesNoClaims() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let register = #"{"namespace":"ns","worker_instance_id":"w-1","worker_id":"w","lanes":["default"]}"#
                let registered = try await client.call(.post, "/v1/workers/register", token: f.worker, json: register)
                #expect(registered.status == .created)
                await f.node.shutdown()  // SIGTERM does this
                let claim = #"{"namespace":"ns","worker_instance_id":"w-1","lanes":["default"]}"#
                let r = try await client.call(.post, "/v1/leases/claim", token: f.worker, json: claim)
                #expect(r.status == .serviceUnavailable)
                #expect(errorCode(r) == "draining")
            }
        }
    }

    @Test func modulesAreToggledThroughTheAPIAndAudited() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let off = try await client.call(.post, "/v1/modules/workflow/disable", token: f.admin)
                #expect(off.status == .ok)
                #expect(try object(off.body)["enabled"] as? Bool == false)
                let on = try await client.call(.post, "/v1/modules/workflow/enable", token: f.admin)
                #expect(try object(on.body)["enabled"] as? Bool == true)
            }
            let actors = try await f.api.pool.query(
                "SELECT actor, action FROM engine.audit WHERE action LIKE 'module.%' ORDER BY id"
            ).map { "\(try $0.decode("action", as: String.self)) by \(try $0.decode("actor", as: String.self))" }
            #expect(actors.suffix(2) == ["module.disabled by token:test-admin", "module.enabled by token:test-admin"])
        }
    }

    @Test func eventsPublishedOverHTTPArriveOnTheServerSentEventStream() async throws {
        try await Fixture.with { f in
            let app = Application(router: f.api.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
            try await app.test(.live) { client in
                let port = try #require(client.port)
                let published = try await client.call(.post, "/v1/events", token: f.worker, json: #"{"topic":"orders.created","payload":{"order":1}}"#)
                #expect(published.status == .created)
                let firstID = try #require(try object(published.body)["id"] as? Int)
                // A raw socket reads the open-ended stream from just before that event.
                let stream = try RawHTTPStream(port: port, path: "/v1/events?after=\(firstID - 1)&topic=orders.created", token: f.reader)
                defer { stream.close() }
                let second = try await client.call(.post, "/v1/events", token: f.worker, json: #"{"topic":"orders.created","payload":{"order":2}}"#)
                let secondID = try #require(try object(second.body)["id"] as? Int)
                _ = try await client.call(.post, "/v1/events", token: f.worker, json: #"{"topic":"other.topic","payload":{}}"#)
                let text = try await stream.read(until: "id: \(secondID)\n", timeout: .seconds(5))
                #expect(text.contains("HTTP/1.1 200"))
                #expect(text.lowercased().contains("content-type: text/event-stream"))
                #expect(text.contains("id: \(firstID)\nevent: orders.created\ndata: {"))
                #expect(text.contains(#""payload":{"order": 2}"#))  // the stored jsonb text, as PostgreSQL writes it
                #expect(!text.contains("other.topic"))
                // Reading without a token is refused before any stream starts.
                let denied = try await client.call(.get, "/v1/events", token: nil)
                #expect(denied.status == .unauthorized)
            }
        }
    }

    @Test func resignThroughTheAPIHandsOverAndMovesTheMetrics() async throws {
        try await Fixture.with { f in
            // A second node, with its own metrics, to take over.
            let registry = PrometheusCollectorRegistry()
            let standby = RegentNode(configuration: fastNode(f.database, name: "standby"), metrics: AdminAPI.nodeMetrics(registry: registry))
            let task = Task { try await standby.run() }
            #expect(await eventually { await standby.membershipService != nil })
            let standbyAPI = AdminAPI(pool: f.api.pool, node: standby, registry: registry)
            func metrics(_ api: AdminAPI) async throws -> String {
                try await Application(router: api.router()).test(.router) { client in
                    String(buffer: try await client.call(.get, "/metrics", token: nil).body)
                }
            }
            #expect(try await metrics(standbyAPI).contains("regent_elections_total 0"))
            try await f.app().test(.router) { client in
                let r6 = try await client.call(.post, "/v1/leader/resign", token: f.admin)
                #expect(r6.status == .accepted)
            }
            #expect(await eventually { await standby.isLeader })
            let after = try await metrics(standbyAPI)
            #expect(after.contains("regent_elections_total 1"))
            #expect(after.contains("regent_is_leader 1"))
            #expect(after.contains("regent_failover_seconds_count 1"))
            #expect(try await metrics(f.api).contains("regent_is_leader 0"))
            // Now the first node is a follower: resigning there is a conflict naming the leader.
            try await f.app().test(.router) { client in
                let r = try await client.call(.post, "/v1/leader/resign", token: f.admin)
                #expect(r.status == .conflict)
                #expect(errorCode(r) == "not_leader")
                #expect(errorMessage(r)?.contains("standby") == true)
            }
            await standby.shutdown()
            _ = try? await task.value
        }
    }
}
