/// What a workflow package may hold; checked before anything is stored.
public struct PackageLimits: Sendable, Hashable {
    /// The sum of the files' sizes, once inflated.
    public var maxTotalBytes: Int
    /// How many files (directories do not count).
    public var maxFiles: Int
    /// The longest relative path, in bytes (at most ``pathLengthCeiling``).
    public var maxPathLength: Int

    /// The canonical archive is ustar: a path must fit its 155-byte prefix and 100-byte name.
    public static let pathLengthCeiling = 255
    /// The manifest alone.
    public static let maxManifestBytes = 1 << 20

    public static let `default` = PackageLimits(maxTotalBytes: 16 << 20, maxFiles: 1000, maxPathLength: 200)

    public init(maxTotalBytes: Int, maxFiles: Int, maxPathLength: Int) {
        self.maxTotalBytes = maxTotalBytes
        self.maxFiles = maxFiles
        self.maxPathLength = maxPathLength
    }

    /// Refuses limits that make no sense (or that the canonical form cannot honour).
    public func validate() throws(RegentError) {
        guard (1024...(1 << 30)).contains(maxTotalBytes) else {
            throw RegentError(.invalidInput, "package size limit \(maxTotalBytes) bytes must be 1 KiB to 1 GiB")
        }
        guard (1...100_000).contains(maxFiles) else {
            throw RegentError(.invalidInput, "package file-count limit \(maxFiles) must be 1 to 100000")
        }
        guard (16...Self.pathLengthCeiling).contains(maxPathLength) else {
            throw RegentError(.invalidInput, "package path-length limit \(maxPathLength) must be 16 to \(Self.pathLengthCeiling) bytes")
        }
    }

    /// The most bytes a tar stream of an admissible package can take: the files, a header and
    /// padding block each, extended headers, and the end blocks. Inflating stops past it.
    var maxTarBytes: Int { maxTotalBytes + (maxFiles + 8) * 2048 + (1 << 20) }
}
