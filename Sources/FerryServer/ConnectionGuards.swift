#if canImport(Glibc)
import Glibc
#endif
import FerryProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Whether a connection's handler is working on a request. The idle closer leaves a busy
/// connection alone: building a manifest of a huge tree may write nothing for minutes.
final class ConnectionActivity: Sendable {
    private let busy = NIOLockedValueBox(false)
    private let decoded = NIOLockedValueBox(0)
    /// What the connection has queued for its socket.
    let output: OutputGate

    init(output: OutputGate = OutputGate(budget: OutputBudget())) {
        self.output = output
    }

    /// Requests parsed off the socket so far (a `FrameCounter` counts them as they are passed
    /// on). More than the connection has taken means the next one is already waiting.
    var requestsDecoded: Int { decoded.withLockedValue { $0 } }
    func requestDecoded() { decoded.withLockedValue { $0 += 1 } }

    var isBusy: Bool { busy.withLockedValue { $0 } }

    func run<T>(_ body: () async throws -> T) async rethrows -> T {
        busy.withLockedValue { $0 = true }
        defer { busy.withLockedValue { $0 = false } }
        return try await body()
    }
}

/// Closes a connection that has neither sent nor received anything for the idle timeout while
/// the server was waiting for its next request, or while a reply was waiting for the client to
/// read it (the socket's send buffer and the channel's buffer are full: the peer stopped
/// reading). Before closing it says why (`ERR 408`), when the socket can take the line. A
/// connection whose request is being worked on (hashing a huge file, walking a huge tree) and
/// whose output is flowing is left alone.
final class IdleCloser: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let activity: ConnectionActivity
    let timeout: TimeAmount
    let logger: Logger

    init(activity: ConnectionActivity, timeout: TimeAmount, logger: Logger) {
        self.activity = activity
        self.timeout = timeout
        self.logger = logger
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let idle = event as? IdleStateHandler.IdleStateEvent, idle == .all else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        let seconds = timeout.nanoseconds / 1_000_000_000
        let peer = context.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "?"
        if activity.isBusy {
            // Busy with nothing waiting to be written: working. Busy with output that no write
            // has taken for the whole timeout: the reply waits for a client that does not read
            // it; that holds buffers, so the client goes.
            guard !context.channel.isWritable || activity.output.queued > 0 else { return }
            logger.info("closing a connection that does not read its reply", metadata: ["peer": "\(peer)"])
            context.close(promise: nil)
            return
        }
        logger.info("closing idle connection", metadata: ["peer": "\(peer)"])
        if context.channel.isWritable {
            let line = ErrorReply(.timeout, "idle for more than \(seconds) s; closing the connection").line + "\n"
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: line)), promise: nil)
        }
        context.close(promise: nil)
    }
}

/// Bounds how long one request line may take to arrive once its first byte has: a client that
/// trickles a line a byte at a time (slowloris) never looks idle, so the idle timeout alone
/// would let it hold a connection slot for ever. Sits before the line decoder and watches the
/// raw bytes: bytes after the last LF start the clock, an LF stops it.
final class RequestLineDeadline: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let limit: TimeAmount
    let logger: Logger
    private var timer: Scheduled<Void>?

    init(limit: TimeAmount, logger: Logger) {
        self.limit = limit
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        if bytes.readableBytesView.last == 0x0A {
            cancel()
        } else if bytes.readableBytesView.contains(0x0A) || timer == nil {
            // A new line began in this read (after an LF, or on a fresh connection's first bytes).
            cancel()
            start(context: context)
        }
        context.fireChannelRead(data)
    }

    func handlerRemoved(context: ChannelHandlerContext) { cancel() }
    func channelInactive(context: ChannelHandlerContext) {
        cancel()
        context.fireChannelInactive()
    }

    private func cancel() {
        timer?.cancel()
        timer = nil
    }

    private func start(context: ChannelHandlerContext) {
        let limit = self.limit, logger = self.logger
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: limit) {
            let context = loopBound.value
            let peer = context.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "?"
            logger.info("closing a connection whose request line did not arrive in time", metadata: ["peer": "\(peer)"])
            let seconds = Double(limit.nanoseconds) / 1e9
            if context.channel.isWritable {
                let line = ErrorReply(.timeout, "request line not complete after \(seconds) s; closing the connection").line + "\n"
                context.writeAndFlush(NIOAny(context.channel.allocator.buffer(string: line)), promise: nil)
            }
            context.close(promise: nil)
        }
    }
}

/// Slows down repeated authentication failures from one address: every `AUTH` from an address
/// with recent failures waits for its turn, and turns are spaced by a delay that doubles with
/// each failure (0.5 s, 1 s, 2 s … up to `maxDelay`). Parallel connections from that address
/// queue behind each other, so they do not multiply the guessing rate. Failures are forgotten
/// after `forgetAfter` without one, or on a successful `AUTH`.
final class AuthThrottle: Sendable {
    struct Record {
        var failures: Int
        var nextTurn: NIODeadline
        var lastFailure: NIODeadline
    }

    static let baseDelay = TimeAmount.milliseconds(500)
    static let maxDelay = TimeAmount.seconds(30)
    static let forgetAfter = TimeAmount.minutes(10)
    /// Bounds the table under a flood of spoofed or many distinct addresses.
    static let maxTracked = 4096

    private let records = NIOLockedValueBox([String: Record]())

    static func delay(afterFailures failures: Int) -> TimeAmount {
        guard failures > 0 else { return .zero }
        let shift = min(failures - 1, 16)
        return min(.nanoseconds(baseDelay.nanoseconds << Int64(shift)), maxDelay)
    }

    /// How long this attempt must wait before it is checked; reserves the turn.
    func reserveTurn(for address: String, now: NIODeadline = .now()) -> TimeAmount {
        records.withLockedValue { table in
            guard var record = table[address] else { return .zero }
            if now - record.lastFailure > Self.forgetAfter {
                table[address] = nil
                return .zero
            }
            let turn = max(record.nextTurn, now)
            record.nextTurn = turn + Self.delay(afterFailures: record.failures)
            table[address] = record
            return turn - now
        }
    }

    func recordFailure(for address: String, now: NIODeadline = .now()) {
        records.withLockedValue { table in
            if table[address] == nil && table.count >= Self.maxTracked {
                // Forget the address whose last failure is oldest.
                if let oldest = table.min(by: { $0.value.lastFailure < $1.value.lastFailure })?.key {
                    table[oldest] = nil
                }
            }
            var record = table[address] ?? Record(failures: 0, nextTurn: now, lastFailure: now)
            record.failures += 1
            record.lastFailure = now
            record.nextTurn = max(record.nextTurn, now + Self.delay(afterFailures: record.failures))
            table[address] = record
        }
    }

    func recordSuccess(for address: String) {
        records.withLockedValue { _ = $0.removeValue(forKey: address) }
    }

    func failures(for address: String) -> Int {
        records.withLockedValue { $0[address]?.failures ?? 0 }
    }
}


/// Hands freed memory back to the system after connections close. glibc keeps freed chunk
/// buffers in its per-thread arenas, so a burst of connections left the server's resident size
/// at its peak for good (issue 17: 27 MB → 670 MB after 255 GETs, still 660 MB after they
/// closed). `malloc_trim` returns the free pages: one second after a connection closes (so a
/// burst of closes costs one trim), at most once a second.
final class MemoryTrimmer: Sendable {
    private let pending = NIOLockedValueBox(false)
    static let delay = Duration.seconds(1)

    func connectionClosed() {
        let start = pending.withLockedValue { pending -> Bool in
            guard !pending else { return false }
            pending = true
            return true
        }
        guard start, let trim = Self.trim else { return }
        Task.detached(priority: .background) { [pending] in
            try? await Task.sleep(for: Self.delay)
            pending.withLockedValue { $0 = false }
            _ = trim(0)
        }
    }

    /// Allocations of at least 128 KiB (chunk buffers) get pages of their own, given back as
    /// soon as they are freed, instead of glibc's default, which raises that threshold to the
    /// largest block freed so far and then keeps 256 KiB chunk buffers in its arenas. The hot
    /// path reuses its buffers (`ChunkBufferPool`), so this costs only the buffers beyond it.
    static func giveLargeBuffersBack() {
        #if canImport(Glibc)
        guard let symbol = dlsym(nil, "mallopt") else { return }
        let mallopt = unsafeBitCast(symbol, to: (@convention(c) (Int32, Int32) -> Int32).self)
        _ = mallopt(-3, 128 * 1024)  // M_MMAP_THRESHOLD
        #endif
    }

    /// glibc's `malloc_trim` (its header is not part of the Glibc module); nil elsewhere.
    private static let trim: (@convention(c) (Int) -> Int32)? = {
        #if canImport(Glibc)
        // RTLD_DEFAULT (a null handle): the symbol as the process already has it.
        guard let symbol = dlsym(nil, "malloc_trim") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)
        #else
        return nil
        #endif
    }()
}
