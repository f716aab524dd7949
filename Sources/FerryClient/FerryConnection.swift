import Crypto
import FerryFiles
import FerryProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Options for opening a connection.
public struct ConnectionOptions: Sendable {
    public var token: [UInt8]?
    public var connectTimeout: TimeAmount
    /// A connection that receives nothing for this long is dropped (and retried by callers).
    public var readTimeout: TimeAmount

    public init(token: [UInt8]? = nil, connectTimeout: TimeAmount = .seconds(10), readTimeout: TimeAmount = .seconds(60)) {
        self.token = token
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
    }
}

/// Where to connect, once a `ServerAddress` has been resolved (by DNS or by discovery).
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// One client connection. Used by one task at a time; requests may be pipelined with
/// `send(_:)` and their replies read in order.
public final class FerryConnection {
    public let endpoint: Endpoint
    public let greeting: Greeting
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    var inbound: NIOAsyncChannelInboundStream<ReplyFrame>.AsyncIterator
    let counter: ByteCounter
    let allocator: ByteBufferAllocator
    let readTimeout: TimeAmount
    /// Frames the pipeline has decoded, and how many of them this side has taken (the
    /// greeting was taken before the connection object existed).
    let framesDecoded: ByteCounter
    private var framesTaken: Int64 = 1

    /// Bytes received from the network on this connection so far.
    public var bytesReceived: Int64 { counter.count }

    /// Whether the next frame has already arrived, i.e. reading it will not wait for the
    /// network. Lets a reader finish buffered work before it blocks.
    public var hasBufferedFrame: Bool { framesDecoded.count > framesTaken }

    init(endpoint: Endpoint, greeting: Greeting, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
         inbound: NIOAsyncChannelInboundStream<ReplyFrame>.AsyncIterator, counter: ByteCounter,
         framesDecoded: ByteCounter, allocator: ByteBufferAllocator, readTimeout: TimeAmount) {
        self.endpoint = endpoint
        self.greeting = greeting
        self.outbound = outbound
        self.inbound = inbound
        self.counter = counter
        self.framesDecoded = framesDecoded
        self.allocator = allocator
        self.readTimeout = readTimeout
    }

    /// Connects, reads the greeting, authenticates if asked, runs `body`, and closes.
    public static func with<R>(_ endpoint: Endpoint, options: ConnectionOptions = ConnectionOptions(),
                               counter: ByteCounter = ByteCounter(),
                               _ body: (FerryConnection) async throws -> R) async throws -> R {
        let channel: NIOAsyncChannel<ReplyFrame, ByteBuffer>
        let framesDecoded = ByteCounter()
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(options.connectTimeout)
                .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                // Reads of up to 256 KiB (NIO's default stops at 64 KiB): fewer read calls and
                // fewer pieces for the frame decoder to merge into a 256 KiB chunk. Not larger:
                // a stored chunk is written straight from its read buffer, which it keeps alive.
                .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64 * 1024, initial: 128 * 1024,
                                                                                     maximum: 256 * 1024))
                .connect(host: endpoint.host, port: endpoint.port) { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try ch.pipeline.syncOperations.addHandlers([
                            IdleStateHandler(readTimeout: options.readTimeout),
                            ReadTimeoutHandler(),
                            CountingHandler(counter: counter),
                            ReplyFrameHandler(),
                            FrameCounter<ReplyFrame> { framesDecoded.add(1) },  // see `hasBufferedFrame`
                        ])
                        return try NIOAsyncChannel<ReplyFrame, ByteBuffer>(
                            wrappingChannelSynchronously: ch,
                            configuration: .init(backPressureStrategy: .init(lowWatermark: 4, highWatermark: 12)))
                    }
                }
        } catch {
            throw ClientError.connect(endpoint: endpoint.description, reason: describe(error))
        }
        let allocator = channel.channel.allocator
        let timeout = options.readTimeout
        return try await channel.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            let first = try await Self.nextFrame(&iterator, endpoint: endpoint, timeout: timeout)
            guard case .line(let line) = first else {
                throw ClientError.protocolViolation(endpoint: endpoint.description, "data before the greeting")
            }
            if line.hasPrefix("ERR ") {
                if case .err(let reply) = try? StatusLine.parse(Substring(line)) {
                    throw ClientError.server(endpoint: endpoint.description, request: "the connection", reply)
                }
            }
            let greeting: Greeting
            do throws(Greeting.ParseError) { greeting = try Greeting.parse(Substring(line)) } catch {
                switch error {
                case .notFerry(let l): throw ClientError.notFerry(endpoint: endpoint.description, firstLine: l)
                case .malformed(let why): throw ClientError.protocolViolation(endpoint: endpoint.description, "bad greeting: \(why)")
                }
            }
            guard greeting.version == FerryDefaults.protocolVersion else {
                throw ClientError.versionMismatch(endpoint: endpoint.description, version: greeting.version)
            }
            let connection = FerryConnection(endpoint: endpoint, greeting: greeting, outbound: outbound,
                                             inbound: iterator, counter: counter, framesDecoded: framesDecoded,
                                             allocator: allocator, readTimeout: timeout)
            if let nonce = greeting.nonce {
                try await connection.authenticate(nonce: nonce, token: options.token)
            }
            return try await body(connection)
        }
    }

    static func describe(_ error: Error) -> String {
        if let e = error as? IOError { return e.description }
        if error is ChannelError { return "\(error)" }
        let text = "\(error)"
        if text.contains("connectTimeout") { return "timed out" }
        if text.contains("ECONNREFUSED") || text.contains("Connection refused") { return "connection refused" }
        return text
    }

    private func authenticate(nonce: [UInt8], token: [UInt8]?) async throws {
        guard let token else {
            throw ClientError.authentication(endpoint: endpoint.description,
                                             "requires a token (pass it with --token-file or FERRY_TOKEN_FILE)")
        }
        let mac = HMAC<SHA256>.authenticationCode(for: nonce, using: SymmetricKey(data: token))
        try await send(.auth(hmacHex: Hex.encode(Array(mac))))
        switch try await readStatus(for: "AUTH") {
        case .ok: return
        case .err(let reply):
            throw ClientError.authentication(endpoint: endpoint.description,
                                             "refused the token (\(reply.reason)); check --token-file")
        }
    }

    // MARK: - Sending

    public func send(_ request: Request) async throws {
        try await send([request])
    }

    /// Writes several requests in one write (pipelining).
    public func send(_ requests: [Request]) async throws {
        var b = allocator.buffer(capacity: 256 * requests.count)
        for r in requests {
            b.writeString(r.line)
            b.writeInteger(UInt8(0x0A))
        }
        do { try await outbound.write(b) } catch {
            throw ClientError.closed(endpoint: endpoint.description)
        }
    }

    // MARK: - Receiving

    static func nextFrame(_ iterator: inout NIOAsyncChannelInboundStream<ReplyFrame>.AsyncIterator,
                          endpoint: Endpoint, timeout: TimeAmount) async throws -> ReplyFrame {
        do {
            guard let frame = try await iterator.next() else { throw ClientError.closed(endpoint: endpoint.description) }
            return frame
        } catch let e as ClientError {
            throw e
        } catch let e as ReplyFramingError {
            throw ClientError.protocolViolation(endpoint: endpoint.description, e.why)
        } catch is ReadTimeout {
            throw ClientError.timeout(endpoint: endpoint.description, seconds: Int(timeout.nanoseconds / 1_000_000_000))
        } catch {
            throw ClientError.closed(endpoint: endpoint.description)
        }
    }

    func nextFrame() async throws -> ReplyFrame {
        let frame = try await Self.nextFrame(&inbound, endpoint: endpoint, timeout: readTimeout)
        framesTaken += 1
        return frame
    }

    /// The next frame, which must be a line.
    public func readLine() async throws -> String {
        switch try await nextFrame() {
        case .line(let l): return l
        case .chunk: throw ClientError.protocolViolation(endpoint: endpoint.description, "unexpected chunk")
        }
    }

    /// Reads a status line (`OK ...` or `ERR ...`).
    public func readStatus(for request: String) async throws -> StatusLine {
        let line = try await readLine()
        do { return try StatusLine.parse(Substring(line)) } catch {
            throw ClientError.protocolViolation(endpoint: endpoint.description, "expected a status line for \(request), got '\(line.prefix(80))'")
        }
    }

    /// Reads a status line and returns the OK fields, throwing the server's error otherwise.
    public func expectOK(for request: String) async throws -> [Substring] {
        switch try await readStatus(for: request) {
        case .ok(let fields): return fields
        case .err(let reply): throw ClientError.server(endpoint: endpoint.description, request: request, reply)
        }
    }

    func violation(_ why: String) -> ClientError {
        .protocolViolation(endpoint: endpoint.description, why)
    }

    /// One element of a chunk stream.
    public enum StreamItem {
        case chunk(ChunkHeader, ByteBuffer)
        case end(sha256: String)
        case error(ErrorReply)
    }

    public func nextStreamItem() async throws -> StreamItem {
        switch try await nextFrame() {
        case .chunk(let h, let b): return .chunk(h, b)
        case .line(let line):
            if line.hasPrefix("END ") {
                let sha = line.dropFirst(4)
                guard isSHA256Hex(sha) else { throw violation("bad END line") }
                return .end(sha256: String(sha))
            }
            if case .err(let reply)? = try? StatusLine.parse(Substring(line)) { return .error(reply) }
            throw violation("expected CHUNK, END or ERR, got '\(line.prefix(80))'")
        }
    }

    // MARK: - Requests

    public func list(_ path: RemotePath) async throws -> [Entry] {
        try await send(.list(path))
        return try await readList(path)
    }

    public func readList(_ path: RemotePath) async throws -> [Entry] {
        let fields = try await expectOK(for: "LIST \(path)")
        guard fields.count == 1, let count = parseWireNumber(fields[0]), count <= FerryLimits.maxListEntries else {
            throw violation("bad LIST reply")
        }
        var out: [Entry] = []
        out.reserveCapacity(Int(min(count, 100_000)))
        for _ in 0..<count {
            let line = try await readLine()
            let entry: Entry
            do { entry = try Entry(line: Substring(line)) } catch { throw violation("bad entry in LIST: \(error)") }
            guard entry.path.components.count == 1 else { throw ClientError.refusedPath("a LIST name contains '/': \(entry.path.wire)") }
            out.append(entry)
        }
        return out
    }

    public func stat(_ path: RemotePath) async throws -> Entry {
        try await send(.stat(path))
        let line = try await readLine()
        guard line.hasPrefix("OK ") else {
            if case .err(let reply)? = try? StatusLine.parse(Substring(line)) {
                throw ClientError.server(endpoint: endpoint.description, request: "STAT \(path)", reply)
            }
            throw violation("bad STAT reply")
        }
        do { return try Entry(line: Substring(line).dropFirst(3)) } catch { throw violation("bad STAT entry: \(error)") }
    }

    public func hash(_ path: RemotePath, offset: Int64, length: Int64, validator: Validator?) async throws -> String {
        try await send(.hash(path, offset: offset, length: length, validator: validator))
        let fields = try await expectOK(for: "HASH \(path)")
        guard fields.count == 1, isSHA256Hex(fields[0]) else { throw violation("bad HASH reply") }
        return String(fields[0])
    }

    public struct BlockList: Sendable {
        public var size: Int64
        public var mtime: Timestamp
        public var blockSize: Int
        public var hashes: [String]
    }

    public func blocks(_ path: RemotePath, validator: Validator?, blockSize: Int? = nil) async throws -> BlockList {
        try await send(.blocks(path, validator: validator, blockSize: blockSize))
        let f = try await expectOK(for: "BLOCKS \(path)")
        guard f.count == 4, let size = parseWireNumber(f[0]), let mtime = Timestamp(f[1]),
              let bs = parseWireNumber(f[2]), bs >= 4096, bs <= 64 << 20,
              let count = parseWireNumber(f[3]), count <= FerryLimits.maxBlockCount,
              count == (size + bs - 1) / bs else {
            throw violation("bad BLOCKS reply")
        }
        var hashes: [String] = []
        hashes.reserveCapacity(Int(count))
        for _ in 0..<count {
            let line = try await readLine()
            guard isSHA256Hex(line) else { throw violation("bad block hash line") }
            hashes.append(line)
        }
        return BlockList(size: size, mtime: mtime, blockSize: Int(bs), hashes: hashes)
    }

    /// Fetches and verifies the manifest of a subtree. `maxBytes` bounds the inflated text.
    /// With `report` the server also notes what it left out (a 1.0 server answers `ERR 400`).
    public func manifest(_ path: RemotePath, hashes: Bool = true, report: Bool = false,
                         maxBytes: Int = FerryLimits.maxManifestBytes) async throws -> Manifest {
        try await send(.manifest(path, hashes: hashes, report: report))
        let f = try await expectOK(for: "MANIFEST \(path)")
        guard f.count == 1, let count = parseWireNumber(f[0]), count <= FerryLimits.maxManifestEntries else {
            throw violation("bad MANIFEST reply")
        }
        var text: [UInt8] = []
        var hasher = SHA256Hasher()
        while true {
            switch try await nextStreamItem() {
            case .chunk(let header, let wire):
                guard header.offset == Int64(text.count) else { throw violation("manifest chunk at wrong offset") }
                guard text.count + header.rawLength <= maxBytes else { throw violation("manifest larger than \(maxBytes) bytes") }
                let raw: [UInt8]
                do { raw = try ChunkDecoder.decode(header: header, wire: wire) } catch {
                    throw ClientError.corruptChunk(path: "manifest", error)
                }
                hasher.update(raw)
                text += raw
            case .end(let sha):
                guard sha == hasher.finalizeHex() else { throw ClientError.integrity(path: "manifest", "SHA-256 mismatch") }
                let manifest: Manifest
                do { manifest = try Manifest.parse(bytes: text) } catch {
                    throw violation("bad manifest: \(error)")
                }
                guard manifest.entries.count == count else { throw violation("manifest entry count differs from the announced \(count)") }
                return manifest
            case .error(let reply):
                throw ClientError.server(endpoint: endpoint.description, request: "MANIFEST \(path)", reply)
            }
        }
    }

    public func quit() async {
        try? await send(.quit)
        _ = try? await readLine()
    }
}

/// Counts the bytes received on a channel (the "wire bytes" of reports).
public final class ByteCounter: Sendable {
    private let value = NIOLockedValueBox<Int64>(0)
    public init() {}
    public var count: Int64 { value.withLockedValue { $0 } }
    func add(_ n: Int) { value.withLockedValue { $0 += Int64(n) } }
}

final class CountingHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    let counter: ByteCounter
    init(counter: ByteCounter) { self.counter = counter }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        counter.add(unwrapInboundIn(data).readableBytes)
        context.fireChannelRead(data)
    }
}


struct ReadTimeout: Error {}

/// Turns an idle-read event into an error on the inbound stream and closes the channel.
final class ReadTimeoutHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? IdleStateHandler.IdleStateEvent, e == .read {
            context.fireErrorCaught(ReadTimeout())
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
