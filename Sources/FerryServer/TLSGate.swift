import FerryProtocol
import Logging
import NIOCore
import NIOSSL
import NIOTLS

/// The first handler of every connection to a TLS server. In TLS the client speaks first (its
/// ClientHello); in ferry's cleartext protocol the server does (the greeting). So the gate holds
/// the greeting back and waits for the client's first bytes:
///
/// - a TLS handshake record (first byte 0x16): it puts a `NIOSSLServerHandler` in front of
///   itself, feeds it those bytes, and once the handshake has completed lets the held writes
///   through it (encrypted) and steps out of the pipeline;
/// - anything else, or nothing within `firstBytesWait` (a cleartext client waiting for its
///   greeting): it answers one cleartext `ERR 426` line saying the server needs TLS, and closes.
///
/// A handshake that has not completed `handshakeLimit` after it began is cut off, so a client
/// that stalls mid-handshake holds nothing for long.
final class TLSGate: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Said to a client that does not start a TLS handshake.
    static let refusal = ErrorReply(.tlsRequired,
                                    "this server speaks TLS only: use a ferry client that speaks TLS, or ask for a server started with --plaintext")

    private enum State {
        case waiting
        case handshaking
        case refused
    }

    private let context: NIOSSLContext
    private let firstBytesWait: TimeAmount
    private let handshakeLimit: TimeAmount
    private let logger: Logger
    private var state = State.waiting
    private var held: [(NIOAny, EventLoopPromise<Void>?)] = []
    /// A close asked for while a written line (an `ERR 429` greeting) was held: it happens once
    /// that line has gone out, or when a timer ends the connection.
    private var heldClose: EventLoopPromise<Void>?
    private var timer: Scheduled<Void>?

    init(context: NIOSSLContext, firstBytesWait: TimeAmount, handshakeLimit: TimeAmount, logger: Logger) {
        self.context = context
        self.firstBytesWait = firstBytesWait
        self.handshakeLimit = handshakeLimit
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startWaiting(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        startWaiting(context)
        context.fireChannelActive()
    }

    private func startWaiting(_ context: ChannelHandlerContext) {
        guard timer == nil, state == .waiting else { return }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: firstBytesWait) {
            bound.value.0.refuse(bound.value.1, why: "no TLS handshake began")
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard state == .waiting else {
            if state == .handshaking { context.fireChannelRead(data) }
            return
        }
        let bytes = unwrapInboundIn(data)
        guard let first = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self) else { return }
        guard first == 0x16 else {
            refuse(context, why: "the client spoke cleartext")
            return
        }
        state = .handshaking
        timer?.cancel()
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: handshakeLimit) { [logger, handshakeLimit] in
            let (gate, context) = bound.value
            logger.info("TLS handshake not finished within \(handshakeLimit.nanoseconds / 1_000_000) ms; closing",
                        metadata: ["peer": "\(context.channel.remoteAddress?.description ?? "?")"])
            gate.closeNow(context)
        }
        do {
            try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: self.context), position: .first)
        } catch {
            closeNow(context)
            return
        }
        // From the head again, so these bytes pass the TLS handler now in front of this one.
        context.pipeline.syncOperations.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted? = event as? TLSUserEvent, state == .handshaking {
            timer?.cancel()
            timer = nil
            context.fireUserInboundEventTriggered(event)
            let writes = held
            held = []
            for (data, promise) in writes { context.write(data, promise: promise) }
            context.flush()
            if let close = heldClose {
                heldClose = nil
                context.close(promise: close)
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch state {
        case .waiting, .handshaking: held.append((data, promise))
        case .refused: promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    func flush(context: ChannelHandlerContext) {
        // Held writes are flushed once the handshake has completed.
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all, state != .refused, !held.isEmpty else {
            context.close(mode: mode, promise: promise)
            return
        }
        let close = heldClose ?? context.eventLoop.makePromise()
        promise.map { close.futureResult.cascade(to: $0) }
        heldClose = close
    }

    /// Closes now, completing a held close too.
    private func closeNow(_ context: ChannelHandlerContext) {
        let close = heldClose
        heldClose = nil
        context.close(promise: close)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        failHeld()
        heldClose?.succeed(())
        heldClose = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        failHeld()
    }

    private func failHeld() {
        let writes = held
        held = []
        for (_, promise) in writes { promise?.fail(ChannelError.ioOnClosedChannel) }
    }

    /// Answers the cleartext `ERR 426` line, straight onto the socket, and closes.
    private func refuse(_ context: ChannelHandlerContext, why: String) {
        guard state == .waiting else { return }
        state = .refused
        timer?.cancel()
        timer = nil
        failHeld()
        logger.info("refused a cleartext connection: \(why)",
                    metadata: ["peer": "\(context.channel.remoteAddress?.description ?? "?")"])
        var line = context.channel.allocator.buffer(capacity: 160)
        line.writeString(Self.refusal.line + "\n")
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(line)).whenComplete { _ in bound.value.0.closeNow(bound.value.1) }
    }
}
