/// A small tar reader (ustar, pax and GNU long names) and the canonical tar writer.
///
/// The reader returns regular files and directories; every other kind of entry (hard and
/// symbolic links, devices, FIFOs, anything unknown) is refused by name, because a package
/// must not point outside itself or at the host.
enum Tar {
    struct Entry {
        enum Kind { case file, directory }
        let path: String
        let kind: Kind
        let data: ArraySlice<UInt8>
    }

    static let block = 512

    static func read(_ bytes: [UInt8]) throws(RegentError) -> [Entry] {
        var entries: [Entry] = []
        var offset = 0
        var paxPath: String?
        var paxSize: Int?
        var longName: String?
        while true {
            guard offset + block <= bytes.count else {
                // The end without end-of-archive blocks (or the last entry's padding), or a short
                // zero tail: tolerated, as tar does. Anything else is a cut-off header.
                if offset >= bytes.count || bytes[offset...].allSatisfy({ $0 == 0 }) { return entries }
                throw RegentError(.invalidInput, "the tar archive is truncated at byte \(offset)")
            }
            let header = bytes[offset..<(offset + block)]
            if header.allSatisfy({ $0 == 0 }) {
                guard bytes[(offset + block)...].allSatisfy({ $0 == 0 }) else {
                    throw RegentError(.invalidInput, "the tar archive has data after its end-of-archive block")
                }
                return entries
            }
            try checkChecksum(header, at: offset)
            let type = header[header.startIndex + 156]
            var size = try octal(header, 124, 12, field: "size", at: offset)
            if let paxSize, type != UInt8(ascii: "x"), type != UInt8(ascii: "g") { size = paxSize }
            let dataStart = offset + block
            guard size <= bytes.count - dataStart else {
                throw RegentError(.invalidInput, "the tar entry at byte \(offset) claims \(size) bytes; the archive ends first")
            }
            let data = bytes[dataStart..<(dataStart + size)]
            offset = dataStart + (size + block - 1) / block * block
            switch type {
            case UInt8(ascii: "x"):  // pax extended header: applies to the next entry
                let records = try paxRecords(data, at: dataStart)
                if let p = records["path"] { paxPath = p }
                if let s = records["size"] {
                    guard let n = Int(s), n >= 0 else { throw RegentError(.invalidInput, "the tar pax header at byte \(dataStart) has a bad size") }
                    paxSize = n
                }
                continue
            case UInt8(ascii: "g"):  // pax global header: nothing in it matters here
                continue
            case UInt8(ascii: "L"):  // GNU long name for the next entry
                longName = try utf8(Array(data.prefix { $0 != 0 }), at: dataStart)
                continue
            default:
                break
            }
            let path: String
            if let p = paxPath ?? longName { path = p } else { path = try headerPath(header, at: offset) }
            paxPath = nil
            paxSize = nil
            longName = nil
            switch type {
            case UInt8(ascii: "0"), 0, UInt8(ascii: "7"):
                entries.append(Entry(path: path, kind: .file, data: data))
            case UInt8(ascii: "5"):
                entries.append(Entry(path: path, kind: .directory, data: []))
            case UInt8(ascii: "1"), UInt8(ascii: "2"), UInt8(ascii: "K"):
                throw RegentError(.invalidInput, "\(quoted(path)) is a link: a package holds only regular files and directories")
            case UInt8(ascii: "3"), UInt8(ascii: "4"):
                throw RegentError(.invalidInput, "\(quoted(path)) is a device: a package holds only regular files and directories")
            case UInt8(ascii: "6"):
                throw RegentError(.invalidInput, "\(quoted(path)) is a FIFO: a package holds only regular files and directories")
            default:
                throw RegentError(
                    .invalidInput, "\(quoted(path)) has tar entry type \(quoted(String(UnicodeScalar(type)))): a package holds only regular files and directories")
            }
        }
    }

    private static func checkChecksum(_ header: ArraySlice<UInt8>, at offset: Int) throws(RegentError) {
        let stored = try octal(header, 148, 8, field: "checksum", at: offset)
        var sum = 0
        for (i, b) in header.enumerated() { sum += (148..<156).contains(i) ? 32 : Int(b) }
        guard sum == stored else { throw RegentError(.invalidInput, "the tar header at byte \(offset) has a bad checksum: not a tar archive, or damaged") }
    }

    private static func octal(_ header: ArraySlice<UInt8>, _ start: Int, _ length: Int, field: String, at offset: Int) throws(RegentError) -> Int {
        let raw = header[(header.startIndex + start)..<(header.startIndex + start + length)]
        if let first = raw.first, first & 0x80 != 0 {
            throw RegentError(.invalidInput, "the tar header at byte \(offset) has a binary \(field) (an entry over 8 GiB?)")
        }
        var value = 0
        var seenDigit = false
        for b in raw {
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "7"):
                value = value * 8 + Int(b - UInt8(ascii: "0"))
                seenDigit = true
                guard value < 1 << 40 else { throw RegentError(.invalidInput, "the tar header at byte \(offset) has an oversized \(field)") }
            case UInt8(ascii: " ") where !seenDigit: continue
            case 0, UInt8(ascii: " "): return value
            default: throw RegentError(.invalidInput, "the tar header at byte \(offset) has a malformed \(field): not a tar archive, or damaged")
            }
        }
        return value
    }

    private static func headerPath(_ header: ArraySlice<UInt8>, at offset: Int) throws(RegentError) -> String {
        func field(_ start: Int, _ length: Int) -> [UInt8] {
            Array(header[(header.startIndex + start)..<(header.startIndex + start + length)].prefix { $0 != 0 })
        }
        let name = field(0, 100)
        let magic = field(257, 5)
        let prefix = magic == Array("ustar".utf8) ? field(345, 155) : []
        return try utf8(prefix.isEmpty ? name : prefix + [UInt8(ascii: "/")] + name, at: offset)
    }

    private static func utf8(_ bytes: [UInt8], at offset: Int) throws(RegentError) -> String {
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw RegentError(.invalidInput, "the tar entry at byte \(offset) has a path that is not UTF-8")
        }
        return s
    }

    /// `"<length> <key>=<value>\n"` records.
    private static func paxRecords(_ data: ArraySlice<UInt8>, at offset: Int) throws(RegentError) -> [String: String] {
        var records: [String: String] = [:]
        var i = data.startIndex
        while i < data.endIndex {
            guard let space = data[i...].firstIndex(of: UInt8(ascii: " ")),
                let length = Int(String(decoding: data[i..<space], as: UTF8.self)), length > space - i + 1, length <= data.endIndex - i,
                data[i + length - 1] == UInt8(ascii: "\n"),
                let equals = data[(space + 1)..<(i + length)].firstIndex(of: UInt8(ascii: "="))
            else { throw RegentError(.invalidInput, "the tar pax header at byte \(offset) is malformed") }
            let key = String(decoding: data[(space + 1)..<equals], as: UTF8.self)
            records[key] = try utf8(Array(data[(equals + 1)..<(i + length - 1)]), at: offset)
            i += length
        }
        return records
    }

    // MARK: Writing

    /// The canonical archive of `files` (already sorted and checked): ustar, each a regular
    /// file with mode 0644, owner and group 0, no names, modification time 0; then the two
    /// zero blocks. The same files always give the same bytes.
    static func canonical(_ files: [(path: String, data: [UInt8])]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(files.reduce(2 * block) { $0 + block + ($1.data.count + block - 1) / block * block })
        for file in files {
            var header = [UInt8](repeating: 0, count: block)
            let (prefix, name) = splitPath(Array(file.path.utf8))!
            func put(_ bytes: [UInt8], _ at: Int) { for (i, b) in bytes.enumerated() { header[at + i] = b } }
            func octalField(_ value: Int, width: Int) -> [UInt8] {
                let digits = String(value, radix: 8)
                return Array((String(repeating: "0", count: width - 1 - digits.count) + digits).utf8) + [0]
            }
            put(name, 0)
            put(octalField(0o644, width: 8), 100)
            put(octalField(0, width: 8), 108)
            put(octalField(0, width: 8), 116)
            put(octalField(file.data.count, width: 12), 124)
            put(octalField(0, width: 12), 136)
            put(Array("        ".utf8), 148)
            header[156] = UInt8(ascii: "0")
            put(Array("ustar".utf8) + [0] + Array("00".utf8), 257)
            put(prefix, 345)
            let sum = header.reduce(0) { $0 + Int($1) }
            put(octalField(sum, width: 7) + [UInt8(ascii: " ")], 148)
            out += header
            out += file.data
            out += [UInt8](repeating: 0, count: (block - file.data.count % block) % block)
        }
        out += [UInt8](repeating: 0, count: 2 * block)
        return out
    }

    /// A path as ustar's prefix (≤ 155 bytes) and name (≤ 100 bytes), split at a slash; nil
    /// when it cannot be.
    static func splitPath(_ path: [UInt8]) -> (prefix: [UInt8], name: [UInt8])? {
        if path.count <= 100 { return ([], path) }
        for i in path.indices.reversed() where path[i] == UInt8(ascii: "/") {
            let prefix = Array(path[..<i]), name = Array(path[(i + 1)...])
            if name.count > 100 { return nil }
            if prefix.count <= 155 && !name.isEmpty { return (prefix, name) }
        }
        return nil
    }
}
