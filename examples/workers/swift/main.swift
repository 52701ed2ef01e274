// An example worker on the RegentWorker library: it carries the `quote` and `receipt` steps of
// shop.checkout (examples/workers/greeting) over the HTTP API, with a worker token.
//
//   REGENT_URLS=http://127.0.0.1:8080,http://127.0.0.1:8081 REGENT_TOKEN=rgt_… .build/debug/regent-example-worker
//
// SIGTERM or SIGINT shut it down gracefully (ServiceLifecycle): running steps finish, then it deregisters.
import Foundation
import Logging
import RegentWorker
import ServiceLifecycle
import UnixSignals

struct Order: Codable, Sendable {
    let customer: String
    let items: Int
}

struct Quote: Codable, Sendable {
    let price: Int
    let currency: String
}

struct Charge: Codable, Sendable {
    let charged: Int
    let by: String
}

struct Receipt: Codable, Sendable {
    let text: String
}

let environment = ProcessInfo.processInfo.environment
guard let urls = environment["REGENT_URLS"]?.split(separator: ",").map(String.init), let token = environment["REGENT_TOKEN"] else {
    FileHandle.standardError.write(Data("set REGENT_URLS (comma-separated node URLs) and REGENT_TOKEN (a worker token)\n".utf8))
    exit(2)
}
LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
var logger = Logger(label: "example.swift-worker")
logger.logLevel = .info

var configuration = WorkerConfiguration(urls: urls, token: token)
configuration.lanes = ["swift"]
configuration.workerID = "example-swift"
if let name = environment["REGENT_WORKER_NAME"] { configuration.instanceID = name }
let worker = RegentWorker(configuration: configuration, logger: logger)

worker.step("quote") { (ctx, order: Order) async throws -> Quote in
    ctx.logger.info("quoting \(order.items) items for \(order.customer)")
    return Quote(price: 250 * order.items, currency: "cents")
}

worker.step("receipt") { (ctx, order: Order) async throws -> Receipt in
    let quote = try ctx.output(of: "quote", as: Quote.self)
    let charge = try ctx.output(of: "charge", as: Charge.self)
    return Receipt(text: "\(order.customer): \(order.items) items, \(charge.charged) \(quote.currency) (charged by \(charge.by))")
}

let group = ServiceGroup(
    configuration: .init(services: [.init(service: worker)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
try await group.run()
