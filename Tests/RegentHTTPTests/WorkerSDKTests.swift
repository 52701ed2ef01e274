import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOConcurrencyHelpers
import PostgresClient
@testable import RegentCore
@testable import RegentHTTP
import RegentTestSupport
import RegentWorker
import Testing

/// The RegentWorker library against a real node's API on a real socket (issue 29): typed
/// handlers carry runs, renewals keep long steps alive, a cancelled run cancels its handler,
/// errors retry or fail for good, a lost completion answer is retried and counts once, a dead
/// node is skipped, and a shutdown hands running steps back and deregisters.
@Suite("The RegentWorker SDK against a live node", .serialized)
struct WorkerSDKTests {
    struct Order: Codable, Sendable { let order: Int }
    struct Quote: Codable, Sendable { let price: Int }
    struct Charge: Codable, Sendable { let charged: Int; let attempt: Int }

    static func deploy(_ f: Fixture, type: String, steps: [String], budget: String = "") async throws {
        let manifest = #"{"workflow_type": "\#(type)", \#(budget)"steps": [\#(steps.joined(separator: ", "))]}"#
        let p = try PackageFixture(files: ["workflow.json": manifest])
        defer { p.remove() }
        let contents = try PackageContents(path: p.directory.path, limits: .default)
        _ = try await f.api.pool.withConnection { try await PackageStore().deploy(contents, actor: .named("test"), on: $0) }
    }

    static func start(_ client: some TestClientProtocol, _ f: Fixture, type: String, input: String = #"{"order": 7}"#, extra: String = "") async throws -> String {
        let r = try await client.call(.post, "/v1/runs", token: f.worker, json: #"{"workflow_type":"\#(type)","input":\#(input)\#(extra)}"#)
        #expect(r.status == .created)
        return try #require(try object(r.body)["run_id"] as? String)
    }

    static func run(_ client: some TestClientProtocol, _ f: Fixture, _ id: String) async throws -> [String: Any] {
        try object(try await client.call(.get, "/v1/runs/\(id)", token: f.reader).body)
    }

    static func configuration(_ f: Fixture, port: Int, lanes: [String] = ["sdk"], name: String = "sdk-1") -> WorkerConfiguration {
        var c = WorkerConfiguration(urls: ["http://127.0.0.1:\(port)"], token: f.worker)
        c.lanes = lanes
        c.instanceID = name
        c.longPoll = .seconds(2)
        c.requestTimeout = .seconds(5)
        c.shutdownGrace = .seconds(5)
        return c
    }

    /// Runs `worker` beside `body`, then shuts it down and waits for it.
    static func with(_ worker: RegentWorker, _ body: () async throws -> Void) async throws {
        let task = Task { try await worker.run() }
        do { try await body() } catch {
            worker.shutdown()
            _ = try? await task.value
            throw error
        }
        worker.shutdown()
        try await task.value
    }

    @Test func typedHandlersCarryARunReadEarlierOutputsAndReportCosts() async throws {
        try await Fixture.with { f in
            try await Self.deploy(f, type: "shop", steps: [
                #"{"name": "quote", "lane": "sdk"}"#, #"{"name": "charge", "lane": "sdk", "after": ["quote"]}"#,
            ], budget: #""budget": {"limit": 1000, "unit": "cents"}, "#)
            try await f.app().test(.live) { client in
                let worker = RegentWorker(configuration: Self.configuration(f, port: try #require(client.port)))
                worker.step("quote") { (ctx, input: Order) async throws -> Quote in
                    #expect(ctx.step == "quote" && ctx.attempt == 1 && ctx.packageHash.count == 64 && ctx.runID.hasPrefix("run_"))
                    return Quote(price: input.order * 10)
                }
                worker.step("charge") { (ctx, input: Order) async throws -> Charge in
                    let quote = try ctx.output(of: "quote", as: Quote.self)
                    ctx.reportCost(12, unit: "cents")
                    return Charge(charged: quote.price, attempt: ctx.attempt)
                }
                try await Self.with(worker) {
                    let id = try await Self.start(client, f, type: "shop")
                    #expect(await eventually { try await Self.run(client, f, id)["state"] as? String == "succeeded" })
                    let shown = try await Self.run(client, f, id)
                    let steps = try #require(shown["steps"] as? [[String: Any]])
                    let charge = try #require(steps.first { $0["name"] as? String == "charge" })
                    #expect((charge["output"] as? [String: Any])?["charged"] as? Int == 70)
                    #expect((shown["ledger"] as? [[String: Any]])?.map { ($0["amount"] as? NSNumber)?.doubleValue } == [12])
                }
                #expect(worker.tally.completed == 2 && worker.tally.failed == 0 && worker.tally.lost == 0)
                // It deregistered on the way out.
                let dead = try await f.api.pool.query("SELECT dead, dead_reason FROM workflow.workers WHERE worker_instance_id = 'sdk-1'").single()
                #expect(try dead.decode("dead", as: Bool.self) && dead.decode("dead_reason", as: String.self) == "deregistered")
            }
        }
    }

    @Test func aCancelledRunCancelsItsHandlerWithinARenewalAndNothingIsCompleted() async throws {
        try await Fixture.with { f in
            // A 3 s step: renewed every second while its handler runs for longer than that.
            try await Self.deploy(f, type: "slow", steps: [#"{"name": "wait", "lane": "sdk", "timeout": "3s"}"#])
            try await f.app().test(.live) { client in
                let worker = RegentWorker(configuration: Self.configuration(f, port: try #require(client.port)))
                let began = NIOLockedValueBox<ContinuousClock.Instant?>(nil)
                let cancelledAt = NIOLockedValueBox<ContinuousClock.Instant?>(nil)
                worker.on("wait") { _ in
                    began.withLockedValue { $0 = .now }
                    do { try await Task.sleep(for: .seconds(60)) } catch { cancelledAt.withLockedValue { $0 = .now } }
                    return ["late": true]
                }
                try await Self.with(worker) {
                    let id = try await Self.start(client, f, type: "slow")
                    #expect(await eventually { began.withLockedValue { $0 } != nil })
                    // Renewals keep it: past its 3 s timeout, the step still runs.
                    try await Task.sleep(for: .seconds(4))
                    #expect(try await Self.run(client, f, id)["state"] as? String == "running")
                    #expect(cancelledAt.withLockedValue { $0 } == nil)
                    let cancelled = ContinuousClock.now
                    #expect(try await client.call(.post, "/v1/runs/\(id)/cancel", token: f.worker, json: #"{"reason":"test"}"#).status == .ok)
                    #expect(await eventually(timeout: .seconds(10)) { cancelledAt.withLockedValue { $0 } != nil })
                    // Within one renewal period (a third of 3 s), with slack for a loaded machine.
                    let after = try #require(cancelledAt.withLockedValue { $0 }) - cancelled
                    #expect(after < .seconds(3), "handler cancelled \(after) after the run")
                    #expect(await eventually { worker.tally.lost == 1 })
                }
                #expect(worker.tally.completed == 0)
            }
        }
    }

    @Test func thrownErrorsRetryAndNonRetryableFailsTheStepForGood() async throws {
        try await Fixture.with { f in
            try await Self.deploy(f, type: "flaky", steps: [
                #"{"name": "flaky", "lane": "sdk", "max_attempts": 3, "backoff": {"base": "100ms", "max": "200ms"}}"#,
            ])
            try await Self.deploy(f, type: "doomed", steps: [#"{"name": "fatal", "lane": "sdk", "max_attempts": 5}"#])
            try await f.app().test(.live) { client in
                let worker = RegentWorker(configuration: Self.configuration(f, port: try #require(client.port)))
                worker.on("flaky") { ctx in
                    if ctx.attempt == 1 { throw CocoaError(.fileNoSuchFile) }
                    return ["attempt": .integer(Int64(ctx.attempt))]
                }
                worker.on("fatal") { _ in throw NonRetryable("card declined") }
                try await Self.with(worker) {
                    let flaky = try await Self.start(client, f, type: "flaky")
                    let doomed = try await Self.start(client, f, type: "doomed")
                    #expect(await eventually { try await Self.run(client, f, flaky)["state"] as? String == "succeeded" })
                    #expect(await eventually { try await Self.run(client, f, doomed)["state"] as? String == "failed" })
                    let fatal = try #require((try await Self.run(client, f, doomed)["steps"] as? [[String: Any]])?.first)
                    #expect(fatal["attempts"] as? Int == 1, "\(fatal)")
                    #expect("\(fatal)".contains("card declined"))
                    let steps = try #require(try await Self.run(client, f, flaky)["steps"] as? [[String: Any]])
                    #expect((steps.first?["output"] as? [String: Any])?["attempt"] as? Int == 2)
                }
                #expect(worker.tally.completed == 1 && worker.tally.failed == 2)
            }
        }
    }

    @Test func aCompletionWhoseAnswerIsLostIsRetriedAndCountsOnce() async throws {
        try await Fixture.with { f in
            try await Self.deploy(f, type: "once", steps: [#"{"name": "a", "lane": "sdk"}"#, #"{"name": "b", "lane": "sdk", "after": ["a"]}"#])
            // The node commits the first completions it gets, then its answer never arrives (it
            // outlasts the worker's request timeout): the worker must send them again.
            let cut = NIOLockedValueBox(2)
            let responder = LosingResponder(inner: f.api.router().buildResponder(), lose: { path in
                guard path == "/v1/leases/complete-batch" else { return false }
                return cut.withLockedValue { n in n > 0 ? { n -= 1; return true }() : false }
            }, hold: .seconds(3))
            try await Application(responder: responder).test(.live) { client in
                var c = Self.configuration(f, port: try #require(client.port))
                c.requestTimeout = .seconds(1)
                c.longPoll = .milliseconds(500)
                // Completions go on their own (a lost complete-and-claim answer would lose its new leases
                // too, until they expire: the same completion retry, slower to show).
                c.batchCompletions = false
                let worker = RegentWorker(configuration: c)
                let calls = NIOLockedValueBox([String: Int]())
                worker.fallback { ctx in
                    calls.withLockedValue { $0[ctx.step, default: 0] += 1 }
                    return ["step": .string(ctx.step)]
                }
                try await Self.with(worker) {
                    let id = try await Self.start(client, f, type: "once")
                    #expect(await eventually { try await Self.run(client, f, id)["state"] as? String == "succeeded" })
                }
                #expect(cut.withLockedValue { $0 } == 0, "both lost answers happened")
                // Each step ran once and was completed once: one attempt each, none reclaimed.
                #expect(calls.withLockedValue { $0 } == ["a": 1, "b": 1])
                let attempts = try await f.api.pool.query(
                    "SELECT a.state, count(*) AS n FROM workflow.attempts a JOIN workflow.executions e USING (execution_id) WHERE e.namespace = 'runs' GROUP BY a.state")
                    .map { "\(try $0.decode("state", as: String.self))=\(try $0.decode("n", as: Int.self))" }
                #expect(attempts == ["completed=2"])
                #expect(worker.tally.completed == 2 && worker.tally.lost == 0)
            }
        }
    }

    @Test func aDeadNodeIsSkippedAndAShutdownHandsRunningStepsBack() async throws {
        try await Fixture.with { f in
            try await Self.deploy(f, type: "quick", steps: [#"{"name": "q", "lane": "sdk"}"#])
            try await Self.deploy(f, type: "stuck", steps: [#"{"name": "s", "lane": "sdk", "max_attempts": 3}"#])
            try await f.app().test(.live) { client in
                var c = Self.configuration(f, port: try #require(client.port), name: "sdk-2")
                // The first node listed is down (nothing listens there).
                c.urls = ["http://127.0.0.1:\(try EmbeddedPostgresPort.closed())", "http://127.0.0.1:\(try #require(client.port))"]
                c.shutdownGrace = .milliseconds(300)
                let worker = RegentWorker(configuration: c)
                let stuckStarted = NIOLockedValueBox(false)
                worker.on("q") { _ in ["ok": true] }
                worker.on("s") { _ in
                    stuckStarted.withLockedValue { $0 = true }
                    try await Task.sleep(for: .seconds(60))
                    return [:]
                }
                let task = Task { try await worker.run() }
                let quick = try await Self.start(client, f, type: "quick")
                #expect(await eventually { try await Self.run(client, f, quick)["state"] as? String == "succeeded" })
                let stuck = try await Self.start(client, f, type: "stuck")
                #expect(await eventually { stuckStarted.withLockedValue { $0 } })
                worker.shutdown()
                try await task.value
                // Handed back: queued again (a retryable failure) with the reason, and the worker left the registry.
                let row = try await f.api.pool.query(
                    "SELECT e.state, e.last_error FROM workflow.executions e JOIN workflow.run_steps s ON s.execution_id = e.execution_id WHERE s.run_id = \(stuck)"
                ).single()
                #expect(try row.decode("state", as: String.self) == "queued")
                #expect(try row.decode("last_error", as: String.self).contains("handed back"))
                let dead = try await f.api.pool.query("SELECT dead FROM workflow.workers WHERE worker_instance_id = 'sdk-2'").single()
                #expect(try dead.decode("dead", as: Bool.self))
                #expect(worker.tally.completed == 1 && worker.tally.failed == 1)
            }
        }
    }

    @Test func aBadConfigurationOrARefusedTokenIsAClearError() async throws {
        try await Fixture.with { f in
            try await f.app().test(.live) { client in
                let port = try #require(client.port)
                var bad = Self.configuration(f, port: port)
                bad.lanes = ["has space"]
                await #expect(throws: RegentWorkerError.invalidConfiguration(#"lanes: "has space" must be 1-128 letters, digits or _ . : -"#)) {
                    try await RegentWorker(configuration: bad).run()
                }
                bad = Self.configuration(f, port: port)
                bad.urls = ["ftp://example"]
                await #expect(throws: RegentWorkerError.self) { try await RegentWorker(configuration: bad).run() }
                var reader = Self.configuration(f, port: port)
                reader.token = f.reader
                do {
                    try await RegentWorker(configuration: reader).run()
                    Issue.record("a read token must not run a worker")
                } catch let error as RegentWorkerError {
                    guard case .unauthorized(let status, _) = error else { Issue.record("\(error)"); return }
                    #expect(status == 403)
                    #expect(error.description.contains("worker role"))
                }
            }
        }
    }
}

/// A loopback port nothing listens on.
enum EmbeddedPostgresPort {
    static func closed() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

/// Serves through `inner`, but for requests `lose` picks, answers only after `hold`: the
/// work is done and committed, and the client (whose timeout is shorter) never hears of it —
/// a node that died after its commit, or a load balancer that timed out.
struct LosingResponder<Inner: HTTPResponder>: HTTPResponder where Inner.Context == RegentRequestContext {
    typealias Context = RegentRequestContext
    let inner: Inner
    let lose: @Sendable (String) -> Bool
    let hold: Duration
    func respond(to request: Request, context: RegentRequestContext) async throws -> Response {
        let response = try await inner.respond(to: request, context: context)
        if lose(request.uri.path) { try await Task.sleep(for: hold) }
        return response
    }
}
