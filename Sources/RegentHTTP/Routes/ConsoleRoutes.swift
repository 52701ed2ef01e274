import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import PostgresClient
import RegentCore

/// The browser console (docs/console.md): static files compiled into the binary, served at
/// `/console/` on every node that serves the API, `/` and `/console` redirecting there. The
/// pages hold no data and no secret: everything they show comes from the documented `/v1` API
/// with the token the operator pastes (kept in the tab's `sessionStorage`). Every answer
/// carries a strict Content-Security-Policy: scripts and styles only from this origin, no
/// inline code, connections only to this origin, not framable.
enum ConsoleFiles {
    static let contentSecurityPolicy = [
        "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:", "connect-src 'self'",
        "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
    ].joined(separator: "; ")

    struct File: Sendable {
        let contentType: String
        let body: ByteBuffer
        let etag: String
    }

    static let files: [String: File] = EmbeddedConsole.files.mapValues { entry in
        File(
            contentType: entry.contentType, body: ByteBuffer(string: entry.text),
            etag: "\"" + String(SHA256.hex(bytes: Array(entry.text.utf8)).prefix(32)) + "\"")
    }

    static func securityHeaders(_ headers: inout HTTPFields) {
        headers[.contentSecurityPolicy] = contentSecurityPolicy
        headers[.xContentTypeOptions] = "nosniff"
        headers[HTTPField.Name("Referrer-Policy")!] = "no-referrer"
        headers[HTTPField.Name("X-Frame-Options")!] = "DENY"
        headers[HTTPField.Name("Cross-Origin-Opener-Policy")!] = "same-origin"
    }

    static func redirect(to location: String) -> Response {
        var headers: HTTPFields = [.location: location, .cacheControl: "no-store"]
        securityHeaders(&headers)
        return Response(status: .found, headers: headers)
    }

    static func serve(_ name: String, request: Request) throws -> Response {
        guard let file = files[name] else {
            throw APIError.notFound("not_found", "the console has no file \(SQLIdentifier.printable(String(name.prefix(64))))")
        }
        // Revalidated on every load (a new binary serves new files at once), 304 when unchanged.
        var headers: HTTPFields = [.contentType: file.contentType, .cacheControl: "no-cache", .eTag: file.etag]
        securityHeaders(&headers)
        if request.headers[.ifNoneMatch] == file.etag { return Response(status: .notModified, headers: headers) }
        return Response(status: .ok, headers: headers, body: request.method == .head ? ResponseBody() : .init(byteBuffer: file.body))
    }

    /// Registers the console's routes (not part of the `/v1` API or its route table).
    static func register(on router: Router<RegentRequestContext>) {
        for method in [HTTPRequest.Method.get, .head] {
            router.on("/", method: method) { _, _ in redirect(to: "/console/") }
            // The router ignores a trailing slash; the page's relative links need it.
            router.on("/console", method: method) { request, _ in
                request.uri.path.hasSuffix("/") ? try serve("index.html", request: request) : redirect(to: "/console/")
            }
            router.on("/console/:file", method: method) { request, context in
                try serve(try context.parameters.require("file"), request: request)
            }
        }
    }
}
