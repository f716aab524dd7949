import FerryProtocol
import NIOCore

/// A chunk that failed its checks on the receiving side.
public enum ChunkError: Error, Hashable, Sendable, CustomStringConvertible {
    case checksum(offset: Int64)
    case decompress(offset: Int64, String)
    case length(offset: Int64, expected: Int, got: Int)

    public var description: String {
        switch self {
        case .checksum(let o): return "chunk at offset \(o) failed its CRC-32 check"
        case .decompress(let o, let why): return "chunk at offset \(o) could not be decompressed (\(why))"
        case .length(let o, let e, let g): return "chunk at offset \(o) decoded to \(g) bytes, expected \(e)"
        }
    }
}

public enum ChunkDecoder {
    /// Checks and decodes one chunk into `destination` (which must hold `rawLength` bytes; no
    /// byte past them is written).
    public static func decode(header: ChunkHeader, wire: ByteBuffer, into destination: UnsafeMutableRawBufferPointer) throws(ChunkError) {
        precondition(destination.count >= header.rawLength)
        guard wire.readableBytes == header.wireLength else {
            throw .length(offset: header.offset, expected: header.wireLength, got: wire.readableBytes)
        }
        let target = UnsafeMutableRawBufferPointer(rebasing: destination[0..<header.rawLength])
        let failure = wire.withUnsafeReadableBytes { ChunkCodecs.decode(header.codec, $0, into: target) }
        switch failure {
        case nil: break
        case .malformed(let why)?: throw .decompress(offset: header.offset, why)
        case .length(let got)?: throw .length(offset: header.offset, expected: header.rawLength, got: got)
        }
        guard CRC32.checksum(UnsafeRawBufferPointer(target)) == header.crc32 else { throw .checksum(offset: header.offset) }
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
