import CZlib
import FerryProtocol
import NIOCore

/// A chunk that failed its checks on the receiving side.
public enum ChunkError: Error, Hashable, Sendable, CustomStringConvertible {
    case checksum(offset: Int64)
    case inflate(offset: Int64, String)
    case length(offset: Int64, expected: Int, got: Int)

    public var description: String {
        switch self {
        case .checksum(let o): return "chunk at offset \(o) failed its CRC-32 check"
        case .inflate(let o, let why): return "chunk at offset \(o) could not be inflated (\(why))"
        case .length(let o, let e, let g): return "chunk at offset \(o) inflated to \(g) bytes, expected \(e)"
        }
    }
}

public enum CRC32 {
    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return 0 }
        return UInt32(crc32_z(0, base.assumingMemoryBound(to: Bytef.self), bytes.count))
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0) }
    }
}

/// Compression level policy for outgoing chunks.
public enum CompressionPolicy: Sendable, Hashable {
    /// Never compress.
    case off
    /// zlib at a fixed level (1...9); chunks that do not shrink are still sent stored.
    case level(Int32)
    /// Compress at level 1 while it pays; skip the attempt on data that keeps proving
    /// incompressible (see `ChunkEncoder`).
    case auto
}

/// Turns raw chunk bytes into a header and wire bytes. It keeps a little state so that a
/// stream of incompressible data (media, archives) stops paying for zlib attempts: after a
/// chunk fails to shrink, a cheap sample test guards the next full attempt.
public struct ChunkEncoder: Sendable {
    public let policy: CompressionPolicy
    /// A chunk is compressed only if it shrinks by at least this fraction.
    public static let minimumSaving = 0.03
    static let sampleSize = 16 * 1024

    private var lastWasIncompressible = false

    public init(policy: CompressionPolicy) {
        self.policy = policy
    }

    private var level: Int32? {
        switch policy {
        case .off: return nil
        case .level(let l): return l
        case .auto: return 1
        }
    }

    /// Encodes one chunk. `raw` must be 1...maxChunkRaw bytes.
    public mutating func encode(raw: UnsafeRawBufferPointer, offset: Int64, allocator: ByteBufferAllocator) -> (ChunkHeader, ByteBuffer) {
        let crc = CRC32.checksum(raw)
        if let level, shouldTry(raw, level: level),
           let wire = Self.deflate(raw, level: level, limit: Int(Double(raw.count) * (1 - Self.minimumSaving)), allocator: allocator) {
            lastWasIncompressible = false
            return (ChunkHeader(offset: offset, rawLength: raw.count, wireLength: wire.readableBytes, codec: .zlib, crc32: crc), wire)
        }
        if level != nil { lastWasIncompressible = true }
        var buffer = allocator.buffer(capacity: raw.count)
        buffer.writeBytes(raw)
        return (ChunkHeader(offset: offset, rawLength: raw.count, wireLength: raw.count, codec: .stored, crc32: crc), buffer)
    }

    /// Deflates a small sample first; only if the sample shrinks is the whole chunk tried.
    /// Costs ~6% of a full attempt.
    private func shouldTry(_ raw: UnsafeRawBufferPointer, level: Int32) -> Bool {
        // `auto` always samples first, so parallel encoders (which share no history) still
        // skip zlib on incompressible data; a fixed level samples only after a miss.
        guard policy == .auto || lastWasIncompressible, raw.count > Self.sampleSize * 2 else { return true }
        let mid = raw.count / 2
        let sample = UnsafeRawBufferPointer(rebasing: raw[mid..<(mid + Self.sampleSize)])
        return Self.deflate(sample, level: level, limit: Int(Double(sample.count) * (1 - Self.minimumSaving)),
                            allocator: ByteBufferAllocator()) != nil
    }

    /// One complete zlib stream, or nil when the output would exceed `limit` bytes.
    static func deflate(_ raw: UnsafeRawBufferPointer, level: Int32, limit: Int, allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard limit > 0, let src = raw.baseAddress else { return nil }
        var buffer = allocator.buffer(capacity: limit)
        var ok = false
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: limit) { out -> Int in
            var stream = z_stream()
            guard deflateInit_(&stream, level, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return 0 }
            defer { deflateEnd(&stream) }
            stream.next_in = UnsafeMutablePointer(mutating: src.assumingMemoryBound(to: Bytef.self))
            stream.avail_in = uInt(raw.count)
            stream.next_out = out.baseAddress!.assumingMemoryBound(to: Bytef.self)
            stream.avail_out = uInt(limit)
            let r = CZlib.deflate(&stream, Z_FINISH)
            guard r == Z_STREAM_END else { return 0 }
            ok = true
            return Int(stream.total_out)
        }
        return ok ? buffer : nil
    }
}

public enum ChunkDecoder {
    /// Checks and decodes one chunk into `destination` (which must hold `rawLength` bytes).
    public static func decode(header: ChunkHeader, wire: ByteBuffer, into destination: UnsafeMutableRawBufferPointer) throws(ChunkError) {
        precondition(destination.count >= header.rawLength)
        guard wire.readableBytes == header.wireLength else {
            throw .length(offset: header.offset, expected: header.wireLength, got: wire.readableBytes)
        }
        let result: Result<Void, ChunkError> = wire.withUnsafeReadableBytes { src in
            switch header.codec {
            case .stored:
                // A hand-built header could disagree with itself; never copy past `rawLength`.
                guard src.count == header.rawLength else {
                    return .failure(.length(offset: header.offset, expected: header.rawLength, got: src.count))
                }
                destination.copyMemory(from: src)
                return .success(())
            case .zlib:
                var stream = z_stream()
                guard inflateInit_(&stream, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
                    return .failure(.inflate(offset: header.offset, "inflateInit failed"))
                }
                defer { inflateEnd(&stream) }
                stream.next_in = UnsafeMutablePointer(mutating: src.baseAddress?.assumingMemoryBound(to: Bytef.self))
                stream.avail_in = uInt(src.count)
                stream.next_out = destination.baseAddress!.assumingMemoryBound(to: Bytef.self)
                stream.avail_out = uInt(header.rawLength)
                let r = inflate(&stream, Z_FINISH)
                if r != Z_STREAM_END {
                    let why = r == Z_BUF_ERROR ? "inflates to more than announced" : "corrupt zlib stream"
                    return .failure(.inflate(offset: header.offset, why))
                }
                if stream.avail_in != 0 { return .failure(.inflate(offset: header.offset, "trailing bytes")) }
                if Int(stream.total_out) != header.rawLength {
                    return .failure(.length(offset: header.offset, expected: header.rawLength, got: Int(stream.total_out)))
                }
                return .success(())
            }
        }
        try result.get()
        let crc = CRC32.checksum(UnsafeRawBufferPointer(rebasing: destination[0..<header.rawLength]))
        guard crc == header.crc32 else { throw .checksum(offset: header.offset) }
    }

    /// Convenience for tests and small payloads.
    public static func decode(header: ChunkHeader, wire: ByteBuffer) throws(ChunkError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: header.rawLength)
        let result: Result<Void, ChunkError> = out.withUnsafeMutableBytes { d in
            do throws(ChunkError) {
                try decode(header: header, wire: wire, into: d)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
        return out
    }
}
