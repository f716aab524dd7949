#if canImport(Glibc)
import Glibc
#endif
import Crypto
import FerryFiles
import FerryProtocol
import FerryTrust
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// Options for opening a connection.
public struct ConnectionOptions: Sendable {
    public var token: [UInt8]?
    /// How long the TCP connection may take to establish.
    public var connectTimeout: TimeAmount
    /// Bounds every wait for the server (`--timeout`): each reply frame ferry waits for must
    /// arrive whole within this time, a chunk's payload within `WaitPolicy.payloadTime`, and a
    /// wait never goes this long without a byte. A connection that misses one is dropped (and
    /// retried by callers); bytes trickling in do not keep it alive.
    public var readTimeout: TimeAmount
    /// The extensions to enable with `CAPS` on a server that offers them (protocol 1.1).
    public var capabilities: [Capability]
    /// TLS (and which server key to accept) or cleartext. The CLI always chooses explicitly:
    /// TLS unless the person passed `--plaintext`.
    public var security: ClientSecurity

    /// The extensions this client implements.
    public static let implementedCapabilities: [Capability] = [.listKinds, .manifestReport, .zstd, .cdc, .xxh128]

    public init(token: [UInt8]? = nil, connectTimeout: TimeAmount = .seconds(10), readTimeout: TimeAmount = .seconds(60),
                capabilities: [Capability] = ConnectionOptions.implementedCapabilities,
                security: ClientSecurity = .plaintext) {
        self.token = token
        self.security = security
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
        self.capabilities = capabilities
    }
}

/// How long a reply may take, given the connection's timeout (the README documents it under
/// `--timeout`). A line (greeting, status, entry, hash, chunk header, trailer) must be complete
/// within `timeout` of ferry starting to wait for it. A chunk's payload, which may be 256 KiB
/// on a slow link, gets `timeout` plus one second per `minimumPayloadRate` bytes from its
/// header, and may never pause for `timeout`.
public struct WaitPolicy: Sendable, Hashable {
    /// The slowest average rate a chunk's payload may arrive at, beyond the timeout itself.
    public static let minimumPayloadRate = 8 * 1024

    public var timeout: TimeAmount

    public init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    /// The time a payload of `wireLength` bytes may take from its header's arrival.
    public func payloadTime(_ wireLength: Int) -> TimeAmount {
        timeout + .nanoseconds(Int64(wireLength) * 1_000_000_000 / Int64(Self.minimumPayloadRate))
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
    public var description: String { host.contains(Character(":")) ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// One client connection. Used by one task at a time; requests may be pipelined with
/// `send(_:)` and their replies read in order.
public final class FerryConnection {
    public let endpoint: Endpoint
    public let greeting: Greeting
    /// The fingerprint of the server's key; nil on a cleartext connection.
    public let serverFingerprint: Fingerprint?
    /// The whole SHA-256 of the server's key, which a channel-bound `AUTH` covers.
    let serverKeyHash: [UInt8]?
    /// The extensions in use on this connection: what `CAPS` enabled; none on a server whose
    /// greeting offered none (protocol 1.0).
    public private(set) var enabled: [Capability] = [] {
        didSet { codecs = ChunkCodec.usable(with: enabled) }
    }
    /// The chunk codecs the server may use on this connection (checked for every chunk).
    private var codecs = ChunkCodec.baseline
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    var inbound: NIOAsyncChannelInboundStream<ReplyFrame>.AsyncIterator
    let counter: ByteCounter
    let allocator: ByteBufferAllocator
    /// The channel, to tell its `ReplyStreamHandler` when this side starts waiting.
    let channel: any Channel
    /// Frames the pipeline has decoded, and how many of them this side has taken (the
    /// greeting was taken before the connection object existed).
    let framesDecoded: ByteCounter
    private var framesTaken: Int64 = 1

    /// Bytes received from the network on this connection so far.
    public var bytesReceived: Int64 { counter.count }

    /// Whether the next frame has already arrived, i.e. reading it will not wait for the
    /// network. Lets a reader finish buffered work before it blocks.
    public var hasBufferedFrame: Bool { framesDecoded.count > framesTaken }

    init(endpoint: Endpoint, greeting: Greeting, serverFingerprint: Fingerprint?, serverKeyHash: [UInt8]?, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
         inbound: NIOAsyncChannelInboundStream<ReplyFrame>.AsyncIterator, counter: ByteCounter,
         framesDecoded: ByteCounter, allocator: ByteBufferAllocator, channel: any Channel) {
        self.endpoint = endpoint
        self.greeting = greeting
        self.serverFingerprint = serverFingerprint
        self.serverKeyHash = serverKeyHash
        self.outbound = outbound
        self.inbound = inbound
        self.counter = counter
        self.framesDecoded = framesDecoded
        self.allocator = allocator
        self.channel = channel
    }

    /// Connects, reads the greeting, authenticates if asked, runs `body`, and closes.
    public static func with<R>(_ endpoint: Endpoint, options: ConnectionOptions = ConnectionOptions(),
                               counter: ByteCounter = ByteCounter(),
                               _ body: (FerryConnection) async throws -> R) async throws -> R {
        try await connect(endpoint, options: options, counter: counter, opening: true, body)
    }

    /// The fingerprint of the key a TLS server at `endpoint` presents, read from its greeting's
    /// connection without `CAPS` or `AUTH` (first contact: the person is shown it and decides).
    public static func serverFingerprint(at endpoint: Endpoint, options: ConnectionOptions) async throws -> Fingerprint {
        var probe = options
        probe.security = .tls(expect: nil)
        let seen = try await connect(endpoint, options: probe, counter: ByteCounter(), opening: false) { $0.serverFingerprint }
        guard let seen else { throw ClientError.security(endpoint: endpoint.description, .badCertificate("no certificate")) }
        return seen
    }

    private static func connect<R>(_ endpoint: Endpoint, options: ConnectionOptions, counter: ByteCounter, opening: Bool,
                                   _ body: (FerryConnection) async throws -> R) async throws -> R {
        let channel: NIOAsyncChannel<ReplyFrame, ByteBuffer>
        let framesDecoded = ByteCounter()
        let keyCheck: ServerKeyCheck?
        let tls: NIOSSLContext?
        if case .tls(let expected) = options.security {
            keyCheck = ServerKeyCheck(expected: expected)
            do { tls = try ClientTLS.context.get() } catch {
                throw ClientError.security(endpoint: endpoint.description, .handshakeFailed("cannot set up TLS: \(error)"))
            }
        } else {
            (keyCheck, tls) = (nil, nil)
        }
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(options.connectTimeout)
                .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                // Cleartext: reads of up to 1 MiB (NIO's default stops at 64 KiB): fewer read
                // calls, and a read holds several whole 256 KiB chunks, which the frame splitter
                // passes on as slices of it. With reads of at most 256 KiB no chunk frame (header
                // line and payload) ever fitted in one, so every chunk was gathered: a copy, into
                // a freshly allocated buffer, of every byte received (6% of the client's CPU on a
                // large file). A stored chunk is written straight from its read buffer and keeps
                // it alive until then; the client reads at most a few chunks ahead. With TLS the
                // payloads are copied out of swift-nio-ssl's buffer whatever the read size, and
                // larger reads only made its buffers larger (the client's peak on `mixed` went
                // from 34 to 41 MiB in the benchmark): reads stay as they were there.
                .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(
                    minimum: 64 * 1024, initial: tls == nil ? 256 * 1024 : 128 * 1024, maximum: tls == nil ? 1024 * 1024 : 256 * 1024))
                .connect(host: endpoint.host, port: endpoint.port) { ch in
                    ch.eventLoop.makeCompletedFuture {
                        if let tls, let keyCheck {
                            try ch.pipeline.syncOperations.addHandler(ClientTLSGuard(limit: options.connectTimeout, check: keyCheck))
                            try ch.pipeline.syncOperations.addHandler(
                                NIOSSLClientHandler(context: tls, serverHostname: nil, customVerificationCallback: keyCheck.verify))
                        }
                        try ch.pipeline.syncOperations.addHandler(
                            ReplyStreamHandler(policy: WaitPolicy(timeout: options.readTimeout), bytes: counter,
                                               frames: framesDecoded, tls: tls != nil))
                        return try NIOAsyncChannel<ReplyFrame, ByteBuffer>(
                            wrappingChannelSynchronously: ch,
                            configuration: .init(backPressureStrategy: .init(lowWatermark: 4, highWatermark: 12)))
                    }
                }
        } catch {
            if isRefused(error) { throw ClientError.refused(endpoint: endpoint.description) }
            throw ClientError.connect(endpoint: endpoint.description, reason: describe(error))
        }
        let allocator = channel.channel.allocator
        return try await channel.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            let first: ReplyFrame
            do { first = try await Self.nextFrame(&iterator, endpoint: endpoint) } catch {
                if let problem = keyCheck?.problem { throw ClientError.security(endpoint: endpoint.description, problem) }
                throw error
            }
            guard case .line(let line) = first else {
                throw ClientError.protocolViolation(endpoint: endpoint.description, "data before the greeting")
            }
            let greeting: Greeting
            do throws(Greeting.ParseError) { greeting = try Greeting.parse(Substring(line)) } catch {
                switch error {
                case .refused(let reply): throw ClientError.server(endpoint: endpoint.description, request: "the connection", reply)
                case .notFerry(let l): throw ClientError.notFerry(endpoint: endpoint.description, firstLine: l)
                case .malformed(let why): throw ClientError.protocolViolation(endpoint: endpoint.description, "bad greeting: \(why)")
                }
            }
            guard greeting.version == FerryDefaults.protocolVersion else {
                throw ClientError.versionMismatch(endpoint: endpoint.description, version: greeting.version)
            }
            let connection = FerryConnection(endpoint: endpoint, greeting: greeting, serverFingerprint: keyCheck?.fingerprint,
                                             serverKeyHash: keyCheck?.keyHash, outbound: outbound,
                                             inbound: iterator, counter: counter, framesDecoded: framesDecoded,
                                             allocator: allocator, channel: channel.channel)
            if opening { try await connection.open(options) }
            return try await body(connection)
        }
    }

    static func describe(_ error: Error) -> String {
        if case ChannelError.connectTimeout(let t)? = error as? ChannelError {
            return "no answer within \(seconds(t)) (the host may be down or unreachable, or a firewall drops the connection)"
        }
        if let e = error as? IOError { return e.description }
        if let e = error as? NIOConnectionError, let first = e.connectionErrors.first {
            return describe(first.error)
        }
        return "\(error)"
    }

    /// Whether connecting failed only because nothing listens at the address (ECONNREFUSED
    /// for every address tried).
    static func isRefused(_ error: Error) -> Bool {
        if let e = error as? IOError { return e.errnoCode == ECONNREFUSED }
        if let e = error as? NIOConnectionError {
            return !e.connectionErrors.isEmpty && e.connectionErrors.allSatisfy { isRefused($0.error) }
        }
        return false
    }

    /// `3 s`, `0.5 s`.
    static func seconds(_ t: TimeAmount) -> String {
        let millis = t.nanoseconds / 1_000_000
        return millis % 1000 == 0 ? "\(millis / 1000) s" : "\(Double(millis) / 1000) s"
    }

    /// What follows the greeting, in one write: `CAPS` (only to a server that offers
    /// capabilities, and only when there is something to enable) and `AUTH` (when asked).
    private func open(_ options: ConnectionOptions) async throws {
        var requests: [Request] = []
        let wanted = greeting.capabilities.map { offered in options.capabilities.filter(offered.contains) } ?? []
        if !wanted.isEmpty { requests.append(.caps(wanted)) }
        // With a token and no pinned key, the server's proof is what identifies it.
        let unpinned = options.security == .tls(expect: nil)
        if unpinned && options.token != nil && greeting.nonce == nil {
            throw ClientError.security(endpoint: endpoint.description, .noTokenProof("it does not ask for a token"))
        }
        var clientNonce: [UInt8]?
        if let nonce = greeting.nonce {
            guard let token = options.token else {
                throw ClientError.authentication(endpoint: endpoint.description,
                                                 "requires a token (pass it with --token-file or FERRY_TOKEN_FILE)")
            }
            if let keyHash = serverKeyHash {
                // Over TLS only an answer bound to this channel is sent: a relay holding
                // another key could hand a plain answer on to the real server.
                guard greeting.channelBound else {
                    throw violation("over TLS it asked for a token answer not bound to the channel (auth=hmac-sha256)")
                }
                let mine = TokenBinding.makeNonce()
                clientNonce = mine
                let mac = TokenBinding.clientProof(token: token, serverNonce: nonce, clientNonce: mine, serverKeyHash: keyHash)
                requests.append(.boundAuth(hmacHex: Hex.encode(mac), clientNonceHex: Hex.encode(mine)))
            } else {
                guard !greeting.channelBound else { throw violation("asked for a channel-bound token answer on a cleartext connection") }
                let mac = HMAC<SHA256>.authenticationCode(for: nonce, using: SymmetricKey(data: token))
                requests.append(.auth(hmacHex: Hex.encode(Array(mac))))
            }
        }
        guard !requests.isEmpty else { return }
        try await send(requests)
        if !wanted.isEmpty {
            let agreed = try await expect(CapsReply.self, for: "CAPS").enabled
            guard agreed.allSatisfy(wanted.contains) else { throw violation("CAPS enabled something ferry did not ask for") }
            enabled = agreed
        }
        guard let nonce = greeting.nonce, let token = options.token else { return }
        switch try await read(AuthOK.self, for: "AUTH") {
        case .ok(let ok):
            guard let clientNonce, let keyHash = serverKeyHash else { return }
            let expected = TokenBinding.serverProof(token: token, serverNonce: nonce, clientNonce: clientNonce, serverKeyHash: keyHash)
            guard let proof = ok.proofHex.flatMap(Hex.decode), TokenBinding.matches(proof, expected) else {
                throw ClientError.security(endpoint: endpoint.description,
                                           .noTokenProof(ok.proofHex == nil ? "no proof after OK auth" : "a wrong proof"))
            }
        case .err(let reply):
            throw ClientError.authentication(endpoint: endpoint.description,
                                             "refused the token (\(reply.reason)); check --token-file or FERRY_TOKEN_FILE")
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
                          endpoint: Endpoint) async throws -> ReplyFrame {
        do {
            guard let frame = try await iterator.next() else { throw ClientError.closed(endpoint: endpoint.description) }
            return frame
        } catch let e as ClientError {
            throw e
        } catch let e as ReplyFramingError {
            throw ClientError.protocolViolation(endpoint: endpoint.description, e.why)
        } catch let e as ReplyTimeout {
            throw ClientError.timeout(endpoint: endpoint.description, e.description)
        } catch NIOSSLError.handshakeFailed(let e) {
            throw ClientError.security(endpoint: endpoint.description, .handshakeFailed("\(e)"))
        } catch {
            // Anything else, NIOSSL's unclean shutdown among them, is a connection that broke.
            throw ClientError.closed(endpoint: endpoint.description)
        }
    }

    func nextFrame() async throws -> ReplyFrame {
        if !hasBufferedFrame {
            // The clock for this frame starts now (see `WaitPolicy`).
            channel.triggerUserOutboundEvent(ReplyStreamHandler.BeginWait(taken: framesTaken), promise: nil)
        }
        let frame = try await Self.nextFrame(&inbound, endpoint: endpoint)
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

    /// Reads the status line of `request`'s reply: its `OK` as `Body`, or an `ERR`.
    /// `request` names it in errors only (built then, not for every reply).
    public func read<Body: OKReply>(_ body: Body.Type, for request: @autoclosure () -> String) async throws -> Reply<Body> {
        let line = try await readLine()
        do { return try Reply<Body>.parse(Substring(line)) } catch {
            throw violation("bad reply to \(request()): \(error)")
        }
    }

    /// Reads the status line of `request`'s reply and returns its `OK`, throwing the server's error otherwise.
    public func expect<Body: OKReply>(_ body: Body.Type, for request: @autoclosure () -> String) async throws -> Body {
        switch try await read(body, for: request()) {
        case .ok(let ok): return ok
        case .err(let reply): throw ClientError.server(endpoint: endpoint.description, request: request(), reply)
        }
    }

    func violation(_ why: String) -> ClientError {
        .protocolViolation(endpoint: endpoint.description, why)
    }

    /// One element of a chunk stream.
    public enum StreamItem {
        case chunk(ChunkHeader, ByteBuffer)
        /// The trailer: the SHA-256, and with `xxh128` (in `GET` replies only) the XXH3-128
        /// of the reply's chunks.
        case end(sha256: String, xxh128: String?)
        case error(ErrorReply)
    }

    public func nextStreamItem() async throws -> StreamItem {
        switch try await nextFrame() {
        case .chunk(let h, let b):
            // Only the codecs of protocol 1.0 unless this connection enabled another.
            guard codecs.contains(h.codec) else {
                throw violation("a \(h.codec.rawValue) chunk on a connection that did not enable \(h.codec.rawValue)")
            }
            return .chunk(h, b)
        case .line(let line):
            let parsed: StreamLine
            do { parsed = try StreamLine.parse(Substring(line)) } catch {
                throw violation("bad line in a chunk stream: \(error)")
            }
            switch parsed {
            case .end(let trailer):
                if trailer.xxh128 != nil && !enabled.contains(.xxh128) {
                    throw violation("an XXH3-128 in a trailer on a connection that did not enable xxh128")
                }
                return .end(sha256: trailer.sha256, xxh128: trailer.xxh128)
            case .err(let reply): return .error(reply)
            }
        }
    }

    // MARK: - Requests

    /// Lists a directory. With `kinds`, entries of type `o` say what they are (FIFO, socket,
    /// device), when the server speaks `list-kinds` (see `request(_:plain:option:for:as:)`).
    public func list(_ path: RemotePath, kinds: Bool = false) async throws -> [Entry] {
        let head = try await request(.list(path, kinds: kinds), plain: .list(path), option: kinds ? .listKinds : nil,
                                     for: "LIST \(path)", as: ListHead.self)
        return try await readList(path, head: head)
    }

    /// Sends `request`, or `plain` (the same request without the option `capability`
    /// introduced), and reads the status line. On a server that offered capabilities the
    /// option goes only when `CAPS` enabled it. A server that offered none (protocol 1.0) gets
    /// the option, and `plain` if it refuses it as malformed (`ERR 400`): servers of 1.0 know
    /// `kinds=` and `report=`, servers from before them do not.
    private func request<Body: OKReply>(_ request: Request, plain: Request, option capability: Capability?,
                                        for what: String, as body: Body.Type) async throws -> Body {
        guard let capability else {
            try await send(plain)
            return try await expect(body, for: what)
        }
        if greeting.capabilities != nil {
            try await send(enabled.contains(capability) ? request : plain)
            return try await expect(body, for: what)
        }
        try await send(request)
        do {
            return try await expect(body, for: what)
        } catch ClientError.server(_, _, let reply) where reply.knownCode == .malformed {
            try await send(plain)
            return try await expect(body, for: what)
        }
    }

    /// Reads a `LIST` reply (status line included).
    public func readList(_ path: RemotePath) async throws -> [Entry] {
        try await readList(path, head: try await expect(ListHead.self, for: "LIST \(path)"))
    }

    private func readList(_ path: RemotePath, head: ListHead) async throws -> [Entry] {
        var out: [Entry] = []
        out.reserveCapacity(min(head.count, 100_000))
        for _ in 0..<head.count {
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
        return try await expect(StatReply.self, for: "STAT \(path)").entry
    }

    public func hash(_ path: RemotePath, offset: Int64, length: Int64, validator: Validator?) async throws -> String {
        try await send(.hash(path, offset: offset, length: length, validator: validator))
        return try await expect(HashReply.self, for: "HASH \(path)").sha256
    }

    public struct BlockList: Sendable {
        public var size: Int64
        public var mtime: Timestamp
        public var blockSize: Int
        public var hashes: [String]
    }

    public func blocks(_ path: RemotePath, validator: Validator?, blockSize: Int? = nil) async throws -> BlockList {
        try await send(.blocks(path, validator: validator, blockSize: blockSize))
        let head = try await expect(BlocksHead.self, for: "BLOCKS \(path)")
        var hashes: [String] = []
        hashes.reserveCapacity(head.count)
        for _ in 0..<head.count {
            let line = try await readLine()
            do { hashes.append(try BlocksHead.parseHashLine(Substring(line))) } catch { throw violation("\(error)") }
        }
        return BlockList(size: head.size, mtime: head.mtime, blockSize: head.blockSize, hashes: hashes)
    }

    /// Fetches and verifies the manifest of a subtree. `maxBytes` bounds the inflated text.
    /// With `report` the server also notes what it left out, when it speaks `manifest-report`
    /// (see `request(_:plain:option:for:as:)`).
    public func manifest(_ path: RemotePath, hashes: Bool = true, report: Bool = false,
                         maxBytes: Int = FerryLimits.maxManifestBytes) async throws -> Manifest {
        let count = try await request(.manifest(path, hashes: hashes, report: report),
                                      plain: .manifest(path, hashes: hashes, report: false),
                                      option: report ? .manifestReport : nil,
                                      for: "MANIFEST \(path)", as: ManifestHead.self).count
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
            case .end(let sha, let xxh):
                guard xxh == nil else { throw violation("an XXH3-128 in a MANIFEST trailer") }
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

/// A wait for the server that ran out of time: what ferry was waiting for and what arrived.
struct ReplyTimeout: Error, CustomStringConvertible {
    let description: String
}

/// The client's inbound side in one handler: counts wire bytes, splits them into reply frames
/// (`ReplyFrameSplitter`), and bounds each wait for a frame by the `WaitPolicy`. A wait starts
/// when the connection asks for a frame that has not arrived (`BeginWait`, and at connect for
/// the greeting) and ends when that frame is complete; between waits nothing is timed, so a
/// client busy with local work is never cut off. On a miss it reports `ReplyTimeout` and
/// closes the channel.
final class ReplyStreamHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ReplyFrame
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Sent by the connection, as an outbound user event, before it waits for the frame after
    /// the `taken` frames it has read.
    struct BeginWait: Sendable {
        let taken: Int64
    }

    private struct Wait {
        var taken: Int64
        var started: NIODeadline
        /// When the awaited frame must be complete.
        var deadline: NIODeadline
        var lastByte: NIODeadline
        var bytes = 0
        /// The wire length of the chunk payload this wait was extended for.
        var payload: Int?
        var timer: Scheduled<Void>?
    }

    private let policy: WaitPolicy
    private let bytes: ByteCounter
    private let frames: ByteCounter
    private var splitter: ReplyFrameSplitter
    private var decoded: Int64 = 0
    private var failed = false
    private var wait: Wait?

    /// `tls`: reads come from swift-nio-ssl, whose plaintext buffer is reused (see
    /// `ReplyFrameSplitter.copiesPayloads`).
    init(policy: WaitPolicy, bytes: ByteCounter, frames: ByteCounter, tls: Bool) {
        self.policy = policy
        self.bytes = bytes
        self.frames = frames
        splitter = ReplyFrameSplitter(copiesPayloads: tls)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { beginWait(taken: 0, context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        beginWait(taken: 0, context: context)  // the greeting
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        endWait()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        endWait()
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let begin = event as? BeginWait else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        promise?.succeed(())
        beginWait(taken: begin.taken, context: context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        let input = unwrapInboundIn(data)
        bytes.add(input.readableBytes)
        let now = context.eventLoop.now
        if wait != nil {
            wait?.lastByte = now
            wait?.bytes += input.readableBytes
        }
        var complete: [ReplyFrame] = []
        var failure: Error?
        do { try splitter.feed(input, allocator: context.channel.allocator, into: &complete) } catch { failure = error }
        // The frames before a framing error in this read are passed on first.
        for frame in complete {
            decoded += 1
            frames.add(1)  // before the frame is passed on: see `FerryConnection.hasBufferedFrame`
            context.fireChannelRead(wrapInboundOut(frame))
        }
        if let failure {
            failed = true
            endWait()
            context.fireErrorCaught(failure)
            return
        }
        guard let w = wait else { return }
        if decoded > w.taken {
            endWait()
        } else if w.payload == nil, let length = splitter.payloadInProgress {
            // The awaited frame is a chunk whose header is in: its payload gets its own time.
            wait?.payload = length
            wait?.deadline = max(w.deadline, now + policy.payloadTime(length))
        }
    }

    private func beginWait(taken: Int64, context: ChannelHandlerContext) {
        guard !failed, wait == nil || wait?.taken != taken, decoded <= taken else { return }
        endWait()
        let now = context.eventLoop.now
        var w = Wait(taken: taken, started: now, deadline: now + policy.timeout, lastByte: now)
        if let length = splitter.payloadInProgress {
            w.payload = length
            w.deadline = now + policy.payloadTime(length)
        }
        wait = w
        schedule(context: context)
    }

    private func endWait() {
        wait?.timer?.cancel()
        wait = nil
    }

    private func schedule(context: ChannelHandlerContext) {
        guard let w = wait else { return }
        let next = min(w.deadline, w.lastByte + policy.timeout)
        wait?.timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: next) { [self] in
            check(context: context)
        }
    }

    private func check(context: ChannelHandlerContext) {
        guard let w = wait, !failed else { return }
        let now = context.eventLoop.now
        let silent = now >= w.lastByte + policy.timeout
        guard silent || now >= w.deadline else {
            schedule(context: context)
            return
        }
        let limit = FerryConnection.seconds(policy.timeout)
        let why: String
        if let length = w.payload {
            why = silent
                ? "stopped sending in the middle of a \(length)-byte chunk (nothing for \(limit))"
                : "sent a \(length)-byte chunk too slowly (not complete within \(FerryConnection.seconds(w.deadline - w.started)))"
        } else if w.bytes == 0 && !splitter.hasPartialFrame {
            why = "sent nothing for \(limit) while ferry waited for a reply"
        } else if silent {
            why = "stopped sending in the middle of a reply line (nothing for \(limit))"
        } else {
            why = "did not complete a reply line within \(limit) (\(w.bytes) bytes trickled in)"
        }
        failed = true
        endWait()
        context.fireErrorCaught(ReplyTimeout(description: why))
        context.close(promise: nil)
    }
}
