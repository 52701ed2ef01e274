import CZlib

/// Inflating gzip (and zlib) streams with a hard ceiling on the output.
enum Gzip {
    /// gzip's magic bytes.
    static func isGzip(_ bytes: [UInt8]) -> Bool { bytes.count >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b }

    /// Inflates `input` (every gzip member of it); throws as soon as the output would pass
    /// `limit` bytes, so a decompression bomb costs at most `limit` bytes of memory.
    static func inflate(_ input: [UInt8], limit: Int) throws(RegentError) -> [UInt8] {
        var output: [UInt8] = []
        var stream = z_stream()
        guard regent_inflate_init(&stream) == Z_OK else {
            throw RegentError(.invalidInput, "the package could not be inflated: zlib did not start")
        }
        defer { inflateEnd(&stream) }
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        var failure: RegentError?
        input.withUnsafeBufferPointer { inBuffer in
            stream.next_in = UnsafeMutablePointer(mutating: inBuffer.baseAddress)
            stream.avail_in = UInt32(inBuffer.count)
            while true {
                let (status, produced) = chunk.withUnsafeMutableBufferPointer { out -> (Int32, Int) in
                    stream.next_out = out.baseAddress
                    stream.avail_out = UInt32(out.count)
                    let status = CZlib.inflate(&stream, Z_NO_FLUSH)
                    return (status, out.count - Int(stream.avail_out))
                }
                if output.count + produced > limit {
                    failure = RegentError(
                        .invalidInput, "the package inflates to more than \(limit) bytes (a decompression bomb, or too large)",
                        hint: "ship fewer or smaller files, or raise the package size limit")
                    return
                }
                output.append(contentsOf: chunk[0..<produced])
                switch status {
                case Z_STREAM_END:
                    // Concatenated gzip members are one stream (`cat a.gz b.gz`); anything else after the end is refused.
                    guard stream.avail_in > 0 else { return }
                    guard stream.avail_in >= 2, stream.next_in[0] == 0x1f, stream.next_in[1] == 0x8b, inflateReset(&stream) == Z_OK else {
                        failure = RegentError(.invalidInput, "the package has \(stream.avail_in) stray bytes after its gzip stream")
                        return
                    }
                case Z_OK:
                    if produced == 0 && stream.avail_in == 0 {
                        failure = RegentError(.invalidInput, "the package's gzip stream is truncated")
                        return
                    }
                case Z_BUF_ERROR where stream.avail_in == 0:
                    failure = RegentError(.invalidInput, "the package's gzip stream is truncated")
                    return
                default:
                    let reason = stream.msg.map { String(cString: $0) } ?? "status \(status)"
                    failure = RegentError(.invalidInput, "the package is not a valid gzip stream: \(reason)")
                    return
                }
            }
        }
        if let failure { throw failure }
        return output
    }
}
