@testable import FerryServer
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import XCTest

/// The output budget and a connection's gate: what a connection may queue for its socket, and
/// the handler that uncounts what the socket took.
final class OutputGateTests: XCTestCase {
    func testTheBudgetIsSharedAmongTheConnectionsHoldingOutput() async {
        let budget = OutputBudget(total: 1000, perConnectionMaximum: 600)
        XCTAssertEqual(budget.perConnection, 600, "one connection alone gets the maximum")
        let a = OutputGate(budget: budget), b = OutputGate(budget: budget), c = OutputGate(budget: budget)
        await a.reserve(10)
        await b.reserve(10)
        XCTAssertEqual(budget.holding, 2)
        XCTAssertEqual(budget.perConnection, 500)
        await c.reserve(10)
        XCTAssertEqual(budget.perConnection, 333)
        a.release(10)
        XCTAssertEqual(budget.holding, 2, "a connection whose output was all written holds nothing")
        c.close()
        XCTAssertEqual(budget.holding, 1, "a closed connection holds nothing")
        b.release(10)
        XCTAssertEqual(budget.holding, 0)
    }

    func testAWriteLargerThanTheShareGoesThroughWhenNothingIsQueued() async {
        let gate = OutputGate(budget: OutputBudget(total: 100, perConnectionMaximum: 100))
        await gate.reserve(5000)
        XCTAssertEqual(gate.queued, 5000)
    }

    func testAWriteOverTheShareWaitsForTheSocketToTakeBytes() async throws {
        let gate = OutputGate(budget: OutputBudget(total: 1000, perConnectionMaximum: 1000))
        await gate.reserve(800)
        let admitted = expectation(description: "the second write is let through")
        let waiter = Task {
            await gate.reserve(400)
            admitted.fulfill()
        }
        try await Task.sleep(for: .milliseconds(100))
        XCTAssertEqual(gate.queued, 800, "the second write waited")
        gate.release(300)
        await fulfillment(of: [admitted], timeout: 5)
        XCTAssertEqual(gate.queued, 900)
        await waiter.value
    }

    func testWaitingForRoomReservesNothing() async throws {
        let gate = OutputGate(budget: OutputBudget(total: 1000, perConnectionMaximum: 1000))
        await gate.reserve(700)
        let roomy = expectation(description: "room for 400 more")
        let waiter = Task {
            await gate.waitForRoom(400)
            roomy.fulfill()
        }
        try await Task.sleep(for: .milliseconds(100))
        gate.release(700)
        await fulfillment(of: [roomy], timeout: 5)
        XCTAssertEqual(gate.queued, 0)
        await waiter.value
    }

    func testClosingWakesEveryWaiter() async throws {
        let gate = OutputGate(budget: OutputBudget(total: 100, perConnectionMaximum: 100))
        await gate.reserve(100)
        let woken = expectation(description: "woken by the close")
        woken.expectedFulfillmentCount = 2
        let waiters = [Task { await gate.reserve(50); woken.fulfill() }, Task { await gate.waitForRoom(50); woken.fulfill() }]
        try await Task.sleep(for: .milliseconds(100))
        gate.close()
        await fulfillment(of: [woken], timeout: 5)
        for waiter in waiters { await waiter.value }
        XCTAssertEqual(gate.queued, 0)
    }

    func testACancelledWaiterStopsWaiting() async throws {
        let gate = OutputGate(budget: OutputBudget(total: 100, perConnectionMaximum: 100))
        await gate.reserve(100)
        let waiter = Task { await gate.waitForRoom(50) }
        try await Task.sleep(for: .milliseconds(100))
        waiter.cancel()
        await waiter.value
        XCTAssertEqual(gate.queued, 100)
    }

    func testTheCounterUncountsWritesOnceTheSocketTookThem() throws {
        let gate = OutputGate(budget: OutputBudget())
        let channel = EmbeddedChannel(handler: WrittenBytesCounter(gate: gate))
        let (header, payload) = (ByteBuffer(string: "C 0 10 s 00000000\n"), ByteBuffer(repeating: 7, count: 10))
        let bytes = header.readableBytes + payload.readableBytes
        // What `ReplyWriter` counts before it hands the buffers over.
        let reserved = expectation(description: "reserved")
        Task {
            await gate.reserve(bytes)
            reserved.fulfill()
        }
        wait(for: [reserved], timeout: 5)
        channel.write(header, promise: nil)
        channel.write(payload, promise: nil)
        XCTAssertEqual(gate.queued, bytes, "written but not flushed: still queued")
        channel.flush()
        XCTAssertEqual(gate.queued, 0)
        XCTAssertEqual(try channel.readOutbound(as: ByteBuffer.self), header)
        XCTAssertEqual(try channel.readOutbound(as: ByteBuffer.self), payload)
        XCTAssertTrue(try channel.finish().isClean)
    }

    func testAFailedWriteIsUncountedToo() async throws {
        /// Fails every write, as the socket does once the peer has gone.
        final class BrokenSocket: ChannelOutboundHandler, Sendable {
            typealias OutboundIn = ByteBuffer
            func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
                promise?.fail(ChannelError.ioOnClosedChannel)
            }
        }
        let gate = OutputGate(budget: OutputBudget())
        let channel = EmbeddedChannel(handlers: [BrokenSocket(), WrittenBytesCounter(gate: gate)])
        await gate.reserve(5)
        channel.writeAndFlush(ByteBuffer(string: "hello"), promise: nil)
        XCTAssertEqual(gate.queued, 0, "a write that failed (the peer went) no longer counts")
    }
}

/// Turns for tree walks: at most `limit` at once, the rest in order.
final class WalkTurnsTests: XCTestCase {
    func testAtMostTheLimitRunAtOnceAndTheRestGoInOrder() async throws {
        let turns = WalkTurns(limit: 2)
        let log = NIOLockedValueBox<[Int]>([])
        let peak = NIOLockedValueBox(0)
        let release = NIOLockedValueBox(false)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<6 {
                group.addTask {
                    try await turns.run {
                        log.withLockedValue { $0.append(i) }
                        peak.withLockedValue { $0 = max($0, turns.running) }
                        while !release.withLockedValue({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
                    }
                }
                // Each task queues before the next is started, so the order is known.
                try await Task.sleep(for: .milliseconds(20))
            }
            XCTAssertEqual(turns.running, 2)
            XCTAssertEqual(log.withLockedValue { $0 }, [0, 1], "two run, four wait")
            release.withLockedValue { $0 = true }
            try await group.waitForAll()
        }
        XCTAssertEqual(peak.withLockedValue { $0 }, 2)
        XCTAssertEqual(log.withLockedValue { $0 }, [0, 1, 2, 3, 4, 5])
        XCTAssertEqual(turns.running, 0)
    }

    func testACancelledWaiterStopsWaiting() async throws {
        let turns = WalkTurns(limit: 1)
        let hold = Task { try await turns.run { try await Task.sleep(for: .seconds(30)) } }
        try await Task.sleep(for: .milliseconds(50))
        let waiter = Task { try await turns.run { Task.isCancelled } }
        try await Task.sleep(for: .milliseconds(50))
        waiter.cancel()
        let ranCancelled = try await waiter.value
        XCTAssertTrue(ranCancelled, "the cancelled waiter ran at once instead of waiting 30 s")
        hold.cancel()
        _ = try? await hold.value
        XCTAssertEqual(turns.running, 0)
    }
}
