#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import NIOCore
import NIOPosix

/// Where expensive file work runs: hashing ranges and block maps. Not on Swift's cooperative
/// threads — there are as many as cores (two here), and two long hashes on them used to stop
/// every other client (issue 17) — but on a pool of its own whose threads run at a lower
/// priority, in slices of `sliceBytes`, so that work from many connections interleaves and
/// light requests (a listing, a small file) are not kept waiting behind it. Between slices the
/// work stops when nobody wants the result any more (the client closed the connection).
final class HeavyWork: Sendable {
    /// One slice: a few milliseconds of hashing.
    static let sliceBytes = 4 << 20
    /// The niceness of the pool's threads (0 is normal; 10 leaves CPU to request handling).
    static let niceness: Int32 = 10

    private let pool: NIOThreadPool
    /// Tree walks (`MANIFEST`, which every sync starts with) run on a thread of their own at
    /// normal priority: at niceness 10 behind other work they crawled (a 300,000-entry walk took
    /// 210 s of wall time for 10 s of CPU on a busy machine, past a client's 60 s timeout). One
    /// thread, so walks never take every core either.
    private let walkPool: NIOThreadPool

    /// One thread fewer than cores (at least one): expensive work never has every core, so
    /// requests that cost little are answered however many expensive ones wait.
    init(threads: Int = max(1, System.coreCount - 1)) {
        pool = NIOThreadPool(numberOfThreads: threads)
        pool.start()
        walkPool = NIOThreadPool(numberOfThreads: 1)
        walkPool.start()
    }

    /// The client went away before the work was done.
    struct Abandoned: Error {}

    /// SHA-256 of `length` bytes of `file` from `offset`, and the state of the file's bytes from
    /// 0 to the range's end when it is known: the range starts at 0, or `prefix` (the state of
    /// the bytes before `offset`) was given and the same bytes continued it.
    func sha256(of file: FileHandle, offset: Int64, length: Int64, continuing prefix: SHA256Hasher? = nil,
                stillWanted: @escaping @Sendable () -> Bool) async throws -> (sha256: String, continued: SHA256Hasher?) {
        let hash = RangeHash(file: file, offset: offset, length: length, continuing: prefix)
        while !hash.isDone {
            guard stillWanted() else { throw Abandoned() }
            try await pool.runIfActive {
                Self.lowerPriority()
                try hash.advance(by: Self.sliceBytes)
            }
        }
        return (hash.finalizeHex(), hash.prefix)
    }

    /// The block map of a file (PROTOCOL.md `BLOCKS`): `count` hashes of `blockSize`-byte
    /// blocks, handed to `emit` a slice at a time (a slice holds at most `sliceBytes` of blocks,
    /// or one block hashed in slices when blocks are larger), so a map of a million blocks is
    /// never in memory and is written as fast as the client reads it.
    func blockHashes(of file: FileHandle, size: Int64, blockSize: Int, count: Int,
                     stillWanted: @escaping @Sendable () -> Bool,
                     emit: ([String]) async throws -> Void) async throws {
        let perSlice = max(1, Self.sliceBytes / blockSize)
        var index = 0
        while index < count {
            guard stillWanted() else { throw Abandoned() }
            let first = index, last = min(count, index + perSlice)
            if blockSize > Self.sliceBytes {
                let offset = Int64(first) * Int64(blockSize)
                try await emit([sha256(of: file, offset: offset, length: min(Int64(blockSize), size - offset), stillWanted: stillWanted).sha256])
            } else {
                let hashes = try await pool.runIfActive { () throws -> [String] in
                    Self.lowerPriority()
                    return try (first..<last).map { i in
                        let offset = Int64(i) * Int64(blockSize)
                        return try FileHashing.sha256(of: file, offset: offset, length: min(Int64(blockSize), size - offset))
                    }
                }
                try await emit(hashes)
            }
            index = last
        }
    }

    /// Runs one slice of a tree walk that the caller cut, on the walk thread.
    func walkSlice<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await walkPool.runIfActive(body)
    }

    /// The content-defined chunk map of a file (PROTOCOL.md `CHUNKS`), handed to `emit` a
    /// slice at a time as it is computed; returns the whole file's SHA-256 when `wholeFileHash`
    /// (the same read computes it), else nil.
    func chunkMap(of file: FileHandle, size: Int64, wholeFileHash: Bool,
                  stillWanted: @escaping @Sendable () -> Bool,
                  emit: ([ChunkRecord]) async throws -> Void) async throws -> String? {
        let mapper = ChunkMapper(file: file, size: size, wholeFileHash: wholeFileHash)
        while !mapper.isDone {
            guard stillWanted() else { throw Abandoned() }
            let chunks = try await pool.runIfActive {
                Self.lowerPriority()
                return try mapper.advance(by: Self.sliceBytes)
            }
            try await emit(chunks)
        }
        return mapper.wholeFileSHA256()
    }

    func shutdown() async {
        try? await pool.shutdownGracefully()
        try? await walkPool.shutdownGracefully()
    }

    /// Lowers the calling thread's priority. Idempotent, and cheap next to a slice of work.
    private static func lowerPriority() {
        #if os(Linux)
        // `who` 0 is the calling thread: on Linux the nice value belongs to each thread.
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, niceness)
        #endif
    }
}

/// The SHA-256 state of a file's first `covered` bytes, built while a client checks the data it
/// kept piece by piece (`HASH f 0 a`, `HASH f a b`, …): the `GET` of the rest that follows on the
/// same connection then needs no second pass over the prefix for its trailer (the whole file's
/// SHA-256). Without it, resuming a 27 GiB file made the server hash 27 GiB before the first
/// byte of the reply, longer than a client waits.
// `@unchecked`: one per connection, used only by that connection's handler, one request at a time.
final class PrefixHash: @unchecked Sendable {
    private var file: RemotePath?
    private var key: HashKey?
    private(set) var covered: Int64 = 0
    private var hasher = SHA256Hasher()

    /// The state to continue when a range of `file` (as `key` describes it) starts at `offset`:
    /// the kept one when it covers exactly up to `offset`, else nil (a range from 0 needs none).
    func state(for file: RemotePath, _ key: HashKey, at offset: Int64) -> SHA256Hasher? {
        guard offset > 0, self.file == file, self.key == key, covered == offset else { return nil }
        return hasher
    }

    func record(_ state: SHA256Hasher?, for file: RemotePath, _ key: HashKey, upTo end: Int64) {
        guard let state else { return forget() }
        self.file = file
        self.key = key
        self.hasher = state
        self.covered = end
    }

    func forget() {
        file = nil
        key = nil
        covered = 0
        hasher = SHA256Hasher()
    }
}
