import Foundation
import PostgresClient
import Synchronization

/// A loopback TCP proxy for fault injection: forwards bytes both ways until `freeze()`,
/// after which it stops forwarding but keeps every socket open — a silent network, the
/// failure that neither side can tell from a slow one.
public final class TCPProxy: Sendable {
    public let port: Int
    private let listenFD: Int32
    private let upstreamPort: Int
    private let state = Mutex(State())

    struct State {
        var frozen = false
        var closed = false
        var sockets: [Int32] = []
    }

    public init(upstreamPort: Int) throws {
        self.upstreamPort = upstreamPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard ok, listen(fd, 64) == 0 else { throw NSError(domain: "TCPProxy", code: 1) }
        listenFD = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    /// Stop forwarding; keep the connections open.
    public func freeze() { state.withLock { $0.frozen = true } }

    /// Close everything.
    public func close() {
        let sockets = state.withLock { s -> [Int32] in
            s.closed = true
            return s.sockets
        }
        for fd in sockets { shutdown(fd, Int32(SHUT_RDWR)) }
        shutdown(listenFD, Int32(SHUT_RDWR))
    }

    private func acceptLoop() {
        while true {
            let client = accept(listenFD, nil, nil)
            if client < 0 { return }
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = UInt16(upstreamPort).bigEndian
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
            if !connected {
                Glibc.close(client)
                Glibc.close(upstream)
                continue
            }
            state.withLock { $0.sockets += [client, upstream] }
            Thread { [self] in pump(from: client, to: upstream) }.start()
            Thread { [self] in pump(from: upstream, to: client) }.start()
        }
    }

    private func pump(from: Int32, to: Int32) {
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let (frozen, closed) = state.withLock { ($0.frozen, $0.closed) }
            if closed { return }
            if frozen {
                Thread.sleep(forTimeInterval: 0.05)
                continue
            }
            var pfd = pollfd(fd: from, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 50) <= 0 { continue }
            if state.withLock({ $0.frozen }) { continue }
            let n = read(from, &buffer, buffer.count)
            if n <= 0 {
                shutdown(to, Int32(SHUT_WR))
                return
            }
            var sent = 0
            while sent < n {
                let w = buffer.withUnsafeBytes { write(to, $0.baseAddress! + sent, n - sent) }
                if w <= 0 { return }
                sent += w
            }
        }
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes; returns whether it
/// held. A condition that throws counts as not (yet) holding.
///
/// The default allows 45 s: swift-testing runs the whole in-process suite at once on
/// machines with two cores, where private clusters starting and dozens of nodes with 1 s
/// test leases booting can hold an election back, or pass leadership around, for tens of
/// seconds (15 s was seen to be too short in CI). It only bounds how long a failing run waits; a
/// passing condition returns as soon as it holds. Timing goals live in `regent bench`, and
/// tests that bound a duration say so with their own timeout.
public func eventually(timeout: Duration = .seconds(45), _ condition: () async throws -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if (try? await condition()) == true { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return (try? await condition()) == true
}

extension TCPProxy {
    /// A proxy in front of `configuration`'s server, and that configuration pointed at it.
    public static func inFront(of configuration: ConnectionConfiguration) throws -> (TCPProxy, ConnectionConfiguration) {
        guard let port = Int(configuration.endpoint.split(separator: "=").last ?? "") else {
            throw NSError(domain: "TCPProxy", code: 2, userInfo: [NSLocalizedDescriptionKey: "no port in \(configuration.endpoint)"])
        }
        let proxy = try TCPProxy(upstreamPort: port)
        let via = try ConnectionConfiguration(configuration.conninfo.replacingOccurrences(of: ":\(port)/", with: ":\(proxy.port)/"))
        return (proxy, via)
    }
}
