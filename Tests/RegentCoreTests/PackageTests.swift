import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Testing

/// Package admission without a database: the canonical hash, the manifest rules, the limits.
@Suite("Workflow packages: admission")
struct PackageAdmissionTests {
    let limits = PackageLimits.default

    func admit(_ bytes: [UInt8], limits: PackageLimits = .default) throws -> PackageContents { try PackageContents(archive: bytes, limits: limits) }

    /// The refusal `body` throws (a RegentError), for checking its message.
    func refusal(_ body: () throws -> Void) -> String {
        do { try body() } catch let error as RegentError where error.code == .invalidInput { return error.description } catch {
            return "unexpected error: \(error)"
        }
        return "accepted"
    }

    func manifestRefusal(_ json: String) -> String { refusal { _ = try WorkflowManifest.parse(Array(json.utf8)) } }

    @Test func theSameFilesHashTheSameFromADirectoryATarAndATarGz() throws {
        let fixture = try PackageFixture(type: "orders.fulfil")
        defer { fixture.remove() }
        let fromDirectory = try PackageContents(path: fixture.directory.path, limits: limits)
        let fromTar = try admit(try fixture.tar())
        let fromTarGz = try admit(try fixture.tar(gzip: true))
        #expect(fromDirectory.contentHash == fromTar.contentHash)
        #expect(fromTar.contentHash == fromTarGz.contentHash)
        #expect(fromDirectory.canonicalArchive == fromTarGz.canonicalArchive)
        #expect(fromDirectory.contentHash.count == 64 && PackageStore.isHash(fromDirectory.contentHash))
        #expect(fromDirectory.files.map(\.path) == ["README.md", "schemas/input.json", "workflow.json"])
        // The canonical archive is a tar the system's tar reads back to the same files.
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("regent-canon-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: out) }
        try Data(fromTar.canonicalArchive).write(to: out.appendingPathComponent("p.tar"))
        try PackageFixture.run("/usr/bin/env", ["tar", "-xf", out.appendingPathComponent("p.tar").path, "-C", out.path])
        #expect(try String(contentsOf: out.appendingPathComponent("schemas/input.json"), encoding: .utf8) == #"{"type": "object"}"#)
        // Modification times and modes do not count.
        try FileManager.default.setAttributes(
            [.modificationDate: Date(timeIntervalSince1970: 1000), .posixPermissions: 0o600],
            ofItemAtPath: fixture.directory.appendingPathComponent("README.md").path)
        #expect(try PackageContents(path: fixture.directory.path, limits: limits).contentHash == fromDirectory.contentHash)
    }

    @Test func oneChangedByteChangesTheHash() throws {
        let a = try PackageFixture(type: "t", extra: "a")
        let b = try PackageFixture(type: "t", extra: "b")
        defer { a.remove(); b.remove() }
        let ha = try PackageContents(path: a.directory.path, limits: limits).contentHash
        let hb = try PackageContents(path: b.directory.path, limits: limits).contentHash
        #expect(ha != hb)
        // A renamed file with the same bytes changes it too.
        let c = try PackageFixture(files: ["workflow.json": PackageFixture.manifest(type: "t"), "schemas/input.json": #"{"type": "object"}"#, "README.txt": "# t a\n"])
        defer { c.remove() }
        #expect(try PackageContents(path: c.directory.path, limits: limits).contentHash != ha)
    }

    @Test func theHashIsTheSHA256OfTheCanonicalArchive() throws {
        #expect(SHA256.hex(bytes: Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hex(bytes: []) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        let fixture = try PackageFixture(type: "t")
        defer { fixture.remove() }
        let p = try PackageContents(path: fixture.directory.path, limits: limits)
        #expect(SHA256.hex(bytes: p.canonicalArchive) == p.contentHash)
    }

    @Test func everyManifestRuleIsEnforcedNamingTheField() {
        func m(_ steps: String, extra: String = "") -> String { #"{"workflow_type": "t"\#(extra), "steps": [\#(steps)]}"# }
        let cases: [(String, String)] = [
            (m(#"{"name": "a", "lane": "l"}, {"name": "a", "lane": "l"}"#), "steps[1].name \"a\" is used by an earlier step"),
            (m(#"{"name": "a", "lane": "l", "after": ["nope"]}"#), "steps[0].after names \"nope\""),
            (m(#"{"name": "a", "lane": "l", "after": ["c"]}, {"name": "b", "lane": "l", "after": ["a"]}, {"name": "c", "lane": "l", "after": ["b"]}"#),
             "cycle: a → c → b → a"),
            (m(#"{"name": "a", "lane": "l", "after": ["a"]}"#), "cycle: a → a"),
            (m(#"{"name": "A b", "lane": "l"}"#), "steps[0].name"),
            (m(#"{"name": "a", "lane": "bad lane"}"#), "steps[0].lane"),
            (m(#"{"name": "a", "lane": "l", "capabilities": ["x y"]}"#), "steps[0].capabilities"),
            (m(#"{"name": "a", "lane": "l", "timeout": "10"}"#), "steps[0].timeout"),
            (m(#"{"name": "a", "lane": "l", "timeout": "2d"}"#), "steps[0].timeout"),
            (m(#"{"name": "a", "lane": "l", "backoff": {"base": "soon"}}"#), "steps[0].backoff.base"),
            (m(#"{"name": "a", "lane": "l", "backoff": {"base": "1m", "max": "1s"}}"#), "steps[0].backoff"),
            (m(#"{"name": "a", "lane": "l", "max_attempts": 0}"#), "steps[0].max_attempts"),
            (m(#"{"name": "a", "lane": "l", "max_attempts": "3"}"#), "steps[0].max_attempts must be an integer"),
            (m(#"{"name": "a", "lane": "l", "retries": 3}"#), "steps[0] has an unknown key \"retries\""),
            (m(""), "a workflow has 1 to 256"),
            (#"{"workflow_type": "t"}"#, "steps is required"),
            (#"{"workflow_type": "t t", "steps": [{"name": "a", "lane": "l"}]}"#, "invalid workflow type"),
            (m(#"{"name": "a", "lane": "l"}"#, extra: #", "owner": "me""#), "unknown key \"owner\""),
            (m(#"{"name": "a", "lane": "l"}"#, extra: #", "budget": {"limit": 0, "unit": "usd"}"#), "budget.limit"),
            (m(#"{"name": "a", "lane": "l"}"#, extra: #", "budget": {"limit": 5}"#), "budget.unit is required"),
            (#"[1]"#, "workflow.json must be an object"),
            (#"{"workflow_type": "t", "steps": [{"name": "a", "lane": "l"}], "steps": []}"#, "steps"),
            ("{", "not valid JSON"),
        ]
        for (json, expected) in cases {
            let got = manifestRefusal(json)
            #expect(got.contains(expected), "\(json): expected \(expected.debugDescription), got \(got.debugDescription)")
        }
    }

    @Test func aLinearListNeedsNoAfterAndDefaultsAreFilledIn() throws {
        let m = try WorkflowManifest.parse(Array(#"""
            {"workflow_type": "t", "budget": {"limit": 2.5, "unit": "usd"}, "steps": [
              {"name": "a", "lane": "l"}, {"name": "b", "lane": "l"},
              {"name": "c", "lane": "l", "after": []}, {"name": "d", "lane": "l", "after": ["b", "c"], "timeout": "30s", "max_attempts": 7,
               "backoff": {"base": "2s", "max": "1m"}}]}
            """#.utf8))
        #expect(m.steps.map(\.after) == [[], ["a"], [], ["b", "c"]])
        #expect(m.roots.map(\.name) == ["a", "c"])
        #expect(m.steps[0].maxAttempts == 3 && m.steps[0].timeout == .seconds(300))
        #expect(m.steps[3].timeout == .seconds(30) && m.steps[3].maxAttempts == 7 && m.steps[3].backoff.base == .seconds(2))
        #expect(m.budget == WorkflowManifest.Budget(limit: 2.5, unit: "usd"))
        let normalized = try StrictJSON.parse(Array(m.normalizedJSON.utf8))
        guard case .object(let top) = normalized, case .array(let steps)? = top["steps"], case .object(let d) = steps[3] else {
            Issue.record("normalized manifest has no steps")
            return
        }
        #expect(d["timeout_ms"] == .integer(30_000) && d["backoff_max_ms"] == .integer(60_000))
    }

    @Test func eachLimitIsEnforced() throws {
        let manifest = PackageFixture.manifest(type: "t")
        func tar(_ files: [(String, String)]) -> [UInt8] {
            PackageFixture.rawTar([PackageFixture.rawEntry("workflow.json", data: Array(manifest.utf8))] + files.map { PackageFixture.rawEntry($0.0, data: Array($0.1.utf8)) })
        }
        let small = PackageLimits(maxTotalBytes: 2048, maxFiles: 3, maxPathLength: 20)
        #expect(refusal { _ = try admit(tar([("big.bin", String(repeating: "x", count: 3000))]), limits: small) }.contains("pass 2048 bytes"))
        #expect(refusal { _ = try admit(tar([("a", "1"), ("b", "2"), ("c", "3")]), limits: small) }.contains("more than 3 files"))
        #expect(refusal { _ = try admit(tar([("a/very/long/path/name.txt", "1")]), limits: small) }.contains("the limit is 20"))
        #expect(try admit(tar([("a", "1"), ("b", "2")]), limits: small).files.count == 3)
        // No workflow.json.
        #expect(refusal { _ = try admit(PackageFixture.rawTar([PackageFixture.rawEntry("x", data: [1])])) }.contains("no workflow.json"))
        // Bad limits themselves.
        #expect(refusal { try PackageLimits(maxTotalBytes: 10, maxFiles: 1, maxPathLength: 100).validate() }.contains("size limit"))
        #expect(refusal { try PackageLimits(maxTotalBytes: 4096, maxFiles: 1, maxPathLength: 999).validate() }.contains("path-length"))
    }

    @Test func unsafeEntriesAreRefusedByName() throws {
        let manifest = PackageFixture.rawEntry("workflow.json", data: Array(PackageFixture.manifest(type: "t").utf8))
        let cases: [([UInt8], String)] = [
            (PackageFixture.rawEntry("/etc/passwd", data: [1]), "absolute path"),
            (PackageFixture.rawEntry("../escape", data: [1]), "climbs out"),
            (PackageFixture.rawEntry("a/../../escape", data: [1]), "climbs out"),
            (PackageFixture.rawEntry("link", type: "2", linkName: "/etc/passwd"), "\"link\" is a link"),
            (PackageFixture.rawEntry("hard", type: "1", linkName: "workflow.json"), "\"hard\" is a link"),
            (PackageFixture.rawEntry("dev", type: "3"), "\"dev\" is a device"),
            (PackageFixture.rawEntry("blk", type: "4"), "\"blk\" is a device"),
            (PackageFixture.rawEntry("fifo", type: "6"), "\"fifo\" is a FIFO"),
            (PackageFixture.rawEntry("workflow.json", data: [1]), "holds \"workflow.json\" twice"),
            (PackageFixture.rawEntry("./workflow.json", data: [1]), "holds \"workflow.json\" twice"),
            (PackageFixture.rawEntry("a\u{1}b", data: [1]), "control character"),
            (PackageFixture.rawEntry("a//b", data: [1]), "empty or \".\" component"),
            (PackageFixture.rawEntry("workflow.json/x", data: [1]), "both as a file and as the directory"),
        ]
        for (entry, expected) in cases {
            let got = refusal { _ = try admit(PackageFixture.rawTar([manifest, entry])) }
            #expect(got.contains(expected), "expected \(expected.debugDescription), got \(got.debugDescription)")
        }
        // A damaged header.
        var damaged = PackageFixture.rawTar([manifest])
        damaged[10] ^= 0xff
        #expect(refusal { _ = try admit(damaged) }.contains("checksum"))
        // Not a tar at all.
        #expect(refusal { _ = try admit(Array("hello, this is not a tar archive".utf8)) }.contains("truncated"))
        // A symlink in a directory package.
        let fixture = try PackageFixture(type: "t")
        defer { fixture.remove() }
        try FileManager.default.createSymbolicLink(atPath: fixture.directory.appendingPathComponent("passwd").path, withDestinationPath: "/etc/passwd")
        #expect(refusal { _ = try PackageContents(path: fixture.directory.path, limits: limits) }.contains("\"passwd\" is a link"))
    }

    @Test func damagedArchivesAreRefusedNeverCrashTheReader() throws {
        // A hostile or damaged body must end in a clear refusal (or, rarely, a valid package),
        // never in a trap: truncations at every length, and random byte changes, of a tar with
        // pax and GNU long-name entries and of its gzip form.
        let manifest = Array(PackageFixture.manifest(type: "t").utf8)
        let longName = String(repeating: "d/", count: 60) + "file.txt"
        let body = " path=pax/named/file.json\n"
        let pax = Array("\(body.utf8.count + 2)\(body)".utf8)  // the length counts its own two digits
        var tar = PackageFixture.rawTar([
            PackageFixture.rawEntry("workflow.json", data: manifest),
            PackageFixture.rawEntry("pax-header", type: "x", data: pax), PackageFixture.rawEntry("ignored", data: [1, 2, 3]),
            PackageFixture.rawEntry("././@LongLink", type: "L", data: Array(longName.utf8) + [0]), PackageFixture.rawEntry("short", data: [4]),
        ])
        let parsed = try admit(tar)
        #expect(parsed.files.map(\.path).contains("pax/named/file.json") && parsed.files.map(\.path).contains(longName))
        // Without its end blocks, and cut inside the last entry's padding: still the same package.
        #expect(try admit(Array(tar.dropLast(1024 + 200))).contentHash == parsed.contentHash)
        let gz = try PackageFixture.gzip(tar)
        var rng = SystemRandomNumberGenerator()
        func survive(_ bytes: [UInt8]) {
            do { _ = try PackageContents(archive: bytes, limits: .default) } catch let error as RegentError {
                #expect(error.code == .invalidInput)
            } catch {
                Issue.record("unexpected error: \(error)")
            }
        }
        for cut in stride(from: 0, to: tar.count, by: 7) { survive(Array(tar.prefix(cut))) }
        for cut in stride(from: 0, to: gz.count, by: 3) { survive(Array(gz.prefix(cut))) }
        for _ in 0..<3000 {
            var t = tar
            for _ in 0..<Int.random(in: 1...8, using: &rng) { t[Int.random(in: 0..<t.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            survive(t)
            var g = gz
            g[Int.random(in: 0..<g.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            survive(g)
        }
        // A pax record whose length points before its own key.
        tar = PackageFixture.rawTar([PackageFixture.rawEntry("x", type: "x", data: Array("3 path=a\n".utf8)), PackageFixture.rawEntry("a", data: [1])])
        #expect(refusal { _ = try admit(tar) }.contains("pax header"))
    }

    @Test func aDecompressionBombStopsAtTheLimit() throws {
        // 64 MiB of zeros in a file entry compresses to about 64 KiB.
        let bomb = try PackageFixture.gzip(PackageFixture.rawTar([PackageFixture.rawEntry("zeros", data: [UInt8](repeating: 0, count: 64 << 20))]))
        #expect(bomb.count < 200_000)
        let got = refusal { _ = try admit(bomb) }
        #expect(got.contains("inflates to more than"), "\(got)")
        // A truncated gzip stream.
        let fixture = try PackageFixture(type: "t")
        defer { fixture.remove() }
        let gz = try fixture.tar(gzip: true)
        #expect(refusal { _ = try admit(Array(gz.prefix(gz.count / 2))) }.contains("truncated"))
    }
}

/// Deploy, route, unload and the catalog against a real server.
@Suite("Workflow packages against a real server")
struct PackageStoreTests {
    let store = PackageStore()
    let actor = AuditActor.named("test")

    func package(_ type: String, _ extra: String) throws -> PackageContents {
        let fixture = try PackageFixture(type: type, extra: extra)
        defer { fixture.remove() }
        return try PackageContents(path: fixture.directory.path, limits: .default)
    }

    func count(_ sql: PostgresQuery, _ conn: PostgresConnection) async throws -> Int {
        try await conn.query(sql).single().decode("n", as: Int.self)
    }

    @Test func deployRoutesAndReDeployIsIdempotentButRepointsTheRoute() async throws {
        try await withBootedDatabase { _, conn in
            let v1 = try package("orders", "1"), v2 = try package("orders", "2")
            let a = try await store.deploy(v1, actor: actor, on: conn)
            #expect(a.freshlyStored && a.routeChanged && a.previousHash == nil)
            let again = try await store.deploy(v1, actor: actor, on: conn)
            #expect(!again.freshlyStored && !again.routeChanged)
            let b = try await store.deploy(v2, actor: actor, on: conn)
            #expect(b.freshlyStored && b.routeChanged && b.previousHash == v1.contentHash)
            // Re-deploying the older version stores nothing and takes effect.
            let back = try await store.deploy(v1, actor: actor, on: conn)
            #expect(!back.freshlyStored && back.routeChanged && back.previousHash == v2.contentHash)
            #expect(try await store.routedHash(type: try WorkflowType("orders"), on: conn) == v1.contentHash)
            #expect(try await count("SELECT count(*) AS n FROM workflow.packages", conn) == 2)
            // The stored bytes are the canonical archive; PostgreSQL's own SHA-256 agrees with the key.
            let same = try await conn.query("SELECT count(*) AS n FROM workflow.packages WHERE encode(sha256(archive), 'hex') = content_hash")
                .single().decode("n", as: Int.self)
            #expect(same == 2)
        }
    }

    @Test func rollbackAndRollForwardAndUnknownVersionsAreRefusedWithTheList() async throws {
        try await withBootedDatabase { _, conn in
            let type = try WorkflowType("orders")
            let v1 = try package("orders", "1"), v2 = try package("orders", "2")
            _ = try await store.deploy(v1, actor: actor, on: conn)
            _ = try await store.deploy(v2, actor: actor, on: conn)
            let rollback = try await store.route(type: type, to: v1.contentHash, actor: actor, on: conn)
            #expect(rollback.routeChanged && rollback.previousHash == v2.contentHash)
            let idem = try await store.route(type: type, to: v1.contentHash, actor: actor, on: conn)
            #expect(!idem.routeChanged)
            let forward = try await store.route(type: type, to: v2.contentHash, actor: actor, on: conn)
            #expect(forward.routeChanged && forward.previousHash == v1.contentHash)
            let unknown = String(repeating: "ab", count: 32)
            do {
                _ = try await store.route(type: type, to: unknown, actor: actor, on: conn)
                Issue.record("an unknown version was routed")
            } catch let error as RegentError {
                #expect(error.code == .notFound)
                #expect(error.description.contains(v1.contentHash) && error.description.contains(v2.contentHash))
            }
            // Another type's version is unknown for this type.
            let other = try package("billing", "1")
            _ = try await store.deploy(other, actor: actor, on: conn)
            await expectCode(.notFound) { _ = try await store.route(type: type, to: other.contentHash, actor: actor, on: conn) }
            await expectCode(.invalidInput) { _ = try await store.route(type: type, to: "ABC", actor: actor, on: conn) }
            #expect(try await store.routedHash(type: type, on: conn) == v2.contentHash)
        }
    }

    @Test func unloadIsRefusedWhileRoutedAndWhilePinnedThenAllowed() async throws {
        try await withBootedDatabase { _, conn in
            let type = try WorkflowType("orders")
            let v1 = try package("orders", "1"), v2 = try package("orders", "2")
            _ = try await store.deploy(v1, actor: actor, on: conn)
            do {
                try await store.unload(type: type, hash: v1.contentHash, actor: actor, on: conn)
                Issue.record("the routed version was unloaded")
            } catch let error as RegentError {
                #expect(error.code == .conflict && error.description.contains("routed version"))
            }
            let run = try await RunStore().start(.init(workflowType: type, input: #"{"order": 1}"#), actor: actor, on: conn)
            #expect(run.created && run.packageHash == v1.contentHash)
            _ = try await store.deploy(v2, actor: actor, on: conn)
            do {
                try await store.unload(type: type, hash: v1.contentHash, actor: actor, on: conn)
                Issue.record("a pinned version was unloaded")
            } catch let error as RegentError {
                #expect(error.code == .conflict && error.description.contains(run.runID), "\(error)")
            }
            // A later route change does not move the run.
            #expect(try await conn.query("SELECT package_hash FROM workflow.runs WHERE run_id = \(run.runID)").single().decode("package_hash", as: String.self)
                == v1.contentHash)
            // Once the run has finished, nothing pins the version.
            try await conn.query("UPDATE workflow.runs SET state = 'succeeded', finished_at = now() WHERE run_id = \(run.runID)")
            try await store.unload(type: type, hash: v1.contentHash, actor: actor, on: conn)
            #expect(try await count("SELECT count(*) AS n FROM workflow.packages", conn) == 1)
            await expectCode(.notFound) { try await store.unload(type: type, hash: v1.contentHash, actor: actor, on: conn) }
            // The wrong type for a stored hash.
            await expectCode(.notFound) { try await store.unload(type: try WorkflowType("billing"), hash: v2.contentHash, actor: actor, on: conn) }
        }
    }

    @Test func aStartRacingAnUnloadNeverLeavesARunPinnedToADeletedVersion() async throws {
        try await withBootedDatabase { config, conn in
            let type = try WorkflowType("race")
            var current = try package("race", "0")
            _ = try await store.deploy(current, actor: actor, on: conn)
            var unloaded = 0, pinned = 0, inFlight = 0, started = 0, noRoute = 0, orphans = 0
            let rounds = 80
            try await PostgresConnection.withConnection(config) { starter in
                for i in 1...rounds {
                    let next = try package("race", "\(i)")
                    let old = current
                    // The start reads the route while it moves from `old` to `next` and `old` is unloaded.
                    async let start: RunStore.Started? = {
                        try await Task.sleep(for: .microseconds(Int.random(in: 0...4000)))
                        do { return try await RunStore().start(.init(workflowType: type), actor: actor, on: starter) } catch let error as RegentError
                            where error.code == .notFound { return nil }
                    }()
                    _ = try await store.deploy(next, actor: actor, on: conn)
                    do {
                        try await store.unload(type: type, hash: old.contentHash, actor: actor, on: conn)
                        unloaded += 1
                    } catch let error as RegentError where error.code == .conflict {
                        if error.message.contains("in flight") { inFlight += 1 } else if error.message.contains("pinned by") { pinned += 1 } else {
                            Issue.record("unexpected refusal: \(error)")
                        }
                    }
                    if try await start != nil { started += 1 } else { noRoute += 1 }
                    orphans += try await count(
                        """
                        SELECT count(*) AS n FROM workflow.runs r
                        WHERE r.state = 'running' AND NOT EXISTS (SELECT 1 FROM workflow.packages p WHERE p.content_hash = r.package_hash)
                        """, conn)
                    current = next
                    // Finish the runs: the next round's old version is then free unless this round's start pins it.
                    try await conn.query("UPDATE workflow.runs SET state = 'succeeded', finished_at = now() WHERE state = 'running'")
                }
            }
            #expect(orphans == 0, "an unfinished run was pinned to a deleted version")
            // A run pinned to a version that the same round unloaded must have finished before the unload: none can have.
            #expect(noRoute == 0, "a start found no route (the version it read was unloaded under it, and the retry failed)")
            #expect(started == rounds)
            #expect(unloaded + pinned + inFlight == rounds && unloaded > 0)
            print("race: \(unloaded) unloaded, \(pinned) refused as pinned, \(inFlight) refused as in flight, \(started) started")
        }
    }

    @Test func listPagesByTypeThenDeployTime() async throws {
        try await withBootedDatabase { _, conn in
            var deployed: [String: [String]] = [:]
            for (type, n) in [("b.type", 3), ("a.type", 4)] {
                for i in 0..<n {
                    let p = try package(type, "\(i)")
                    _ = try await store.deploy(p, actor: actor, on: conn)
                    deployed[type, default: []].append(p.contentHash)
                }
            }
            var seen: [PackageStore.Version] = []
            var cursor: String?
            repeat {
                let page = try await store.list(after: cursor, limit: 3, on: conn)
                seen += page.versions
                cursor = page.nextCursor
            } while cursor != nil
            #expect(seen.map(\.contentHash) == deployed["a.type"]! + deployed["b.type"]!)
            #expect(seen.filter(\.routed).map(\.contentHash) == [deployed["a.type"]!.last!, deployed["b.type"]!.last!])
            #expect(seen.allSatisfy { $0.stepCount == 2 && $0.fileCount == 3 && $0.deployedBy == "test" })
            let onlyB = try await store.list(type: try WorkflowType("b.type"), on: conn)
            #expect(onlyB.versions.count == 3 && onlyB.nextCursor == nil)
            await expectCode(.invalidInput) { _ = try await store.list(after: "garbage", on: conn) }
        }
    }

    @Test func everyChangeIsAuditedAndPublishedInItsTransaction() async throws {
        try await withBootedDatabase { _, conn in
            let type = try WorkflowType("audited")
            let v1 = try package("audited", "1"), v2 = try package("audited", "2")
            _ = try await store.deploy(v1, actor: actor, on: conn)
            _ = try await store.deploy(v2, actor: actor, on: conn)
            _ = try await store.route(type: type, to: v1.contentHash, actor: actor, on: conn)
            try await store.unload(type: type, hash: v2.contentHash, actor: actor, on: conn)
            // A refused change writes neither.
            await expectCode(.conflict) { try await store.unload(type: type, hash: v1.contentHash, actor: actor, on: conn) }
            let audit = try await conn.query(
                "SELECT action, actor, detail->>'content_hash' AS hash FROM engine.audit WHERE action LIKE 'package.%' ORDER BY id"
            ).map { "\(try $0.decode("action", as: String.self)) \(try $0.decode("actor", as: String.self)) \(try $0.decode("hash", as: String.self))" }
            #expect(audit == [
                "package.deploy test \(v1.contentHash)", "package.deploy test \(v2.contentHash)", "package.route test \(v1.contentHash)",
                "package.unload test \(v2.contentHash)",
            ])
            let events = try await conn.query(
                "SELECT topic, payload->>'content_hash' AS hash FROM engine.events WHERE topic LIKE 'package.%' ORDER BY id"
            ).map { "\(try $0.decode("topic", as: String.self)) \(try $0.decode("hash", as: String.self))" }
            #expect(events == [
                "package.deployed \(v1.contentHash)", "package.routed \(v1.contentHash)", "package.deployed \(v2.contentHash)",
                "package.routed \(v2.contentHash)", "package.routed \(v1.contentHash)", "package.unloaded \(v2.contentHash)",
            ])
        }
    }

    @Test func twoNodesSeeEachOthersRouteChangesAndACorruptedRowIsSkippedAtStart() async throws {
        let config = try await TestDatabase.shared.freshDatabase()
        let boot = try await Boot(options: .init(database: config, actor: "test")).run()
        await boot.pool.shutdown()
        try await PostgresConnection.withConnection(config) { conn in
            let good = try package("good", "1"), bad = try package("bad", "1")
            _ = try await store.deploy(good, actor: actor, on: conn)
            _ = try await store.deploy(bad, actor: actor, on: conn)
            // Tamper with one stored archive: one byte of its README changes.
            try await conn.query(
                "UPDATE workflow.packages SET archive = overlay(archive PLACING '\\x58'::bytea FROM 1030 FOR 1) WHERE content_hash = \(bad.contentHash)")
            var cluster = Cluster(config: config)
            let a = cluster.start("a"), b = cluster.start("b")
            for node in [a, b] {
                try await waitUntil("the catalog loads") { node.packageCatalog.isLoaded }
                #expect(node.packageCatalog.hashes == [good.contentHash])
                #expect(node.packageCatalog.rejected.map(\.contentHash) == [bad.contentHash])
                #expect(node.packageCatalog.rejected.first?.reason.contains("hashes to") == true)
                #expect(node.packageCatalog.routedHash("good") == good.contentHash)
            }
            // A deploy and a rollback, made through one connection, reach both nodes over the bus.
            let good2 = try package("good", "2")
            _ = try await PackageStore(publisher: a.instanceID.uuid).deploy(good2, actor: actor, on: conn)
            for node in [a, b] {
                try await waitUntil("the new version is routed on \(node.configuration.nodeName)") {
                    node.packageCatalog.routedHash("good") == good2.contentHash && node.packageCatalog.entry(good2.contentHash) != nil
                }
            }
            _ = try await store.route(type: try WorkflowType("good"), to: good.contentHash, actor: actor, on: conn)
            try await store.unload(type: try WorkflowType("good"), hash: good2.contentHash, actor: actor, on: conn)
            for node in [a, b] {
                try await waitUntil("the rollback and unload reach \(node.configuration.nodeName)") {
                    node.packageCatalog.routedHash("good") == good.contentHash && node.packageCatalog.entry(good2.contentHash) == nil
                }
            }
            await cluster.stopAll()
        }
    }
}

/// Polls `condition` for up to `timeout`; records an issue naming `what` when it never holds.
func waitUntil(_ what: String, timeout: Duration = .seconds(45), _ condition: () async throws -> Bool) async throws {
    if await !eventually(timeout: timeout, condition) { Issue.record("timed out waiting: \(what)") }
}
