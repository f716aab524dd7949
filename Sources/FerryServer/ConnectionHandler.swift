import Crypto
import FerryFiles
import FerryProtocol
import FerryTrust
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Serves one connection: reads request lines and answers them strictly in order
/// (pipelined requests simply wait in the inbound stream, which applies back-pressure).
struct ConnectionHandler {
    let context: ConnectionContext
    let connection: NIOAsyncChannel<RequestFrame, ByteBuffer>
    let activity: ConnectionActivity
    /// What the connection's last `HASH` requests covered of a file's start (see `PrefixHash`).
    let prefix = PrefixHash()

    var logger: Logger { context.logger }
    var root: ServedRoot { context.root }
    /// How chunks are compressed for this connection's client, which enabled `enabled`.
    func compressionPolicy(enabled: [Capability]) -> ChunkCompressionPolicy {
        context.compressionPolicy(peerCodecs: ChunkCodec.usable(with: enabled),
                                  localPeer: connection.channel.remoteAddress.map(Self.isLoopback) ?? false)
    }

    /// Whether `address` is this machine's loopback (127.0.0.0/8, ::1, or an IPv4-mapped
    /// 127.x): the "link" is memory, and compressing would only cost both ends CPU on the same
    /// cores. (A client in another network namespace of the same machine, or on a VM, is not
    /// seen as local: its address is an ordinary one.)
    static func isLoopback(_ address: SocketAddress) -> Bool {
        switch address {
        case .v4(let a):
            return UInt32(bigEndian: a.address.sin_addr.s_addr) >> 24 == 127
        case .v6(let a):
            let bytes = withUnsafeBytes(of: a.address.sin6_addr) { Array($0) }
            if bytes == [UInt8](repeating: 0, count: 15) + [1] { return true }
            return bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xFF && bytes[11] == 0xFF && bytes[12] == 127
        case .unixDomainSocket:
            return true
        }
    }

    /// Sends one error line to a connection that is not admitted, then closes it.
    static func refuse(_ connection: NIOAsyncChannel<RequestFrame, ByteBuffer>, _ reply: ErrorReply) async {
        try? await connection.executeThenClose { _, outbound in
            try await outbound.write(ByteBuffer(string: reply.line + "\n"))
        }
    }

    func run() async {
        let remote = connection.channel.remoteAddress
        let peerHost = remote?.ipAddress ?? "?"
        let peer = remote.map { "\(peerHost):\($0.port ?? 0)" } ?? "?"
        logger.debug("connection opened", metadata: ["peer": "\(peer)"])
        do {
            try await connection.executeThenClose { inbound, outbound in
                let writer = ReplyWriter(outbound: outbound, allocator: connection.channel.allocator, gate: activity.output)
                let nonce = context.token.map { _ in SystemRandomNumberGenerator.bytes(32) }
                var authenticated = nonce == nil
                // What this connection's client enabled with `CAPS` (nil until it sends one).
                var enabled: [Capability]?
                try await writer.send(line: context.greeting(nonce: nonce).line)
                var taken = 0
                defer { writer.discardHeld() }
                for try await frame in inbound {
                    // While the client has more requests waiting, small replies are held and
                    // written together (a write per batch, not per reply); the last is never held.
                    taken += 1
                    try await writer.setHolding(activity.requestsDecoded > taken)
                    switch frame {
                    case .tooLong:
                        try await writer.send(ErrorReply(.tooLarge, "request line longer than \(FerryLimits.maxRequestLine) bytes"))
                    case .notUTF8:
                        try await writer.send(ErrorReply(.malformed, "request line is not valid UTF-8"))
                    case .line(let text):
                        let request: Request
                        do throws(Request.ParseError) { request = try Request.parse(Substring(text)) } catch {
                            try await writer.send(error.reply)
                            continue
                        }
                        if case .quit = request {
                            try await writer.setHolding(false)
                            try await writer.send(QuitOK())
                            return
                        }
                        if let answer = Authenticator.Answer(request) {
                            guard let nonce, let token = context.token else {
                                try await writer.send(AuthOK())
                                continue
                            }
                            if let ok = try await authenticate(answer, token: token, nonce: nonce, peerHost: peerHost) {
                                authenticated = true
                                try await writer.send(ok)
                                continue
                            }
                            logger.notice("authentication failed", metadata: ["peer": "\(peer)"])
                            try await writer.setHolding(false)
                            try await writer.send(ErrorReply(.authFailed, "authentication failed: wrong token"))
                            return
                        }
                        if case .caps(let requested) = request {
                            // Allowed before AUTH: it reveals nothing the greeting did not.
                            guard enabled == nil else {
                                try await writer.send(ErrorReply(.malformed, "CAPS may be sent only once per connection"))
                                continue
                            }
                            let agreed = Capability.negotiate(server: context.capabilities, requested: requested)
                            enabled = agreed
                            try await writer.send(CapsReply(enabled: agreed))
                            continue
                        }
                        guard authenticated else {
                            try await writer.send(ErrorReply(.authRequired, "authentication required: this server needs a token (use --token-file)"))
                            continue
                        }
                        try await activity.run { try await handle(request, writer, enabled: enabled ?? []) }
                    }
                }
            }
        } catch {
            logger.debug("connection ended: \(error)", metadata: ["peer": "\(peer)"])
        }
        logger.debug("connection closed", metadata: ["peer": "\(peer)"])
    }

    /// Checks an `AUTH` answer, waiting first for this address's turn when it failed recently.
    /// The reply to a right answer (with the server's own proof when bound), nil for a wrong one.
    private func authenticate(_ answer: Authenticator.Answer, token: [UInt8], nonce: [UInt8], peerHost: String) async throws -> AuthOK? {
        let wait = context.authThrottle.reserveTurn(for: peerHost)
        if wait > .zero { try await Task.sleep(for: .nanoseconds(wait.nanoseconds)) }
        guard let ok = Authenticator.verify(answer, token: token, nonce: nonce, keyHash: context.keyHash) else {
            context.authThrottle.recordFailure(for: peerHost)
            return nil
        }
        context.authThrottle.recordSuccess(for: peerHost)
        return ok
    }

    /// Answers one request. `enabled` is what the client enabled with `CAPS`: a reply never
    /// uses an extension outside it.
    private func handle(_ request: Request, _ writer: ReplyWriter, enabled: [Capability]) async throws {
        do {
            switch request {
            case .list(let path, let kinds):
                let entries = try root.list(path)
                var lines = [ListHead(count: entries.count).line]
                lines.reserveCapacity(entries.count + 1)
                for var e in entries {
                    if !kinds { e.special = nil }  // a 1.0 client's parser allows no extra field
                    lines.append(e.line)
                }
                try await writer.send(lines: lines)
            case .stat(let path):
                var entry = try root.stat(path)
                entry.special = nil  // STAT has no `kinds` option
                try await writer.send(StatReply(entry: entry))
            case .get(let path, let offset, let length, let validator):
                let channel = connection.channel
                try await FileSender(context: context, writer: writer, prefix: prefix, policy: compressionPolicy(enabled: enabled),
                                     transferDigest: enabled.contains(.xxh128), stillWanted: { channel.isActive })
                    .send(path: path, offset: offset, length: length, validator: validator)
            case .hash(let path, let offset, let length, let validator):
                let (file, info, canonical) = try root.openFileCanonical(path)
                try check(validator, info)
                guard offset <= info.size, length <= info.size - offset else {
                    throw ServeError.badRange("range \(offset)+\(length) is outside the file (size \(info.size))")
                }
                // The whole file: the hash cache may know it already (a resume's usual check).
                let whole = offset == 0 && length == info.size
                if whole, let sha = context.hashCache.lookup(canonical, HashKey(info)) {
                    try await writer.send(HashReply(sha256: sha))
                    return
                }
                let key = HashKey(info)
                let (sha, continued) = try await hashRange(file, offset: offset, length: length,
                                                           continuing: prefix.state(for: canonical, key, at: offset))
                prefix.record(continued, for: canonical, key, upTo: offset + length)
                if whole, let after = try? file.stat(), HashKey(after) == HashKey(info) {
                    context.hashCache.store(canonical, HashKey(info), sha256: sha)
                }
                try await writer.send(HashReply(sha256: sha))
            case .blocks(let path, let validator, let requested):
                let (file, info) = try root.openFile(path)
                try check(validator, info)
                let blockSize = requested ?? BlockHashes.blockSize(forFileSize: info.size)
                let count = BlockHashes.blockCount(fileSize: info.size, blockSize: blockSize)
                guard count <= FerryLimits.maxBlockCount else {
                    throw ServeError.tooLarge("\(count) blocks exceed the limit of \(FerryLimits.maxBlockCount); ask for a larger block size")
                }
                // Streamed: each block's line is written when it is hashed, so a map of a
                // million blocks never sits in memory (issue 17). A read error after the head
                // line cannot be an `ERR` any more: the connection is closed instead, and the
                // client asks again on a new one.
                try await writer.send(BlocksHead(size: info.size, mtime: info.mtime, blockSize: blockSize, count: count))
                let channel = connection.channel
                do {
                    try await context.heavyWork.blockHashes(of: file, size: info.size, blockSize: blockSize, count: count,
                                                           stillWanted: { channel.isActive }) { try await writer.send(lines: $0.map(BlocksHead.hashLine)) }
                } catch let error as SystemError {
                    throw BrokenReply(why: "BLOCKS \(path): \(error)")
                }
            case .chunks(let path, let validator):
                guard enabled.contains(.cdc) else {
                    try await writer.send(ErrorReply(.malformed, "CHUNKS needs the cdc capability (send CAPS cdc first)"))
                    return
                }
                try await ChunkMapSender(context: context, writer: writer, channel: connection.channel).send(path: path, validator: validator)
            case .manifest(let path, let hashes, let report):
                let channel = connection.channel
                try await ManifestSender(context: context, writer: writer, policy: compressionPolicy(enabled: enabled))
                    .send(path: path, hashes: hashes, report: report, stillWanted: { channel.isActive })
            case .auth, .boundAuth, .caps, .quit:
                break  // handled by the caller
            }
        } catch let error as ServeError {
            try await writer.send(error.reply)
        }
    }

    /// Hashes a range on the server's heavy-work pool, a slice at a time, giving up when the
    /// client has gone.
    private func hashRange(_ file: FileHandle, offset: Int64, length: Int64,
                           continuing state: SHA256Hasher?) async throws -> (String, SHA256Hasher?) {
        let channel = connection.channel
        do {
            return try await context.heavyWork.sha256(of: file, offset: offset, length: length, continuing: state) { channel.isActive }
        } catch let error as SystemError {
            throw ServeError.io(error)
        }
    }

    /// A reply that failed after its head was written: the connection must close.
    struct BrokenReply: Error, CustomStringConvertible {
        let why: String
        var description: String { why }
    }

    private func check(_ validator: Validator?, _ info: FileInfo) throws(ServeError) {
        if let validator, validator != info.validator { throw .changed(info.validator) }
    }
}

/// Writes reply lines and chunk frames to a connection. Every write waits while the connection
/// holds its share of the server's output budget unwritten (`OutputGate`), which is what bounds
/// a connection's memory, and while the socket is backed up (NIO's writability).
///
/// While `holding` (the client has pipelined more requests), writes are collected and go out
/// together once `holdLimit` bytes are waiting or holding stops, so a stream of small replies
/// costs one socket write per batch instead of one per reply.
final class ReplyWriter: Sendable {
    private let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    let allocator: ByteBufferAllocator
    /// Counts what this connection has queued and not yet written to its socket.
    private let gate: OutputGate
    /// What is waiting to be written: small buffers copied together into `open` (a channel
    /// write costs more than copying a few KiB: status lines, chunk headers, trailers and the
    /// payloads of small files go out as a few 64 KiB buffers, not four writes per file),
    /// larger ones kept as they are, in order.
    struct Held {
        var holding = false
        var sealed: [ByteBuffer] = []
        var open: ByteBuffer?
        var bytes = 0

        /// Adds `buffer`; a new merged buffer gets `capacity` bytes (at least `buffer`'s).
        mutating func append(_ buffer: ByteBuffer, allocator: ByteBufferAllocator, capacity: Int) {
            let n = buffer.readableBytes
            guard n > 0 else { return }
            bytes += n
            if n > ReplyWriter.copyLimit {
                seal()
                sealed.append(buffer)
                return
            }
            if let o = open, o.readableBytes + n > ReplyWriter.mergedSize { seal() }
            if open == nil { open = allocator.buffer(capacity: max(n, min(capacity, ReplyWriter.mergedSize))) }
            open?.writeImmutableBuffer(buffer)
        }

        /// Adds a write's buffers. While holding, merged buffers are made `mergedSize` large
        /// (more replies will follow); otherwise as large as this write's small buffers, so a
        /// lone chunk header does not take a 64 KiB buffer beside its 256 KiB chunk.
        mutating func append(contentsOf buffers: [ByteBuffer], allocator: ByteBufferAllocator) {
            let small = buffers.reduce(0) { $0 + ($1.readableBytes > ReplyWriter.copyLimit ? 0 : $1.readableBytes) }
            let capacity = holding ? ReplyWriter.mergedSize : small
            for b in buffers { append(b, allocator: allocator, capacity: capacity) }
        }

        private mutating func seal() {
            if let o = open { sealed.append(o) }
            open = nil
        }

        mutating func take() -> [ByteBuffer] {
            seal()
            defer { sealed = []; bytes = 0 }
            return sealed
        }
    }
    private let held = NIOLockedValueBox(Held())
    static let holdLimit = 256 * 1024
    /// Buffers up to this size are copied into a merged one.
    static let copyLimit = 16 * 1024
    static let mergedSize = 64 * 1024

    init(outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>, allocator: ByteBufferAllocator, gate: OutputGate) {
        self.outbound = outbound
        self.allocator = allocator
        self.gate = gate
    }

    /// Waits until the connection's share of the output budget has room for `bytes` more.
    func waitForRoom(_ bytes: Int) async {
        await gate.waitForRoom(bytes)
    }

    /// Writes `buffers` once the connection's share of the output budget has room for them.
    private func deliver(_ buffers: [ByteBuffer]) async throws {
        let bytes = buffers.reduce(0) { $0 + $1.readableBytes }
        await gate.reserve(bytes)
        do {
            if buffers.count == 1, let only = buffers.first { try await outbound.write(only) } else { try await outbound.write(contentsOf: buffers) }
        } catch {
            // Never handed to the channel, so the counter will not see them.
            gate.release(bytes)
            throw error
        }
    }

    /// Starts or stops holding writes back; stopping writes what was held.
    func setHolding(_ holding: Bool) async throws {
        let release = held.withLockedValue { h -> [ByteBuffer] in
            h.holding = holding
            return holding ? [] : h.take()
        }
        if !release.isEmpty { try await deliver(release) }
    }

    /// Forgets held writes (the connection is closing).
    func discardHeld() {
        held.withLockedValue { $0 = Held() }
    }

    /// Writes `buffers` (in order, after anything held), or holds them.
    func write(_ buffers: [ByteBuffer]) async throws {
        let out = held.withLockedValue { h -> [ByteBuffer] in
            h.append(contentsOf: buffers, allocator: allocator)
            guard !h.holding || h.bytes >= Self.holdLimit else { return [] }
            return h.take()
        }
        guard !out.isEmpty else { return }
        try await deliver(out)
    }

    func send(line: String) async throws {
        var b = allocator.buffer(capacity: line.utf8.count + 1)
        b.writeString(line)
        b.writeInteger(UInt8(0x0A))
        try await write([b])
    }

    func send(_ reply: some ReplyLine) async throws {
        try await send(line: reply.line)
    }

    /// Sends many lines in writes of about 64 KiB.
    func send(lines: [String]) async throws {
        var b = allocator.buffer(capacity: 64 * 1024)
        for line in lines {
            b.writeString(line)
            b.writeInteger(UInt8(0x0A))
            if b.readableBytes >= 64 * 1024 {
                try await write([b])
                b = allocator.buffer(capacity: 64 * 1024)
            }
        }
        if b.readableBytes > 0 { try await write([b]) }
    }

    func send(chunk header: ChunkHeader, wire: ByteBuffer) async throws {
        let line = header.line
        var b = allocator.buffer(capacity: line.utf8.count + 1)
        b.writeString(line)
        b.writeInteger(UInt8(0x0A))
        try await write([b, wire])
    }
}

enum Authenticator {
    /// An `AUTH` request's answer: the HMAC, and the client's nonce when it is channel-bound.
    struct Answer {
        let hmac: [UInt8]
        let clientNonce: [UInt8]?

        init?(_ request: Request) {
            switch request {
            case .auth(let hex):
                guard let mac = Hex.decode(hex) else { return nil }
                (hmac, clientNonce) = (mac, nil)
            case .boundAuth(let hex, let nonceHex):
                guard let mac = Hex.decode(hex), let nonce = Hex.decode(nonceHex) else { return nil }
                (hmac, clientNonce) = (mac, nonce)
            default:
                return nil
            }
        }
    }

    /// Checks an answer. On a TLS server (`keyHash`) only a channel-bound answer is right, and
    /// the reply carries the server's proof; on a cleartext server only the 1.0 answer is.
    static func verify(_ answer: Answer, token: [UInt8], nonce: [UInt8], keyHash: [UInt8]?) -> AuthOK? {
        switch (keyHash, answer.clientNonce) {
        case (let keyHash?, let clientNonce?):
            let expected = TokenBinding.clientProof(token: token, serverNonce: nonce, clientNonce: clientNonce, serverKeyHash: keyHash)
            guard TokenBinding.matches(answer.hmac, expected) else { return nil }
            let proof = TokenBinding.serverProof(token: token, serverNonce: nonce, clientNonce: clientNonce, serverKeyHash: keyHash)
            return AuthOK(proofHex: Hex.encode(proof))
        case (nil, nil):
            let key = SymmetricKey(data: token)
            return HMAC<SHA256>.isValidAuthenticationCode(answer.hmac, authenticating: nonce, using: key) ? AuthOK() : nil
        default:
            return nil
        }
    }
}
