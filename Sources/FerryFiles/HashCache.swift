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
public final class HashCache: Sendable {
    /// A path's raw bytes as a dictionary key. The hash is computed once, in one go (an array
    /// of bytes feeds the hasher byte by byte), and kept beside the bytes: a dictionary compares
    /// the key of every bucket it probes, and comparing the stored hashes first spares a visit
    /// to each other key's bytes (a cache miss each, in a table of every file served).
    private struct PathKey: Hashable {
        let hash: Int
        let bytes: [UInt8]

        init(bytes: [UInt8]) {
            self.bytes = bytes
            var hasher = Hasher()
            bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
            self.hash = hasher.finalize()
        }

        func hash(into hasher: inout Hasher) { hasher.combine(hash) }
        static func == (a: PathKey, b: PathKey) -> Bool { a.hash == b.hash && a.bytes == b.bytes }
    }

    private struct State {
        var entries: [PathKey: (HashKey, String)] = [:]
        var dirty = false
    }

    private let state = NIOLockedValueBox(State())
    /// Where the cache is persisted; nil keeps it in memory only.
    public let fileURLPath: String?

    static let header = "ferry-hash-cache 2"
    /// The cache never grows without bound: beyond this many entries it is cleared.
    static let maxEntries = 2_000_000

    /// The chunk maps of `CHUNKS`, kept beside this cache (`PATH.chunks/`) and keyed alike.
    public let chunkMaps: ChunkMapCache

    public init(persistingTo path: String?) {
        self.fileURLPath = path
        self.chunkMaps = ChunkMapCache(directory: path.map { $0 + ".chunks" })
        if let path { load(path) }
    }

    public var count: Int { state.withLockedValue { $0.entries.count } }

    public func lookup(_ path: RemotePath, _ key: HashKey) -> String? {
        state.withLockedValue { s in
            guard let (k, sha) = s.entries[PathKey(bytes: path.bytes)], k == key else { return nil }
            return sha
        }
    }

    public func store(_ path: RemotePath, _ key: HashKey, sha256: String) {
        state.withLockedValue { s in
            if s.entries.count >= Self.maxEntries { s.entries.removeAll() }
            s.entries[PathKey(bytes: path.bytes)] = (key, sha256)
            s.dirty = true
        }
    }

    /// Writes the cache to its file if it changed since the last save.
    public func save() throws(SystemError) {
        guard let path = fileURLPath else { return }
        let snapshot: [PathKey: (HashKey, String)]? = state.withLockedValue { s in
            guard s.dirty else { return nil }
            s.dirty = false
            return s.entries
        }
        guard let snapshot else { return }
        var text = Self.header + "\n"
        for (p, (k, sha)) in snapshot {
            text += "\(k.size) \(k.mtime) \(k.inode) \(k.ctime) \(sha) \(PercentEncoding.encode(p.bytes))\n"
        }
        try AtomicFile.write(Array(text.utf8), to: path)
    }

    private func load(_ path: String) {
        guard let bytes = try? AtomicFile.read(path, limit: 1 << 30) else { return }
        let text = String(decoding: bytes, as: UTF8.self)
        var lines = text.split(separator: "\n")
        guard lines.first.map(String.init) == Self.header else { return }
        lines.removeFirst()
        var entries: [PathKey: (HashKey, String)] = [:]
        for line in lines {
            let f = line.split(separator: " ")
            guard f.count == 6, let size = parseWireNumber(f[0]), let mtime = Timestamp(f[1]),
                  let inode = UInt64(f[2]), let ctime = Timestamp(f[3]), isSHA256Hex(f[4]),
                  let p = PercentEncoding.decode(f[5]) else { continue }
            entries[PathKey(bytes: p)] = (HashKey(size: size, mtime: mtime, inode: inode, ctime: ctime), String(f[4]))
        }
        state.withLockedValue { $0.entries = entries }
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

    public static func write(_ bytes: [UInt8], to path: String, mode: mode_t = 0o600) throws(SystemError) {
        let temp = path + ".tmp-\(getpid())"
        let fd = retryingEINTR { open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode) }
        guard fd >= 0 else { throw SystemError(errno: errno, operation: "create", path: temp) }
        let handle = FileHandle(fd: fd)
        do throws(SystemError) {
            try handle.write(bytes, at: 0, path: temp)
            guard fsync(fd) == 0 else { throw SystemError(errno: errno, operation: "fsync", path: temp) }
            guard rename(temp, path) == 0 else { throw SystemError(errno: errno, operation: "rename", path: path) }
        } catch {
            unlink(temp)
            throw error
        }
    }
}
