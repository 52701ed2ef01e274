import Foundation
import PostgresClient
@testable import RegentCore
import RegentTestSupport
import Testing

/// The vault (issue 32, sql/vault) against a real server: sealed round trips, versions,
/// authenticated data binding each ciphertext to its row, wrong and missing keys, a rotation
/// interrupted and resumed while secrets are written, scoped reads by lease holders, the
/// audit, and no plaintext anywhere in the database.
@Suite("The vault against a real server")
struct VaultTests {
    let actor = AuditActor.named("test")
    let keyA = VaultKey.generate()
    let keyB = VaultKey.generate()

    func path(_ p: String) -> SecretPath { try! SecretPath(p) }

    @Test func valuesRoundTripUpToTheLimitAndLargerOnesChangeNothing() async throws {
        try await withBootedDatabase { _, conn in
            let vault = VaultStore(keyring: VaultKeyring(current: keyA))
            let big = (0..<VaultStore.maxValueBytes).map { UInt8(truncatingIfNeeded: $0 &* 7919) }
            let values: [(String, [UInt8])] = [("a/empty", []), ("a/text", Array("hunter2 ✓".utf8)), ("a/binary", [0, 255, 10, 13, 0]), ("a/big", big)]
            for (p, v) in values {
                let written = try await vault.put(path(p), value: v, actor: actor, on: conn)
                #expect(written.version == 1)
                let read = try await vault.get(path(p), actor: actor, on: conn)
                #expect(read.value == v)
                #expect(read.version == 1)
            }
            await expectCode(.invalidInput) {
                _ = try await vault.put(path("a/too-big"), value: big + [1], actor: actor, on: conn)
            }
            await expectCode(.notFound) { _ = try await vault.metadata(path("a/too-big"), on: conn) }
            for bad in ["", "/a", "a/", "a//b", "a/../b", "../etc", ".hidden", "a b", "a\u{0}b", "é", String(repeating: "x", count: 129),
                        Array(repeating: "a", count: 9).joined(separator: "/")] {
                #expect(throws: RegentError.self) { try SecretPath(bad) }
            }
            let listed = try await vault.list(prefix: "a/", after: nil, limit: 10, on: conn).map(\.path)
            #expect(listed == ["a/big", "a/binary", "a/empty", "a/text"])
            #expect(try await vault.list(prefix: "a/b", after: nil, limit: 10, on: conn).map(\.path) == ["a/big", "a/binary"])
            #expect(try await vault.list(prefix: "", after: "a/binary", limit: 1, on: conn).map(\.path) == ["a/empty"])
            await expectCode(.invalidInput) { _ = try await vault.list(prefix: "a%", after: nil, limit: 10, on: conn) }
        }
    }

    @Test func versionsArePrunedToTheirMaximumAndDeletedOnesComeBackUnlessDestroyed() async throws {
        try await withBootedDatabase { _, conn in
            let vault = VaultStore(keyring: VaultKeyring(current: keyA))
            let p = path("db/password")
            for n in 1...5 { _ = try await vault.put(p, value: Array("v\(n)".utf8), maxVersions: 3, actor: actor, on: conn) }
            var meta = try await vault.metadata(p, on: conn)
            #expect(meta.currentVersion == 5)
            #expect(meta.versions.map(\.version) == [5, 4, 3])
            await expectCode(.notFound) { _ = try await vault.get(p, version: 2, actor: actor, on: conn) }
            #expect(try await vault.get(p, version: 3, actor: actor, on: conn).value == Array("v3".utf8))
            // Soft delete: refused to read, comes back.
            meta = try await vault.change(.delete, p, versions: [], actor: actor, on: conn)
            #expect(meta.versions.first?.deletedAt != nil)
            await expectCode(.notFound) { _ = try await vault.get(p, actor: actor, on: conn) }
            _ = try await vault.change(.undelete, p, versions: [5], actor: actor, on: conn)
            #expect(try await vault.get(p, actor: actor, on: conn).value == Array("v5".utf8))
            // Destroy: the ciphertext and data key are gone for good; undelete cannot help.
            _ = try await vault.change(.destroy, p, versions: [4], actor: actor, on: conn)
            let row = try await conn.query("SELECT sealed_key IS NULL AND sealed_value IS NULL AS gone FROM vault.kv_versions WHERE path = 'db/password' AND version = 4").single()
            #expect(try row.decode("gone", as: Bool.self))
            _ = try await vault.change(.undelete, p, versions: [4], actor: actor, on: conn)
            await expectCode(.notFound) { _ = try await vault.get(p, version: 4, actor: actor, on: conn) }
            await expectCode(.notFound) { _ = try await vault.change(.delete, p, versions: [9], actor: actor, on: conn) }
            // Lowering max_versions prunes at the next write; a new version never reuses a number.
            _ = try await vault.put(p, value: Array("v6".utf8), maxVersions: 1, actor: actor, on: conn)
            #expect(try await vault.metadata(p, on: conn).versions.map(\.version) == [6])
            // Expiry: an expired version is refused, naming it.
            _ = try await vault.put(path("short/lived"), value: [1], expiresIn: .seconds(1), actor: actor, on: conn)
            try await conn.query("UPDATE vault.kv_versions SET expires_at = now() - interval '1 second' WHERE path = 'short/lived'")
            await expectCode(.notFound) { _ = try await vault.get(path("short/lived"), actor: actor, on: conn) }
        }
    }

    /// A sealed value and its data key moved to another row (another path, another version)
    /// do not open: the read says the secret is corrupt, and the failure is audited.
    @Test func aCiphertextMovedToAnotherRowDoesNotOpen() async throws {
        try await withBootedDatabase { _, conn in
            let vault = VaultStore(keyring: VaultKeyring(current: keyA))
            _ = try await vault.put(path("app/one"), value: Array("first".utf8), actor: actor, on: conn)
            _ = try await vault.put(path("app/two"), value: Array("second".utf8), actor: actor, on: conn)
            _ = try await vault.put(path("app/two"), value: Array("second-v2".utf8), actor: actor, on: conn)
            try await conn.query(
                """
                UPDATE vault.kv_versions d SET sealed_key = s.sealed_key, sealed_value = s.sealed_value
                FROM vault.kv_versions s WHERE d.path = 'app/one' AND d.version = 1 AND s.path = 'app/two' AND s.version = 1
                """)
            await expectCode(.secretCorrupt) { _ = try await vault.get(path("app/one"), actor: actor, on: conn) }
            // Same path, another version.
            try await conn.query(
                """
                UPDATE vault.kv_versions d SET sealed_key = s.sealed_key, sealed_value = s.sealed_value
                FROM vault.kv_versions s WHERE d.path = 'app/two' AND d.version = 2 AND s.path = 'app/two' AND s.version = 1
                """)
            await expectCode(.secretCorrupt) { _ = try await vault.get(path("app/two"), actor: actor, on: conn) }
            // One flipped bit of a stored value.
            try await conn.query(
                "UPDATE vault.kv_versions SET sealed_value = set_byte(sealed_value, 20, get_byte(sealed_value, 20) # 1) WHERE path = 'app/two' AND version = 1")
            await expectCode(.secretCorrupt) { _ = try await vault.get(path("app/two"), version: 1, actor: actor, on: conn) }
            let failed = try await conn.query("SELECT count(*)::int AS n FROM engine.audit WHERE action = 'vault.read_failed'").single().decode("n", as: Int.self)
            #expect(failed == 3)
        }
    }

    @Test func aWrongOrMissingKeyIsRefusedAsSealedAndChangesNothing() async throws {
        try await withBootedDatabase { _, conn in
            _ = try await VaultStore(keyring: VaultKeyring(current: keyA)).put(path("k/x"), value: [1, 2, 3], actor: actor, on: conn)
            let wrong = VaultStore(keyring: VaultKeyring(current: keyB))
            await expectCode(.vaultSealed) { _ = try await wrong.get(path("k/x"), actor: actor, on: conn) }
            do {
                _ = try await wrong.put(path("k/y"), value: [9], actor: actor, on: conn)
                Issue.record("a wrong key must not seal")
            } catch let error as RegentError {
                #expect(error.code == .vaultSealed)
                #expect(error.message.contains("wrong key file"))
                #expect(error.message.contains(keyB.id) && error.message.contains(keyA.id))
            }
            let none = VaultStore(keyring: nil)
            await expectCode(.vaultSealed) { _ = try await none.get(path("k/x"), actor: actor, on: conn) }
            await expectCode(.vaultSealed) { _ = try await none.put(path("k/z"), value: [9], actor: actor, on: conn) }
            #expect(try await none.metadata(path("k/x"), on: conn).currentVersion == 1, "metadata needs no key")
            #expect(try await conn.query("SELECT count(*)::int AS n FROM vault.kv_meta").single().decode("n", as: Int.self) == 1)
            #expect(try await conn.query("SELECT count(*)::int AS n FROM vault.keys").single().decode("n", as: Int.self) == 1)
            let status = try await wrong.status(on: conn)
            #expect(!status.canWrite)
            #expect(status.keys.map(\.keyID) == [keyA.id])
        }
    }

    /// A rotation stopped after one page leaves a vault every node holding both keys reads
    /// whole, and that takes writes (sealed under the new key); run again, it finishes, retires
    /// the old key, and the new key alone opens everything.
    @Test func aRotationInterruptedAndResumedKeepsEverySecretReadable() async throws {
        try await withBootedDatabase { _, conn in
            let old = VaultStore(keyring: VaultKeyring(current: keyA))
            var expected: [String: [UInt8]] = [:]
            for n in 0..<25 {
                let v = Array("secret-\(n)".utf8)
                expected["r/s\(n)"] = v
                _ = try await old.put(path("r/s\(n)"), value: v, actor: actor, on: conn)
            }
            // The old key alone cannot be the destination, and a key the vault does not use cannot start one.
            await expectCode(.vaultSealed) {
                _ = try await VaultRotation(keyring: VaultKeyring(current: keyB), newKey: VaultKey.generate()).run(actor: actor, on: conn)
            }
            let rotation = try VaultRotation(keyring: VaultKeyring(current: keyA), newKey: keyB, pageSize: 10)
            let first = try await rotation.run(actor: actor, maxPages: 1, on: conn)
            #expect(first.resealed == 10 && !first.finished && first.remaining == 15)
            // Mid-rotation: nodes with both keys read all and write under the new one.
            let both = VaultStore(keyring: VaultKeyring(current: keyB, previous: [keyA]))
            for (p, v) in expected { #expect(try await both.get(path(p), actor: actor, on: conn).value == v) }
            _ = try await both.put(path("r/during"), value: Array("during".utf8), actor: actor, on: conn)
            expected["r/during"] = Array("during".utf8)
            #expect(try await both.metadata(path("r/during"), on: conn).versions.first?.keyID == keyB.id)
            // A node that was not given the new key cannot write any more, and says why.
            await expectCode(.vaultSealed) { _ = try await old.put(path("r/late"), value: [1], actor: actor, on: conn) }
            // Resumed: goes on where it stopped.
            let second = try await rotation.run(actor: actor, on: conn)
            #expect(second.finished && second.remaining == 0 && second.resealed == 15)
            let onlyNew = VaultStore(keyring: VaultKeyring(current: keyB))
            for (p, v) in expected { #expect(try await onlyNew.get(path(p), actor: actor, on: conn).value == v) }
            let status = try await onlyNew.status(on: conn)
            #expect(status.keys.first { $0.keyID == keyA.id }?.state == "retired")
            #expect(status.keys.first { $0.keyID == keyA.id }?.versions == 0)
            #expect(status.keys.first { $0.keyID == keyB.id }?.state == "active")
            #expect(status.canWrite)
            // Running it again is a no-op; rotating back to a retired key is refused.
            #expect(try await rotation.run(actor: actor, on: conn).resealed == 0)
            await expectCode(.invalidInput) { _ = try await VaultRotation(keyring: VaultKeyring(current: keyB), newKey: keyA).run(actor: actor, on: conn) }
            let actions = try await conn.query("SELECT action FROM engine.audit WHERE action LIKE 'vault.key%' ORDER BY id").map { try $0.decode("action", as: String.self) }
            #expect(actions == ["vault.key_registered", "vault.key_rotation_started", "vault.key_rotation_finished"])
        }
    }

    /// A rotation and writes racing: every version written while pages move is either moved or
    /// sealed under the new key, and the old key is retired only when none is left under it.
    @Test func writesRacingARotationAllEndUnderTheNewKey() async throws {
        try await withBootedDatabase { config, conn in
            let both = VaultStore(keyring: VaultKeyring(current: keyB, previous: [keyA]))
            let old = VaultStore(keyring: VaultKeyring(current: keyA))
            for n in 0..<40 { _ = try await old.put(path("race/s\(n)"), value: [UInt8(n)], actor: actor, on: conn) }
            let rotation = try VaultRotation(keyring: VaultKeyring(current: keyA), newKey: keyB, pageSize: 5)
            let actor = self.actor
            async let writes: Void = PostgresConnection.withConnection(config) { w in
                for n in 0..<40 { _ = try await both.put(SecretPath("race/s\(n)"), value: [UInt8(n), 1], actor: actor, on: w) }
            }
            let progress = try await rotation.run(actor: actor, on: conn)
            try await writes
            let final = try await rotation.run(actor: actor, on: conn)
            #expect(progress.finished || final.finished)
            let left = try await conn.query("SELECT count(*)::int AS n FROM vault.kv_versions WHERE key_id <> \(keyB.id)").single().decode("n", as: Int.self)
            #expect(left == 0)
            let onlyNew = VaultStore(keyring: VaultKeyring(current: keyB))
            for n in 0..<40 { #expect(try await onlyNew.get(path("race/s\(n)"), actor: actor, on: conn).value == [UInt8(n), 1]) }
        }
    }

    /// No plaintext byte sequence of a planted secret anywhere in the vault's tables, the audit
    /// or the events, whatever was done with it.
    @Test func noPlaintextInTheDatabase() async throws {
        try await withBootedDatabase { _, conn in
            let planted = "PLANTED-\(UUID().uuidString)"
            let vault = VaultStore(keyring: VaultKeyring(current: keyA))
            _ = try await vault.put(path("plant/a"), value: Array(planted.utf8), actor: actor, on: conn)
            _ = try await vault.put(path("plant/a"), value: Array((planted + "-2").utf8), actor: actor, on: conn)
            _ = try await vault.get(path("plant/a"), purpose: "test", actor: actor, on: conn)
            _ = try await VaultRotation(keyring: VaultKeyring(current: keyA), newKey: keyB).run(actor: actor, on: conn)
            let hex = Array(planted.utf8).map { String(format: "%02x", $0) }.joined()
            for table in ["vault.keys", "vault.kv_meta", "vault.kv_versions", "vault.execution_grants", "engine.audit", "engine.events"] {
                let hits = try await conn.query(
                    PostgresQuery(unsafeSQL: "SELECT count(*)::int AS n FROM \(table) t WHERE position($1 in t::text) > 0 OR position($2 in t::text) > 0",
                                  binds: [.text(planted), .text(hex)])
                ).single().decode("n", as: Int.self)
                #expect(hits == 0, "plaintext found in \(table)")
            }
            let sealedHits = try await conn.query(
                "SELECT count(*)::int AS n FROM vault.kv_versions WHERE position(\(PostgresBytes(Array(planted.utf8))) in sealed_value) > 0").single().decode("n", as: Int.self)
            #expect(sealedHits == 0)
        }
    }

    @Test func everyReadAndWriteIsAuditedWithoutTheValue() async throws {
        try await withBootedDatabase { _, conn in
            let vault = VaultStore(keyring: VaultKeyring(current: keyA))
            _ = try await vault.put(path("au/x"), value: Array("topsecret".utf8), actor: .named("alice"), on: conn)
            _ = try await vault.get(path("au/x"), purpose: "incident 42", actor: .named("bob"), on: conn)
            _ = try await vault.change(.delete, path("au/x"), versions: [1], actor: .named("carol"), on: conn)
            await expectCode(.invalidInput) { _ = try await vault.get(path("au/x"), purpose: "bad\u{7}", actor: actor, on: conn) }
            let rows = try await conn.query(
                "SELECT actor, action, detail->>'path' AS path, detail->>'version' AS version, detail->>'purpose' AS purpose, detail::text AS d FROM engine.audit WHERE action LIKE 'vault.secret%' OR action LIKE 'vault.versions%' ORDER BY id")
            let got = try rows.map { [try $0.decode("actor", as: String.self), try $0.decode("action", as: String.self), try $0.decode("path", as: String.self)] }
            #expect(got == [["alice", "vault.secret_written", "au/x"], ["bob", "vault.secret_read", "au/x"], ["carol", "vault.versions_deleted", "au/x"]])
            #expect(try rows[1].decodeOptional("purpose", as: String.self) == "incident 42")
            #expect(try rows[1].decodeOptional("version", as: String.self) == "1")
            for row in rows { #expect(try !row.decode("d", as: String.self).contains("topsecret")) }
        }
    }

    /// A worker reads exactly what its leased step was granted (on the execution, or in the
    /// manifest step), with the lease's epoch, instance and token; not another secret, not
    /// after the lease was reclaimed, not with another instance or token. Refusals are audited.
    @Test func leaseHoldersReadOnlyTheirGrantsWhileTheLeaseIsCurrent() async throws {
        try await withBootedDatabase { _, conn in
            let vault = VaultStore(keyring: VaultKeyring(current: keyA))
            for p in ["pay/stripe", "pay/other", "mail/smtp"] { _ = try await vault.put(path(p), value: Array("value-of-\(p)".utf8), actor: actor, on: conn) }
            let ns = try Namespace("jobs"), lane = try Lane("work")
            let w1 = try WorkerInstanceID("w1"), w2 = try WorkerInstanceID("w2")
            for w in [w1, w2] {
                _ = try await WorkerRegistry().register(
                    namespace: ns, workerInstanceID: w, workerID: try WorkerID("pay"), lanes: [lane], capabilities: [], livenessTTL: .seconds(120), on: conn)
            }
            var request = EnqueueRequest(lane: lane)
            request.secrets = [path("pay/stripe")]
            let store = LeaseStore(token: nil)
            let made = try await store.enqueue(namespace: ns, [request, EnqueueRequest(lane: lane)], on: conn)
            let leases = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w1, capabilities: [], leaseDuration: .seconds(30), limit: 2, on: conn)
            let granted = try #require(leases.first { $0.executionID == made[0].executionID })
            let plain = try #require(leases.first { $0.executionID == made[1].executionID })
            func read(_ p: String, _ lease: Lease, worker: WorkerInstanceID = w1, epoch: LeaseEpoch? = nil, token: String? = nil) async throws -> SecretValue {
                try await vault.leaseRead(path(p), executionID: lease.executionID, epoch: epoch ?? lease.epoch, worker: worker, token: token, actor: actor, on: conn)
            }
            #expect(try await read("pay/stripe", granted).value == Array("value-of-pay/stripe".utf8))
            await expectCode(.forbidden) { _ = try await read("pay/other", granted) }
            await expectCode(.forbidden) { _ = try await read("pay/stripe", plain) }
            await expectCode(.forbidden) { _ = try await read("pay/stripe", granted, worker: w2) }
            await expectCode(.forbidden) { _ = try await read("pay/stripe", granted, epoch: LeaseEpoch(granted.epoch.value + 1)) }
            await expectCode(.forbidden) { _ = try await read("pay/stripe", granted, token: "0123456789abcdef") }
            // The lease lapses and another worker reclaims it: the first holder reads nothing more.
            try await conn.query("UPDATE workflow.leases SET lease_expires_at = now() - interval '1 second' WHERE execution_id = \(granted.executionID)")
            await expectCode(.forbidden) { _ = try await read("pay/stripe", granted) }
            _ = try await conn.query(LeaseExpiryScanner.reclaim(pageSize: 100, leader: InstanceID(UUID()), term: Term(1), since: Date(timeIntervalSince1970: 0)))
            let again = try await store.claim(namespace: ns, lanes: [lane], workerInstanceID: w2, capabilities: [], leaseDuration: .seconds(30), limit: 1, on: conn)
            let reclaimed = try #require(again.first { $0.executionID == granted.executionID })
            await expectCode(.forbidden) { _ = try await read("pay/stripe", granted) }
            #expect(try await read("pay/stripe", reclaimed, worker: w2).version == 1)
            let denied = try await conn.query("SELECT count(*)::int AS n FROM engine.audit WHERE action = 'vault.read_denied'").single().decode("n", as: Int.self)
            #expect(denied == 7)
            // A manifest step's secrets.
            let f = try await RunFixture.deploy(
                "vaulted", steps: [#"{"name": "charge", "lane": "work", "secrets": ["pay/stripe", "mail/smtp"]}"#, #"{"name": "notify", "lane": "work"}"#], on: conn)
            let run = try await f.start()
            let charge = try await f.claimStep("charge", run: run.runID)
            let asStep = { (p: String, lease: Lease) async throws -> SecretValue in
                try await vault.leaseRead(self.path(p), executionID: lease.executionID, epoch: lease.epoch, worker: f.worker, token: nil, actor: self.actor, on: conn)
            }
            #expect(try await asStep("mail/smtp", charge).value == Array("value-of-mail/smtp".utf8))
            await expectCode(.forbidden) { _ = try await asStep("pay/other", charge) }
            _ = try await f.complete(charge)
            await expectCode(.forbidden) { _ = try await asStep("pay/stripe", charge) }
            let notify = try await f.claimStep("notify", run: run.runID)
            await expectCode(.forbidden) { _ = try await asStep("pay/stripe", notify) }
            // Grants are checked where they are made.
            #expect(throws: RegentError.self) {
                try WorkflowManifest.parse(Array(PackageFixture.manifest(type: "bad", steps: [#"{"name": "a", "lane": "w", "secrets": ["../x"]}"#]).utf8))
            }
            #expect(throws: RegentError.self) { try VaultStore.checkGrant(Array(repeating: "a", count: 2), at: "secrets") }
        }
    }

    @Test func keyFilesAreCheckedAndWrittenPrivately() throws {
        let dir = NSTemporaryDirectory() + "regent-vault-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/key"
        let key = VaultKey.generate()
        try VaultKey.write(key, to: file)
        let mode = try #require(try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int)
        #expect(mode == 0o600)
        #expect(try VaultKey.load(file: file).id == key.id)
        #expect(throws: RegentError.self) { try VaultKey.write(VaultKey.generate(), to: file) }
        #expect(try VaultKey.load(file: file).id == key.id, "never overwritten")
        // Raw bytes work too; other sizes, open modes, garbage and missing files do not.
        let raw = dir + "/raw"
        FileManager.default.createFile(atPath: raw, contents: Data(repeating: 7, count: 32), attributes: [.posixPermissions: 0o600])
        #expect(try VaultKey.load(file: raw).id.hasPrefix("k-"))
        let short = dir + "/short"
        FileManager.default.createFile(atPath: short, contents: Data(repeating: 7, count: 31), attributes: [.posixPermissions: 0o600])
        #expect(throws: RegentError.self) { try VaultKey.load(file: short) }
        let open = dir + "/open"
        FileManager.default.createFile(atPath: open, contents: Data(repeating: 7, count: 32), attributes: [.posixPermissions: 0o644])
        do {
            _ = try VaultKey.load(file: open)
            Issue.record("a group/world-readable key file must be refused")
        } catch {
            #expect(error.message.contains("mode 644"))
            #expect(error.hint?.contains("chmod 600") == true)
        }
        #expect(throws: RegentError.self) { try VaultKey.load(file: dir + "/missing") }
        #expect(throws: RegentError.self) { try VaultKeyring.load(keyFile: nil, previousKeyFile: nil, environment: ["REGENT_VAULT_KEY": "not base64!"]) }
        #expect(throws: RegentError.self) {
            try VaultKeyring.load(keyFile: nil, previousKeyFile: nil, environment: ["REGENT_VAULT_KEY": Data(repeating: 1, count: 16).base64EncodedString()])
        }
        #expect(try VaultKeyring.load(keyFile: nil, previousKeyFile: nil, environment: [:]) == nil)
        #expect(try VaultKeyring.load(keyFile: nil, previousKeyFile: nil, environment: ["REGENT_VAULT_KEY": key.base64])?.current.id == key.id)
        #expect(throws: RegentError.self) { try VaultKeyring.load(keyFile: nil, previousKeyFile: raw, environment: [:]) }
        // The id says nothing of the key, and differs between keys.
        #expect(key.id != VaultKey.generate().id)
        #expect(!key.base64.contains(String(key.id.dropFirst(2))))
    }
}
