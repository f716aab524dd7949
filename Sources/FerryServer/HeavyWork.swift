#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
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

    init(threads: Int = max(2, System.coreCount)) {
        pool = NIOThreadPool(numberOfThreads: threads)
        pool.start()
    }

    /// The client went away before the work was done.
    struct Abandoned: Error {}

    /// SHA-256 of `length` bytes of `file` from `offset`.
    func sha256(of file: FileHandle, offset: Int64, length: Int64,
                stillWanted: @escaping @Sendable () -> Bool) async throws -> String {
        let hash = RangeHash(file: file, offset: offset, length: length)
        while !hash.isDone {
            guard stillWanted() else { throw Abandoned() }
            try await pool.runIfActive {
                Self.lowerPriority()
                try hash.advance(by: Self.sliceBytes)
            }
        }
        return hash.finalizeHex()
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
                try await emit([sha256(of: file, offset: offset, length: min(Int64(blockSize), size - offset), stillWanted: stillWanted)])
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

    func shutdown() async {
        try? await pool.shutdownGracefully()
    }

    /// Lowers the calling thread's priority. Idempotent, and cheap next to a slice of work.
    private static func lowerPriority() {
        #if os(Linux)
        // `who` 0 is the calling thread: on Linux the nice value belongs to each thread.
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, niceness)
        #endif
    }
}
