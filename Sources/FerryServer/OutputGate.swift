import NIOConcurrencyHelpers
import NIOCore

/// How many bytes of replies all connections together may have handed to their channels that
/// the sockets have not taken yet, shared out among the connections that hold any.
///
/// One connection (or a few) may queue up to `perConnectionMaximum` beyond the kernel's socket
/// buffer, which keeps a fast link fed; when many hold output at once (clients that stopped
/// reading), each gets `total / holders`, down to one write at a time. With the defaults, 256
/// stalled readers hold at most one 256 KiB chunk each in the server (issue 17: RSS ≤ 256 MiB
/// under any 256 hostile connections).
public final class OutputBudget: Sendable {
    public let total: Int
    public let perConnectionMaximum: Int
    private let holders = NIOLockedValueBox(0)

    public init(total: Int = 64 << 20, perConnectionMaximum: Int = 1 << 20) {
        self.total = total
        self.perConnectionMaximum = perConnectionMaximum
    }

    /// Connections holding output now.
    public var holding: Int { holders.withLockedValue { $0 } }

    /// What one connection may hold now.
    public var perConnection: Int {
        let count = holders.withLockedValue { max(1, $0) }
        return min(perConnectionMaximum, total / count)
    }

    func startHolding() { holders.withLockedValue { $0 += 1 } }
    func stopHolding() { holders.withLockedValue { $0 = max(0, $0 - 1) } }
}

/// Bounds what one connection has queued in its channel and not yet written to its socket.
///
/// NIO's writability alone does not: `NIOAsyncChannelOutboundWriter.write` returns once the
/// bytes are handed to the writer, before the event loop has queued them and counted them
/// against the write-buffer watermark, so a stream that produces chunks faster than a busy
/// event loop turns can queue many of them (seen: 3.9 MiB per stalled reader where the marks
/// say 1.25). Here every write is counted when it is made (`reserve`, which waits while the
/// connection is over its share of the `OutputBudget`) and uncounted when the socket has taken
/// it or the write failed (`WrittenBytesCounter` sees each write's promise complete).
public final class OutputGate: Sendable {
    private struct State {
        var queued = 0
        var closed = false
        var waiters = WaitQueue()
    }

    let budget: OutputBudget
    private let state = NIOLockedValueBox(State())

    public init(budget: OutputBudget) {
        self.budget = budget
    }

    /// Bytes queued and not yet taken by the socket.
    public var queued: Int { state.withLockedValue { $0.queued } }

    /// Counts `bytes` as queued, first waiting while this connection holds its share of the
    /// budget. A write is always let through when nothing is queued, however large.
    func reserve(_ bytes: Int) async {
        while true {
            let limit = budget.perConnection
            // A cancelled task stops waiting; its write then fails and is uncounted.
            let cancelled = Task.isCancelled
            let admitted: Bool = state.withLockedValue { s in
                guard !s.closed else { return true }
                guard cancelled || s.queued == 0 || s.queued + bytes <= limit else { return false }
                add(bytes, to: &s)
                return true
            }
            if admitted { return }
            await waitForRelease()
        }
    }

    /// Waits until a write of `bytes` would be let through at once: what a stream does before it
    /// reads its next chunk, so a connection over its share holds no chunks read ahead either.
    func waitForRoom(_ bytes: Int) async {
        while true {
            let limit = budget.perConnection
            let room = state.withLockedValue { s in s.closed || s.queued == 0 || s.queued + bytes <= limit }
            if room || Task.isCancelled { return }
            await waitForRelease()
        }
    }

    private func add(_ bytes: Int, to s: inout State) {
        guard bytes > 0 else { return }
        if s.queued == 0 { budget.startHolding() }
        s.queued += bytes
    }

    /// `bytes` were written to the socket, or their write failed.
    func release(_ bytes: Int) {
        let woken = state.withLockedValue { s -> [CheckedContinuation<Void, Never>] in
            guard !s.closed, s.queued > 0 else { return [] }
            s.queued = max(0, s.queued - bytes)
            if s.queued == 0 { budget.stopHolding() }
            return s.waiters.removeAll()
        }
        for waiter in woken { waiter.resume() }
    }

    /// The connection has ended: whatever it still counts is given back and nobody waits.
    func close() {
        let woken = state.withLockedValue { s -> [CheckedContinuation<Void, Never>] in
            guard !s.closed else { return [] }
            s.closed = true
            if s.queued > 0 { budget.stopHolding() }
            s.queued = 0
            return s.waiters.removeAll()
        }
        for waiter in woken { waiter.resume() }
    }

    /// Waits for the next release (or the close, or the task's cancellation).
    private func waitForRelease() async {
        // Nothing queued (released meanwhile), closed or cancelled: do not wait.
        await WaitQueue.wait(in: state, queue: \.waiters) { s, cancelled in s.closed || s.queued == 0 || cancelled }
    }
}

/// Sits between the connection's async channel handler and the socket: every write that passes
/// is uncounted from the connection's `OutputGate` once its promise completes (the socket took
/// the bytes, or the write failed because the connection closed).
final class WrittenBytesCounter: ChannelOutboundHandler, Sendable {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let gate: OutputGate

    init(gate: OutputGate) {
        self.gate = gate
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data).readableBytes
        let promise = promise ?? context.eventLoop.makePromise()
        let gate = self.gate
        promise.futureResult.whenComplete { _ in gate.release(bytes) }
        context.write(data, promise: promise)
    }
}
