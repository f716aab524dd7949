#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import FerryTrust
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle

/// How a server is set up; the CLI fills it from `ferry serve`'s options.
public struct ServerConfiguration: Sendable {
    public var root: String
    public var name: String
    public var bindHost: String
    public var port: Int
    public var compression: CompressionMode
    /// Where the hash cache is persisted; nil keeps it in memory.
    public var hashCachePath: String?
    /// HMAC token; nil means the server is open.
    public var token: [UInt8]?
    public var maxConnections: Int
    /// Connections one address may hold at once, so that one machine cannot lock others out.
    public var maxConnectionsPerAddress: Int
    /// A request line must arrive complete within this long once its first byte has.
    public var requestLineTimeout: TimeAmount
    /// A connection waiting this long for its next request is closed (`ERR 408`).
    public var idleTimeout: TimeAmount
    public var chunkSize: Int
    /// What the greeting offers beyond protocol 1.0 (`caps=`), in this order.
    public var capabilities: [Capability]
    /// The identity connections are encrypted with (TLS 1.3); nil serves cleartext (`--plaintext`).
    public var identity: ServerIdentity?
    /// How long a TLS server waits for a client's first bytes before it tells a cleartext
    /// client, in cleartext, that it needs TLS (`ERR 426`).
    public var tlsFirstBytesWait: TimeAmount = .seconds(2)
    /// A TLS handshake not completed this long after it began is cut off (`ferry serve` uses
    /// its `--request-timeout`).
    public var tlsHandshakeLimit: TimeAmount = .seconds(30)

    /// The extensions this server implements.
    public static let implementedCapabilities: [Capability] = [.listKinds, .manifestReport, .zstd, .cdc, .xxh128]

    public init(root: String, name: String, bindHost: String = "0.0.0.0", port: Int = FerryDefaults.tcpPort,
                compression: CompressionMode = .auto, hashCachePath: String? = nil, token: [UInt8]? = nil,
                maxConnections: Int = 256, maxConnectionsPerAddress: Int = 32,
                requestLineTimeout: TimeAmount = .seconds(30), idleTimeout: TimeAmount = .seconds(300),
                chunkSize: Int = FerryLimits.defaultChunkSize,
                capabilities: [Capability] = ServerConfiguration.implementedCapabilities,
                identity: ServerIdentity? = nil) {
        self.root = root
        self.name = name
        self.bindHost = bindHost
        self.port = port
        self.compression = compression
        self.hashCachePath = hashCachePath
        self.token = token
        self.maxConnections = maxConnections
        self.maxConnectionsPerAddress = maxConnectionsPerAddress
        self.requestLineTimeout = requestLineTimeout
        self.idleTimeout = idleTimeout
        self.chunkSize = chunkSize
        self.identity = identity
        // zstd is offered only when this server may send it (`auto` or `zstd:N`).
        self.capabilities = capabilities.filter { $0 != .zstd || compression.mayUse(.zstd) }
    }
}

public enum ServerError: Error, CustomStringConvertible {
    case cannotServe(String, SystemError)
    /// The listening socket could not be bound; `errno` when the system said why.
    case cannotBind(String, Int, errno: Int32?, String)
    /// The identity could not be turned into a TLS configuration.
    case tls(String)

    public var description: String {
        switch self {
        case .tls(let why):
            return "cannot set up TLS with the server's identity: \(why) (move identity.pem out of the state folder to make a new one)"
        case .cannotServe(let path, let e):
            return "cannot serve \(path): \(e.message) (check that it exists and is a readable directory)"
        case .cannotBind(let host, let port, let code, let why):
            let shown = host.contains(Character(":")) ? "[\(host)]:\(port)" : "\(host):\(port)"
            switch code {
            case EADDRINUSE?:
                return "cannot listen on \(shown): the port is in use (is another server using it? try --port 0 or another --port)"
            case EADDRNOTAVAIL?:
                return "cannot listen on \(shown): this machine has no address \(host) (check --bind; `ip addr` lists this machine's addresses)"
            case EACCES?:
                return "cannot listen on \(shown): permission denied (ports below 1024 need privileges; use --port 1024 or higher)"
            default:
                return "cannot listen on \(shown): \(why) (check --bind and --port)"
            }
        }
    }
}

/// A running ferry server. `start` binds; `run` serves until `shutdown()` — or, run as a
/// `Service` in a `ServiceGroup`, until graceful shutdown or cancellation, which call it.
public final class FerryServer: Service, Sendable {
    public let configuration: ServerConfiguration
    public let id: String
    public let localAddress: SocketAddress
    let root: ServedRoot
    let hashCache: HashCache
    let logger: Logger
    private let serverChannel: NIOAsyncChannel<Accepted, Never>
    private let connections = NIOLockedValueBox(ConnectionRegistry())
    let authThrottle = AuthThrottle()
    /// Hashing of ranges and block maps, off the cooperative threads (see `HeavyWork`).
    let heavyWork = HeavyWork()
    /// Chunks held ahead of the sockets, shared out among the running streams.
    let streamBudget = StreamBudget()
    /// Tree walks (`MANIFEST`) running at once.
    let walkTurns = WalkTurns()
    /// Reply bytes queued for the sockets, shared out among the connections holding any.
    let outputBudget: OutputBudget
    /// Gives memory that connections used back to the system once they have closed.
    let trimmer = MemoryTrimmer()
    /// What `auto` compression learned, the server's total rate and its chunk buffers.
    let compressionMemory = CompressionMemory()

    /// A freshly accepted connection and the flag its idle closer reads.
    struct Accepted: Sendable {
        let channel: NIOAsyncChannel<RequestFrame, ByteBuffer>
        let activity: ConnectionActivity
    }

    struct ConnectionRegistry {
        var open: [ObjectIdentifier: Channel] = [:]
        /// Open connections per peer address (the address without its port).
        var perAddress: [String: Int] = [:]
        var shuttingDown = false

        mutating func admit(_ channel: Channel, address: String) {
            open[ObjectIdentifier(channel)] = channel
            perAddress[address, default: 0] += 1
        }

        mutating func remove(_ channel: Channel, address: String) {
            guard open.removeValue(forKey: ObjectIdentifier(channel)) != nil else { return }
            let left = (perAddress[address] ?? 1) - 1
            perAddress[address] = left > 0 ? left : nil
        }
    }

    /// Opens the root and binds the listening socket.
    public static func start(_ configuration: ServerConfiguration, logger: Logger) async throws -> FerryServer {
        let root: ServedRoot
        do { root = try ServedRoot(path: configuration.root) } catch { throw ServerError.cannotServe(configuration.root, error) }
        MemoryTrimmer.giveLargeBuffersBack()
        let outputBudget = OutputBudget()
        let tls: NIOSSLContext?
        do { tls = try configuration.identity.map { try NIOSSLContext(configuration: $0.serverTLSConfiguration()) } } catch {
            throw ServerError.tls("\(error)")
        }
        let channel: NIOAsyncChannel<Accepted, Never>
        do {
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                // NIO's own marks; what a connection may queue is bounded by its share of the
                // output budget (`OutputGate`), which counts writes before the event loop does.
                .childChannelOption(.writeBufferWaterMark, value: .init(low: 256 * 1024, high: 1024 * 1024))
                .bind(host: configuration.bindHost, port: configuration.port) { child in
                    child.eventLoop.makeCompletedFuture {
                        let activity = ConnectionActivity(output: OutputGate(budget: outputBudget))
                        let sync = child.pipeline.syncOperations
                        // TLS: first in the pipeline, so every handler after it sees cleartext.
                        if let tls {
                            try sync.addHandler(TLSGate(context: tls, firstBytesWait: configuration.tlsFirstBytesWait,
                                                        handshakeLimit: configuration.tlsHandshakeLimit, logger: logger))
                        }
                        try sync.addHandler(IdleStateHandler(allTimeout: configuration.idleTimeout))
                        try sync.addHandler(IdleCloser(activity: activity, timeout: configuration.idleTimeout, logger: logger))
                        try sync.addHandler(RequestLineDeadline(limit: configuration.requestLineTimeout, logger: logger))
                        try sync.addHandler(ByteToMessageHandler(RequestLineDecoder()))
                        try sync.addHandler(FrameCounter<RequestFrame> { activity.requestDecoded() })
                        try sync.addHandler(WrittenBytesCounter(gate: activity.output))
                        // At most `maxPipelined` parsed requests wait per connection; beyond that
                        // the server stops reading the socket (TCP back-pressure).
                        let channel = try NIOAsyncChannel<RequestFrame, ByteBuffer>(
                            wrappingChannelSynchronously: child,
                            configuration: .init(backPressureStrategy: .init(lowWatermark: 4,
                                                                             highWatermark: FerryLimits.maxPipelined)))
                        return Accepted(channel: channel, activity: activity)
                    }
                }
        } catch {
            throw ServerError.cannotBind(configuration.bindHost, configuration.port,
                                         errno: (error as? IOError)?.errnoCode, "\(error)")
        }
        guard let address = channel.channel.localAddress else {
            throw ServerError.cannotBind(configuration.bindHost, configuration.port, errno: nil, "no local address")
        }
        return FerryServer(configuration: configuration, root: root, channel: channel, address: address,
                           outputBudget: outputBudget, logger: logger)
    }

    private init(configuration: ServerConfiguration, root: ServedRoot,
                 channel: NIOAsyncChannel<Accepted, Never>,
                 address: SocketAddress, outputBudget: OutputBudget, logger: Logger) {
        self.configuration = configuration
        self.outputBudget = outputBudget
        self.root = root
        self.serverChannel = channel
        self.localAddress = address
        self.logger = logger
        self.id = Hex.encode(SystemRandomNumberGenerator.bytes(16))
        self.hashCache = HashCache(persistingTo: configuration.hashCachePath)
    }

    public var port: Int { localAddress.port ?? configuration.port }

    /// The state folder (where the hash cache lives), else `$TMPDIR` or `/tmp`.
    var spoolDirectory: String {
        if let cache = configuration.hashCachePath, let slash = cache.lastIndex(of: "/") {
            return slash == cache.startIndex ? "/" : String(cache[..<slash])
        }
        if let tmp = getenv("TMPDIR"), tmp.pointee != 0 { return String(cString: tmp) }
        return "/tmp"
    }

    /// What each connection's handler is given of the server.
    var connectionContext: ConnectionContext {
        ConnectionContext(root: root, hashCache: hashCache, logger: logger, compression: configuration.compression,
                          compressionMemory: compressionMemory, chunkSize: configuration.chunkSize,
                          token: configuration.token, keyHash: configuration.identity?.keyHash, authThrottle: authThrottle, name: configuration.name, id: id,
                          capabilities: configuration.capabilities, heavyWork: heavyWork, streamBudget: streamBudget,
                          spoolDirectory: spoolDirectory, walkTurns: walkTurns)
    }

    /// Accepts and serves connections until `shutdown()` is called, or the group it runs in
    /// shuts down gracefully or is cancelled; returns once every connection has ended, with the
    /// hash cache saved.
    public func run() async throws {
        try await withTaskCancellationOrGracefulShutdownHandler {
            try await serve()
        } onCancelOrGracefulShutdown: {
            self.shutdown()
        }
    }

    private func serve() async throws {
        let context = connectionContext
        try await withThrowingDiscardingTaskGroup { group in
            try await serverChannel.executeThenClose { inbound in
                for try await accepted in inbound {
                    let connection = accepted.channel
                    let address = connection.channel.remoteAddress?.ipAddress ?? "?"
                    let refusal = connections.withLockedValue { reg -> ErrorReply? in
                        let refusal = Self.refusal(shuttingDown: reg.shuttingDown, open: reg.open.count,
                                                   limit: configuration.maxConnections,
                                                   fromAddress: reg.perAddress[address] ?? 0,
                                                   perAddressLimit: configuration.maxConnectionsPerAddress)
                        if refusal == nil { reg.admit(connection.channel, address: address) }
                        return refusal
                    }
                    group.addTask {
                        if let refusal {
                            await ConnectionHandler.refuse(connection, refusal)
                        } else {
                            await ConnectionHandler(context: context, connection: connection, activity: accepted.activity).run()
                            accepted.activity.output.close()
                            self.connections.withLockedValue { $0.remove(connection.channel, address: address) }
                            self.trimmer.connectionClosed()
                        }
                    }
                }
            }
        }
        await heavyWork.shutdown()
        context.saveCache()
    }

    /// The greeting that turns a new connection away, or nil to admit it: `ERR 503` once the
    /// server is stopping (a connection accepted just before the listener closed), `ERR 429`
    /// at the connection limit or at the limit for the client's address. A client treats both
    /// as "try again later".
    static func refusal(shuttingDown: Bool, open: Int, limit: Int,
                        fromAddress: Int = 0, perAddressLimit: Int = .max) -> ErrorReply? {
        if shuttingDown { return ErrorReply(.shuttingDown, "the server is shutting down; try again later") }
        if open >= limit { return ErrorReply(.tooMany, "too many connections (limit \(limit)); try again later") }
        if fromAddress >= perAddressLimit {
            return ErrorReply(.tooMany, "too many connections from your address (limit \(perAddressLimit)); close some and try again")
        }
        return nil
    }

    /// Stops accepting, closes every connection (a reply in progress is cut off: no `ERR 503`
    /// is sent on an admitted connection), and lets `run()` return.
    public func shutdown() {
        let open = connections.withLockedValue { reg -> [Channel] in
            reg.shuttingDown = true
            return Array(reg.open.values)
        }
        serverChannel.channel.close(promise: nil)
        for channel in open { channel.close(promise: nil) }
    }
}

extension SystemRandomNumberGenerator {
    static func bytes(_ count: Int) -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &g) }
    }
}
