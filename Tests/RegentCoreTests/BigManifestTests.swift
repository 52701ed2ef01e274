import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Testing

/// A valid manifest always starts (issue 26 §2): every queue notification is built by one SQL
/// helper (`workflow.notify_queue`) that falls back to `<namespace> *` when the lane list would
/// not fit in a notification. Before, a start whose root steps' lanes were long failed with
/// "payload string too long" (22023).
@Suite("Queue notifications of the largest valid manifest")
struct BigManifestTests {
    @Test func aManifestOf256RootStepsWith128CharacterLanesStartsAndWakesAWaiter() async throws {
        try await withBootedDatabase { config, conn in
            let lanes = (0..<256).map { i in "l" + String(format: "%03d", i) + String(repeating: "x", count: 124) }
            #expect(lanes.allSatisfy { $0.count == 128 })
            let steps = lanes.enumerated().map { #"{"name": "s\#($0.offset)", "lane": "\#($0.element)", "after": []}"# }
            let f = try await RunFixture.deploy("wide", steps: steps, on: conn)
            let lane = try Lane(lanes[200])
            let worker = try WorkerInstanceID("wide-worker")
            _ = try await WorkerRegistry().register(
                namespace: RunStore.namespace, workerInstanceID: worker, workerID: try WorkerID("wide"), lanes: [lane], capabilities: [],
                livenessTTL: .seconds(300), on: conn)
            let waker = QueueWaker(configuration: config)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await waker.run() }
                #expect(await eventually { waker.isListening })
                let ticket = waker.register(namespace: RunStore.namespace.value, lanes: [lane.value])
                let run = try await f.start()
                #expect(run.created)
                // Woken by the start's notification (`runs *`), not by its deadline.
                #expect(await waker.wait(ticket, until: .now + .seconds(10)))
                waker.unregister(ticket)
                let leases = try await LeaseStore().claim(
                    namespace: RunStore.namespace, lanes: [lane], workerInstanceID: worker, capabilities: [], leaseDuration: nil, limit: 5, on: conn)
                #expect(leases.map { $0.step?.name } == ["s200"])
                group.cancelAll()
            }
            let queued = try await conn.query("SELECT count(*) AS n FROM workflow.ready WHERE namespace = 'runs'").single().decode("n", as: Int.self)
            #expect(queued == 255)
        }
    }
}
