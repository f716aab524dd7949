#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import FerryProtocol
import NIOCore
import NIOPosix

/// UDP sockets for discovery, opened through NIO's `DatagramBootstrap`.
enum DatagramSockets {
    typealias AsyncDatagramChannel = NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>

    struct Options: Sendable {
        /// SO_REUSEADDR + SO_REUSEPORT, so that several servers (and a watcher) can share
        /// the discovery port. Linux then hands every broadcast to each of them, but each
        /// unicast datagram to only one.
        var shareable = false
        /// SO_BROADCAST: needed to send to a broadcast address.
        var broadcast = false
        /// IP_PKTINFO: report the interface each datagram arrived on.
        var packetInfo = false
    }

    private static func bootstrap(_ options: Options) -> DatagramBootstrap {
        var bootstrap = DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        if options.shareable {
            bootstrap = bootstrap
                .channelOption(.socketOption(.so_reuseaddr), value: 1)
                .channelOption(.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
        }
        if options.broadcast {
            bootstrap = bootstrap.channelOption(.socketOption(.so_broadcast), value: 1)
        }
        if options.packetInfo {
            bootstrap = bootstrap.channelOption(.receivePacketInfo, value: true)
        }
        return bootstrap
    }

    /// A bound socket read and written through `NIOAsyncChannel`.
    static func bindAsync(host: String, port: Int, options: Options) async throws -> AsyncDatagramChannel {
        let address = try SocketAddress(ipAddress: host, port: port)
        return try await bootstrap(options).bind(to: address) { channel in
            channel.eventLoop.makeCompletedFuture {
                try AsyncDatagramChannel(
                    wrappingChannelSynchronously: channel,
                    configuration: .init(inboundType: AddressedEnvelope<ByteBuffer>.self,
                                         outboundType: AddressedEnvelope<ByteBuffer>.self))
            }
        }
    }

    /// Sends one datagram from a fresh socket bound to `sourceHost`, then closes it. A
    /// socket that fails a send is closed by NIO, so each send gets its own socket: one
    /// unreachable target cannot silence the others.
    static func sendOnce(_ datagram: DiscoveryDatagram, to target: String, port: Int, from sourceHost: String) async throws {
        let destination = try SocketAddress(ipAddress: target, port: port)
        let channel = try await bootstrap(Options(broadcast: true))
            .bind(to: SocketAddress(ipAddress: sourceHost, port: 0)).get()
        do {
            try await channel.writeAndFlush(AddressedEnvelope(remoteAddress: destination,
                                                              data: ByteBuffer(bytes: datagram.encoded))).get()
        } catch {
            channel.close(promise: nil)
            throw error
        }
        try? await channel.close().get()
    }

    /// Short, readable reason for a socket error (`network is unreachable`).
    static func reason(_ error: Error) -> String {
        if let io = error as? IOError {
            return String(cString: strerror(io.errnoCode))
        }
        if let channelError = error as? ChannelError {
            switch channelError {
            case .ioOnClosedChannel, .alreadyClosed: return "socket closed after a failed send"
            default: return "\(channelError)"
            }
        }
        if let socketError = error as? SocketAddressError {
            return "\(socketError)"
        }
        return "\(error)"
    }

    /// `IOError` errno, when there is one.
    static func errno(of error: Error) -> Int32? {
        (error as? IOError)?.errnoCode
    }
}
