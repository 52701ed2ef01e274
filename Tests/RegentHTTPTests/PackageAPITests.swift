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

extension TestClientProtocol {
    /// A request with raw bytes as its body.
    func send(_ method: HTTPRequest.Method, _ uri: String, token: String?, bytes: [UInt8], contentType: String) async throws -> TestResponse {
        var headers = HTTPFields()
        if let token { headers[.authorization] = "Bearer \(token)" }
        headers[.contentType] = contentType
        return try await executeRequest(uri: uri, method: method, headers: headers, body: ByteBuffer(bytes: bytes))
    }
}

@Suite("Workflow packages over HTTP", .serialized)
struct PackageAPITests {
    @Test func deployListShowFetchRouteAndUnloadEachWithItsRole() async throws {
        try await Fixture.with { f in
            let v1 = try PackageFixture(type: "orders", extra: "1"), v2 = try PackageFixture(type: "orders", extra: "2")
            defer { v1.remove(); v2.remove() }
            let gz1 = try v1.tar(gzip: true), tar2 = try v2.tar()
            let h1 = try PackageContents(archive: gz1, limits: .default).contentHash
            let h2 = try PackageContents(archive: tar2, limits: .default).contentHash
            try await f.app().test(.router) { client in
                // Deploying needs admin.
                for weaker in [f.reader, f.worker] {
                    #expect(try await client.send(.post, "/v1/packages", token: weaker, bytes: gz1, contentType: "application/gzip").status == .forbidden)
                }
                let first = try await client.send(.post, "/v1/packages", token: f.admin, bytes: gz1, contentType: "application/gzip")
                #expect(first.status == .created)
                let doc = try object(first.body)
                #expect(doc["content_hash"] as? String == h1 && doc["freshly_stored"] as? Bool == true && doc["route_changed"] as? Bool == true)
                #expect(doc["previous_hash"] is NSNull)
                let again = try await client.send(.post, "/v1/packages", token: f.admin, bytes: gz1, contentType: "application/gzip")
                #expect(again.status == .ok)
                #expect(try object(again.body)["freshly_stored"] as? Bool == false)
                let second = try await client.send(.post, "/v1/packages", token: f.admin, bytes: tar2, contentType: "application/x-tar")
                #expect(try object(second.body)["previous_hash"] as? String == h1)

                // Reading needs read.
                #expect(try await client.call(.get, "/v1/packages", token: nil).status == .unauthorized)
                let list = try object(try await client.call(.get, "/v1/packages?type=orders", token: f.reader).body)
                let versions = try #require(list["packages"] as? [[String: Any]])
                #expect(versions.map { $0["content_hash"] as? String } == [h1, h2])
                #expect(versions.map { $0["routed"] as? Bool } == [false, true])
                let shown = try object(try await client.call(.get, "/v1/packages/\(h1)", token: f.reader).body)
                #expect((shown["files"] as? [[String: Any]])?.compactMap { $0["path"] as? String } == ["README.md", "schemas/input.json", "workflow.json"])
                #expect(((shown["manifest"] as? [String: Any])?["steps"] as? [Any])?.count == 2)

                // Fetching needs worker: the archive hashes to its name; one file by path.
                #expect(try await client.call(.get, "/v1/packages/\(h1)/archive", token: f.reader).status == .forbidden)
                let archive = try await client.call(.get, "/v1/packages/\(h1)/archive", token: f.worker)
                #expect(archive.status == .ok && archive.headers[.contentType] == "application/x-tar")
                #expect(SHA256.hex(bytes: Array(archive.body.readableBytesView)) == h1)
                // HEAD: the headers alone, no body work (answered from the node's verified catalog).
                let head = try await client.call(.head, "/v1/packages/\(h1)/archive", token: f.worker)
                #expect(head.status == .ok && head.headers[.eTag] == "\"\(h1)\"" && head.body.readableBytes == 0)
                let file = try await client.call(.get, "/v1/packages/\(h1)/archive?path=README.md", token: f.worker)
                #expect(String(buffer: file.body) == "# orders 1\n")
                #expect(try await client.call(.get, "/v1/packages/\(h1)/archive?path=nope", token: f.worker).status == .notFound)

                // Rollback needs admin; an unknown version is refused with the stored ones.
                let body = #"{"workflow_type":"orders"}"#
                #expect(try await client.call(.post, "/v1/packages/\(h1)/route", token: f.worker, json: body).status == .forbidden)
                let routed = try await client.call(.post, "/v1/packages/\(h1)/route", token: f.admin, json: body)
                #expect(try object(routed.body)["route_changed"] as? Bool == true)
                let unknown = try await client.call(.post, "/v1/packages/\(String(repeating: "0", count: 64))/route", token: f.admin, json: body)
                #expect(unknown.status == .notFound && errorMessage(unknown)?.contains(h2) == true)

                // Unloading the routed version: 409 naming why; the other one goes.
                let refused = try await client.call(.post, "/v1/packages/\(h1)/unload", token: f.admin, json: body)
                #expect(refused.status == .conflict && errorCode(refused) == "conflict")
                #expect(errorMessage(refused)?.contains("routed version") == true)
                let unloaded = try await client.call(.post, "/v1/packages/\(h2)/unload", token: f.admin, json: body)
                #expect(unloaded.status == .ok)
                #expect(try await client.call(.get, "/v1/packages/\(h2)", token: f.reader).status == .notFound)
                let audited = try await f.api.pool.query("SELECT actor FROM engine.audit WHERE action = 'package.unload'").single().decode("actor", as: String.self)
                #expect(audited == "token:test-admin")
            }
        }
    }

    @Test func badPackagesAreRefusedClearlyAndStoreNothing() async throws {
        try await Fixture.with { f in
            let good = try PackageFixture(type: "t")
            defer { good.remove() }
            let tar = try good.tar()
            try await f.app().test(.router) { client in
                let json = try await client.call(.post, "/v1/packages", token: f.admin, json: "{}")
                #expect(json.status == .unsupportedMediaType)
                let garbage = try await client.send(.post, "/v1/packages", token: f.admin, bytes: Array("nope".utf8), contentType: "application/x-tar")
                #expect(garbage.status == .badRequest && errorMessage(garbage)?.contains("truncated") == true)
                let badGzip = try await client.send(.post, "/v1/packages", token: f.admin, bytes: [0x1f, 0x8b, 1, 2, 3], contentType: "application/gzip")
                #expect(badGzip.status == .badRequest)
                let link = PackageFixture.rawTar([
                    PackageFixture.rawEntry("workflow.json", data: Array(PackageFixture.manifest(type: "t").utf8)),
                    PackageFixture.rawEntry("evil", type: "2", linkName: "/etc/shadow"),
                ])
                let refused = try await client.send(.post, "/v1/packages", token: f.admin, bytes: link, contentType: "application/x-tar")
                #expect(refused.status == .badRequest && errorMessage(refused)?.contains("\"evil\" is a link") == true)
                let badManifest = PackageFixture.rawTar([PackageFixture.rawEntry("workflow.json", data: Array(#"{"workflow_type":"t","steps":[]}"#.utf8))])
                let m = try await client.send(.post, "/v1/packages", token: f.admin, bytes: badManifest, contentType: "application/x-tar")
                #expect(m.status == .badRequest && errorMessage(m)?.contains("workflow.json") == true)
                #expect(try await client.call(.get, "/v1/packages/XYZ", token: f.reader).status == .badRequest)
                #expect(try await client.call(.get, "/v1/packages?after=junk", token: f.reader).status == .badRequest)
                #expect(try await count(f.api.pool, "workflow.packages") == 0)
                #expect(try await count(f.api.pool, "engine.audit WHERE action LIKE 'package.%'") == 0)
                // The good one still goes in afterwards.
                #expect(try await client.send(.post, "/v1/packages", token: f.admin, bytes: tar, contentType: "application/x-tar").status == .created)
            }
        }
    }

    @Test func aTamperedVersionIsNotServed() async throws {
        try await Fixture.with { f in
            let p = try PackageFixture(type: "t")
            defer { p.remove() }
            let contents = try PackageContents(path: p.directory.path, limits: .default)
            _ = try await f.api.pool.withConnection { try await PackageStore().deploy(contents, actor: .named("test"), on: $0) }
            // The node's catalog verifies a version once (at its load, or when it hears of the deploy)
            // and serves the stored bytes from then on; a version damaged in the database is
            // rejected at the next load and never served again.
            #expect(await eventually { f.node.packageCatalog.entry(contents.contentHash) != nil })
            try await f.api.pool.query(
                "UPDATE workflow.packages SET archive = overlay(archive PLACING '\\x58'::bytea FROM 514 FOR 1) WHERE content_hash = \(contents.contentHash)")
            try await f.node.packageCatalog.reload(pool: f.api.pool)
            #expect(f.node.packageCatalog.entry(contents.contentHash) == nil)
            #expect(f.node.packageCatalog.rejected.map(\.contentHash) == [contents.contentHash])
            try await f.app().test(.router) { client in
                // HEAD of a verified version answers from the catalog; of this one, it is refused too.
                #expect(try await client.call(.head, "/v1/packages/\(contents.contentHash)", token: f.reader).status == .internalServerError)
                let r = try await client.call(.get, "/v1/packages/\(contents.contentHash)/archive", token: f.worker)
                #expect(r.status == .internalServerError && errorCode(r) == "package_corrupted")
            }
        }
    }
}
