import EmbeddedPostgres
import Foundation
import Testing

@Suite("Private PostgreSQL")
struct EmbeddedPostgresTests {
    @Test func missingServerBinariesNameThePackageToInstall() throws {
        let empty = NSTemporaryDirectory() + "regent-no-pg-\(getpid())"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: empty) }
        do {
            _ = try EmbeddedPostgres.locateBinaries(pgConfig: "regent-no-such-pg-config", installRoot: empty)
            Issue.record("locating binaries in an empty tree must fail")
        } catch {
            #expect(error.description.contains("apt-get install -y postgresql"))
            #expect(error.description.contains("initdb"))
        }
    }

    @Test func binariesAreFoundOnThisMachine() throws {
        let dir = try EmbeddedPostgres.locateBinaries()
        #expect(FileManager.default.isExecutableFile(atPath: dir + "/initdb"))
    }
}
