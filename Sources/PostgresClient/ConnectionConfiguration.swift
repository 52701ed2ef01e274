import CLibPQ
import Foundation

/// How to reach PostgreSQL, validated once.
///
/// `conninfo` is anything libpq accepts: a `postgres://` URL (multi-host lists and
/// `target_session_attrs` pass through) or a `key=value` string. Keepalive and
/// `tcp_user_timeout` settings are on by default so a dead peer is noticed in
/// seconds rather than the kernel's two hours; a value in the URL wins over them.
public struct ConnectionConfiguration: Sendable, Hashable {
    public var conninfo: String
    /// Seconds of idleness before the first TCP keepalive probe.
    public var keepalivesIdle: Int = 5
    /// Seconds between keepalive probes.
    public var keepalivesInterval: Int = 2
    /// Unanswered probes before the connection is declared dead.
    public var keepalivesCount: Int = 3
    /// Milliseconds transmitted data may stay unacknowledged before the connection is closed.
    public var tcpUserTimeoutMilliseconds: Int = 10_000
    /// Seconds to wait while connecting.
    public var connectTimeoutSeconds: Int = 5
    /// Reported in `pg_stat_activity.application_name`.
    public var applicationName: String = "regent"
    /// How long a statement sent on an idle connection may wait for its result on the
    /// caller's own thread before the wait moves to the connection's queue. A short
    /// statement (most of a coordinator's) then completes without two thread wake-ups;
    /// a longer one holds the caller's thread at most this long. That thread belongs to
    /// Swift's small cooperative pool, so no more than ``maxCallerThreadWait`` is used, and
    /// no more than half of the pool's threads wait at once (the rest move their wait).
    /// Zero: always move.
    public var callerThreadWait: Duration = .milliseconds(1)
    public static let maxCallerThreadWait: Duration = .milliseconds(10)

    /// The hosts and ports named by `conninfo` (for error messages).
    public private(set) var endpoint: String
    /// One host of the URL and its port.
    public struct Host: Sendable, Hashable {
        public let host: String
        public let port: String
    }
    /// Every host of a multi-host list, in order, with its port (one entry for a single host).
    public private(set) var hosts: [Host] = []
    /// Connect to this one host of the list only, whatever the server's role (set by
    /// ``onlyHost(_:)``).
    var pinnedHost: Host?

    /// A copy that connects to `host` of the list alone, with `target_session_attrs=any`
    /// (to ask a standby or an old primary what it is).
    public func onlyHost(_ host: Host) -> ConnectionConfiguration {
        var copy = self
        copy.pinnedHost = host
        return copy
    }

    /// Parses `conninfo` with libpq; a malformed string is refused with libpq's reason.
    public init(_ conninfo: String) throws(PostgresError) {
        let trimmed = conninfo.trimmingCharactersInWhitespace()
        guard !trimmed.isEmpty else {
            throw PostgresError(.invalidConfiguration, "database URL is empty: pass --database-url postgres://user@host:port/db or set REGENT_DATABASE_URL")
        }
        if trimmed.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
            throw PostgresError(.invalidConfiguration, "database URL contains control characters")
        }
        var err: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(trimmed, &err) else {
            let reason = err.map { String(cString: $0) } ?? "unparseable"
            if let err { PQfreemem(err) }
            throw PostgresError(
                .invalidConfiguration,
                "malformed database URL: \(reason.trimmingCharactersInWhitespace())",
                hint: "expected postgres://user[:password]@host[:port]/database[?param=value] or key=value pairs")
        }
        var host = "(default socket)"
        var port = "5432"
        var cursor = options
        while let keyword = cursor.pointee.keyword {
            let key = String(cString: keyword)
            if let val = cursor.pointee.val {
                if key == "host" || key == "hostaddr" { host = String(cString: val) }
                if key == "port" { port = String(cString: val) }
            }
            cursor += 1
        }
        PQconninfoFree(options)
        // libpq checks ports only when it connects; say it now, before anything runs.
        for entry in port.split(separator: ",", omittingEmptySubsequences: false) where !entry.isEmpty {
            guard let number = Int(entry), (1...65535).contains(number) else {
                throw PostgresError(.invalidConfiguration, "malformed database URL: port \(SQLIdentifier.printable(String(entry))) is not a number from 1 to 65535")
            }
        }
        self.conninfo = trimmed
        self.endpoint = "host=\(host) port=\(port)"
        let hostList = host.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let portList = port.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        self.hosts = hostList.enumerated().map { i, h in
            Host(host: h, port: portList.count == hostList.count ? portList[i] : (portList.first.flatMap { $0.isEmpty ? nil : $0 } ?? "5432"))
        }
    }

    /// Keyword/value pairs for `PQconnectdbParams`; ours come first so that `conninfo` overrides them.
    var keywordValues: [(String, String)] {
        [
            ("keepalives", "1"),
            ("keepalives_idle", String(keepalivesIdle)),
            ("keepalives_interval", String(keepalivesInterval)),
            ("keepalives_count", String(keepalivesCount)),
            ("tcp_user_timeout", String(tcpUserTimeoutMilliseconds)),
            ("connect_timeout", String(connectTimeoutSeconds)),
            ("application_name", applicationName),
            ("dbname", conninfo),
        ] + (pinnedHost.map { [("host", $0.host), ("port", $0.port), ("target_session_attrs", "any")] } ?? [])
    }

    /// A copy pointing at another database on the same server.
    public func withDatabase(_ name: String) throws(PostgresError) -> ConnectionConfiguration {
        var copy = self
        copy.conninfo = Self.replacingDatabase(in: conninfo, with: name)
        _ = try ConnectionConfiguration(copy.conninfo)
        return copy
    }

    /// A copy that logs in as another user (same server, same database).
    public func withUser(_ user: String) throws(PostgresError) -> ConnectionConfiguration {
        var copy = self
        if conninfo.hasPrefix("postgres://") || conninfo.hasPrefix("postgresql://") {
            let schemeEnd = conninfo.range(of: "://")!.upperBound
            var rest = String(conninfo[schemeEnd...])
            if let at = rest.firstIndex(of: "@"), rest[..<at].firstIndex(of: "/") == nil { rest = String(rest[rest.index(after: at)...]) }
            copy.conninfo = String(conninfo[..<schemeEnd]) + user + "@" + rest
        } else {
            copy.conninfo = conninfo + " user=\(user)"
        }
        _ = try ConnectionConfiguration(copy.conninfo)
        return copy
    }

    static func replacingDatabase(in conninfo: String, with name: String) -> String {
        if conninfo.hasPrefix("postgres://") || conninfo.hasPrefix("postgresql://") {
            let schemeEnd = conninfo.range(of: "://")!.upperBound
            let rest = conninfo[schemeEnd...]
            let queryStart = rest.firstIndex(of: "?")
            let authority = rest[..<(rest.firstIndex(of: "/") ?? queryStart ?? rest.endIndex)]
            let query = queryStart.map { String(rest[$0...]) } ?? ""
            return String(conninfo[..<schemeEnd]) + authority + "/" + name + query
        }
        return conninfo + " dbname=\(name)"
    }
}

extension String {
    /// The string without leading and trailing whitespace.
    public func trimmingCharactersInWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}
