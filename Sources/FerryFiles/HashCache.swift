#if canImport(Glibc)
import Glibc
#endif
import FerryProtocol
import NIOConcurrencyHelpers

/// What decides whether a cached hash is still good: the file's size, mtime, inode and ctime,
/// as in git's index. Any change to one of them means the file is hashed again. ctime matters:
/// a file rewritten in place with the same size and its old mtime put back (`touch -d`) keeps
/// size, mtime and inode, but not ctime.
public struct HashKey: Hashable, Sendable {
    public var size: Int64
    public var mtime: Timestamp
    public var inode: UInt64
    public var ctime: Timestamp

    public init(size: Int64, mtime: Timestamp, inode: UInt64, ctime: Timestamp) {
        self.size = size
        self.mtime = mtime
        self.inode = inode
        self.ctime = ctime
    }

    public init(_ info: FileInfo) {
        self.init(size: info.size, mtime: info.mtime, inode: info.inode, ctime: info.ctime)
    }
}

/// SHA-256 of files keyed by path + `HashKey`, kept in memory and optionally persisted to a
/// file in the server's state folder (never inside the served tree). The file is a simple
/// text table, rewritten atomically (temp file + rename) by `save()`.
///
/// Compact, because a served tree may hold millions of files (issue 17: a manifest of
/// 1,000,000 entries in ≤ 128 MiB): an entry is 48 bytes — a 64-bit fingerprint of the path, one
/// of its `HashKey`, and the file's digest — in a table of its own (`CompactTable`) that grows
/// by halves, a shard at a time. Before, each entry held its path, its key and its hex digest
/// as separate allocations: about 400 bytes, and a 1,000,000-file manifest took the server to
/// 700 MB. A lookup finds an entry only when both fingerprints match, so a wrong answer needs
/// two paths whose 64-bit fingerprints collide *and* a changed file whose key fingerprint
/// collides with the old one: about 2⁻⁶⁴.
///
/// The fingerprints are SipHash-2-4 under a random 128-bit key made with the cache and kept in
/// its file's first line (format 4). Format 3 took the first 64 bits of two SHA-256s: two
/// digests per lookup were a quarter of a no-op sync's server time. A file of format 3 is not
/// read (its fingerprints cannot be recomputed without the paths): each file is hashed once
/// more, and the cache is written in format 4.
public final class HashCache: Sendable {
    private struct State {
        var table = CompactTable()
        var dirty = false
    }

    private let state = NIOLockedValueBox(State())
    /// Where the cache is persisted; nil keeps it in memory only.
    public let fileURLPath: String?
    /// The SipHash key of the fingerprints: the file's, or a new random one.
    private let key: (UInt64, UInt64)

    /// Followed by a space and the key (32 hex digits).
    static let header = "ferry-hash-cache 4"
    /// The format before fingerprints (a line per file with its key and path); still read.
    static let headerWithPaths = "ferry-hash-cache 2"
    /// The cache never grows without bound: beyond this many entries it is cleared.
    static let maxEntries = 4_000_000

    /// The chunk maps of `CHUNKS`, kept beside this cache (`PATH.chunks/`) and keyed alike.
    public let chunkMaps: ChunkMapCache

    public init(persistingTo path: String?) {
        self.fileURLPath = path
        self.chunkMaps = ChunkMapCache(directory: path.map { $0 + ".chunks" })
        var random = SystemRandomNumberGenerator()
        var key = (random.next() as UInt64, random.next() as UInt64)
        if let path, let (table, kept) = Self.load(path, newKey: key) {
            key = kept
            state.withLockedValue { $0.table = table }
        }
        self.key = key
    }

    public var count: Int { state.withLockedValue { $0.table.count } }

    public func lookup(_ path: RemotePath, _ key: HashKey) -> String? {
        lookupDigest(path, key)?.hex
    }

    /// `lookup`, as the digest's bytes (a manifest of many files writes them without a `String`
    /// per entry: `Digest.appendHex`).
    public func lookupDigest(_ path: RemotePath, _ key: HashKey) -> Digest? {
        let (p, k) = (fingerprint(path.bytes), fingerprint(key))
        return state.withLockedValue { s in s.table.find(p, validator: k) }
    }

    public func store(_ path: RemotePath, _ key: HashKey, sha256: String) {
        guard let digest = Digest(hex: Substring(sha256)) else { return }
        let (p, k) = (fingerprint(path.bytes), fingerprint(key))
        state.withLockedValue { s in
            if s.table.count >= Self.maxEntries { s.table = CompactTable() }
            s.table.insert(p, validator: k, digest: digest)
            s.dirty = true
        }
    }

    /// Writes the cache to its file if it changed since the last save. The table is written
    /// in 1 MiB pieces while the lock is held (about 50 ms per 100,000 entries in a debug
    /// build), not copied: a copy of a large table would double the memory it takes.
    public func save() throws(SystemError) {
        guard let path = fileURLPath else { return }
        let failure: SystemError? = state.withLockedValue { s in
            guard s.dirty else { return nil }
            do throws(SystemError) {
                try AtomicFile.write(to: path) { (emit: (inout [UInt8]) throws(SystemError) -> Void) throws(SystemError) in
                    var out = Array((Self.header + " ").utf8)
                    Hex.append(self.key.0, to: &out)
                    Hex.append(self.key.1, to: &out)
                    out.append(0x0A)
                    out.reserveCapacity(1 << 20)
                    try s.table.forEach { (p: UInt64, k: UInt64, digest: Digest) throws(SystemError) in
                        Hex.append(p, to: &out)
                        out.append(0x20)
                        Hex.append(k, to: &out)
                        out.append(0x20)
                        out.append(contentsOf: digest.hex.utf8)
                        out.append(0x0A)
                        if out.count >= 1 << 20 { try emit(&out) }
                    }
                    try emit(&out)
                }
            } catch {
                return error
            }
            s.dirty = false
            return nil
        }
        if let failure { throw failure }
    }

    /// Reads the file a line at a time (a cache of millions of files is read in 1 MiB pieces,
    /// never whole); a line that does not parse is skipped. Nil for a missing file or one of
    /// another format (format 3 included); the table and its key otherwise (`newKey` for the
    /// format with paths, whose lines are fingerprinted afresh).
    private static func load(_ path: String, newKey: (UInt64, UInt64)) -> (CompactTable, (UInt64, UInt64))? {
        var table = CompactTable()
        var key: (UInt64, UInt64)?
        var withPaths = false
        try? AtomicFile.forEachLine(of: path) { line in
            let text = Substring(decoding: line, as: UTF8.self)
            guard let known = key else {
                if text == Self.headerWithPaths {
                    (key, withPaths) = (newKey, true)
                    return true
                }
                guard let found = Self.parseKey(header: text) else { return false }
                key = found
                return true
            }
            let f = text.split(separator: " ")
            if !withPaths {
                guard f.count == 3, f[0].utf8.count == 16, f[1].utf8.count == 16,
                      let p = UInt64(f[0], radix: 16), let k = UInt64(f[1], radix: 16), let digest = Digest(hex: f[2]) else { return true }
                table.insert(p, validator: k, digest: digest)
            } else {
                guard f.count == 6, let size = parseWireNumber(f[0]), let mtime = Timestamp(f[1]),
                      let inode = UInt64(f[2]), let ctime = Timestamp(f[3]), let digest = Digest(hex: f[4]),
                      let p = PercentEncoding.decode(f[5]) else { return true }
                let hashKey = HashKey(size: size, mtime: mtime, inode: inode, ctime: ctime)
                table.insert(fingerprint(p, key: known), validator: fingerprint(hashKey, key: known), digest: digest)
            }
            return table.count < Self.maxEntries
        }
        return key.map { (table, $0) }
    }

    /// The key in a format 4 first line: `ferry-hash-cache 4 ` and 32 lowercase hex digits.
    static func parseKey(header: Substring) -> (UInt64, UInt64)? {
        let prefix = Self.header + " "
        guard header.hasPrefix(prefix) else { return nil }
        let hex = header.dropFirst(prefix.utf8.count)
        guard DiscoveryDatagram.isLowercaseHex(hex, length: 32),
              let a = UInt64(hex.prefix(16), radix: 16), let b = UInt64(hex.suffix(16), radix: 16) else { return nil }
        return (a, b)
    }

    func fingerprint(_ path: [UInt8]) -> UInt64 { Self.fingerprint(path, key: key) }
    func fingerprint(_ hashKey: HashKey) -> UInt64 { Self.fingerprint(hashKey, key: key) }

    /// SipHash-2-4 of a path's bytes.
    static func fingerprint(_ bytes: [UInt8], key: (UInt64, UInt64)) -> UInt64 {
        var hasher = SipHash24(key: key)
        bytes.withUnsafeBytes { hasher.update($0) }
        return hasher.finalize()
    }

    /// SipHash-2-4 of a `HashKey`'s fields, each as 8 little-endian bytes, in a fixed order.
    static func fingerprint(_ hashKey: HashKey, key: (UInt64, UInt64)) -> UInt64 {
        var hasher = SipHash24(key: key)
        hasher.update(UInt64(bitPattern: hashKey.size))
        hasher.update(UInt64(bitPattern: hashKey.mtime.seconds))
        hasher.update(UInt64(hashKey.mtime.nanoseconds))
        hasher.update(hashKey.inode)
        hasher.update(UInt64(bitPattern: hashKey.ctime.seconds))
        hasher.update(UInt64(hashKey.ctime.nanoseconds))
        return hasher.finalize()
    }

    /// A SHA-256 digest held as four words instead of 64 hex characters.
    public struct Digest: Equatable, Sendable {
        var words: (UInt64, UInt64, UInt64, UInt64)

        init(words: (UInt64, UInt64, UInt64, UInt64)) { self.words = words }

        init?(hex: Substring) {
            guard isSHA256Hex(hex), let bytes = Hex.decode(hex), bytes.count == 32 else { return nil }
            func word(_ i: Int) -> UInt64 { bytes[(i * 8)..<(i * 8 + 8)].reduce(0) { $0 << 8 | UInt64($1) } }
            words = (word(0), word(1), word(2), word(3))
        }

        var hex: String {
            withUnsafeBytes(of: (words.0.bigEndian, words.1.bigEndian, words.2.bigEndian, words.3.bigEndian)) { Hex.encode($0) }
        }

        /// The 64 lowercase hex digits `hex` spells, appended to `out`.
        public func appendHex(to out: inout [UInt8]) {
            Hex.append(words.0, to: &out)
            Hex.append(words.1, to: &out)
            Hex.append(words.2, to: &out)
            Hex.append(words.3, to: &out)
        }

        public static func == (a: Digest, b: Digest) -> Bool { a.words == b.words }
    }
}

/// An open-addressing table of cache entries, split into 256 shards by the path fingerprint's
/// top byte. Each shard probes linearly, fills to 90% and grows by half, one shard at a time,
/// so the table holds about 1.3 × 48 bytes per entry and never twice its size while growing.
struct CompactTable {
    struct Slot {
        /// 0 marks an empty slot (a fingerprint of 0 is stored as 1).
        var path: UInt64 = 0
        var validator: UInt64 = 0
        var digest = HashCache.Digest(words: (0, 0, 0, 0))
    }

    private var shards = [[Slot]](repeating: [], count: 256)
    private var counts = [Int](repeating: 0, count: 256)
    private(set) var count = 0

    private static func stored(_ path: UInt64) -> UInt64 { path == 0 ? 1 : path }

    func find(_ path: UInt64, validator: UInt64) -> HashCache.Digest? {
        let p = Self.stored(path)
        let shard = shards[Int(p >> 56)]
        guard !shard.isEmpty else { return nil }
        var i = Int(p % UInt64(shard.count))
        while shard[i].path != 0 {
            if shard[i].path == p { return shard[i].validator == validator ? shard[i].digest : nil }
            i = i + 1 == shard.count ? 0 : i + 1
        }
        return nil
    }

    mutating func insert(_ path: UInt64, validator: UInt64, digest: HashCache.Digest) {
        let p = Self.stored(path)
        let s = Int(p >> 56)
        if (counts[s] + 1) * 10 > shards[s].count * 9 { grow(s) }
        let capacity = shards[s].count
        var i = Int(p % UInt64(capacity))
        while shards[s][i].path != 0 && shards[s][i].path != p {
            i = i + 1 == capacity ? 0 : i + 1
        }
        if shards[s][i].path == 0 {
            counts[s] += 1
            count += 1
        }
        shards[s][i] = Slot(path: p, validator: validator, digest: digest)
    }

    private mutating func grow(_ s: Int) {
        let old = shards[s]
        let capacity = max(16, old.count + old.count / 2)
        var fresh = [Slot](repeating: Slot(), count: capacity)
        for slot in old where slot.path != 0 {
            var i = Int(slot.path % UInt64(capacity))
            while fresh[i].path != 0 { i = i + 1 == capacity ? 0 : i + 1 }
            fresh[i] = slot
        }
        shards[s] = fresh
    }

    func forEach(_ body: (UInt64, UInt64, HashCache.Digest) throws(SystemError) -> Void) throws(SystemError) {
        for shard in shards {
            for slot in shard where slot.path != 0 { try body(slot.path, slot.validator, slot.digest) }
        }
    }
}

/// Small whole-file reads and atomic writes (temp file in the same directory, fsync, rename).
public enum AtomicFile {
    public static func read(_ path: String, limit: Int) throws(SystemError) -> [UInt8] {
        let fd = retryingEINTR { open(path, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { throw SystemError(errno: errno, operation: "open", path: path) }
        let handle = FileHandle(fd: fd)
        let info = try handle.stat()
        guard info.size <= Int64(limit) else { throw SystemError(errno: EFBIG, operation: "read", path: path) }
        return try handle.read(count: Int(info.size), at: 0)
    }

    /// Hands each line of the file at `path` (without its LF) to `body`, reading 1 MiB at a
    /// time, until `body` returns false. A line longer than 64 KiB ends the reading.
    public static func forEachLine(of path: String, _ body: (ArraySlice<UInt8>) -> Bool) throws(SystemError) {
        let fd = retryingEINTR { open(path, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { throw SystemError(errno: errno, operation: "open", path: path) }
        let handle = FileHandle(fd: fd)
        var pending: [UInt8] = []
        var offset: Int64 = 0
        while true {
            let piece = try handle.read(count: 1 << 20, at: offset)
            if piece.isEmpty { break }
            offset += Int64(piece.count)
            pending += piece
            var start = pending.startIndex
            while let lf = pending[start...].firstIndex(of: 0x0A) {
                guard body(pending[start..<lf]) else { return }
                start = lf + 1
            }
            pending.removeSubrange(..<start)
            if pending.count > 64 << 10 { return }
        }
        if !pending.isEmpty { _ = body(pending[...]) }
    }

    public static func write(_ bytes: [UInt8], to path: String, mode: mode_t = 0o600) throws(SystemError) {
        try write(to: path, mode: mode) { (emit: (inout [UInt8]) throws(SystemError) -> Void) throws(SystemError) in
            var copy = bytes
            try emit(&copy)
        }
    }

    /// Writes what `produce` hands to its `emit` (which empties the array it is given), in
    /// order, to a temporary file that then replaces `path`: a large file is written in pieces
    /// instead of from one array.
    public static func write(to path: String, mode: mode_t = 0o600,
                             _ produce: ((inout [UInt8]) throws(SystemError) -> Void) throws(SystemError) -> Void) throws(SystemError) {
        let temp = path + ".tmp-\(getpid())"
        let fd = retryingEINTR { open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode) }
        guard fd >= 0 else { throw SystemError(errno: errno, operation: "create", path: temp) }
        let handle = FileHandle(fd: fd)
        do throws(SystemError) {
            var offset: Int64 = 0
            try produce { (piece: inout [UInt8]) throws(SystemError) in
                try handle.write(piece, at: offset, path: temp)
                offset += Int64(piece.count)
                piece.removeAll(keepingCapacity: true)
            }
            guard fsync(fd) == 0 else { throw SystemError(errno: errno, operation: "fsync", path: temp) }
            guard rename(temp, path) == 0 else { throw SystemError(errno: errno, operation: "rename", path: path) }
        } catch {
            unlink(temp)
            throw error
        }
    }
}
