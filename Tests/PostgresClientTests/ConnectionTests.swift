import Foundation
@testable import PostgresClient
import RegentTestSupport
import Synchronization
import Testing

@Suite("PostgreSQL client against a real server")
struct ConnectionTests {
    @Test func typesRoundTripIncludingNullsAndUnicode() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            let id = UUID()
            let when = Date(timeIntervalSince1970: 1_763_000_000.123456)
            let text = "héllo, 世界 🚀 \"quoted\" \\ back"
            let bytes = PostgresBytes([0, 1, 2, 250, 255])
            let tags = ["a", "b c", "d,e", "\"q\"", "世界", ""]
            let rows = try await conn.query(
                """
                SELECT \(text)::text AS t, \(42)::int AS i, \(Int64.max)::bigint AS big, \(true)::bool AS yes, \(false)::bool AS no,
                       \(id)::uuid AS id, \(when)::timestamptz AS ts, \(PostgresJSON(#"{"k": [1, "é"]}"#))::jsonb AS doc,
                       \(bytes) AS raw, \(tags)::text[] AS tags, NULL::text AS missing, \(Optional<String>.none)::text AS bound_null
                """)
            let row = try rows.single()
            #expect(try row.decode("t", as: String.self) == text)
            #expect(try row.decode("i", as: Int.self) == 42)
            #expect(try row.decode("big", as: Int64.self) == Int64.max)
            #expect(try row.decode("yes", as: Bool.self))
            #expect(try row.decode("no", as: Bool.self) == false)
            #expect(try row.decode("id", as: UUID.self) == id)
            let ts = try row.decode("ts", as: Date.self)
            #expect(abs(ts.timeIntervalSince(when)) < 0.000_001)
            #expect(try row.decode("doc", as: PostgresJSON.self).text == #"{"k": [1, "é"]}"#)
            #expect(try row.decode("raw", as: PostgresBytes.self) == bytes)
            #expect(try row.decode("tags", as: [String].self) == tags)
            #expect(try row.decodeOptional("missing", as: String.self) == nil)
            #expect(try row.decodeOptional("bound_null", as: String.self) == nil)
        }
    }

    /// The hand-written uuid codec (no Foundation formatter on the hot path) against the server's
    /// own: 500 server-made uuids decode to what Foundation parses, our text of each is the
    /// server's text, binds back equal, and malformed text is refused.
    @Test func uuidsDecodeAndBindExactlyAsTheServerWritesThem() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            let rows = try await conn.query("SELECT u AS id, u::text AS text FROM (SELECT gen_random_uuid() AS u FROM generate_series(1, 500)) s")
            var ids: [UUID] = []
            for row in rows {
                let text: String = try row.decode("text")
                let id: UUID = try row.decode("id")
                #expect(id == UUID(uuidString: text))
                #expect(id.lowercasedText == text)
                #expect(UUID(canonicalText: text.uppercased()) == id)
                ids.append(id)
            }
            #expect(ids.count == 500)
            let same = try await conn.query("SELECT bool_and(a = b) AS ok FROM unnest(\(ids.map(\.lowercasedText))::uuid[], \(ids.map(\.uuidString))::uuid[]) AS t(a, b)")
                .single().decode("ok", as: Bool.self)
            #expect(same)
            for bad in ["", "0", "6f1c2b9e-8a4d-4f3e-9b2a-1c2d3e4f5a6", "6f1c2b9e-8a4d-4f3e-9b2a-1c2d3e4f5a6b7", "6f1c2b9e8a4d-4f3e-9b2a-1c2d3e4f5a6b7",
                        "6f1c2b9e-8a4d-4f3e-9b2a-1c2d3e4f5a6g", "6f1c2b9e-8a4d-4f3e-9b2a+1c2d3e4f5a6b", "6f1c2b9e-8a4d-4f3e-9b2a-1c2d3e4f5a6é"] {
                #expect(UUID(canonicalText: bad) == nil, "\(bad) must be refused")
            }
        }
    }

    @Test func timestampsWithOffsetsDecodeToTheSameInstant() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            try await conn.query("SET TimeZone TO 'Asia/Kolkata'")
            let row = try await conn.query("SELECT '2026-01-02 03:04:05.5+00'::timestamptz AS ts").single()
            let ts = try row.decode("ts", as: Date.self)
            #expect(ts.timeIntervalSince1970 == 1_767_323_045.5)
        }
    }

    @Test func nullOrWrongTypeGivesAnErrorNamingTheColumn() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            let row = try await conn.query("SELECT NULL::int AS n, 'abc'::text AS s").single()
            do throws(PostgresError) {
                _ = try row.decode("n", as: Int.self)
                Issue.record("decoding NULL as Int must fail")
            } catch {
                #expect(error.message.contains("n is NULL"))
            }
            do throws(PostgresError) {
                _ = try row.decode("s", as: Int.self)
                Issue.record("decoding 'abc' as Int must fail")
            } catch {
                #expect(error.code == .decoding)
                #expect(error.message.contains("column s"))
            }
            expectPostgresError(.decoding) { try row.decode("nope", as: Int.self) }
        }
    }

    @Test func uniqueViolationCarriesSQLState() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            try await conn.executeScript("CREATE TABLE t (id int PRIMARY KEY)")
            try await conn.query("INSERT INTO t VALUES (\(1))")
            do {
                try await conn.query("INSERT INTO t VALUES (\(1))", purpose: "insert duplicate")
                Issue.record("duplicate insert must fail")
            } catch let error as PostgresError {
                #expect(error.sqlState == "23505")
                #expect(error.isUniqueViolation)
                #expect(error.code == .server)
                #expect(error.detail?.contains("already exists") == true)
                #expect(error.description.hasPrefix("insert duplicate: "))
            }
            // The connection stays usable after a statement error.
            #expect(try await conn.query("SELECT count(*) AS n FROM t").single().decode("n", as: Int.self) == 1)
        }
    }

    @Test func transactionRollsBackWhenBodyThrows() async throws {
        struct Boom: Error {}
        try await TestDatabase.shared.withConnection { conn, _ in
            try await conn.executeScript("CREATE TABLE t (v text)")
            await #expect(throws: Boom.self) {
                try await conn.withTransaction { tx in
                    try await tx.query("INSERT INTO t VALUES (\("x"))")
                    throw Boom()
                }
            }
            #expect(try await conn.query("SELECT count(*) AS n FROM t").single().decode("n", as: Int.self) == 0)
            try await conn.withTransaction(isolation: .serializable) { tx in
                try await tx.query("INSERT INTO t VALUES (\("y"))")
            }
            #expect(try await conn.query("SELECT count(*) AS n FROM t").single().decode("n", as: Int.self) == 1)
        }
    }

    @Test func injectionAttemptIsBoundNotExecuted() async throws {
        try await TestDatabase.shared.withConnection { conn, _ in
            try await conn.executeScript("CREATE TABLE t (v text)")
            let evil = "x'); DROP TABLE t; --"
            try await conn.query("INSERT INTO t VALUES (\(evil))")
            #expect(try await conn.query("SELECT v FROM t").single().decode("v", as: String.self) == evil)
            expectPostgresError(.invalidConfiguration) { try SQLIdentifier("t; DROP TABLE t") }
            expectPostgresError(.invalidConfiguration) { try SQLIdentifier("") }
            expectPostgresError(.invalidConfiguration) { try SQLIdentifier("Upper") }
            expectPostgresError(.invalidConfiguration) { try SQLIdentifier(String(repeating: "a", count: 64)) }
        }
    }

    @Test func malformedURLIsRefusedWithReason() {
        expectPostgresError(.invalidConfiguration) { try ConnectionConfiguration("postgres://host:notaport/db") }
        expectPostgresError(.invalidConfiguration) { try ConnectionConfiguration("") }
        expectPostgresError(.invalidConfiguration) { try ConnectionConfiguration("host=a port") }
        do {
            _ = try ConnectionConfiguration("postgresql://u@h/db?bogus_option=1")
            Issue.record("unknown URL parameter must be refused")
        } catch {
            #expect(error.code == .invalidConfiguration)
            #expect(error.message.contains("bogus_option"))
        }
        // Multi-host strings and target_session_attrs pass through to libpq.
        #expect((try? ConnectionConfiguration("postgres://a:5432,b:5433/db?target_session_attrs=read-write")) != nil)
    }

    @Test func unreachableServerNamesHostAndPort() async throws {
        var config = try ConnectionConfiguration("postgres://nobody@127.0.0.1:1/db")
        config.connectTimeoutSeconds = 2
        do {
            _ = try await PostgresConnection.connect(config)
            Issue.record("connecting to port 1 must fail")
        } catch let error as PostgresError {
            #expect(error.code == .connectionFailed)
            #expect(error.message.contains("127.0.0.1"))
            #expect(error.message.contains("port=1"))
        }
    }

    @Test func keepaliveSettingsReachTheSession() async throws {
        var config = try await TestDatabase.shared.freshDatabase()
        config.tcpUserTimeoutMilliseconds = 7_000
        config.keepalivesIdle = 9
        config.keepalivesInterval = 4
        config.keepalivesCount = 5
        let conn = try await PostgresConnection.connect(config)
        // The client socket itself carries the settings (the server cannot see them).
        func option(_ level: Int32, _ name: Int32) -> Int32 {
            var value: Int32 = -1
            var size = socklen_t(MemoryLayout<Int32>.size)
            _ = getsockopt(conn.socketDescriptor, level, name, &value, &size)
            return value
        }
        let tcp = Int32(IPPROTO_TCP)
        #expect(option(SOL_SOCKET, SO_KEEPALIVE) == 1)
        #expect(option(tcp, TCP_KEEPIDLE) == 9)
        #expect(option(tcp, TCP_KEEPINTVL) == 4)
        #expect(option(tcp, TCP_KEEPCNT) == 5)
        #expect(option(tcp, 18 /* TCP_USER_TIMEOUT */) == 7_000)
        let row = try await conn.query("SELECT current_setting('application_name') AS app").single()
        #expect(try row.decode("app", as: String.self) == "regent")
        await conn.close()
    }
}
