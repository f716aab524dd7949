#if canImport(Glibc)
import Glibc
#endif
import FerryProtocol
import NIOConcurrencyHelpers

/// The server's content-defined chunk maps (`CHUNKS`), keyed like `HashCache` (path + size,
/// mtime, inode, ctime), so a map is computed once per version of a file. With a folder (beside
/// the hash cache, in the server's state folder) each map is one small binary file there,
/// named by a hash of its path and rewritten atomically; without one, maps are kept in memory
/// up to `memoryLimit` chunks in all (then forgotten together).
public final class ChunkMapCache: Sendable {
    public struct Map: Sendable, Equatable {
        public var chunks: [ChunkRecord]
        public var sha256: String

        public init(chunks: [ChunkRecord], sha256: String) {
            self.chunks = chunks
            self.sha256 = sha256
        }
    }

    public let directory: String?
    private let memory = NIOLockedValueBox([[UInt8]: (HashKey, Map)]())
    private let memoryChunks = NIOLockedValueBox(0)
    static let memoryLimit = 262_144
    static let magic = Array("ferry-chunk-map 1\n".utf8)

    public init(directory: String?) {
        self.directory = directory
    }

    public func lookup(_ path: RemotePath, _ key: HashKey) -> Map? {
        guard let directory else {
            return memory.withLockedValue { m in m[path.bytes].flatMap { $0.0 == key ? $0.1 : nil } }
        }
        let limit = Self.magic.count + 8192 + FerryLimits.maxChunkCount * 36
        guard let bytes = try? AtomicFile.read(file(for: path, in: directory), limit: limit) else { return nil }
        return Self.decode(bytes, path: path, key: key)
    }

    /// Remembers a map. Failing to write it costs only a later recomputation.
    public func store(_ path: RemotePath, _ key: HashKey, _ map: Map) {
        guard let directory else {
            memory.withLockedValue { m in
                memoryChunks.withLockedValue { total in
                    if total + map.chunks.count > Self.memoryLimit {
                        m.removeAll()
                        total = 0
                    }
                    guard map.chunks.count <= Self.memoryLimit else { return }
                    m[path.bytes] = (key, map)
                    total += map.chunks.count
                }
            }
            return
        }
        if mkdir(directory, 0o700) != 0 && errno != EEXIST { return }
        try? AtomicFile.write(Self.encode(map, path: path, key: key), to: file(for: path, in: directory))
    }

    private func file(for path: RemotePath, in directory: String) -> String {
        directory + "/" + SHA256Hasher.hex(path.bytes).prefix(32) + ".map"
    }

    /// `magic`, a text line `SIZE MTIME INODE CTIME SHA256 PATH`, then per chunk its length
    /// (4 bytes, big-endian) and its SHA-256 (32 bytes); offsets follow from the lengths.
    static func encode(_ map: Map, path: RemotePath, key: HashKey) -> [UInt8] {
        var out = magic
        out += Array("\(key.size) \(key.mtime) \(key.inode) \(key.ctime) \(map.sha256) \(path.wire)\n".utf8)
        out.reserveCapacity(out.count + map.chunks.count * 36)
        for c in map.chunks {
            let n = UInt32(c.length)
            out += [UInt8(n >> 24), UInt8(truncatingIfNeeded: n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)]
            out += c.digest.bytes
        }
        return out
    }

    static func decode(_ bytes: [UInt8], path: RemotePath, key: HashKey) -> Map? {
        guard bytes.starts(with: magic), let newline = bytes[magic.count...].firstIndex(of: 0x0A) else { return nil }
        let header = String(decoding: bytes[magic.count..<newline], as: UTF8.self)
        let fields = header.split(separator: " ", omittingEmptySubsequences: false)
        guard fields.count == 6, fields[0...3].map(String.init) == ["\(key.size)", "\(key.mtime)", "\(key.inode)", "\(key.ctime)"],
              isSHA256Hex(fields[4]), fields[5] == path.wire else { return nil }
        let body = bytes[(newline + 1)...]
        guard body.count % 36 == 0 else { return nil }
        var chunks: [ChunkRecord] = []
        chunks.reserveCapacity(body.count / 36)
        var offset: Int64 = 0
        var i = body.startIndex
        while i < body.endIndex {
            let length = Int(body[i]) << 24 | Int(body[i + 1]) << 16 | Int(body[i + 2]) << 8 | Int(body[i + 3])
            guard let digest = ChunkDigest(bytes: body[(i + 4)..<(i + 36)]) else { return nil }
            chunks.append(ChunkRecord(offset: offset, length: length, digest: digest))
            offset += Int64(length)
            i += 36
        }
        guard offset == key.size else { return nil }
        return Map(chunks: chunks, sha256: String(fields[4]))
    }
}
