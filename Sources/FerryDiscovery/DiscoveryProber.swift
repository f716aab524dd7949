import FerryProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The client side of discovery: broadcast a probe, collect the unicast answers.
///
/// Each target gets its own socket (bound to an ephemeral port with SO_BROADCAST), so a
/// target that cannot be reached — 255.255.255.255 without a route, say — fails alone. The
/// probe is sent twice (at once and after a quarter of the timeout, capped at 500 ms) to
/// ride out a lost datagram; answers are matched to the probe by nonce and de-duplicated by
/// server id.
public enum DiscoveryProber {
    /// Probes `targets` on UDP `port` and returns every server that answered within
    /// `timeout`, one per server id, sorted by name. An empty result is not an error here:
    /// callers word it (see `DiscoveryError.noAnswer`).
    public static func probe(targets: [ProbeTarget], port: Int, timeout: Duration,
                             logger: Logger) async throws(DiscoveryError) -> [DiscoveredServer] {
        let outcome = try await collect(targets: targets, port: port, timeout: timeout, logger: logger, onAnswer: nil)
        return outcome.servers
    }

    /// Like `probe`, and also reports the targets a probe could not be sent to.
    public static func probeReporting(targets: [ProbeTarget], port: Int, timeout: Duration,
                                      logger: Logger) async throws(DiscoveryError) -> ProbeOutcome {
        try await collect(targets: targets, port: port, timeout: timeout, logger: logger, onAnswer: nil)
    }

    /// Finds the one server called `name` (ASCII case-insensitive).
    /// Throws `.noAnswer` when nobody answered, `.nameNotFound` when others did, and
    /// `.ambiguousName` when several servers carry the name.
    public static func resolve(name: String, targets: [ProbeTarget], port: Int, timeout: Duration,
                               logger: Logger) async throws(DiscoveryError) -> DiscoveredServer {
        let outcome = try await collect(targets: targets, port: port, timeout: timeout, logger: logger, onAnswer: nil)
        let wanted = name.lowercasedASCII()
        let matches = outcome.servers.filter { $0.name.lowercasedASCII() == wanted }
        switch matches.count {
        case 1:
            return matches[0]
        case 0 where outcome.servers.isEmpty:
            throw .noAnswer(targets: targets, port: port, timeout: timeout, failures: outcome.failures)
        case 0:
            throw .nameNotFound(name: name, answered: outcome.servers, targets: targets, port: port)
        default:
            throw .ambiguousName(name: name, matches: matches)
        }
    }

    /// Probes once, then keeps listening: answers to that probe (`found`), and the
    /// announcements and goodbyes that servers broadcast to the discovery port. To hear
    /// those, the watcher binds the discovery port itself (shared, like a server's).
    /// The stream ends only when the consumer stops iterating, or with a `DiscoveryError`
    /// when the discovery port cannot be opened.
    ///
    /// - Parameter probeWindow: how long the probe sockets wait for answers.
    public static func watch(targets: [ProbeTarget], port: Int, probeWindow: Duration = .seconds(5),
                             logger: Logger) -> AsyncThrowingStream<DiscoveryEvent, Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    try await runWatch(targets: targets, port: port, probeWindow: probeWindow, logger: logger) { event in
                        continuation.yield(event)
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    public struct ProbeOutcome: Sendable {
        /// One per server id, sorted by name.
        public var servers: [DiscoveredServer]
        /// Targets the probe could not be sent to.
        public var failures: [DiscoveryError.TargetFailure]
    }

    // MARK: Probing

    private enum TargetResult: Sendable {
        case answered([DiscoveredServer])
        case failed(DiscoveryError.TargetFailure)
    }

    static func collect(targets: [ProbeTarget], port: Int, timeout: Duration, logger: Logger,
                        onAnswer: (@Sendable (DiscoveredServer) -> Void)?) async throws(DiscoveryError) -> ProbeOutcome {
        guard !targets.isEmpty else { throw .noTargets }
        guard (1...65535).contains(port) else { throw .invalidPort(port) }
        let nonce = DiscoveryDatagram.makeNonce()
        let unique = targets.reduce(into: [ProbeTarget]()) { list, t in
            if !list.contains(where: { $0.address == t.address }) { list.append(t) }
        }
        let results = await withTaskGroup(of: TargetResult.self) { group in
            for target in unique {
                group.addTask {
                    await probeOne(target, port: port, nonce: nonce, timeout: timeout, logger: logger, onAnswer: onAnswer)
                }
            }
            var all: [TargetResult] = []
            for await result in group { all.append(result) }
            return all
        }
        var servers: [String: DiscoveredServer] = [:]
        var failures: [DiscoveryError.TargetFailure] = []
        for result in results {
            switch result {
            case .answered(let list):
                for server in list where servers[server.id] == nil { servers[server.id] = server }
            case .failed(let failure):
                failures.append(failure)
            }
        }
        if failures.count == unique.count { throw .probeFailed(failures) }
        return ProbeOutcome(servers: servers.values.sorted(by: DiscoveredServer.tableOrder), failures: failures)
    }

    private static func probeOne(_ target: ProbeTarget, port: Int, nonce: String, timeout: Duration, logger: Logger,
                                 onAnswer: (@Sendable (DiscoveredServer) -> Void)?) async -> TargetResult {
        let socket: DatagramSockets.AsyncDatagramChannel
        let destination: SocketAddress
        do {
            destination = try SocketAddress(ipAddress: target.address, port: port)
            socket = try await DatagramSockets.bindAsync(host: "0.0.0.0", port: 0, options: .init(broadcast: true))
        } catch {
            return .failed(.init(target: target, reason: DatagramSockets.reason(error)))
        }
        let probe = AddressedEnvelope(remoteAddress: destination,
                                      data: ByteBuffer(bytes: DiscoveryDatagram.probe(nonce: nonce).encoded))
        let resendAfter = min(timeout / 4, .milliseconds(500))
        do {
            return try await socket.executeThenClose { inbound, _ in
                do {
                    try await socket.channel.writeAndFlush(probe).get()
                } catch {
                    return .failed(.init(target: target, reason: DatagramSockets.reason(error)))
                }
                logger.debug("sent a discovery probe to \(target.address):\(port)")
                let found = NIOLockedValueBox<[DiscoveredServer]>([])
                await withTaskGroup(of: Void.self) { group in
                    group.addTask {
                        await readAnswers(inbound, channel: socket.channel, nonce: nonce, logger: logger) { server in
                            found.withLockedValue { $0.append(server) }
                            onAnswer?(server)
                        }
                    }
                    group.addTask {
                        guard (try? await Task.sleep(for: resendAfter)) != nil else { return }
                        // A resend that fails changes nothing: the first probe went out.
                        try? await socket.channel.writeAndFlush(probe).get()
                        try? await Task.sleep(for: timeout - resendAfter)
                    }
                    // Whichever ends first (normally the timer; the reader only if the
                    // socket closed), the probe is over.
                    await group.next()
                    group.cancelAll()
                    socket.channel.close(promise: nil)
                }
                return .answered(found.withLockedValue { $0 })
            }
        } catch {
            return .failed(.init(target: target, reason: DatagramSockets.reason(error)))
        }
    }

    /// Reads answers until the socket closes or the task is cancelled.
    private static func readAnswers(_ inbound: NIOAsyncChannelInboundStream<AddressedEnvelope<ByteBuffer>>,
                                    channel: Channel, nonce: String, logger: Logger,
                                    onAnswer: (DiscoveredServer) -> Void) async {
        await withTaskCancellationHandler {
            do {
                for try await envelope in inbound {
                    guard let host = envelope.remoteAddress.ipAddress, host != "0.0.0.0" else { continue }
                    switch try? DiscoveryDatagram.parse(envelope.data.readableBytesView) {
                    case .answer(let answerNonce, let advert)? where answerNonce == nonce:
                        let server = DiscoveredServer(advert: advert, host: host)
                        logger.debug("answer from \(host): \(server)")
                        onAnswer(server)
                    default:
                        logger.debug("ignored a datagram from \(host) that is not an answer to this probe")
                    }
                }
            } catch {
                logger.debug("probe socket ended: \(error)")
            }
        } onCancel: {
            channel.close(promise: nil)
        }
    }

    // MARK: Watching

    private static func runWatch(targets: [ProbeTarget], port: Int, probeWindow: Duration, logger: Logger,
                                 emit: @escaping @Sendable (DiscoveryEvent) -> Void) async throws {
        guard (1...65535).contains(port) else { throw DiscoveryError.invalidPort(port) }
        let listener: DatagramSockets.AsyncDatagramChannel
        do {
            listener = try await DatagramSockets.bindAsync(host: "0.0.0.0", port: port, options: .init(shareable: true))
        } catch {
            throw DiscoveryError.bindFailed(host: "0.0.0.0", port: port, reason: DatagramSockets.reason(error))
        }
        try await listener.executeThenClose { inbound, _ in
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    await listen(inbound, channel: listener.channel, logger: logger, emit: emit)
                }
                group.addTask {
                    let seen = NIOLockedValueBox<Set<String>>([])
                    do {
                        _ = try await collect(targets: targets, port: port, timeout: probeWindow, logger: logger) { server in
                            if seen.withLockedValue({ $0.insert(server.id).inserted }) { emit(.found(server)) }
                        }
                    } catch {
                        logger.warning("\(error)")
                    }
                }
                await group.waitForAll()
            }
        }
    }

    /// Reports announcements and goodbyes heard on the discovery port. A server announces
    /// to several broadcast addresses at once, so a repeat of the same datagram from the
    /// same address within two seconds is dropped.
    private static func listen(_ inbound: NIOAsyncChannelInboundStream<AddressedEnvelope<ByteBuffer>>,
                               channel: Channel, logger: Logger,
                               emit: @Sendable (DiscoveryEvent) -> Void) async {
        var recent: [String: UInt64] = [:]
        let window: UInt64 = 2_000_000_000
        await withTaskCancellationHandler {
            do {
                for try await envelope in inbound {
                    guard let host = envelope.remoteAddress.ipAddress, host != "0.0.0.0" else { continue }
                    let datagram: DiscoveryDatagram
                    do {
                        datagram = try DiscoveryDatagram.parse(envelope.data.readableBytesView)
                    } catch {
                        logger.debug("ignored a datagram from \(host): \(error)")
                        continue
                    }
                    let event: DiscoveryEvent
                    switch datagram {
                    case .announce(let advert): event = .announced(DiscoveredServer(advert: advert, host: host))
                    case .bye(let id): event = .goodbye(id: id, host: host)
                    case .probe, .answer: continue
                    }
                    let now = NIODeadline.now().uptimeNanoseconds
                    let key = host + " " + datagram.text
                    if let last = recent[key], now - last < window { continue }
                    if recent.count > 1024 { recent = recent.filter { now - $0.value < window } }
                    recent[key] = now
                    emit(event)
                }
            } catch {
                logger.debug("discovery listener ended: \(error)")
            }
        } onCancel: {
            channel.close(promise: nil)
        }
    }
}

extension String {
    func lowercasedASCII() -> String {
        String(decoding: utf8.map { ($0 >= 0x41 && $0 <= 0x5A) ? $0 + 0x20 : $0 }, as: UTF8.self)
    }
}
