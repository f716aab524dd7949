#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// How a server is set up; the CLI fills it from `ferry serve`'s options.
public struct ServerConfiguration: Sendable {
    public var root: String
    public var name: String
    public var bindHost: String
    public var port: Int
    public var compression: CompressionPolicy
    /// Where the hash cache is persisted; nil keeps it in memory.
    public var hashCachePath: String?
    /// HMAC token; nil means the server is open.
    public var token: [UInt8]?
    public var maxConnections: Int
    /// A connection waiting this long for its next request is closed (`ERR 408`).
    public var idleTimeout: TimeAmount
    public var chunkSize: Int

    public init(root: String, name: String, bindHost: String = "0.0.0.0", port: Int = FerryDefaults.tcpPort,
                compression: CompressionPolicy = .auto, hashCachePath: String? = nil, token: [UInt8]? = nil,
                maxConnections: Int = 256, idleTimeout: TimeAmount = .seconds(300),
                chunkSize: Int = FerryLimits.defaultChunkSize) {
        self.root = root
        self.name = name
        self.bindHost = bindHost
        self.port = port
        self.compression = compression
        self.hashCachePath = hashCachePath
        self.token = token
        self.maxConnections = maxConnections
        self.idleTimeout = idleTimeout
        self.chunkSize = chunkSize
    }
}

public enum ServerError: Error, CustomStringConvertible {
    case cannotServe(String, SystemError)
    /// The listening socket could not be bound; `errno` when the system said why.
    case cannotBind(String, Int, errno: Int32?, String)

    public var description: String {
        switch self {
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

/// A running ferry server. `start` binds; `run` serves until `shutdown()`.
public final class FerryServer: Sendable {
    public let configuration: ServerConfiguration
    public let id: String
    public let localAddress: SocketAddress
    let root: ServedRoot
    let hashCache: HashCache
    let logger: Logger
    private let serverChannel: NIOAsyncChannel<Accepted, Never>
    private let connections = NIOLockedValueBox(ConnectionRegistry())
    let authThrottle = AuthThrottle()

    /// A freshly accepted connection and the flag its idle closer reads.
    struct Accepted: Sendable {
        let channel: NIOAsyncChannel<RequestFrame, ByteBuffer>
        let activity: ConnectionActivity
    }

    struct ConnectionRegistry {
        var open: [ObjectIdentifier: Channel] = [:]
        var shuttingDown = false
    }

    /// Opens the root and binds the listening socket.
    public static func start(_ configuration: ServerConfiguration, logger: Logger) async throws -> FerryServer {
        let root: ServedRoot
        do { root = try ServedRoot(path: configuration.root) } catch { throw ServerError.cannotServe(configuration.root, error) }
        let channel: NIOAsyncChannel<Accepted, Never>
        do {
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .childChannelOption(.writeBufferWaterMark, value: .init(low: 256 * 1024, high: 1024 * 1024))
                .bind(host: configuration.bindHost, port: configuration.port) { child in
                    child.eventLoop.makeCompletedFuture {
                        let activity = ConnectionActivity()
                        let sync = child.pipeline.syncOperations
                        try sync.addHandler(IdleStateHandler(allTimeout: configuration.idleTimeout))
                        try sync.addHandler(IdleCloser(activity: activity, timeout: configuration.idleTimeout, logger: logger))
                        try sync.addHandler(ByteToMessageHandler(RequestLineDecoder()))
                        try sync.addHandler(FrameCounter<RequestFrame> { activity.requestDecoded() })
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
        return FerryServer(configuration: configuration, root: root, channel: channel, address: address, logger: logger)
    }

    private init(configuration: ServerConfiguration, root: ServedRoot,
                 channel: NIOAsyncChannel<Accepted, Never>,
                 address: SocketAddress, logger: Logger) {
        self.configuration = configuration
        self.root = root
        self.serverChannel = channel
        self.localAddress = address
        self.logger = logger
        self.id = Hex.encode(SystemRandomNumberGenerator.bytes(16))
        self.hashCache = HashCache(persistingTo: configuration.hashCachePath)
    }

    public var port: Int { localAddress.port ?? configuration.port }

    /// The greeting every connection starts with.
    func greeting(nonce: [UInt8]?) -> Greeting {
        Greeting(name: configuration.name, id: id, nonce: nonce)
    }

    /// Accepts and serves connections until `shutdown()` is called.
    public func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            try await serverChannel.executeThenClose { inbound in
                for try await accepted in inbound {
                    let connection = accepted.channel
                    let refusal = connections.withLockedValue { reg -> ErrorReply? in
                        let refusal = Self.refusal(shuttingDown: reg.shuttingDown, open: reg.open.count,
                                                   limit: configuration.maxConnections)
                        if refusal == nil { reg.open[ObjectIdentifier(connection.channel)] = connection.channel }
                        return refusal
                    }
                    group.addTask {
                        if let refusal {
                            await ConnectionHandler.refuse(connection, refusal)
                        } else {
                            await ConnectionHandler(server: self, connection: connection, activity: accepted.activity).run()
                            self.connections.withLockedValue { _ = $0.open.removeValue(forKey: ObjectIdentifier(connection.channel)) }
                        }
                    }
                }
            }
        }
        saveCache()
    }

    /// The greeting that turns a new connection away, or nil to admit it: `ERR 503` once the
    /// server is stopping (a connection accepted just before the listener closed), `ERR 429`
    /// at the connection limit. A client treats both as "try again later".
    static func refusal(shuttingDown: Bool, open: Int, limit: Int) -> ErrorReply? {
        if shuttingDown { return ErrorReply(.shuttingDown, "the server is shutting down; try again later") }
        if open >= limit { return ErrorReply(.tooMany, "too many connections (limit \(limit)); try again later") }
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

    func saveCache() {
        do { try hashCache.save() } catch { logger.warning("could not save the hash cache: \(error)") }
    }
}

extension SystemRandomNumberGenerator {
    static func bytes(_ count: Int) -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &g) }
    }
}
