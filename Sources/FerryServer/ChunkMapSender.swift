import FerryFiles
import FerryProtocol
import NIOCore

/// Answers `CHUNKS` (capability `cdc`): a file's content-defined chunk map, from the chunk map
/// cache when the file is unchanged since it was mapped, else computed on the heavy-work pool
/// and streamed line by line as it is (a map of a million chunks is written as fast as the
/// client reads it), then remembered.
struct ChunkMapSender {
    let context: ConnectionContext
    let writer: ReplyWriter
    let channel: any Channel
    /// The largest map kept in the cache: 8192 chunks (about 400 KB while it is built; files up
    /// to about 550 MiB at the average chunk size).
    static let cacheableChunks = 8192

    func send(path: RemotePath, validator: Validator?) async throws {
        let (file, info, canonical) = try context.root.openFileCanonical(path)
        if let validator, validator != info.validator { throw ServeError.changed(info.validator) }
        let largest = Int64(FerryLimits.maxChunkCount) * Int64(ContentChunker.minSize)
        guard info.size <= largest else {
            throw ServeError.tooLarge("a chunk map covers files of up to \(largest) bytes; use BLOCKS for this one")
        }
        let key = HashKey(info)
        let cache = context.hashCache
        try await writer.send(ChunksHead(size: info.size, mtime: info.mtime))
        if let map = cache.chunkMaps.lookup(canonical, key) {
            // In batches: the lines of a million chunks are never all in memory at once.
            for start in stride(from: 0, to: map.chunks.count, by: 4096) {
                try await writer.send(lines: map.chunks[start..<min(map.chunks.count, start + 4096)].map(ChunksHead.chunkLine))
            }
            try await writer.send(Trailer(sha256: map.sha256))
            return
        }
        let known = cache.lookup(canonical, key)
        // Kept to be cached only while the map is small: 256 connections mapping huge files at
        // once must not each hold a map of millions of chunks (issue 17). A larger map is
        // streamed and computed again next time, as a block map is.
        var chunks: [ChunkRecord] = []
        var cacheable = true
        let sha: String
        do {
            let computed = try await context.heavyWork.chunkMap(of: file, size: info.size, wholeFileHash: known == nil,
                                                                stillWanted: { [channel] in channel.isActive }) { slice in
                if cacheable && chunks.count + slice.count <= Self.cacheableChunks {
                    chunks += slice
                } else {
                    cacheable = false
                    chunks = []
                }
                try await writer.send(lines: slice.map(ChunksHead.chunkLine))
            }
            // Invariant: the mapper computes the whole file's hash when none was known.
            sha = known ?? computed!
        } catch let error as SystemError {
            // After the head an `ERR` line still ends the reply cleanly: no chunk line starts with `ERR`.
            try await writer.send(ServeError.reply(for: SystemError(errno: error.errno, operation: "read", path: path.wire)))
            return
        }
        // Remembered only if the file did not change while it was read.
        if let after = try? file.stat(), HashKey(after) == key {
            if cacheable { cache.chunkMaps.store(canonical, key, ChunkMapCache.Map(chunks: chunks, sha256: sha)) }
            if known == nil { cache.store(canonical, key, sha256: sha) }
        }
        try await writer.send(Trailer(sha256: sha))
    }
}
