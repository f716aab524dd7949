import FerryFiles
import FerryProtocol
import Logging
import NIOCore

/// One file being fetched into a `PartialFile`: verification of data kept from an earlier
/// run, the `GET` for the rest, and the checks that decide whether it may be renamed into place.
public final class FileTransfer {
    public let path: RemotePath
    public let identity: PartialIdentity
    public let partial: PartialFile
    /// SHA-256 over the partial's first `shaCovered` bytes: the verified prefix, continued as
    /// data arrives while `wholeFileSHA`. While chunks stream in, hashing runs off the write
    /// path in `hashChain` (see `hash(_:last:)`), and this is the state before the chain's first task.
    var hasher = SHA256Hasher()
    private var shaCovered: Int64 = 0
    /// How the file is verified before it may be renamed into place.
    /// - false (the start): the whole file comes in one `GET` reply whose XXH3-128 (capability
    ///   `xxh128`) matched. The server read it in one pass and checked afterwards that it had not
    ///   changed, so the file is one version of the server's bytes, and the SHA-256 of the
    ///   trailer is taken as the server's word, not computed here. SHA-256 ran at 1.3 GB/s and
    ///   was 40% of the client's CPU on a large file; XXH3 is over twenty times faster.
    /// - true: the SHA-256 of the whole file is computed here and compared with the trailer's,
    ///   as protocol 1.0 does. It is what ties together bytes that arrive at different times, so
    ///   it switches on for good for a file made of more than one piece: bytes before a reply (a
    ///   kept prefix — a file rewritten in place with its old size and mtime put back between the
    ///   `HASH`es and the `GET` would otherwise be a splice of two versions — or blocks of an old
    ///   copy), a reply that stops short of the end (more follow), blocks appended after a reply
    ///   (`appendVerified`), and a reply without an XXH3-128 (a server without `xxh128`).
    ///   `receive` and `appendVerified` decide; bytes written before the switch are read back
    ///   from the partial and hashed (`catchUpSHA`).
    public private(set) var wholeFileSHA = false
    /// While `!wholeFileSHA`: the trailer's SHA-256 of the one reply that carried the whole file
    /// and whose XXH3-128 matched.
    private var wholeReplySHA: String?
    /// The XXH3-128 of the reply being read, fed by `commit` in file order.
    private var replyDigest: XXH128Hasher?
    /// Hashing of written chunks, in order: each task continues the previous one's state, so
    /// hashing chunk n overlaps writing chunk n+1 on another core. At most a few are pending.
    private var hashChain: [Task<SHA256Hasher, Never>] = []
    static let hashChainDepth = 4
    public private(set) var resumedFrom: Int64 = 0
    /// Whether the reply to the last `receive` was read to its end (its `END` or `ERR`), so the
    /// connection can carry the next reply. False while it is being read and after an error
    /// that left it unfinished.
    public private(set) var replyConsumed = true
    /// After a failure of this file alone (a corrupt chunk, a local write error), the rest of
    /// its reply is read and dropped when at most this many bytes are left, so the connection
    /// and the replies pipelined behind it stay usable; a longer rest leaves it unfinished.
    public var drainLimit: Int64 = 0

    /// Replies the caller pipelined behind this one are still unread: the connection cannot
    /// be reused whatever happened to this reply.
    func markReplyUnfinished() { replyConsumed = false }

    /// The file changed on the server (validator mismatch); the partial has been discarded.
    public struct Changed: Error, CustomStringConvertible {
        public let path: RemotePath
        public let now: Validator?
        public var description: String { "\(path) changed on the server while it was being fetched" }
    }

    public init(path: RemotePath, identity: PartialIdentity, partialPath: String, resume: Bool) throws(ClientError) {
        self.path = path
        self.identity = identity
        do {
            self.partial = try PartialFile.open(at: partialPath, for: identity, label: path.description, allowResume: resume)
        } catch {
            throw .local(error)
        }
    }

    /// A transfer into a partial the caller made (for example a temporary beside the target).
    public init(path: RemotePath, identity: PartialIdentity, partial: PartialFile) {
        self.path = path
        self.identity = identity
        self.partial = partial
    }

    /// Whether data from an earlier run is waiting to be verified.
    public var needsVerification: Bool { partial.verified > 0 && resumedFrom == 0 && hasherBytes == 0 }
    private var hasherBytes: Int64 = 0

    /// The kept prefix is checked in pieces of this size: each piece is one `HASH` whose reply
    /// comes within seconds whatever the prefix's size (one `HASH` of a 27 GiB prefix used to
    /// send nothing for longer than the client's read timeout, so it could never resume).
    static let verifyPiece: Int64 = 64 << 20
    /// Within a piece that does not match, the last good byte is found in steps of this size.
    static let verifyStep: Int64 = 64 << 10

    /// Checks the kept prefix against the server, so a truncated or corrupted partial can
    /// never be continued: a `HASH` per 64 MiB piece (pipelined one ahead, so the server hashes
    /// the next piece while this side hashes the current one), and in the first piece that
    /// differs, a `HASH` per 64 KiB to keep everything up to the first step that differs.
    /// `progress` is told the bytes checked so far. Leaves `hasher` covering the kept prefix.
    public func verifyKeptData(on connection: FerryConnection, progress: (Int64) -> Void = { _ in }) async throws {
        let kept = partial.verified
        guard kept > 0 else { return }
        var running = SHA256Hasher()
        let pieces = Self.ranges(from: 0, to: kept, step: Self.verifyPiece)
        let matched = try await matchingPrefix(pieces, window: 2, running: &running, on: connection, progress: progress)
        var good = matched == 0 ? 0 : pieces[matched - 1].offset + pieces[matched - 1].length
        if matched < pieces.count {
            let piece = pieces[matched]
            let steps = Self.ranges(from: piece.offset, to: piece.offset + piece.length, step: Self.verifyStep)
            let fine = try await matchingPrefix(steps, window: 32, running: &running, on: connection) { _ in }
            if fine > 0 { good = steps[fine - 1].offset + steps[fine - 1].length }
            do { try partial.truncate(to: good) } catch { throw ClientError.local(error) }
        }
        hasher = running
        hasherBytes = good
        shaCovered = good
        resumedFrom = good
    }

    /// Compares the partial with the server over `ranges`, in order, with up to `window`
    /// `HASH` requests in flight; returns how many leading ranges match. Their bytes are fed
    /// into `running`; after the first mismatch the replies still in flight are read and dropped.
    private func matchingPrefix(_ ranges: [(offset: Int64, length: Int64)], window: Int, running: inout SHA256Hasher,
                                on connection: FerryConnection, progress: (Int64) -> Void) async throws -> Int {
        var asked = 0
        func ask(upTo count: Int) async throws {
            let next = ranges[asked..<min(ranges.count, count)]
            guard !next.isEmpty else { return }
            try await connection.send(next.map { .hash(path, offset: $0.offset, length: $0.length, validator: identity.validator) })
            asked += next.count
        }
        try await ask(upTo: window)
        for (index, range) in ranges.enumerated() {
            var candidate = running
            let local = try localHash(range.offset, range.length, continuing: &candidate)
            let remote = try await remoteHash(on: connection)
            guard remote == local else {
                for _ in (index + 1)..<asked { _ = try await remoteHash(on: connection) }
                return index
            }
            running = candidate
            progress(range.offset + range.length)
            try await ask(upTo: index + 1 + window)
        }
        return ranges.count
    }

    /// The next `HASH` reply; `ERR 409` means the file changed on the server: the partial is
    /// of no use any more.
    private func remoteHash(on connection: FerryConnection) async throws -> String {
        do {
            return try await connection.expect(HashReply.self, for: "HASH \(path)").sha256
        } catch let ClientError.server(_, _, reply) where reply.knownCode == .changed {
            partial.discard()
            throw Changed(path: path, now: reply.current)
        }
    }

    /// `[from, to)` cut into pieces of `step` bytes (the last may be shorter).
    static func ranges(from: Int64, to: Int64, step: Int64) -> [(offset: Int64, length: Int64)] {
        stride(from: from, to: to, by: Int(step)).map { ($0, min(step, to - $0)) }
    }

    /// SHA-256 of `length` bytes of the partial from `offset`, also fed into `running` (which
    /// covers everything before `offset`).
    private func localHash(_ offset: Int64, _ length: Int64, continuing running: inout SHA256Hasher) throws(ClientError) -> String {
        var piece = SHA256Hasher()
        var prefix = running
        let reached: Int64
        do {
            reached = try FileHashing.read(partial.fileHandle, from: offset, to: offset + length) { bytes in
                piece.update(bytes)
                prefix.update(bytes)
            }
        } catch {
            throw .local(error)
        }
        running = prefix
        // A partial shorter than its sidecar says cannot match: an impossible hash says so.
        return reached == offset + length ? piece.finalizeHex() : "short"
    }

    /// The request for the rest of the file, or for the bytes up to `end`.
    public func request(upTo end: Int64? = nil) -> Request {
        .get(path, offset: partial.verified, length: end.map { $0 - partial.verified }, validator: identity.validator)
    }

    /// Appends bytes that are already known to be right (blocks of an old local copy whose
    /// hashes matched the server's block hashes).
    public func appendVerified(_ bytes: [UInt8]) async throws(ClientError) {
        if !wholeFileSHA { try await catchUpSHA() }
        let result: Result<Void, SystemError> = bytes.withUnsafeBytes { p in
            do throws(SystemError) {
                try partial.append(p, at: partial.verified)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        if case .failure(let e) = result { throw .local(e) }
        await hash(ByteBuffer(bytes: bytes), last: false)
        hasherBytes += Int64(bytes.count)
    }

    /// Switches to `wholeFileSHA`: the bytes written since the SHA-256 stopped following are read
    /// back from the partial and hashed.
    private func catchUpSHA() async throws(ClientError) {
        wholeFileSHA = true
        let end = partial.verified
        guard shaCovered < end else { return }
        var state = await settledHasher()
        let reached: Int64
        do {
            reached = try FileHashing.read(partial.fileHandle, from: shaCovered, to: end) { state.update($0) }
        } catch {
            throw .local(error)
        }
        guard reached == end else {
            throw .integrity(path: path.description, "the partial file became shorter while it was written")
        }
        hasher = state
        shaCovered = end
    }

    /// Adds written bytes to the file's SHA-256. A file's only chunk is hashed right here; other
    /// chunks are hashed by a task that continues the previous chunk's state.
    private func hash(_ raw: ByteBuffer, last: Bool) async {
        shaCovered += Int64(raw.readableBytes)
        if hashChain.isEmpty && last {
            raw.withUnsafeReadableBytes { hasher.update($0) }
            return
        }
        let previous = hashChain.last
        let start = hasher
        hashChain.append(Task {
            var h: SHA256Hasher
            if let previous { h = await previous.value } else { h = start }
            raw.withUnsafeReadableBytes { h.update($0) }
            return h
        })
        if hashChain.count > Self.hashChainDepth { _ = await hashChain.removeFirst().value }
    }

    /// The hash state over everything written so far, once pending hashing is done.
    private func settledHasher() async -> SHA256Hasher {
        if let last = hashChain.last {
            hasher = await last.value
            hashChain.removeAll()
        }
        return hasher
    }

    /// Checks that the whole file is present and its SHA-256 is `expected` (the server's);
    /// on a mismatch the partial is discarded so the next run starts clean. Without
    /// `wholeFileSHA`, every byte must have been checked by a transfer digest instead, and the
    /// server's SHA-256 must be the one the manifest promised.
    public func complete(expected sha: String) async throws(ClientError) {
        guard partial.verified == identity.size else {
            throw .integrity(path: path.description, "only \(partial.verified) of \(identity.size) bytes arrived")
        }
        if !wholeFileSHA {
            // The file came whole in one reply whose digest matched (`receive` allows no other
            // way without the SHA-256): that reply's SHA-256 is the server's word for it.
            guard let wholeReplySHA else {
                throw .integrity(path: path.description, "no reply carried the whole file and no SHA-256 was computed")
            }
            guard wholeReplySHA == sha else {
                partial.discard()
                throw .integrity(path: path.description, "the server gave two SHA-256s for it (\(sha.prefix(12))… and "
                                 + "\(wholeReplySHA.prefix(12))…); it changed on the server, try again")
            }
            guard identity.sha256 == nil || identity.sha256 == sha else {
                partial.discard()
                throw .integrity(path: path.description, "the server's SHA-256 for it (\(sha.prefix(12))…) is not the one its manifest "
                                 + "gave (\(identity.sha256?.prefix(12) ?? "")…); it changed on the server, try again")
            }
            return
        }
        let mine = await settledHasher().finalizeHex()
        guard sha == mine, identity.sha256 == nil || identity.sha256 == mine else {
            partial.discard()
            throw .integrity(path: path.description, "SHA-256 mismatch (server \(sha.prefix(12))…, received \(mine.prefix(12))…)")
        }
    }

    /// Reads the reply to `request(upTo:)` and writes the verified chunks; returns the END
    /// line's SHA-256 (of the whole file) once the range is complete. Throws otherwise,
    /// keeping every verified chunk for the next attempt.
    @discardableResult
    public func receive(on connection: FerryConnection, until end: Int64? = nil, onBytes: (Int) -> Void) async throws -> String {
        let rangeEnd = end ?? identity.size
        replyConsumed = false
        switch try await connection.read(GetHead.self, for: "GET \(path)") {
        case .err(let reply):
            replyConsumed = true
            if reply.knownCode == .changed {
                partial.discard()
                throw Changed(path: path, now: reply.current)
            }
            throw ClientError.server(endpoint: connection.endpoint.description, request: "GET \(path)", reply)
        case .ok(let head):
            guard head.size == identity.size, head.mtime == identity.mtime else {
                // The server must answer 409 for a validator mismatch, not send other data.
                throw connection.violation("GET \(path) answered for a different version of the file than the validator named")
            }
        }
        var next = partial.verified
        let start = next
        // The reply's transfer digest, when the connection has one. A digest vouches for its own
        // reply only, so the file's SHA-256 is left out just for a reply that carries the whole
        // file; with bytes before it (a kept prefix, blocks of an old copy), a range that stops
        // short of the end, or no digest, the whole file's SHA-256 is computed here.
        let digest: XXH128Hasher? = connection.enabled.contains(.xxh128) ? XXH128Hasher() : nil
        if !wholeFileSHA && (digest == nil || start != 0 || rangeEnd != identity.size) { try await catchUpSHA() }
        replyDigest = digest
        defer { replyDigest = nil }
        var inflight: [(ChunkHeader, Task<ByteBuffer, Error>)] = []
        let window = 4
        let path = self.path

        do {
            while true {
                if !inflight.isEmpty && !connection.hasBufferedFrame {
                    // About to wait for the network: first write every chunk that has fully
                    // arrived, so an interruption now (even kill -9) loses only the chunk in flight.
                    while !inflight.isEmpty { try await commit(inflight.removeFirst(), onBytes) }
                }
                switch try await connection.nextStreamItem() {
                case .chunk(let header, let wire):
                    guard header.offset == next else {
                        throw connection.violation("chunk at offset \(header.offset), expected \(next)")
                    }
                    guard header.offset + Int64(header.rawLength) <= rangeEnd else {
                        throw connection.violation("chunk reaches past the end of the requested range (\(rangeEnd))")
                    }
                    next += Int64(header.rawLength)
                    let allocator = connection.allocator
                    if inflight.isEmpty && (next == rangeEnd || header.codec == .stored) {
                        // The range's only chunk (a small file's), its last with nothing in
                        // flight, or a stored one (nothing to inflate, only the CRC to check):
                        // checked and written right here, without a task to start and wait for.
                        // A stored chunk is checked while it is still in this core's cache, and
                        // its write and the transfer digest read it from there too (a task per
                        // chunk on another core cost 3-5% more CPU on a 512 MiB file).
                        try await commit(header, Self.decode(header, wire, allocator: allocator, path: path), onBytes)
                        continue
                    }
                    inflight.append((header, Self.startDecode(header, wire, allocator: allocator, path: path)))
                    if inflight.count >= window { try await commit(inflight.removeFirst(), onBytes) }
                case .end(let sha, let xxh):
                    replyConsumed = true
                    while !inflight.isEmpty { try await commit(inflight.removeFirst(), onBytes) }
                    guard partial.verified == rangeEnd else {
                        throw connection.violation("stream ended at \(partial.verified), expected \(rangeEnd)")
                    }
                    if let digest {
                        guard let xxh else {
                            throw connection.violation("GET \(path) ended without the XXH3-128 that xxh128 requires")
                        }
                        guard xxh == digest.finalizeHex() else {
                            partial.discard()
                            throw ClientError.integrity(path: path.description,
                                                        "XXH3-128 mismatch: the bytes received are not the bytes the server sent")
                        }
                        if !wholeFileSHA { wholeReplySHA = sha }
                    }
                    return sha
                case .error(let reply):
                    replyConsumed = true
                    while !inflight.isEmpty { try await commit(inflight.removeFirst(), onBytes) }
                    if reply.knownCode == .changed {
                        partial.discard()
                        throw Changed(path: path, now: reply.current)
                    }
                    throw ClientError.server(endpoint: connection.endpoint.description, request: "GET \(path)", reply)
                }
            }
        } catch {
            // Keep every chunk that arrived whole and checks out, in order, up to the first one
            // that does not; let the other decodes finish before the partial is reused.
            while let first = inflight.first, first.0.offset == partial.verified {
                inflight.removeFirst()
                do { try await commit(first, onBytes) } catch { break }
            }
            for (_, task) in inflight { _ = try? await task.value }
            if !replyConsumed, rangeEnd - next <= drainLimit {
                switch FileFailure(error) {
                case .permanent, .transient: await drain(connection, atMost: rangeEnd - next)
                case .connection, .fatal: break
                }
            }
            throw error
        }
    }

    /// Reads and drops the rest of a reply (at most `bytes` of chunk data, as announced by the
    /// range); leaves `replyConsumed` false if the reply does not end within that.
    private func drain(_ connection: FerryConnection, atMost bytes: Int64) async {
        var left = bytes
        do {
            while true {
                switch try await connection.nextStreamItem() {
                case .chunk(let header, _):
                    left -= Int64(header.rawLength)
                    if left < 0 { return }
                case .end, .error:
                    replyConsumed = true
                    return
                }
            }
        } catch {
            return  // the connection failed: it is not reused
        }
    }

    private func commit(_ item: (ChunkHeader, Task<ByteBuffer, Error>), _ onBytes: (Int) -> Void) async throws {
        try await commit(item.0, item.1.value, onBytes)
    }

    /// Writes a decoded and checked chunk, feeds it to the file's hash and counts its bytes.
    private func commit(_ header: ChunkHeader, _ raw: ByteBuffer, _ onBytes: (Int) -> Void) async throws {
        let result: Result<Void, SystemError> = raw.withUnsafeReadableBytes { p in
            do throws(SystemError) {
                try partial.append(p, at: header.offset)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        if case .failure(let e) = result { throw ClientError.local(e) }
        if let replyDigest { raw.withUnsafeReadableBytes { replyDigest.update($0) } }
        if wholeFileSHA { await hash(raw, last: header.offset + Int64(header.rawLength) == identity.size) }
        hasherBytes += Int64(header.rawLength)
        onBytes(header.rawLength)
    }

    /// Inflates and checks a chunk on the task pool, so several chunks decode in parallel.
    static func startDecode(_ header: ChunkHeader, _ wire: ByteBuffer, allocator: ByteBufferAllocator,
                            path: RemotePath) -> Task<ByteBuffer, Error> {
        Task { try decode(header, wire, allocator: allocator, path: path) }
    }

    /// `path` names the file in errors (its text is made only for one).
    static func decode(_ header: ChunkHeader, _ wire: ByteBuffer, allocator: ByteBufferAllocator, path: RemotePath) throws -> ByteBuffer {
        if header.codec == .stored {
            // Stored: the wire bytes are the raw bytes. Check them where they are (no copy).
            guard wire.readableBytes == header.wireLength, wire.readableBytes == header.rawLength else {
                throw ClientError.corruptChunk(path: path.description, .length(offset: header.offset, expected: header.rawLength,
                                                                    got: wire.readableBytes))
            }
            guard wire.withUnsafeReadableBytes({ CRC32.checksum($0) }) == header.crc32 else {
                throw ClientError.corruptChunk(path: path.description, .checksum(offset: header.offset))
            }
            return wire
        }
        var out = allocator.buffer(capacity: header.rawLength)
        var failure: ChunkError?
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: header.rawLength) { ptr in
            do throws(ChunkError) {
                try ChunkDecoder.decode(header: header, wire: wire,
                                        into: UnsafeMutableRawBufferPointer(rebasing: ptr[0..<header.rawLength]))
                return header.rawLength
            } catch {
                failure = error
                return 0
            }
        }
        if let failure { throw ClientError.corruptChunk(path: path.description, failure) }
        return out
    }

    /// Sets mode and mtime and renames the verified file into place.
    public func finish(to finalPath: String, mode: UInt32, mtime: Timestamp) throws(ClientError) {
        do { try partial.finish(to: finalPath, mode: mode, mtime: mtime) } catch { throw .local(error) }
    }
}
