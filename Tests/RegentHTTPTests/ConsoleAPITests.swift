import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import PostgresClient
@testable import RegentCore
@testable import RegentHTTP
import RegentTestSupport
import Testing

/// What the browser console stands on: its files and headers, and the API it reads
/// (whoami, cluster, queues, leases, decisions, migrations, filtered runs, mark-dead).
/// The console itself is driven in a real Chromium by scripts/console-test.sh.
@Suite("The console's files and API", .serialized)
struct ConsoleAPITests {
    @Test func theConsoleIsServedWithAStrictPolicyAndNoSecrets() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let root = try await client.call(.get, "/", token: nil)
                #expect(root.status == .found && root.headers[.location] == "/console/")
                let bare = try await client.call(.get, "/console", token: nil)
                #expect(bare.status == .found && bare.headers[.location] == "/console/")
                let page = try await client.call(.get, "/console/", token: nil)
                #expect(page.status == .ok)
                #expect(page.headers[.contentType] == "text/html; charset=utf-8")
                let csp = try #require(page.headers[.contentSecurityPolicy])
                for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "form-action 'none'"] {
                    #expect(csp.contains(directive), "\(directive) in \(csp)")
                }
                #expect(!csp.contains("unsafe"))
                #expect(page.headers[.xContentTypeOptions] == "nosniff")
                let html = String(buffer: page.body)
                // No inline script or style: every script and sheet is a file of this origin.
                #expect(!html.contains("<script>") && !html.contains("style=") && html.contains(#"<script src="app.js" defer></script>"#))
                let script = try await client.call(.get, "/console/app.js", token: nil)
                #expect(script.status == .ok && script.headers[.contentType] == "text/javascript; charset=utf-8")
                #expect(!String(buffer: script.body).contains("innerHTML"), "the console writes text, never markup, from API data")
                let etag = try #require(script.headers[.eTag])
                var headers = HTTPFields()
                headers[.ifNoneMatch] = etag
                let again = try await client.execute(uri: "/console/app.js", method: .get, headers: headers)
                #expect(again.status == .notModified)
                for bad in ["/console/nope.js", "/console/..%2fPackage.swift", "/console/%2e%2e"] {
                    let r = try await client.call(.get, bad, token: nil)
                    #expect(r.status == .notFound, "\(bad)")
                }
            }
        }
    }

    @Test func whoamiMigrationsAndTheClusterReadSharedByEveryViewer() async throws {
        try await Fixture.with { f in
            try await f.app().test(.router) { client in
                let me = try object(try await client.call(.get, "/v1/whoami", token: f.reader).body)
                #expect(me["role"] as? String == "read" && me["name"] as? String == "test-read")
                #expect(me["instance_id"] as? String == f.node.instanceID.uuidString.lowercased())
                let scoped = try await f.api.pool.withConnection {
                    try await TokenStore().create(
                        name: "tenant", role: .worker, scope: try TokenScope(namespace: Namespace("tenant-a"), lanes: [Lane("mail")]), actor: "test", on: $0).1
                }
                let tenant = try object(try await client.call(.get, "/v1/whoami", token: scoped).body)
                #expect(tenant["namespace"] as? String == "tenant-a" && tenant["lanes"] as? [String] == ["mail"])

                let schemas = try #require(try object(try await client.call(.get, "/v1/migrations", token: f.reader).body)["schemas"] as? [[String: Any]])
                #expect(Set(schemas.compactMap { $0["schema"] as? String }) == ["engine", "workflow", "auth", "vault"])
                #expect(schemas.allSatisfy { $0["current"] as? Bool == true })

                // Many viewers at once: one database read between them.
                let readsBefore = await f.api.sharedCluster.reads
                try await withThrowingTaskGroup(of: Int.self) { group in
                    for _ in 0..<40 { group.addTask { try await client.call(.get, "/v1/cluster", token: f.reader).status.code } }
                    for try await code in group { #expect(code == 200) }
                }
                let reads = await f.api.sharedCluster.reads - readsBefore
                #expect((1...2).contains(reads), "40 concurrent requests made \(reads) reads")
                let doc = try object(try await client.call(.get, "/v1/cluster", token: f.reader).body)
                #expect(doc["self_instance_id"] as? String == f.node.instanceID.uuidString.lowercased())
                let terms = try #require(doc["terms"] as? [[String: Any]])
                #expect(terms.first?["after"] as? String == "fresh" && terms.first?["term"] as? Int == doc["term"] as? Int)

                // A resignation: the next term says it began after one, and how long nobody led.
                let term = try #require(doc["term"] as? Int)
                #expect(try await client.call(.post, "/v1/leader/resign", token: f.admin).status == .accepted)
                #expect(await eventually(timeout: .seconds(20)) {
                    let d = try object(try await client.call(.get, "/v1/cluster", token: f.reader).body)
                    return (d["term"] as? Int ?? 0) > term
                })
                let after = try #require(try object(try await client.call(.get, "/v1/cluster", token: f.reader).body)["terms"] as? [[String: Any]])
                #expect(after[0]["term"] as? Int == term + 1 && after[0]["after"] as? String == "resignation")
                let leaderless = try #require(after[0]["leaderless_ms"] as? Double)
                #expect(leaderless >= 0 && leaderless < 10_000)
                #expect(after[1]["ended"] as? String == "resigned" && after[1]["ended_at"] is String)
            }
        }
    }

    /// The console's live views poll nothing: the event stream carries the cluster, the queues
    /// and a run's page every 2 s, read once for every viewer of the node.
    @Test func theStreamCarriesSharedSnapshotsToEveryViewer() async throws {
        try await Fixture.with { f in
            let p = try PackageFixture(files: ["workflow.json": PackageFixture.manifest(type: "flow", steps: [#"{"name": "only", "lane": "l"}"#])])
            defer { p.remove() }
            let contents = try PackageContents(path: p.directory.path, limits: .default)
            _ = try await f.api.pool.withConnection { try await PackageStore().deploy(contents, actor: .named("test"), on: $0) }
            let app = Application(router: f.api.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
            try await app.test(.live) { client in
                let port = try #require(client.port)
                let started = try object(try await client.call(.post, "/v1/runs", token: f.worker, json: #"{"workflow_type":"flow"}"#).body)
                let runID = try #require(started["run_id"] as? String)
                let before = await f.api.sharedCluster.reads
                var streams: [RawHTTPStream] = []
                defer { for s in streams { s.close() } }
                for _ in 0..<10 {
                    streams.append(try RawHTTPStream(port: port, path: "/v1/events?snapshot=cluster&snapshot=queues&snapshot=run:\(runID)", token: f.reader))
                }
                var texts: [String] = []
                for stream in streams { texts.append(try await stream.read(until: "event: snapshot.run\n", timeout: .seconds(10))) }
                for text in texts {
                    #expect(text.contains("event: snapshot.cluster\ndata: {") && text.contains("event: snapshot.queues\ndata: {"))
                    #expect(text.contains(#""run_id":"\#(runID)""#) && text.contains(#""workflow_type":"flow""#))
                }
                // The second round, 2 s later, shows the run's step claimed: without any request.
                let register = #"{"namespace":"runs","worker_instance_id":"w-1","worker_id":"w","lanes":["l"],"liveness_ttl_ms":30000}"#
                #expect(try await client.call(.post, "/v1/workers/register", token: f.worker, json: register).status == .created)
                _ = try await client.call(.post, "/v1/leases/claim", token: f.worker, json: #"{"namespace":"runs","worker_instance_id":"w-1","lanes":["l"]}"#)
                let later = try await streams[0].read(until: #""worker":"w-1""#, timeout: .seconds(10))
                #expect(later.contains(#""state":"running""#))
                // Ten viewers, two rounds each: the cluster was read a handful of times, not twenty.
                let reads = await f.api.sharedCluster.reads - before
                #expect(reads <= 4, "\(reads) cluster reads for 10 streams")
                for bad in ["snapshot=everything", "snapshot=run:nope", "snapshot=cluster&snapshot=queues&snapshot=run:run_00000000000000000000000000&snapshot=run:run_00000000000000000000000001"] {
                    let r = try await client.call(.get, "/v1/events?\(bad)", token: f.reader)
                    #expect(r.status == .badRequest && errorCode(r) == "invalid_snapshot", "\(bad)")
                }
            }
        }
    }

    @Test func leasesQueuesDecisionsAndAnAdminsMarkDead() async throws {
        try await Fixture.with { f in
            let p = try PackageFixture(files: ["workflow.json": PackageFixture.manifest(type: "flow", steps: [#"{"name": "only", "lane": "l"}"#])])
            defer { p.remove() }
            let contents = try PackageContents(path: p.directory.path, limits: .default)
            _ = try await f.api.pool.withConnection { try await PackageStore().deploy(contents, actor: .named("test"), on: $0) }
            try await f.app().test(.router) { client in
                let started = try object(try await client.call(.post, "/v1/runs", token: f.worker, json: #"{"workflow_type":"flow"}"#).body)
                let runID = try #require(started["run_id"] as? String)
                _ = try await client.call(.post, "/v1/runs", token: f.worker, json: #"{"workflow_type":"flow"}"#)
                let register = #"{"namespace":"runs","worker_instance_id":"w-1","worker_id":"w","lanes":["l"],"liveness_ttl_ms":30000}"#
                #expect(try await client.call(.post, "/v1/workers/register", token: f.worker, json: register).status == .created)
                let claim = #"{"namespace":"runs","worker_instance_id":"w-1","lanes":["l"],"lease_ms":5000}"#
                let lease = try #require((try object(try await client.call(.post, "/v1/leases/claim", token: f.worker, json: claim).body)["leases"] as? [[String: Any]])?.first)

                let leases = try #require(try object(try await client.call(.get, "/v1/leases", token: f.reader).body)["items"] as? [[String: Any]])
                #expect(leases.count == 1)
                #expect(leases[0]["execution_id"] as? String == lease["execution_id"] as? String)
                #expect(leases[0]["run_id"] as? String == lease["run_id"] as? String && leases[0]["step"] as? String == "only")
                #expect(leases[0]["worker_instance_id"] as? String == "w-1" && leases[0]["lease_ms"] as? Int == 5000)
                let bad = try await client.call(.get, "/v1/leases?after=yesterday", token: f.reader)
                #expect(bad.status == .badRequest && errorCode(bad) == "invalid_cursor")

                // The run page: the running step's lease expiry, and the database clock to count down from.
                let shown = try object(try await client.call(.get, "/v1/runs/\(lease["run_id"] as? String ?? runID)", token: f.reader).body)
                let step = try #require((shown["steps"] as? [[String: Any]])?.first)
                #expect(step["state"] as? String == "running" && step["lease_expires_at"] is String && shown["read_at"] is String)
                let attempts = try #require(step["attempt_history"] as? [[String: Any]])
                #expect(attempts.count == 1 && attempts[0]["worker"] as? String == "w-1" && attempts[0]["state"] as? String == "leased")
                #expect(attempts[0]["lease_epoch"] as? Int == lease["lease_epoch"] as? Int && attempts[0]["ended_at"] is NSNull)

                let queues = try #require(try object(try await client.call(.get, "/v1/queues", token: f.reader).body)["lanes"] as? [[String: Any]])
                let lane = try #require(queues.first { $0["namespace"] as? String == "runs" && $0["lane"] as? String == "l" })
                #expect(lane["ready"] as? Int == 1 && lane["running"] as? Int == 1 && lane["expired"] as? Int == 0)
                #expect(lane["oldest_ready_age_ms"] is Int)

                // Marking dead: admin only, audited, and the worker's claims are refused after it.
                let body = #"{"namespace":"runs","worker_instance_id":"w-1","reason":"host lost"}"#
                let refused = try await client.call(.post, "/v1/workers/mark-dead", token: f.worker, json: body)
                #expect(refused.status == .forbidden)
                let marked = try await client.call(.post, "/v1/workers/mark-dead", token: f.admin, json: body)
                #expect(marked.status == .ok, "\(String(buffer: marked.body))")
                let twice = try await client.call(.post, "/v1/workers/mark-dead", token: f.admin, json: body)
                #expect(twice.status == .notFound && errorCode(twice) == "not_registered")
                let control = try await client.call(.post, "/v1/workers/mark-dead", token: f.admin, json: #"{"namespace":"runs","worker_instance_id":"w-1","reason":"a\u0007b"}"#)
                #expect(control.status == .badRequest)
                #expect(try await client.call(.post, "/v1/leases/claim", token: f.worker, json: claim).status == .notFound)
                // Its lease expired at the mark, not at the end of its time: the next scan reclaims it.
                let dead = try #require((try object(try await client.call(.get, "/v1/leases", token: f.reader).body)["items"] as? [[String: Any]])?.first)
                let expiresText = try #require(dead["lease_expires_at"] as? String), readText = try #require(dead["read_at"] as? String)
                let expiresAt = try #require(AdminAPI.parseInstant(expiresText)), readAt = try #require(AdminAPI.parseInstant(readText))
                #expect(expiresAt <= readAt)
                let audit = try await f.api.pool.query(
                    "SELECT actor, detail ->> 'reason' AS reason FROM engine.audit WHERE action = 'worker.marked_dead'").single()
                #expect(try audit.decode("actor", as: String.self) == "token:test-admin" && audit.decode("reason", as: String.self) == "host lost")

                // The leader's scan reclaims the dead worker's lease: its decision is listed, newest first.
                #expect(await eventually(timeout: .seconds(20)) {
                    let d = try object(try await client.call(.get, "/v1/leases/decisions", token: f.reader).body)
                    return (d["items"] as? [[String: Any]])?.first?["execution_id"] as? String == lease["execution_id"] as? String
                })
                let decision = try #require((try object(try await client.call(.get, "/v1/leases/decisions?limit=1", token: f.reader).body)["items"] as? [[String: Any]])?.first)
                #expect(decision["decision"] as? String == "requeued" && decision["step"] as? String == "only" && decision["term"] is Int)
            }
        }
    }

    @Test func runsAreFilteredByVersionKeyAndTimeAndBadFiltersAreRefused() async throws {
        try await Fixture.with { f in
            var deployed: [String] = []
            for description in ["one", "two"] {
                let p = try PackageFixture(files: ["workflow.json": #"{"workflow_type":"flow","description":"\#(description)","steps":[{"name":"s","lane":"l"}]}"#])
                defer { p.remove() }
                let contents = try PackageContents(path: p.directory.path, limits: .default)
                deployed.append(try await f.api.pool.withConnection { try await PackageStore().deploy(contents, actor: .named("test"), on: $0) }.contentHash)
            }
            let hashes = deployed
            try await f.app().test(.router) { client in
                let canary = try object(try await client.call(
                    .post, "/v1/runs", token: f.admin, json: #"{"workflow_type":"flow","version":"\#(hashes[0])","idempotency_key":"canary-1"}"#).body)
                let middle = Date()
                try await Task.sleep(for: .milliseconds(20))
                let routed = try object(try await client.call(.post, "/v1/runs", token: f.worker, json: #"{"workflow_type":"flow","idempotency_key":"k-2"}"#).body)
                func ids(_ query: String) async throws -> [String] {
                    let r = try await client.call(.get, "/v1/runs?\(query)", token: f.reader)
                    #expect(r.status == .ok, "\(query): \(String(buffer: r.body))")
                    return (try object(r.body)["runs"] as? [[String: Any]] ?? []).compactMap { $0["run_id"] as? String }
                }
                #expect(try await ids("version=\(hashes[0])") == [canary["run_id"] as? String])
                #expect(try await ids("version=\(hashes[1])&state=running") == [routed["run_id"] as? String])
                #expect(try await ids("type=flow&idempotency_key=k-2") == [routed["run_id"] as? String])
                #expect(try await ids("idempotency_key=canary-1") == [canary["run_id"] as? String])
                let instant = ISO8601DateFormatter.string(from: middle, timeZone: .gmt, formatOptions: [.withInternetDateTime, .withFractionalSeconds])
                #expect(try await ids("started_after=\(instant)") == [routed["run_id"] as? String])
                #expect(try await ids("started_before=\(instant)&type=flow") == [canary["run_id"] as? String])
                for (query, code) in [
("version=abc", "invalid_input"), ("started_after=yesterday", "invalid_started_after"),
                    ("type=flow&idempotency_key=%07", "invalid_input"),
                ] {
                    let r = try await client.call(.get, "/v1/runs?\(query)", token: f.reader)
                    #expect(r.status == .badRequest && errorCode(r) == code, "\(query): \(String(buffer: r.body))")
                }
                let audit = try await client.call(.get, "/v1/audit?before=9223372036854775807&limit=3", token: f.reader)
                let items = try #require(try object(audit.body)["items"] as? [[String: Any]])
                let auditIDs = items.compactMap { $0["id"] as? Int }
                #expect(auditIDs.count == 3 && auditIDs == auditIDs.sorted(by: >))
                // Both cursors: a window, newest first.
                let window = try #require(try object(try await client.call(.get, "/v1/audit?before=\(auditIDs[0])&after=\(auditIDs[2])", token: f.reader).body)["items"] as? [[String: Any]])
                #expect(window.compactMap { $0["id"] as? Int } == [auditIDs[1]])
                #expect(try await ids("started_after=2026-12-06T10:00:00Z&started_before=2026-12-06T09:00:00Z").isEmpty)
            }
        }
    }

    /// A follower waiting for the leadership lock must not hold up an online index build
    /// (CREATE INDEX CONCURRENTLY waits for every older snapshot, and a waiting statement holds
    /// one): the follower waits in rounds, so the leader's build finishes with the follower up.
    @Test func theLeaderBuildsAnOnlineIndexWhileAFollowerWaitsForTheLock() async throws {
        try await Fixture.with { f in
            let follower = RegentNode(configuration: fastNode(f.database, name: "follower"))
            let task = Task { try await follower.run() }
            defer { task.cancel() }
            #expect(await eventually { await follower.membershipService != nil })
            // The follower's session is now blocked in its wait for the lock.
            #expect(await eventually(timeout: .seconds(10)) {
                try await f.api.pool.query(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND datname = current_database()"
                ).single().decode("n", as: Int.self) >= 1
            })
            // The leader builds the online indexes after the migrations the fixture waited for:
            // wait until this one is built and valid (dropping it mid-build is a catalog race).
            #expect(await eventually(timeout: .seconds(30)) {
                try await f.api.pool.query(
                    "SELECT coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('workflow.runs_state_listing_idx')), false) AS ok"
                ).single().decode("ok", as: Bool.self)
            })
            try await f.api.pool.query("DROP INDEX workflow.runs_state_listing_idx")
            #expect(await eventually(timeout: .seconds(20)) {
                try await f.api.pool.query(
                    "SELECT coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('workflow.runs_state_listing_idx')), false) AS ok"
                ).single().decode("ok", as: Bool.self)
            }, "the leader's online build did not finish while a follower waited")
            #expect(await f.node.isLeader)
            await follower.shutdown()
            _ = try? await task.value
        }
    }

    /// The runs list walks an index in its order for every filter, however many runs there are:
    /// the plan, on a table of 30,000 runs, reads by index and sorts nothing.
    @Test func everyRunsListingWalksAnIndex() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
        _ = try await MigrationRunner(appliedBy: "test").migrate(on: conn, schemas: ["engine", "workflow"])
        // The listing indexes are built online, after the migrations, as the leader does.
        // (the five listing indexes, the lane-limit count index of sql/workflow/0018 and the
        // unload rule's child index of 0020)
        #expect(try await OnlineIndexes.ensure(schemas: ["engine", "workflow"], on: conn).count == 7)
        #expect(try await OnlineIndexes.ensure(schemas: ["engine", "workflow"], on: conn).isEmpty)
        // A build that died leaves an invalid index: the next pass drops and rebuilds it.
        try await conn.query("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'workflow.runs_state_listing_idx'::regclass")
        #expect(try await OnlineIndexes.ensure(schemas: ["workflow"], on: conn) == ["workflow.runs_state_listing_idx"])
        let hash = String(repeating: "a", count: 64)
        try await conn.query(
            """
            INSERT INTO workflow.runs (run_id, workflow_type, package_hash, state, input, idempotency_key, started_by, started_at, finished_at)
            SELECT 'run_' || lpad(to_hex(g), 26, '0'), 'type' || (g % 20), CASE WHEN g % 1000 = 0 THEN \(hash) ELSE repeat('b', 64) END,
                   CASE WHEN g % 100 = 0 THEN 'running' WHEN g % 50 = 1 THEN 'failed' ELSE 'succeeded' END, '{}', 'key-' || g, 'test',
                   now() - (g || ' seconds')::interval, CASE WHEN g % 100 = 0 THEN NULL ELSE now() END
            FROM generate_series(1, 30000) g
            """)
        try await conn.query("ANALYZE workflow.runs")
        // A filter that matches many rows walks its index in order and stops at the page; one that
        // matches few may fetch them by index and sort those few. Never a scan of the table, never
        // a sort of more than a thousand rows.
        let filters: [(RunStore.ListFilter, String?)] = [
            (.init(), "runs_listing_idx"),
            (.init(type: try WorkflowType("type3")), "runs_type_listing_idx"),
            (.init(state: "succeeded"), nil),
            (.init(state: "failed"), nil),
            (.init(type: try WorkflowType("type3"), state: "succeeded"), nil),
            (.init(type: try WorkflowType("type3"), state: "failed"), nil),
            (.init(packageHash: hash), nil),
            (.init(type: try WorkflowType("type3"), idempotencyKey: "key-3"), "runs_idempotency_idx"),
            (.init(idempotencyKey: "key-3"), "runs_key_listing_idx"),
            (.init(state: "running", startedAfter: Date().addingTimeInterval(-3600)), nil),
            (.init(state: "succeeded", startedAfter: Date().addingTimeInterval(-3600), startedBefore: Date()), nil),
        ]
        for (filter, index) in filters {
            let query = RunStore.listQuery(filter, cursor: nil, limit: 50)
            let plan = try await conn.query(PostgresQuery(unsafeSQL: "EXPLAIN " + query.sql, binds: query.binds)).map { try $0.decode("QUERY PLAN", as: String.self) }
                .joined(separator: "\n")
            let problems = Self.planProblems(plan, index: index)
            #expect(problems.isEmpty, "\(filter): \(problems.joined(separator: "; ")):\n\(plan)")
        }
        }
    }

    /// What is wrong with a listing's plan: a scan of the table, a sort of many rows, a page
    /// estimated to cost more than a few hundred (a scan of 30,000 runs costs thousands), or not
    /// the index it should walk.
    static func planProblems(_ plan: String, index: String?) -> [String] {
        var problems: [String] = []
        if let index, !plan.contains(index) { problems.append("does not walk \(index)") }
        if plan.contains("Seq Scan") || !plan.contains("Index") { problems.append("does not read by index") }
        for match in plan.matches(of: /Sort  \(cost=[0-9.]+\.\.[0-9.]+ rows=([0-9]+)/) {
            if let rows = Int(match.1), rows > 1000 { problems.append("sorts \(rows) rows") }
        }
        let limit: Double? = plan.firstMatch(of: /^Limit  \(cost=[0-9.]+\.\.([0-9.]+)/).flatMap { Double(String($0.1)) }
        if (limit ?? .infinity) >= 500 { problems.append("the page costs \(limit.map { String($0) } ?? "?")") }
        return problems
    }
}
