import CoreMetrics
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import PostgresClient
import Prometheus
import RegentCore
import ServiceLifecycle

/// `GET /metrics`: the Prometheus text, with cluster and pool gauges read at scrape time.
extension AdminAPI {
    func metrics() async throws -> Response {
        // Gauges that describe the cluster or the pools are read now, so a scrape is current.
        if let status = try? await clusterStatus() {
            let stale = status.instances.filter(\.stale).count
            node?.metrics.liveInstances.record(status.instances.count - stale)
            node?.metrics.staleInstances.record(stale)
        }
        await poolGauges.http.update(pool)
        await flowGauges.update(pool)
        if let nodePool = await node?.connectionPool { await poolGauges.node.update(nodePool) }
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
    }
}
