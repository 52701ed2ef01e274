import Foundation

/// An admitted workflow package: its files (checked against ``PackageLimits``, sorted by
/// path), its validated manifest, its canonical archive and content hash.
///
/// The canonical archive is a ustar stream of the files in byte order of their paths, each
/// with mode 0644, owner 0, modification time 0 and no names (``Tar/canonical(_:)``); the
/// content hash is the SHA-256 of that archive. So the same files give the same hash
/// whatever packed them (a directory, `tar`, `tar | gzip`), and `sha256sum` over a fetched
/// archive prints the hash.
public struct PackageContents: Sendable {
    public struct File: Sendable, Hashable {
        public let path: String
        public let bytes: [UInt8]
    }

    public static let manifestPath = "workflow.json"

    public let files: [File]
    public let manifest: WorkflowManifest
    public let canonicalArchive: [UInt8]
    /// 64 lowercase hex digits.
    public let contentHash: String
    /// The files' total size.
    public var totalBytes: Int { files.reduce(0) { $0 + $1.bytes.count } }

    /// Admits `files` (path → bytes, paths as found): every path checked, the limits applied,
    /// the manifest validated.
    init(entries: [(path: String, bytes: [UInt8])], limits: PackageLimits) throws(RegentError) {
        guard entries.count <= limits.maxFiles else {
            throw RegentError(.invalidInput, "the package holds \(entries.count) files; the limit is \(limits.maxFiles)")
        }
        var seen = Set<String>()
        var total = 0
        var files: [File] = []
        for entry in entries {
            let path = try Self.checkedPath(entry.path, limits: limits)
            guard seen.insert(path).inserted else { throw RegentError(.invalidInput, "the package holds \(quoted(path)) twice") }
            total += entry.bytes.count
            guard total <= limits.maxTotalBytes else {
                throw RegentError(.invalidInput, "the package's files pass \(limits.maxTotalBytes) bytes", hint: "ship fewer or smaller files, or raise the package size limit")
            }
            files.append(File(path: path, bytes: entry.bytes))
        }
        // A file cannot also be a directory of another ("a" and "a/b"): no tool unpacks both.
        for path in seen {
            var parent = Substring(path)
            while let slash = parent.lastIndex(of: "/") {
                parent = parent[..<slash]
                if seen.contains(String(parent)) {
                    throw RegentError(.invalidInput, "the package holds \(quoted(String(parent))) both as a file and as the directory of \(quoted(path))")
                }
            }
        }
        files.sort { $0.path.utf8.lexicographicallyPrecedes($1.path.utf8) }
        guard let manifestFile = files.first(where: { $0.path == Self.manifestPath }) else {
            throw RegentError(.invalidInput, "the package has no \(Self.manifestPath) at its root", hint: "see docs/packages.md for the manifest format")
        }
        self.manifest = try WorkflowManifest.parse(manifestFile.bytes)
        self.files = files
        self.canonicalArchive = Tar.canonical(files.map { ($0.path, $0.bytes) })
        self.contentHash = SHA256.hex(bytes: canonicalArchive)
    }

    /// A package sent as bytes: a tar archive, or a gzip-compressed one.
    public init(archive: [UInt8], limits: PackageLimits) throws(RegentError) {
        try limits.validate()
        let tar = Gzip.isGzip(archive) ? try Gzip.inflate(archive, limit: limits.maxTarBytes) : archive
        guard tar.count <= limits.maxTarBytes else {
            throw RegentError(.invalidInput, "the package archive is \(tar.count) bytes; the limit is \(limits.maxTarBytes)")
        }
        var entries: [(path: String, bytes: [UInt8])] = []
        for entry in try Tar.read(tar) {
            if entry.kind == .directory {
                if entry.path == "." || entry.path == "./" { continue }
                _ = try Self.checkedPath(entry.path.hasSuffix("/") ? String(entry.path.dropLast()) : entry.path, limits: limits)
                continue
            }
            entries.append((entry.path, Array(entry.data)))
            guard entries.count <= limits.maxFiles else {
                throw RegentError(.invalidInput, "the package holds more than \(limits.maxFiles) files")
            }
        }
        try self.init(entries: entries, limits: limits)
    }

    /// A package on disk: a directory, or a `.tar` / `.tar.gz` file.
    public init(path: String, limits: PackageLimits) throws(RegentError) {
        try limits.validate()
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw RegentError(.invalidInput, "no package at \(quoted(path))")
        }
        if !isDirectory.boolValue {
            let data: Data
            do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
                throw RegentError(.invalidInput, "cannot read \(quoted(path)): \(error.localizedDescription)")
            }
            guard data.count <= limits.maxTarBytes else {
                throw RegentError(.invalidInput, "\(quoted(path)) is \(data.count) bytes; the limit is \(limits.maxTarBytes)")
            }
            try self.init(archive: [UInt8](data), limits: limits)
            return
        }
        var entries: [(path: String, bytes: [UInt8])] = []
        var total = 0
        try Self.walk(root: path, relative: "", limits: limits, total: &total, into: &entries)
        try self.init(entries: entries, limits: limits)
    }

    private static func walk(
        root: String, relative: String, limits: PackageLimits, total: inout Int, into entries: inout [(path: String, bytes: [UInt8])]
    ) throws(RegentError) {
        let directory = relative.isEmpty ? root : root + "/" + relative
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory).sorted() } catch {
            throw RegentError(.invalidInput, "cannot list \(quoted(directory)): \(error.localizedDescription)")
        }
        for name in names {
            let rel = relative.isEmpty ? name : relative + "/" + name
            let full = root + "/" + rel
            var info = stat()
            guard lstat(full, &info) == 0 else { throw RegentError(.invalidInput, "cannot stat \(quoted(full))") }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                _ = try checkedPath(rel, limits: limits)
                try walk(root: root, relative: rel, limits: limits, total: &total, into: &entries)
            case S_IFREG:
                total += Int(info.st_size)
                guard total <= limits.maxTotalBytes else {
                    throw RegentError(.invalidInput, "the package's files pass \(limits.maxTotalBytes) bytes", hint: "ship fewer or smaller files, or raise the package size limit")
                }
                guard entries.count < limits.maxFiles else { throw RegentError(.invalidInput, "the package holds more than \(limits.maxFiles) files") }
                guard let data = FileManager.default.contents(atPath: full) else { throw RegentError(.invalidInput, "cannot read \(quoted(full))") }
                entries.append((rel, [UInt8](data)))
            case S_IFLNK:
                throw RegentError(.invalidInput, "\(quoted(rel)) is a link: a package holds only regular files and directories")
            default:
                throw RegentError(.invalidInput, "\(quoted(rel)) is a device, FIFO or socket: a package holds only regular files and directories")
            }
        }
    }

    /// A relative path as stored: a leading `./` dropped; refused when absolute, empty,
    /// with `.` or `..` or empty components, a backslash or a control character, too long,
    /// or not storable in ustar.
    static func checkedPath(_ raw: String, limits: PackageLimits) throws(RegentError) -> String {
        var path = Substring(raw)
        while path.hasPrefix("./") { path = path.dropFirst(2) }
        let p = String(path)
        guard !raw.hasPrefix("/") else { throw RegentError(.invalidInput, "\(quoted(raw)) is an absolute path: package paths are relative") }
        guard !p.isEmpty else { throw RegentError(.invalidInput, "the package holds an entry with an empty path") }
        for component in p.split(separator: "/", omittingEmptySubsequences: false) {
            switch component {
            case "..": throw RegentError(.invalidInput, "\(quoted(raw)) climbs out of the package with \"..\"")
            case ".", "": throw RegentError(.invalidInput, "\(quoted(raw)) has an empty or \".\" component")
            default: break
            }
        }
        guard !p.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f || $0 == "\\" }) else {
            throw RegentError(.invalidInput, "\(quoted(raw)) holds a control character or a backslash")
        }
        guard p.utf8.count <= limits.maxPathLength else {
            throw RegentError(.invalidInput, "\(quoted(String(p.prefix(64)))+"…") is \(p.utf8.count) bytes long; the limit is \(limits.maxPathLength)")
        }
        guard Tar.splitPath(Array(p.utf8)) != nil else {
            throw RegentError(.invalidInput, "\(quoted(p)) cannot be stored: a path's last component is at most 100 bytes and the rest at most 155")
        }
        return p
    }

    /// Path and size of each file.
    public var fileInfo: [PackageFileInfo] { files.map { PackageFileInfo(path: $0.path, size: $0.bytes.count) } }

    /// The file at `path`, if the package holds it.
    public func file(_ path: String) -> File? { files.first { $0.path == path } }
}
