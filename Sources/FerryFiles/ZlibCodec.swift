import CZlib
import FerryProtocol

/// zlib (RFC 1950) chunks: one complete zlib stream per chunk (wire token `z`).
public enum ZlibCodec: ChunkCompressor {
    public static let codec = ChunkCodec.zlib
    public static let name = "zlib"
    public static let levels: ClosedRange<Int32> = 1...9

    public static func compress(_ raw: UnsafeRawBufferPointer, level: Int32, into output: UnsafeMutableRawBufferPointer) -> Int? {
        guard let src = raw.baseAddress, let dst = output.baseAddress, output.count > 0 else { return nil }
        var stream = z_stream()
        guard deflateInit_(&stream, level, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return nil }
        defer { deflateEnd(&stream) }
        stream.next_in = UnsafeMutablePointer(mutating: src.assumingMemoryBound(to: Bytef.self))
        stream.avail_in = uInt(raw.count)
        stream.next_out = dst.assumingMemoryBound(to: Bytef.self)
        stream.avail_out = uInt(output.count)
        guard deflate(&stream, Z_FINISH) == Z_STREAM_END else { return nil }
        return Int(stream.total_out)
    }

    /// Inflates with the output window set to `destination`: zlib stops there (a stream that
    /// would inflate further is refused, however small its wire), and allocates only its own
    /// fixed state.
    public static func decompress(_ wire: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) -> DecompressionFailure? {
        var stream = z_stream()
        guard inflateInit_(&stream, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            return .malformed("inflateInit failed")
        }
        defer { inflateEnd(&stream) }
        stream.next_in = UnsafeMutablePointer(mutating: wire.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.avail_in = uInt(wire.count)
        stream.next_out = destination.baseAddress?.assumingMemoryBound(to: Bytef.self)
        stream.avail_out = uInt(destination.count)
        let r = inflate(&stream, Z_FINISH)
        if r != Z_STREAM_END {
            return .malformed(r == Z_BUF_ERROR ? "inflates to more than announced" : "corrupt zlib stream")
        }
        if stream.avail_in != 0 { return .malformed("trailing bytes after the zlib stream") }
        if Int(stream.total_out) != destination.count { return .length(got: Int(stream.total_out)) }
        return nil
    }
}
