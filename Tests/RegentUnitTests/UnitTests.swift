import CivilTime
import Foundation
@testable import PostgresClient
@testable import RegentCore
import Testing

@Suite("Pure logic, no database")
struct PureLogicTests {
    @Test func sha256MatchesKnownVectors() {
        #expect(SHA256.hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(
            SHA256.hex(String(repeating: "a", count: 1000))
                == "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
    }

    @Test func queryInterpolationBindsValues() throws {
        let name = "x'; DROP TABLE t; --"
        let q: PostgresQuery = "SELECT * FROM t WHERE a = \(name) AND b = \(3) AND c = \(Optional<Int>.none)"
        #expect(q.sql == "SELECT * FROM t WHERE a = $1 AND b = $2 AND c = $3")
        #expect(q.binds == [.text(name), .text("3"), .null])
        let id = try SQLIdentifier("workflow")
        let ddl: PostgresQuery = "LISTEN \(identifier: id)"
        #expect(ddl.sql == "LISTEN \"workflow\"")
    }

    @Test func textArraysRoundTrip() {
        let values = ["a", "b c", "d,e", "\"q\"", "back\\slash", "", "NULL"]
        #expect(PostgresArray.parse(PostgresArray.format(values)) == values)
        #expect(PostgresArray.parse("{}") == [])
        #expect(PostgresArray.parse("{a,NULL}") == nil)
        #expect(PostgresArray.parse("nope") == nil)
    }

    @Test func timestampsFormatAndParse() {
        let date = Date(timeIntervalSince1970: 1_763_000_000.25)
        #expect(PostgresTimestamp.parse(PostgresTimestamp.format(date)) == date)
        #expect(PostgresTimestamp.parse("2026-01-02 08:34:05+05:30")?.timeIntervalSince1970 == 1_767_323_045)
        #expect(PostgresTimestamp.parse("1969-12-31 23:59:59+00")?.timeIntervalSince1970 == -1)
        #expect(PostgresTimestamp.parse("garbage") == nil)
    }

    @Test func migrationCatalogIsEmbeddedAndOrdered() {
        let catalog = MigrationCatalog.builtIn
        #expect(catalog.schemas.contains("engine"))
        #expect(catalog.migrations(for: "engine").first?.version == 1)
        #expect(catalog.migrations(for: "engine").first?.sql.contains("CREATE TABLE engine.leadership") == true)
        for schema in catalog.schemas {
            #expect(catalog.migrations(for: schema).map(\.version) == Array(1...catalog.latestVersion(of: schema)))
        }
    }

    @Test func databaseNameReplacement() {
        #expect(
            ConnectionConfiguration.replacingDatabase(in: "postgres://u@h:5/old?sslmode=disable", with: "new")
                == "postgres://u@h:5/new?sslmode=disable")
        #expect(ConnectionConfiguration.replacingDatabase(in: "postgres://u@h", with: "new") == "postgres://u@h/new")
        #expect(ConnectionConfiguration.replacingDatabase(in: "host=h", with: "n") == "host=h dbname=n")
    }
}

@Suite("Status document")
struct StatusDocumentTests {
    @Test func jsonHasTheDocumentedKeysAndLowercaseUUIDs() throws {
        let id = InstanceID()
        let now = Date(timeIntervalSince1970: 1_763_000_000)
        let status = ClusterStatus(
            leader: .init(instanceID: id, nodeName: "n1", host: "h", pid: 42, httpAddress: "10.0.0.1:8080", term: 7, electedAt: now, backendPID: 99, heartbeatStale: false),
            term: 7,
            instances: [.init(instanceID: id, nodeName: "n1", host: "h", pid: 42, version: "0.1.0", httpAddress: nil, startedAt: now, lastHeartbeat: now,
                              heartbeatAgeMs: 12, stale: false, isLeader: true, canSignalBackends: true)])
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        let doc = try #require(try JSONSerialization.jsonObject(with: encoder.encode(status)) as? [String: Any])
        let leader = try #require(doc["leader"] as? [String: Any])
        #expect(Set(leader.keys) == ["instance_id", "node_name", "host", "pid", "http_address", "term", "elected_at", "backend_pid", "heartbeat_stale"])
        #expect(leader["instance_id"] as? String == id.uuidString.lowercased())
        let instance = try #require((doc["instances"] as? [[String: Any]])?.first)
        #expect(Set(instance.keys) == ["instance_id", "node_name", "host", "pid", "version", "http_address", "started_at", "last_heartbeat",
                                        "heartbeat_age_ms", "stale", "is_leader", "can_signal_backends"])
        #expect(doc["term"] as? Int == 7)
        // And it reads back.
        #expect(try JSONDecoder.iso.decode(ClusterStatus.self, from: encoder.encode(status)) == status)
    }
}

extension JSONDecoder {
    static var iso: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}
