import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A bare HTTP/1.1 GET over a loopback socket whose response is read as it arrives: for
/// open-ended responses (server-sent events) that a test client would wait on forever.
final class RawHTTPStream {
    let fd: Int32
    private var received = Data()

    init(port: Int, path: String, token: String?, method: String = "GET", close: Bool = false) throws {
        fd = try connectLoopback(port: port)
        var request = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if close { request += "Connection: close\r\n" }
        if let token { request += "Authorization: Bearer \(token)\r\n" }
        request += "\r\n"
        _ = request.withCString { send(fd, $0, strlen($0), 0) }
    }

    /// Reads until `marker` appears or `timeout` passes; returns everything read so far.
    ///
    /// Never blocks a thread: it polls without waiting and sleeps between polls. (A blocking
    /// read here once held one of the two cooperative threads of a CI machine for seconds,
    /// while the in-process server it waited for needed a thread to answer: every test of
    /// the parallel phase stalled with it.)
    func read(until marker: String, timeout: Duration) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 4096)
        while ContinuousClock.now < deadline {
            if String(decoding: received, as: UTF8.self).contains(marker) { break }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 0) > 0 else {
                try await Task.sleep(for: .milliseconds(10))
                continue
            }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            received.append(contentsOf: buffer[0..<n])
        }
        return String(decoding: received, as: UTF8.self)
    }

    func close() { Glibc.close(fd) }

    /// One whole request over a fresh connection (Connection: close): status and body.
    static func fetch(port: Int, path: String, token: String? = nil, method: String = "GET") async throws -> (status: Int, body: String) {
        let stream = try RawHTTPStream(port: port, path: path, token: token, method: method, close: true)
        defer { stream.close() }
        let text = try await stream.read(until: "\u{0}never\u{0}", timeout: .seconds(5))
        let status = text.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap { Int($0) } ?? 0
        let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
        return (status, body)
    }

    /// A loopback port that was free a moment ago.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { Glibc.close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &addr) { ptr in
            try ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                guard bind(fd, $0, len) == 0, getsockname(fd, $0, &len) == 0 else { throw POSIXError(.EADDRINUSE) }
            }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

/// A TCP connection to 127.0.0.1:`port`; its descriptor.
func connectLoopback(port: Int) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EIO) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        Glibc.close(fd)
        throw POSIXError(.ECONNREFUSED)
    }
    return fd
}
