import FerryFiles
import FerryProtocol
import NIOConcurrencyHelpers
import NIOCore

/// Encodes a byte source as a chunk stream (PROTOCOL.md section 7). Up to `window` chunks are
/// read and compressed concurrently on the task pool while earlier ones are written, so both
/// cores work and memory stays at about `window` × 2 × chunk size per connection.
///
/// As each chunk's encoding starts, `policy` decides how to encode it (with `auto`, an
/// `AdaptiveCompression` controller decides whether compressing is worth it, with which codec
/// and level); the pipeline feeds the controller how long each write to the socket took and
/// what each encoder did.
struct ChunkPipeline {
    let writer: ReplyWriter
    let policy: ChunkCompressionPolicy
    let chunkSize: Int
    /// The server's total rate, fed with every chunk written.
    var serverRate: ServerRateMeter? = nil
    /// Chunk buffers to reuse (file reads and compressed output); fresh ones when nil.
    var buffers: ChunkBufferPool? = nil
    /// The server's share-out of chunks held ahead of the socket; `window` when nil.
    var budget: StreamBudget? = nil
    static let window = 4
    /// Encoders that can really run at once. Read once: `System.coreCount` reads the cgroup's
    /// files on every call, and a stream is set up for every `GET`.
    static let encoders = max(1, min(window, System.coreCount))

    enum Source: Sendable {
        case file(FileHandle)
        case memory(ByteBuffer)
    }

    struct Encoded: Sendable {
        var chunk: EncodedChunk
        var raw: ByteBuffer
        /// Whether `raw` was read into a buffer of the pool (not a slice of a memory source).
        var rawIsOwned: Bool

        /// Hands the chunk's buffers back to `pool` once they are written: they are reused when
        /// the channel has let go of them.
        func recycle(into pool: ChunkBufferPool?) {
            guard let pool else { return }
            if rawIsOwned { pool.recycle(raw) }
            if chunk.header.codec != .stored { pool.recycle(chunk.wire) }
        }
    }

    /// A read came back short: the file shrank while it was being sent.
    struct ShortRead: Error {}

    /// Streams bytes `[from, to)` of `source`; `onRaw` sees each chunk's raw bytes in order.
    /// Returns how many chunks were sent compressed.
    @discardableResult
    func stream(_ source: Source, from: Int64, to: Int64, controller: inout AdaptiveCompression,
                onRaw: (ByteBuffer) -> Void) async throws -> Int {
        let count = Int((to - from + Int64(chunkSize) - 1) / Int64(chunkSize))
        guard count > 0 else { return 0 }
        var compressed = 0
        let allocator = writer.allocator
        let chunkSize = self.chunkSize
        let policy = self.policy
        let buffers = self.buffers
        controller.beginStream(chunks: count)
        let budget = self.budget
        budget?.enter()
        defer { budget?.leave() }
        // Chunks read and encoded ahead of the socket: `window`, or this stream's share of the
        // server's budget when many streams run (a client that stops reading holds at most that).
        func ahead() -> Int { budget?.window ?? Self.window }
        try await withThrowingTaskGroup(of: (Int, Encoded).self) { group in
            var next = 0
            var ready: [Int: Encoded] = [:]
            func launch(_ index: Int) {
                let offset = from + Int64(index) * Int64(chunkSize)
                let length = Int(min(Int64(chunkSize), to - offset))
                let decision = policy.decide(&controller)
                group.addTask {
                    (index, try Self.encode(source, offset: offset, length: length, decision: decision,
                                            allocator: allocator, buffers: buffers))
                }
            }
            var launched = min(ahead(), count)
            for i in 0..<launched { launch(i) }
            var lastWritten = ContinuousClock.now
            while next < count {
                guard let (index, encoded) = try await group.next() else { break }
                controller.record(encoded.chunk.report)
                ready[index] = encoded
                while var item = ready.removeValue(forKey: next) {
                    if item.chunk.header.codec != .stored { compressed += 1 }
                    onRaw(item.raw)
                    // A compressed chunk's raw bytes are done with: back to the pool before the
                    // write, which may wait long for a client that reads slowly or not at all.
                    if item.chunk.header.codec != .stored, item.rawIsOwned { buffers?.recycle(item.raw); item.rawIsOwned = false }
                    let start = ContinuousClock.now
                    try await writer.send(chunk: item.chunk.header, wire: item.chunk.wire)
                    // The next chunk is read only once the connection has room to queue it: a
                    // client that reads slowly (or not at all) holds no chunks read ahead.
                    if launched < count { await writer.waitForRoom(chunkSize) }
                    let end = ContinuousClock.now
                    let bytes = item.chunk.wire.readableBytes + 64
                    controller.recordChunkWritten(wireBytes: bytes, sendSeconds: (end - start).seconds,
                                                  intervalSeconds: (end - lastWritten).seconds)
                    lastWritten = end
                    item.recycle(into: buffers)
                    next += 1
                    if let rate = serverRate?.add(bytes) { controller.recordServerRate(rate) }
                    while launched < count && launched - next < ahead() {
                        launch(launched)
                        launched += 1
                    }
                }
            }
        }
        return compressed
    }

    static func encode(_ source: Source, offset: Int64, length: Int, decision: ChunkDecision,
                       allocator: ByteBufferAllocator, buffers: ChunkBufferPool? = nil) throws -> Encoded {
        var raw: ByteBuffer
        let owned: Bool
        switch source {
        case .memory(let buffer):
            guard let slice = buffer.getSlice(at: buffer.readerIndex + Int(offset), length: length) else { throw ShortRead() }
            raw = slice
            owned = false
        case .file(let handle):
            raw = buffers?.take(capacity: length) ?? allocator.buffer(capacity: length)
            owned = true
            var failure: SystemError?
            raw.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { ptr in
                do throws(SystemError) {
                    return try handle.read(into: UnsafeMutableRawBufferPointer(rebasing: ptr[0..<length]), at: offset)
                } catch {
                    failure = error
                    return 0
                }
            }
            if let failure { throw failure }
            if raw.readableBytes != length { throw ShortRead() }
        }
        var encoder = ChunkEncoder(decision)
        // The codec's output goes to a reused buffer too; it comes back unused if the chunk is stored.
        var output = decision == .store ? nil : buffers?.take(capacity: length)
        let chunk = encoder.encode(raw, offset: offset, allocator: allocator, output: &output)
        if let output { buffers?.recycle(output) }
        return Encoded(chunk: chunk, raw: raw, rawIsOwned: owned)
    }
}

/// Shares out how many chunks the server's streams may hold read and encoded ahead of their
/// sockets: each running stream gets an equal share of `chunks`, at least one and at most
/// `ChunkPipeline.window`. One client gets the full window (both cores encode); 256 clients that
/// stop reading hold one chunk each instead of four (issue 17: 255 unread GETs took ~900 MB).
final class StreamBudget: Sendable {
    let chunks: Int
    private let active = NIOLockedValueBox(0)

    init(chunks: Int = 32) { self.chunks = chunks }

    func enter() { active.withLockedValue { $0 += 1 } }
    func leave() { active.withLockedValue { $0 -= 1 } }

    /// This stream's share now.
    var window: Int {
        let streams = active.withLockedValue { max(1, $0) }
        return max(1, min(ChunkPipeline.window, chunks / streams))
    }
}

extension ReplyWriter {
    /// Writes several buffers (lines and chunk payloads) as one write.
    func send(buffers: [ByteBuffer]) async throws {
        try await write(buffers)
    }
}

/// Answers `GET`.
struct FileSender {
    let context: ConnectionContext
    let writer: ReplyWriter
    /// What `auto` compression learned so far; the server's own memory when nil.
    var memory: CompressionMemory? = nil
    /// What the connection's `HASH` requests covered of a file's start: a resumed `GET` whose
    /// offset it reaches continues it instead of hashing the prefix again.
    var prefix: PrefixHash? = nil
    /// How chunks are compressed for this peer: `--compress`, the codecs it decodes, whether
    /// it is on this machine (`auto` then stores, and what its stream measures is not
    /// remembered for the links of other clients).
    var policy: ChunkCompressionPolicy
    /// Whether the client enabled `xxh128`: the trailer then carries the XXH3-128 of the bytes
    /// this reply's chunks carry (PROTOCOL.md section 7).
    var transferDigest = false
    /// False once the client has gone: hashing for the trailer stops then.
    var stillWanted: @Sendable () -> Bool = { true }

    func send(path: RemotePath, offset: Int64, length: Int64?, validator: Validator?) async throws {
        let (file, info, canonical) = try context.root.openFileCanonical(path)
        if let validator, validator != info.validator { throw ServeError.changed(info.validator) }
        guard offset <= info.size else {
            throw ServeError.badRange("offset \(offset) is beyond the end of the file (size \(info.size))")
        }
        let end = length.map { min(info.size, offset + min($0, info.size - offset)) } ?? info.size
        let key = HashKey(info)
        let known = context.hashCache.lookup(canonical, key)
        let head = GetHead(size: info.size, mtime: info.mtime, sha256: known)
        let memory = self.memory ?? context.compressionMemory
        var controller = memory.load()
        defer { if !policy.localPeer { memory.store(controller) } }
        if end - offset <= Int64(context.chunkSize) {
            return try await sendInOneWrite(file: file, head: head, info: info, path: path, range: offset..<end, known: known,
                                            key: key, canonical: canonical, memory: memory, controller: &controller)
        }
        try await writer.send(head)

        var hasher: SHA256Hasher?
        let sent = transferDigest ? XXH128Hasher() : nil
        do {
            hasher = try await trailerHasher(file, upTo: offset, known: known, canonical: canonical, key: key)
            let pipeline = ChunkPipeline(writer: writer, policy: policy,
                                         chunkSize: context.chunkSize, serverRate: memory.serverRate, buffers: memory.buffers,
                                         budget: context.streamBudget)
            let chunks = (end - offset + Int64(pipeline.chunkSize) - 1) / Int64(pipeline.chunkSize)
            let compressed = try await pipeline.stream(.file(file), from: offset, to: end, controller: &controller) { raw in
                raw.withUnsafeReadableBytes {
                    hasher?.update($0)
                    sent?.update($0)
                }
            }
            if chunks > 1 {
                let codec = AdaptiveCompression.codec(for: policy.peerCodecs)
                context.logger.debug("sent \(path): \(compressed) of \(chunks) chunks compressed", metadata: [
                    "link MB/s": "\(controller.linkRate.map { Int(min($0, 1e12) / 1e6) } ?? -1)",
                    "server MB/s": "\(controller.serverRate.map { Int($0 / 1e6) } ?? -1)",
                    "\(codec) MB/s": "\(Int(controller.compressRate(codec) / 1e6))",
                    "pressure": "\(Int(controller.networkPressure * 100))%",
                    "level": "\(controller.level(for: codec))",
                    "ratio": "\(Int(controller.expectedRatio * 100))%",
                ])
            }
            if hasher != nil && end < info.size { try await hashRange(file, end, info.size, into: &hasher) }
        } catch {
            guard let reply = Self.readFailure(error, path: path) else { throw error }
            try await writer.send(reply)
            return
        }
        try await writer.send(line: trailer(file: file, key: key, known: known, hasher: hasher, canonical: canonical,
                                            sent: sent?.finalizeHex()).line)
    }

    /// The reply to a read that failed while the chunks were being produced; nil for errors that
    /// are not about the file (the connection's own).
    private static func readFailure(_ error: Error, path: RemotePath) -> ErrorReply? {
        switch error {
        case is ChunkPipeline.ShortRead: return .changedDuringTransfer
        case let e as SystemError: return ServeError.reply(for: SystemError(errno: e.errno, operation: "read", path: path.wire))
        default: return nil
        }
    }

    /// The line that ends a `GET` once its chunks are out: `END` with the file's SHA-256 (put in
    /// the hash cache when it was computed here) and, with `xxh128`, the XXH3-128 of the bytes
    /// sent; or `ERR 409` when the file changed meanwhile.
    private func trailer(file: FileHandle, key: HashKey, known: String?, hasher: SHA256Hasher?,
                         canonical: RemotePath, sent: String?) -> any ReplyLine {
        guard let after = try? file.stat(), HashKey(after) == key else { return ErrorReply.changedDuringTransfer }
        if let known { return Trailer(sha256: known, xxh128: sent) }
        // `send` makes a hasher exactly when the hash is not known.
        guard let hasher else { return ErrorReply(.serverError, "no hash for the trailer") }
        let sha = hasher.finalizeHex()
        context.hashCache.store(canonical, key, sha256: sha)
        return Trailer(sha256: sha, xxh128: sent)
    }

    /// A range of at most one chunk — most files of a tree: read and encode it here and send the
    /// status line, the chunk and the trailer in one write (one hop to the event loop, no task
    /// group), which is what many small files cost per file.
    private func sendInOneWrite(file: FileHandle, head: GetHead, info: FileInfo, path: RemotePath, range: Range<Int64>, known: String?,
                                key: HashKey, canonical: RemotePath, memory: CompressionMemory,
                                controller: inout AdaptiveCompression) async throws {
        let started = ContinuousClock.now
        let allocator = writer.allocator
        func line(_ text: String) -> ByteBuffer {
            var b = allocator.buffer(capacity: text.utf8.count + 1)
            b.writeString(text)
            b.writeInteger(UInt8(0x0A))
            return b
        }
        var out = [line(head.line)]
        var hasher: SHA256Hasher?
        var failure: ErrorReply?
        var sent: ChunkPipeline.Encoded?
        do {
            hasher = try await trailerHasher(file, upTo: range.lowerBound, known: known, canonical: canonical, key: key)
            if !range.isEmpty {
                controller.beginStream(chunks: 1)
                let decision = policy.decide(&controller)
                let encoded = try ChunkPipeline.encode(.file(file), offset: range.lowerBound, length: range.count,
                                                       decision: decision, allocator: allocator, buffers: memory.buffers)
                sent = encoded
                controller.record(encoded.chunk.report)
                encoded.raw.withUnsafeReadableBytes { hasher?.update($0) }
                out.append(line(encoded.chunk.header.line))
                out.append(encoded.chunk.wire)
            }
            if hasher != nil && range.upperBound < info.size { try await hashRange(file, range.upperBound, info.size, into: &hasher) }
        } catch {
            guard let reply = Self.readFailure(error, path: path) else { throw error }
            failure = reply
        }
        // With `xxh128`, the XXH3-128 of the bytes sent (of none for an empty range).
        let digest = transferDigest ? (sent?.raw ?? ByteBuffer()).withUnsafeReadableBytes { XXH128Hasher.hex($0) } : nil
        out.append(line(failure?.line ?? trailer(file: file, key: key, known: known, hasher: hasher, canonical: canonical,
                                                 sent: digest).line))
        let bytes = out.reduce(0) { $0 + $1.readableBytes }
        let start = ContinuousClock.now
        try await writer.send(buffers: out)
        out.removeAll()
        sent?.recycle(into: memory.buffers)
        let done = ContinuousClock.now
        controller.recordChunkWritten(wireBytes: bytes, sendSeconds: (done - start).seconds, intervalSeconds: (done - started).seconds)
        if let rate = memory.serverRate.add(bytes) { controller.recordServerRate(rate) }
    }

    /// The hasher for the trailer, already covering the bytes before `offset`: nil when the
    /// hash is known, the connection's prefix state when it reaches `offset`, else hashed here.
    private func trailerHasher(_ file: FileHandle, upTo offset: Int64, known: String?, canonical: RemotePath,
                               key: HashKey) async throws -> SHA256Hasher? {
        guard known == nil else { return nil }
        if let state = prefix?.state(for: canonical, key, at: offset) { return state }
        var hasher: SHA256Hasher? = SHA256Hasher()
        if offset > 0 { try await hashRange(file, 0, offset, into: &hasher) }
        return hasher
    }

    /// Feeds bytes `[from, to)` of `file` to `hasher`, on the pool for expensive work (a resumed
    /// `GET` of a huge file hashes its whole prefix for the trailer), in slices that stop when
    /// the client has gone.
    private func hashRange(_ file: FileHandle, _ from: Int64, _ to: Int64, into hasher: inout SHA256Hasher?) async throws {
        guard let state = hasher else { return }
        // From 0 the hasher holds nothing yet: the range's own state is the one to keep (no
        // second hasher fed the same bytes).
        let (_, continued) = try await context.heavyWork.sha256(of: file, offset: from, length: to - from,
                                                                continuing: from == 0 ? nil : state, stillWanted: stillWanted)
        hasher = continued
    }
}

/// Answers `MANIFEST`: walks the subtree, hashes files (through the cache) and streams the
/// manifest text compressed like file data.
struct ManifestSender {
    let context: ConnectionContext
    let writer: ReplyWriter
    /// What `auto` compression learned so far; the server's own memory when nil.
    var memory: CompressionMemory? = nil
    /// How chunks are compressed for this peer (see `FileSender.policy`).
    var policy: ChunkCompressionPolicy

    /// Entries walked per slice of work on the pool (a few milliseconds without hashing).
    static let entriesPerSlice = 2048
    /// Manifest text held in memory before it goes to a temporary file (about 1,200 entries):
    /// 256 connections streaming manifests hold at most 32 MiB of text this way.
    static let spoolMemory = 128 << 10

    /// With `report`, the manifest ends with notes on what it leaves out (PROTOCOL.md 8.4).
    /// The tree is walked in slices on the walk thread and its text spooled (to a
    /// temporary file once it outgrows `spoolMemory`), so neither the walk nor the manifest holds
    /// a thread or memory in proportion to the tree; at most `WalkTurns.limit` walks run at
    /// once; `stillWanted` stops the walk when the client has gone.
    func send(path: RemotePath, hashes: Bool, report: Bool = false,
              stillWanted: @escaping @Sendable () -> Bool = { true }) async throws {
        let (dir, canonical) = try context.root.openDirectory(path)
        let cache = context.hashCache
        let cursor = TreeCursor(directory: dir.fd)
        let spool = Spool(directory: context.spoolDirectory, memoryLimit: Self.spoolMemory)
        try await context.walkTurns.run {
            do {
                try spool.append { $0.append(contentsOf: Manifest.header.utf8); $0.append(0x0A) }
                var more = true
                while more {
                    guard stillWanted() else { throw HeavyWork.Abandoned() }
                    more = try await context.heavyWork.walkSlice {
                        // The hash cache's digest of the file just visited (the cursor emits
                        // each file right after visiting it), written as hex into its line.
                        var known: HashCache.Digest?
                        return try cursor.advance(entries: Self.entriesPerSlice, visitFile: { dirFD, name, entry, info in
                            let cachePath = canonical.appending(entry.path)
                            if hashes {
                                entry.sha256 = TreeWalker.hashFile(dirFD: dirFD, name: name, info: info, cache: cache, cachePath: cachePath)
                            } else {
                                known = cache.lookupDigest(cachePath, HashKey(info))
                            }
                        }, emit: { entry throws(TreeWalker.WalkError) in
                            let digest = entry.type == .file ? known : nil
                            known = nil
                            do throws(SystemError) {
                                try spool.append {
                                    entry.appendLine(to: &$0, manifest: true) { field in
                                        if let digest { digest.appendHex(to: &field) } else { entry.appendSHA256Field(to: &field) }
                                    }
                                    $0.append(0x0A)
                                }
                            } catch {
                                throw .io(error)
                            }
                        })
                    }
                }
                if report {
                    for note in cursor.notes { try spool.append { $0.append(contentsOf: note.bytes); $0.append(0x0A) } }
                }
            } catch let error as TreeWalker.WalkError {
                switch error {
                case .io(let e): throw ServeError.io(e)
                case .tooManyEntries(let n): throw ServeError.tooLarge("the tree has more than \(n) entries")
                }
            } catch let error as SystemError {
                throw ServeError.io(error)
            }
        }
        withExtendedLifetime(dir) {}
        context.saveCache()
        let source: ChunkPipeline.Source
        let length: Int64
        switch try spool.finish() {
        case .memory(let bytes):
            source = .memory(ByteBuffer(bytes: bytes))
            length = Int64(bytes.count)
        case .file(let handle, let size):
            source = .file(handle)
            length = size
        }
        var hasher = SHA256Hasher()
        let memory = self.memory ?? context.compressionMemory
        var controller = memory.load()
        defer { if !policy.localPeer { memory.store(controller) } }
        try await writer.send(ManifestHead(count: cursor.count))
        // Manifest text shrinks to a fifth or so; `auto` treats it like file data.
        let pipeline = ChunkPipeline(writer: writer, policy: policy,
                                     chunkSize: context.chunkSize, serverRate: memory.serverRate, buffers: memory.buffers,
                                     budget: context.streamBudget)
        do {
            try await pipeline.stream(source, from: 0, to: length, controller: &controller) { raw in
                raw.withUnsafeReadableBytes { hasher.update($0) }
            }
        } catch let error as SystemError {
            // The spool could not be read back: an `ERR` in place of the next chunk (section 7).
            try await writer.send(ServeError.reply(for: error))
            return
        }
        try await writer.send(Trailer(sha256: hasher.finalizeHex()))
    }
}
