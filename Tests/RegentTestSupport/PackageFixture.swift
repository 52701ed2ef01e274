import Foundation

/// Workflow packages for tests: a directory of files, and the same files packed by the
/// system's `tar` (plain and gzip-compressed), or raw tar bytes built entry by entry (for
/// archives no honest tool would write: links, devices, absolute paths, duplicates).
public struct PackageFixture {
    public let directory: URL

    /// A manifest of `type` with the steps given (JSON objects), linear by default.
    public static func manifest(type: String, steps: [String] = [#"{"name": "first", "lane": "work"}"#, #"{"name": "second", "lane": "work"}"#])
        -> String
    {
        #"{"workflow_type": "\#(type)", "steps": [\#(steps.joined(separator: ", "))]}"#
    }

    /// Writes `files` (relative path → contents) into a new temporary directory.
    public init(files: [String: String]) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("regent-pkg-\(UUID().uuidString.prefix(8))")
        for (path, text) in files {
            let url = directory.appendingPathComponent(path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(text.utf8).write(to: url)
        }
    }

    /// A package of `type` with a manifest and two more files.
    public init(type: String, extra: String = "v1") throws {
        try self.init(files: [
            "workflow.json": Self.manifest(type: type), "schemas/input.json": #"{"type": "object"}"#, "README.md": "# \(type) \(extra)\n",
        ])
    }

    /// The files packed by `tar -c` (with `-z`: gzip-compressed), from inside the directory.
    public func tar(gzip: Bool = false) throws -> [UInt8] {
        let out = directory.deletingLastPathComponent().appendingPathComponent(directory.lastPathComponent + (gzip ? ".tar.gz" : ".tar"))
        try Self.run("/usr/bin/env", ["tar", gzip ? "-czf" : "-cf", out.path, "-C", directory.path, "."])
        defer { try? FileManager.default.removeItem(at: out) }
        return [UInt8](try Data(contentsOf: out))
    }

    public func remove() { try? FileManager.default.removeItem(at: directory) }

    public static func run(_ tool: String, _ arguments: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = arguments
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw CocoaError(.executableLoad, userInfo: ["tool": "\(arguments.first ?? tool) exited \(p.terminationStatus)"]) }
    }

    /// gzip-compresses `bytes` with the system's gzip.
    public static func gzip(_ bytes: [UInt8]) throws -> [UInt8] {
        let dir = FileManager.default.temporaryDirectory
        let name = "regent-gz-\(UUID().uuidString.prefix(8))"
        let input = dir.appendingPathComponent(name)
        try Data(bytes).write(to: input)
        try run("/usr/bin/env", ["gzip", "-f", input.path])
        let gz = dir.appendingPathComponent(name + ".gz")
        defer { try? FileManager.default.removeItem(at: gz) }
        return [UInt8](try Data(contentsOf: gz))
    }

    /// One raw tar entry: its header (ustar, checksummed) and padded data.
    public static func rawEntry(_ name: String, type: Character = "0", data: [UInt8] = [], linkName: String = "") -> [UInt8] {
        var header = [UInt8](repeating: 0, count: 512)
        func put(_ s: [UInt8], _ at: Int) { for (i, b) in s.enumerated() { header[at + i] = b } }
        func octal(_ v: Int, _ width: Int) -> [UInt8] {
            let d = String(v, radix: 8)
            return Array((String(repeating: "0", count: width - 1 - d.count) + d).utf8) + [0]
        }
        put(Array(name.utf8.prefix(100)), 0)
        put(octal(0o644, 8), 100)
        put(octal(0, 8), 108)
        put(octal(0, 8), 116)
        put(octal(data.count, 12), 124)
        put(octal(0, 12), 136)
        put(Array("        ".utf8), 148)
        header[156] = type.asciiValue!
        put(Array(linkName.utf8.prefix(100)), 157)
        put(Array("ustar".utf8) + [0] + Array("00".utf8), 257)
        let sum = header.reduce(0) { $0 + Int($1) }
        put(octal(sum, 7) + [32], 148)
        return header + data + [UInt8](repeating: 0, count: (512 - data.count % 512) % 512)
    }

    /// A tar archive of raw entries, with its end blocks.
    public static func rawTar(_ entries: [[UInt8]]) -> [UInt8] { entries.flatMap { $0 } + [UInt8](repeating: 0, count: 1024) }
}
