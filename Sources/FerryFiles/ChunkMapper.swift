#if canImport(Glibc)
import Glibc
#endif
import Crypto
import FerryProtocol

extension ChunkDigest {
    public static func sha256(_ bytes: UnsafeRawBufferPointer) -> ChunkDigest {
        // Invariant: a SHA-256 digest is 32 bytes.
        ChunkDigest(bytes: Array(SHA256.hash(data: bytes)))!
    }
}

/// Cuts an open file into content-defined chunks (`ContentChunker`) and hashes each, a piece
/// at a time (`advance`), so a long file can be mapped in short jobs; also computes the whole
/// file's SHA-256 when asked (the same read feeds both).
// `@unchecked`: one job at a time advances it; callers await each `advance` before the next.
public final class ChunkMapper: @unchecked Sendable {
    private let file: FileHandle
    public let size: Int64
    /// File bytes `[bufferOffset, bufferOffset + filled)` are in the buffer.
    private let buffer: UnsafeMutableRawBufferPointer
    private var bufferOffset: Int64 = 0
    private var filled = 0
    /// Where the next chunk starts (in the file).
    private var position: Int64 = 0
    private var whole: SHA256Hasher?

    static let readSize = 4 << 20

    public init(file: FileHandle, size: Int64, wholeFileHash: Bool) {
        self.file = file
        self.size = size
        self.whole = wholeFileHash ? SHA256Hasher() : nil
        buffer = .allocate(byteCount: Self.readSize + ContentChunker.maxSize, alignment: 64)
    }

    deinit { buffer.deallocate() }

    public var isDone: Bool { position >= size }

    /// The whole file's SHA-256, once `isDone` (nil if not asked for).
    public func wholeFileSHA256() -> String? { isDone ? whole?.finalizeHex() : nil }

    /// Maps at least `bytes` more of the file (or up to its end) and returns those chunks.
    /// A file that ends before `size` (it was truncated meanwhile) is an error.
    public func advance(by bytes: Int) throws(SystemError) -> [ChunkRecord] {
        var out: [ChunkRecord] = []
        let stop = position + Int64(bytes)
        while position < size && position < stop {
            try fill()
            let start = Int(position - bufferOffset)
            let available = Int(min(Int64(filled - start), size - position))
            let chunk = UnsafeRawBufferPointer(rebasing: buffer[start..<(start + available)])
            let length = ContentChunker.cut(chunk)
            let piece = UnsafeRawBufferPointer(rebasing: chunk[0..<length])
            out.append(ChunkRecord(offset: position, length: length, digest: .sha256(piece)))
            whole?.update(piece)
            position += Int64(length)
        }
        return out
    }

    /// Makes sure the buffer holds `maxSize` bytes from `position`, or everything up to `size`.
    private func fill() throws(SystemError) {
        let want = min(Int64(ContentChunker.maxSize), size - position)
        if bufferOffset + Int64(filled) - position >= want { return }
        // Keep the unread tail (under `maxSize`) at the front, then read a large step after it.
        let keep = Int(bufferOffset + Int64(filled) - position)
        if keep > 0 {
            let from = Int(position - bufferOffset)
            memmove(buffer.baseAddress!, buffer.baseAddress! + from, keep)  // Invariant: allocated, non-empty.
        }
        bufferOffset = position
        filled = keep
        while Int64(filled) < want || (filled < Self.readSize && bufferOffset + Int64(filled) < size) {
            let room = min(buffer.count - filled, Int(size - bufferOffset) - filled)
            if room <= 0 { break }
            let n = try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + room)]),
                                  at: bufferOffset + Int64(filled))
            if n == 0 {
                throw SystemError(errno: EIO, operation: "read (the file became shorter while it was mapped)", path: "")
            }
            filled += n
        }
    }

    /// The whole map of a file in one go (the client's index; tests).
    public static func map(_ file: FileHandle, size: Int64) throws(SystemError) -> [ChunkRecord] {
        let mapper = ChunkMapper(file: file, size: size, wholeFileHash: false)
        var chunks: [ChunkRecord] = []
        while !mapper.isDone { chunks += try mapper.advance(by: readSize) }
        return chunks
    }
}
