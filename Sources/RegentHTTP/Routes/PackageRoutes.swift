import Foundation
import Hummingbird
import Logging
import NIOCore
import PostgresClient
import RegentCore

/// Workflow packages: deploy (a tar or tar.gz body), list, show, route, unload, fetch.
extension AdminAPI {
    /// gzip or tar; with `application/octet-stream` the bytes say which (gzip's magic number).
    static let packageMediaTypes: Set<String> = ["application/gzip", "application/x-gzip", "application/x-tar", "application/tar", "application/octet-stream"]

    func deployPackage(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let limits = options.packageLimits
        guard let type = request.headers[.contentType]?.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased(),
            Self.packageMediaTypes.contains(type)
        else {
            throw APIError(
                status: .unsupportedMediaType, code: "unsupported_media_type",
                message: "send the package as Content-Type: application/gzip (a .tar.gz), application/x-tar (a .tar) or application/octet-stream (either)")
        }
        // The compressed body is at most the inflated limit; inflating stops at the limit too.
        let bodyLimit = limits.maxTotalBytes + (limits.maxFiles + 8) * 2048 + (1 << 20)
        let buffer = try await JSONBody.collect(request, limit: bodyLimit)
        let contents = try PackageContents(archive: Array(buffer.readableBytesView), limits: limits)
        let deployed = try await pool.withConnection {
            try await PackageStore(publisher: node?.instanceID.uuid).deploy(contents, actor: .named(context.actor), on: $0)
        }
        return try json(deployed, status: deployed.freshlyStored ? .created : .ok)
    }

    func listPackages(_ request: Request) async throws -> Response {
        let type = try request.uri.queryParameters.get("type").map { try WorkflowType($0) }
        let after = request.uri.queryParameters.get("after")
        let limit = try limit(request)
        let page = try await pool.withConnection { try await PackageStore().list(type: type, after: after, limit: limit, on: $0) }
        return try json(page)
    }

    func packageHash(_ context: RegentRequestContext) throws -> String {
        let hash = try context.parameters.require("hash")
        try PackageStore.checkHash(hash)
        return hash
    }

    /// A stored version, verified (hash, canonical form, manifest) before anything is served from it.
    func verifiedPackage(_ context: RegentRequestContext) async throws -> (PackageStore.Stored, PackageContents) {
        let hash = try packageHash(context)
        guard let stored = try await pool.withConnection({ try await PackageStore().fetch(hash: hash, on: $0) }) else {
            throw APIError.notFound("not_found", "no stored package version \(hash)")
        }
        switch PackageCatalog.verifiedContents(stored) {
        case .success(let contents): return (stored, contents)
        case .failure(let reason):
            context.logger.error(
                "stored package version failed verification", metadata: ["content_hash": "\(hash)", "workflow_type": "\(stored.workflowType)", "reason": "\(reason)"])
            throw APIError(status: .internalServerError, code: "package_corrupted", message: "stored version \(hash) failed verification: \(reason.message); redeploy it")
        }
    }

    struct ShowDocument: Encodable {
        let workflowType: String
        let contentHash: String
        let routed: Bool
        let manifest: AnyJSON
        let files: [PackageFileInfo]
        enum CodingKeys: String, CodingKey { case workflowType = "workflow_type", contentHash = "content_hash", routed, manifest, files }
    }

    /// The node's catalog entry of a version (verified when the node loaded it or heard of its
    /// deploy): nil when this process has no node or the catalog does not hold it (yet).
    func catalogEntry(_ hash: String) -> PackageCatalog.Entry? { node?.packageCatalog.entry(hash) }

    func showPackage(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let hash = try packageHash(context)
        // Verified once (by the catalog); served from the manifest and file list it keeps, and the
        // archive's bytes are not read. HEAD does no body work at all.
        if let entry = catalogEntry(hash) {
            let row = try await pool.withConnection { conn in
                try await conn.query(
                    """
                    SELECT p.manifest::text AS manifest, EXISTS (SELECT 1 FROM workflow.package_routes r WHERE r.content_hash = p.content_hash) AS routed
                    FROM workflow.packages p WHERE p.content_hash = \(hash)
                    """, purpose: "packages: show").first
            }
            guard let row else { throw APIError.notFound("not_found", "no stored package version \(hash)") }
            if request.method == .head { return Response(status: .ok, headers: [.contentType: "application/json"]) }
            return try json(ShowDocument(workflowType: entry.workflowType, contentHash: hash, routed: try row.decode("routed"),
                                         manifest: AnyJSON(text: try row.decode("manifest")), files: entry.files))
        }
        let (stored, contents) = try await verifiedPackage(context)
        return try json(ShowDocument(workflowType: stored.workflowType, contentHash: stored.contentHash, routed: stored.routed,
                                     manifest: AnyJSON(text: stored.manifestJSON),
                                     files: contents.fileInfo))
    }

    func fetchPackage(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let hash = try packageHash(context)
        let path = request.uri.queryParameters.get("path").map { String($0) }
        if let entry = catalogEntry(hash), path == nil || request.method == .head {
            // Verified once already: the stored bytes are served as they are (HEAD: not even read).
            var headers = HTTPFields()
            headers[.eTag] = "\"\(hash)\""
            if let path {
                guard entry.files.contains(where: { $0.path == path }) else {
                    throw APIError.notFound("not_found", "version \(hash) holds no file \(JSONBody.quotedField(path))")
                }
                headers[.contentType] = "application/octet-stream"
                return Response(status: .ok, headers: headers)
            }
            headers[.contentType] = "application/x-tar"
            headers[.contentDisposition] = "attachment; filename=\"\(entry.workflowType)-\(hash.prefix(12)).tar\""
            if request.method == .head { return Response(status: .ok, headers: headers) }
            guard let row = try await pool.withConnection({ conn in
                try await conn.query("SELECT archive FROM workflow.packages WHERE content_hash = \(hash)", purpose: "packages: archive").first
            }) else { throw APIError.notFound("not_found", "no stored package version \(hash)") }
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: try row.decode("archive", as: PostgresBytes.self).bytes)))
        }
        let (stored, contents) = try await verifiedPackage(context)
        var headers = HTTPFields()
        headers[.eTag] = "\"\(stored.contentHash)\""
        if let path {
            guard let file = contents.file(String(path)) else {
                throw APIError.notFound("not_found", "version \(stored.contentHash) holds no file \(JSONBody.quotedField(String(path)))")
            }
            headers[.contentType] = "application/octet-stream"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: file.bytes)))
        }
        headers[.contentType] = "application/x-tar"
        headers[.contentDisposition] = "attachment; filename=\"\(stored.workflowType)-\(stored.contentHash.prefix(12)).tar\""
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: stored.archive)))
    }

    func routePackage(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let hash = try packageHash(context)
        let body = try await JSONBody.read(request, context: context, allowed: ["workflow_type"])
        let type = try WorkflowType(try body.string("workflow_type"))
        let routed = try await pool.withConnection {
            try await PackageStore(publisher: node?.instanceID.uuid).route(type: type, to: hash, actor: .named(context.actor), on: $0)
        }
        if routed.routeChanged {
            try await recordAudit("package.routed", context, ["workflow_type": type.value, "content_hash": hash, "previous_hash": routed.previousHash ?? ""])
        }
        return try json(RoutedDocument(workflowType: type.value, contentHash: hash, routeChanged: routed.routeChanged, previousHash: routed.previousHash))
    }

    struct RoutedDocument: Encodable {
        let workflowType: String
        let contentHash: String
        let routeChanged: Bool
        let previousHash: String?
        enum CodingKeys: String, CodingKey { case workflowType = "workflow_type", contentHash = "content_hash", routeChanged = "route_changed", previousHash = "previous_hash" }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(workflowType, forKey: .workflowType)
            try c.encode(contentHash, forKey: .contentHash)
            try c.encode(routeChanged, forKey: .routeChanged)
            try c.encode(previousHash, forKey: .previousHash)
        }
    }

    struct UnloadedDocument: Encodable {
        let workflow_type: String
        let content_hash: String
        let unloaded: Bool
    }

    func unloadPackage(_ request: Request, _ context: RegentRequestContext) async throws -> Response {
        let hash = try packageHash(context)
        let body = try await JSONBody.read(request, context: context, allowed: ["workflow_type"])
        let type = try WorkflowType(try body.string("workflow_type"))
        try await pool.withConnection {
            try await PackageStore(publisher: node?.instanceID.uuid).unload(type: type, hash: hash, actor: .named(context.actor), on: $0)
        }
        try await recordAudit("package.unloaded", context, ["workflow_type": type.value, "content_hash": hash])
        return try json(UnloadedDocument(workflow_type: type.value, content_hash: hash, unloaded: true))
    }
}
