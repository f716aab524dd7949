import FerryProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The server side of discovery (PROTOCOL.md section 9): answers `FERRY-PROBE` by unicast to
/// the prober and, when asked to, announces the server and says goodbye.
///
/// The socket is bound to the wildcard address with SO_REUSEADDR and SO_REUSEPORT, so several
/// servers on one host share the discovery port, and each of them receives every broadcast
/// probe (the kernel delivers a broadcast to every socket bound to its port). A unicast probe
/// reaches only one of them: probes must be broadcast, on a host `127.255.255.255`.
///
/// A socket bound to one address does not receive broadcasts, so a specific `bindHost` does
/// not narrow the bind: it narrows which probes are answered, to those that arrived on an
/// interface carrying that address (learned from IP_PKTINFO), and announcements are sent
/// from it.
///
/// As a `Service` in a `ServiceGroup`, it answers until the group shuts down gracefully or is
/// cancelled, then stops (an announcing responder says goodbye first).
public final class DiscoveryResponder: Service, Sendable {
    /// The UDP port probes are answered on (the one asked for, or the one picked for port 0).
    public let boundPort: Int

    private let advert: DiscoveryAdvert
    private let scope: ListenScope
    private let announce: Bool
    private let announceInterval: Duration
    private let announceTargets: [ProbeTarget]?
    private let logger: Logger
    private let state = NIOLockedValueBox(State())

    private struct State {
        var stopped = false
        var listener: DatagramSockets.AsyncDatagramChannel?
        var supervisor: Task<Void, Never>?
        var announcer: Task<Void, Never>?
    }

    /// Which probes to answer and where announcements come from.
    struct ListenScope: Sendable {
        /// Interface indexes whose probes are answered; nil for all.
        var interfaces: Set<Int>?
        /// Source address for announcements.
        var sendHost: String
    }

    /// Opens the discovery port and starts answering.
    ///
    /// - Parameters:
    ///   - bindHost: `0.0.0.0` answers on every interface; an address of this machine answers
    ///     only probes that arrive on its interface.
    ///   - port: the UDP discovery port (`FerryDefaults.discoveryPort`); 0 picks a free one.
    ///   - announce: send `FERRY-ANNOUNCE` now and every `announceInterval`, and `FERRY-BYE` on
    ///     `stop()`. These are broadcasts that reach the whole network.
    ///   - announceTargets: where announcements go; nil means 255.255.255.255 and the directed
    ///     broadcast address of every up interface (or only of `bindHost`'s interface),
    ///     recomputed for each announcement.
    ///   - rateLimiter: how many answers each prober may get.
    public static func start(advert: ServerAdvert, bindHost: String = "0.0.0.0", port: Int, announce: Bool,
                             announceInterval: Duration = .seconds(30), announceTargets: [ProbeTarget]? = nil,
                             rateLimiter: AnswerRateLimiter = AnswerRateLimiter(),
                             logger: Logger) async throws(DiscoveryError) -> DiscoveryResponder {
        let validAdvert: DiscoveryAdvert
        do {
            validAdvert = try DiscoveryAdvert(name: advert.name, id: advert.id, port: advert.tcpPort, version: advert.version,
                                              fingerprint: advert.fingerprint)
        } catch {
            throw .invalidAdvert(error.description)
        }
        guard (0...65535).contains(port) else { throw .invalidPort(port) }
        guard announceInterval > .zero else { throw .invalidAdvert("the announcement interval must be positive") }
        let scope = try await listenScope(for: bindHost)
        let listener = try await openListener(port: port, scope: scope)
        let boundPort = listener.channel.localAddress?.port ?? port
        let responder = DiscoveryResponder(advert: validAdvert, boundPort: boundPort, scope: scope, announce: announce,
                                           announceInterval: announceInterval, announceTargets: announceTargets,
                                           logger: logger)
        responder.launch(listener: listener, rateLimiter: rateLimiter)
        logger.debug("answering discovery probes", metadata: [
            "port": "\(boundPort)", "bind": "\(bindHost)", "announce": "\(announce)", "name": "\(validAdvert.name)",
        ])
        return responder
    }

    private init(advert: DiscoveryAdvert, boundPort: Int, scope: ListenScope, announce: Bool, announceInterval: Duration,
                 announceTargets: [ProbeTarget]?, logger: Logger) {
        self.advert = advert
        self.boundPort = boundPort
        self.scope = scope
        self.announce = announce
        self.announceInterval = announceInterval
        self.announceTargets = announceTargets
        self.logger = logger
    }

    deinit {
        let leftover = state.withLockedValue { state -> DatagramSockets.AsyncDatagramChannel? in
            state.supervisor?.cancel()
            state.announcer?.cancel()
            return state.stopped ? nil : state.listener
        }
        leftover?.channel.close(promise: nil)
    }

    /// Stops answering; an announcing responder first says `FERRY-BYE`. Safe to call twice.
    public func stop() async {
        let (first, announcer, supervisor, listener) = state.withLockedValue { state in
            defer { state.stopped = true }
            return (!state.stopped, state.announcer, state.supervisor, state.listener)
        }
        if first {
            announcer?.cancel()
            await announcer?.value
            if announce {
                await sendToAnnounceTargets(.bye(id: advert.id), what: "goodbye")
            }
            listener?.channel.close(promise: nil)
        }
        await supervisor?.value
    }

    /// Answers until graceful shutdown or cancellation, then stops; returns once stopped.
    public func run() async {
        await withTaskCancellationOrGracefulShutdownHandler {
            await untilStopped()
        } onCancelOrGracefulShutdown: {
            Task { await self.stop() }
        }
    }

    /// Returns when the responder has stopped (`stop()`, which the caller must see to).
    private func untilStopped() async {
        let supervisor = state.withLockedValue { $0.supervisor }
        await supervisor?.value
    }

    // MARK: Answering

    private func launch(listener: DatagramSockets.AsyncDatagramChannel, rateLimiter: AnswerRateLimiter) {
        state.withLockedValue { state in
            state.listener = listener
            state.supervisor = Task { await self.superviseListener(first: listener, rateLimiter: rateLimiter) }
            if announce {
                state.announcer = Task { await self.announceLoop() }
            }
        }
    }

    /// Serves the socket until `stop()`. NIO closes a datagram socket whose send fails with an
    /// unrecoverable error; then the port is opened again (at most once a second), so one
    /// odd prober cannot switch discovery off.
    private func superviseListener(first: DatagramSockets.AsyncDatagramChannel, rateLimiter: AnswerRateLimiter) async {
        var limiter = rateLimiter
        var listener: DatagramSockets.AsyncDatagramChannel? = first
        while true {
            if let listener {
                await serve(listener, limiter: &limiter)
            }
            if state.withLockedValue({ $0.stopped }) { return }
            logger.warning("the discovery socket closed unexpectedly; reopening UDP port \(boundPort) in 1 s")
            try? await Task.sleep(for: .seconds(1))
            if state.withLockedValue({ $0.stopped }) { return }
            do {
                let reopened = try await Self.openListener(port: boundPort, scope: scope)
                let keep = state.withLockedValue { state -> Bool in
                    guard !state.stopped else { return false }
                    state.listener = reopened
                    return true
                }
                guard keep else {
                    try? await reopened.channel.close()
                    return
                }
                listener = reopened
            } catch {
                logger.warning("cannot reopen the discovery socket: \(error)")
                listener = nil
            }
        }
    }

    private func serve(_ listener: DatagramSockets.AsyncDatagramChannel, limiter: inout AnswerRateLimiter) async {
        do {
            try await listener.executeThenClose { inbound, _ in
                for try await envelope in inbound {
                    handle(envelope, on: listener.channel, limiter: &limiter)
                }
            }
        } catch {
            logger.debug("discovery socket ended: \(error)")
        }
    }

    private func handle(_ envelope: AddressedEnvelope<ByteBuffer>, on channel: Channel, limiter: inout AnswerRateLimiter) {
        let source = envelope.remoteAddress
        let sourceHost = source.ipAddress ?? "?"
        let datagram: DiscoveryDatagram
        do {
            datagram = try DiscoveryDatagram.parse(envelope.data.readableBytesView)
        } catch {
            logger.debug("ignored a datagram from \(sourceHost): \(error)")
            return
        }
        guard case .probe(let nonce) = datagram else {
            logger.trace("ignored \(datagram.kindName) from \(sourceHost)")
            return
        }
        if let interfaces = scope.interfaces {
            guard let arrival = envelope.metadata?.packetInfo?.interfaceIndex, interfaces.contains(arrival) else {
                logger.trace("ignored a probe from \(sourceHost) that arrived on another interface")
                return
            }
        }
        guard case .v4(let v4) = source, let port = source.port, port != 0,
              !IPv4.isUnanswerableSource(UInt32(bigEndian: v4.address.sin_addr.s_addr)) else {
            logger.debug("ignored a probe from unanswerable source \(source)")
            return
        }
        guard limiter.allow(source: sourceHost, now: NIODeadline.now().uptimeNanoseconds) else {
            logger.debug("rate limit: not answering \(sourceHost)")
            return
        }
        // A probe too small for the fingerprint (a client from before it) gets the answer without.
        let answer = [advert, advert.withoutFingerprint].lazy.map { DiscoveryDatagram.answer(nonce: nonce, server: $0).encoded }
            .first { $0.count <= envelope.data.readableBytes } ?? DiscoveryDatagram.answer(nonce: nonce, server: advert).encoded
        guard answer.count <= envelope.data.readableBytes else {
            logger.debug("ignored an unpadded probe from \(sourceHost): \(envelope.data.readableBytes) bytes, the answer would be \(answer.count)")
            return
        }
        channel.writeAndFlush(AddressedEnvelope(remoteAddress: source, data: ByteBuffer(bytes: answer)), promise: nil)
    }

    // MARK: Announcing

    private func announceLoop() async {
        while !Task.isCancelled {
            await sendToAnnounceTargets(.announce(advert), what: "announcement")
            do {
                try await Task.sleep(for: announceInterval)
            } catch {
                return
            }
        }
    }

    private func currentAnnounceTargets() -> [ProbeTarget] {
        if let announceTargets { return announceTargets }
        return DiscoveryTargets.broadcastTargets(of: NetworkInterfaces.addresses(), onlyInterfaces: scope.interfaces)
    }

    private func sendToAnnounceTargets(_ datagram: DiscoveryDatagram, what: String) async {
        let targets = currentAnnounceTargets()
        var failures: [String] = []
        for target in targets {
            do {
                try await DatagramSockets.sendOnce(datagram, to: target.address, port: boundPort, from: scope.sendHost)
                logger.trace("sent \(what) to \(target.address):\(boundPort)")
            } catch {
                failures.append("\(target.address): \(DatagramSockets.reason(error))")
            }
        }
        if !failures.isEmpty {
            let message: Logger.Message = "could not send the discovery \(what) to \(failures.joined(separator: "; "))"
            if failures.count == targets.count { logger.warning(message) } else { logger.debug(message) }
        }
    }

    // MARK: Setup

    private static func openListener(port: Int, scope: ListenScope) async throws(DiscoveryError) -> DatagramSockets.AsyncDatagramChannel {
        do {
            return try await DatagramSockets.bindAsync(
                host: "0.0.0.0", port: port,
                options: .init(shareable: true, broadcast: false, packetInfo: scope.interfaces != nil))
        } catch {
            throw .bindFailed(host: "0.0.0.0", port: port, reason: DatagramSockets.reason(error))
        }
    }

    static func listenScope(for bindHost: String) async throws(DiscoveryError) -> ListenScope {
        let host = bindHost.trimmingASCIISpaces()
        if ["", "*", "0.0.0.0", "::", "[::]"].contains(host) {
            return ListenScope(interfaces: nil, sendHost: "0.0.0.0")
        }
        var literal = host
        if literal.hasPrefix("[") && literal.hasSuffix("]") { literal = String(literal.dropFirst().dropLast()) }
        if IPv4.parse(literal) == nil && !IPv4.isIPv6Literal(literal) {
            do {
                let resolved = try SocketAddress.makeAddressResolvingHost(literal, port: 0)
                guard let ip = resolved.ipAddress else { throw DiscoveryError.invalidBindAddress(host, why: "no IP address") }
                literal = ip
            } catch {
                throw .invalidBindAddress(host, why: "not an IP address, and it does not resolve")
            }
        }
        let addresses = NetworkInterfaces.addresses()
        var interfaces = Set(addresses.filter { $0.address == literal }.map(\.index))
        let isLoopback = literal == "::1" || (IPv4.parse(literal).map { $0 >> 24 == 127 } ?? false)
        if isLoopback {
            interfaces.formUnion(addresses.filter(\.isLoopback).map(\.index))
        }
        guard !interfaces.isEmpty else {
            throw .invalidBindAddress(host, why: "no network interface of this machine has that address")
        }
        return ListenScope(interfaces: interfaces, sendHost: IPv4.parse(literal) != nil ? literal : "0.0.0.0")
    }
}

extension DiscoveryDatagram {
    var kindName: String {
        switch self {
        case .probe: return Self.probeKind
        case .answer: return Self.answerKind
        case .announce: return Self.announceKind
        case .bye: return Self.byeKind
        }
    }
}
