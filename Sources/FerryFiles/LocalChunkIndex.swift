import FerryProtocol

/// What a sync's client already has: every regular file under DEST (and the data of its
/// partial folder) cut into content-defined chunks exactly as a server cuts its files
/// (`ContentChunker`), so a file of the server can be built from chunks found anywhere in DEST
/// and only the others fetched (ARCHITECTURE.md, "Reusing data already in DEST").
///
/// Compact: per chunk its length and the first 8 bytes of its SHA-256 (a lookup key, never
/// trusted: a reused chunk's bytes are hashed again when read and compared with the server's
/// full hash), per file its key. Building it reads each file once and hashes each byte once
/// (the chunk hashes; no whole-file hash). Built incrementally: a file whose path and
/// key (size, mtime, inode, ctime) match the previous index is not read again.
public struct LocalChunkIndex: Sendable {
    public struct File: Sendable, Hashable {
        public var path: RemotePath
        public var key: HashKey
        /// Per chunk: its length and the first 8 bytes of its SHA-256, in file order.
        public var chunks: [PackedChunk]

        public init(path: RemotePath, key: HashKey, chunks: [PackedChunk]) {
            self.path = path
            self.key = key
            self.chunks = chunks
        }
    }

    public struct PackedChunk: Sendable, Hashable {
        public var length: UInt32
        public var prefix: UInt64
        public init(length: UInt32, prefix: UInt64) {
            self.length = length
            self.prefix = prefix
        }
    }

    /// Where a chunk may be found: a file of the index and a range of it.
    public struct Location: Sendable, Hashable {
        public var path: RemotePath
        public var offset: Int64
        public var length: Int
    }

    public private(set) var files: [File]
    /// (hash prefix, file index, offset, length) sorted by prefix, for binary search.
    private var sorted: [(prefix: UInt64, file: UInt32, offset: Int64, length: UInt32)] = []

    public init(files: [File]) {
        self.files = files
        var all: [(prefix: UInt64, file: UInt32, offset: Int64, length: UInt32)] = []
        all.reserveCapacity(files.reduce(0) { $0 + $1.chunks.count })
        for (i, f) in files.enumerated() {
            var offset: Int64 = 0
            for c in f.chunks {
                all.append((c.prefix, UInt32(i), offset, c.length))
                offset += Int64(c.length)
            }
        }
        all.sort { $0.prefix < $1.prefix }
        sorted = all
    }

    public var chunkCount: Int { sorted.count }
    public var isEmpty: Bool { files.isEmpty }

    /// Places that may hold a chunk with this hash (same length and hash prefix), at most `limit`.
    public func locations(of digest: ChunkDigest, length: Int, limit: Int = 4) -> [Location] {
        var lo = 0, hi = sorted.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if sorted[mid].prefix < digest.a { lo = mid + 1 } else { hi = mid }
        }
        var out: [Location] = []
        var i = lo
        while i < sorted.count, sorted[i].prefix == digest.a, out.count < limit {
            let e = sorted[i]
            if Int(e.length) == length { out.append(Location(path: files[Int(e.file)].path, offset: e.offset, length: length)) }
            i += 1
        }
        return out
    }

    /// The index entry of one open file: its chunk map (one read).
    public static func entry(path: RemotePath, file: FileHandle, info: FileInfo) throws(SystemError) -> File {
        let chunks = try ChunkMapper.map(file, size: info.size)
        return File(path: path, key: HashKey(info),
                    chunks: chunks.map { PackedChunk(length: UInt32($0.length), prefix: $0.digest.a) })
    }

    /// The index of `candidates` (path → an opener that gives the file open and its status,
    /// or nil when it cannot be read), reusing `previous`'s entry of every file whose key is
    /// unchanged. A file that must be read is left out once reading it would pass `readBudget`
    /// bytes (in the candidates' order: the caller puts the likeliest sources first). Returns
    /// the index and the bytes that had to be read.
    public static func build(_ candidates: [(RemotePath, () -> (FileHandle, FileInfo)?)],
                             previous: LocalChunkIndex?, readBudget: Int64 = .max) -> (LocalChunkIndex, readBytes: Int64) {
        var known: [RemotePath: File] = [:]
        for f in previous?.files ?? [] { known[f.path] = f }
        var files: [File] = []
        var read: Int64 = 0
        for (path, open) in candidates {
            guard let (handle, info) = open(), info.type == .file, info.size > 0 else { continue }
            if let old = known[path], old.key == HashKey(info) {
                files.append(old)
                continue
            }
            guard info.size <= readBudget - read else { continue }
            guard let entry = try? entry(path: path, file: handle, info: info),
                  let after = try? handle.stat(), HashKey(after) == entry.key else { continue }
            read += info.size
            files.append(entry)
        }
        return (LocalChunkIndex(files: files), read)
    }

    // MARK: - On disk

    static let magic = Array("ferry-chunk-index 1\n".utf8)

    /// `magic`, then per file: the path (2-byte length, bytes), size, mtime (seconds,
    /// nanoseconds), inode, ctime (seconds, nanoseconds), the
    /// chunk count (4 bytes), and per chunk its length (4 bytes) and hash prefix (8 bytes); all
    /// integers big-endian. About 12 bytes per 64 KiB of DEST.
    public func encoded() -> [UInt8] {
        var w = ByteWriter(Self.magic)
        for f in files {
            w.u16(UInt16(f.path.bytes.count))
            w.bytes(f.path.bytes)
            w.u64(UInt64(bitPattern: f.key.size))
            w.u64(UInt64(bitPattern: f.key.mtime.seconds))
            w.u32(UInt32(bitPattern: f.key.mtime.nanoseconds))
            w.u64(f.key.inode)
            w.u64(UInt64(bitPattern: f.key.ctime.seconds))
            w.u32(UInt32(bitPattern: f.key.ctime.nanoseconds))
            w.u32(UInt32(f.chunks.count))
            for c in f.chunks {
                w.u32(c.length)
                w.u64(c.prefix)
            }
        }
        return w.out
    }

    /// Reads `encoded()`; nil for anything else (a damaged index is rebuilt, never trusted
    /// beyond what the hashes of reused chunks confirm).
    public static func decode(_ bytes: [UInt8]) -> LocalChunkIndex? {
        guard bytes.starts(with: magic) else { return nil }
        var r = ByteReader(bytes, at: magic.count)
        var files: [File] = []
        while !r.atEnd {
            guard let n = r.u16(), let p = r.bytes(Int(n)), let path = try? RemotePath(validating: p),
                  let size = r.u64(), let ms = r.u64(), let mn = r.u32(), let inode = r.u64(),
                  let cs = r.u64(), let cn = r.u32(),
                  let count = r.u32(), Int(count) <= r.remaining / 12 else { return nil }
            var chunks: [PackedChunk] = []
            chunks.reserveCapacity(Int(count))
            var total: Int64 = 0
            for _ in 0..<count {
                guard let length = r.u32(), let prefix = r.u64() else { return nil }
                chunks.append(PackedChunk(length: length, prefix: prefix))
                total += Int64(length)
            }
            let key = HashKey(size: Int64(bitPattern: size),
                              mtime: Timestamp(seconds: Int64(bitPattern: ms), nanoseconds: Int32(bitPattern: mn)),
                              inode: inode,
                              ctime: Timestamp(seconds: Int64(bitPattern: cs), nanoseconds: Int32(bitPattern: cn)))
            guard total == key.size else { return nil }
            files.append(File(path: path, key: key, chunks: chunks))
        }
        return LocalChunkIndex(files: files)
    }

    /// The index saved at `path`, or nil when there is none or it is not one.
    public static func load(_ path: String) -> LocalChunkIndex? {
        guard let bytes = try? AtomicFile.read(path, limit: 1 << 31) else { return nil }
        return decode(bytes)
    }

    public func save(to path: String) throws(SystemError) {
        try AtomicFile.write(encoded(), to: path)
    }
}

private struct ByteWriter {
    var out: [UInt8]
    init(_ start: [UInt8]) { out = start }
    mutating func bytes(_ b: [UInt8]) { out += b }
    mutating func u16(_ v: UInt16) { out += [UInt8(v >> 8), UInt8(truncatingIfNeeded: v)] }
    mutating func u32(_ v: UInt32) { for s in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: v >> UInt32(s))) } }
    mutating func u64(_ v: UInt64) { for s in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: v >> UInt64(s))) } }
}

private struct ByteReader {
    let data: [UInt8]
    var at: Int
    init(_ data: [UInt8], at: Int) {
        self.data = data
        self.at = at
    }
    var atEnd: Bool { at >= data.count }
    var remaining: Int { data.count - at }
    mutating func bytes(_ n: Int) -> [UInt8]? {
        guard n <= remaining else { return nil }
        defer { at += n }
        return Array(data[at..<(at + n)])
    }
    mutating func uint(_ n: Int) -> UInt64? {
        guard n <= remaining else { return nil }
        var v: UInt64 = 0
        for i in 0..<n { v = v << 8 | UInt64(data[at + i]) }
        at += n
        return v
    }
    mutating func u16() -> UInt16? { uint(2).map { UInt16($0) } }
    mutating func u32() -> UInt32? { uint(4).map { UInt32($0) } }
    mutating func u64() -> UInt64? { uint(8) }
}
