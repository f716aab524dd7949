@testable import FerryClient
import FerryProtocol
import NIOCore
import NIOEmbedded
import XCTest

/// The client's inbound handler (`ReplyStreamHandler`) in an `EmbeddedChannel`: bytes in, cut
/// every possible way, reply frames out; framing errors; and the read timeout, driven by the
/// embedded loop's clock.
final class ReplyStreamHandlerTests: XCTestCase {
    private let chunkPayload: [UInt8] = Array("line one\nCHUNK 0 3 3 s 00000000\nEND x\n".utf8)

    /// A greeting, a GET reply with one stored chunk whose payload holds LFs and a fake header,
    /// and its trailer.
    private var transcript: [UInt8] {
        let header = ChunkHeader(offset: 0, rawLength: chunkPayload.count, wireLength: chunkPayload.count,
                                 codec: .stored, crc32: 0x1234_abcd)
        return Array("FERRY 1 name=srv id=00\nOK 38 1700000000.000000000 -\n\(header.line)\n".utf8)
            + chunkPayload + Array("END \(String(repeating: "ab", count: 32))\n".utf8)
    }

    private var expected: [String] {
        let header = ChunkHeader(offset: 0, rawLength: chunkPayload.count, wireLength: chunkPayload.count,
                                 codec: .stored, crc32: 0x1234_abcd)
        return ["line FERRY 1 name=srv id=00", "line OK 38 1700000000.000000000 -",
                "chunk \(header.line) \(chunkPayload)", "line END \(String(repeating: "ab", count: 32))"]
    }

    private func describe(_ frame: ReplyFrame) -> String {
        switch frame {
        case .line(let text): return "line \(text)"
        case .chunk(let header, let wire): return "chunk \(header.line) \(Array(wire.readableBytesView))"
        }
    }

    private struct Pipe {
        let channel: EmbeddedChannel
        let bytes = ByteCounter()
        let frames = ByteCounter()
    }

    private func pipe(timeout: TimeAmount = .seconds(10)) throws -> Pipe {
        let channel = EmbeddedChannel()
        let pipe = Pipe(channel: channel)
        try channel.pipeline.syncOperations.addHandler(
            ReplyStreamHandler(policy: WaitPolicy(timeout: timeout), bytes: pipe.bytes, frames: pipe.frames, tls: false))
        return pipe
    }

    /// Feeds `bytes` in pieces ending at `cuts` and returns the frames that came out.
    private func frames(_ bytes: [UInt8], cuts: [Int], through pipe: Pipe) throws -> [String] {
        var out: [String] = []
        var start = 0
        for end in cuts + [bytes.count] where end > start {
            try pipe.channel.writeInbound(ByteBuffer(bytes: bytes[start..<end]))
            while let frame = try pipe.channel.readInbound(as: ReplyFrame.self) { out.append(describe(frame)) }
            start = end
        }
        return out
    }

    func testOneByteAtATime() throws {
        let p = try pipe()
        let bytes = transcript
        XCTAssertEqual(try frames(bytes, cuts: Array(1..<bytes.count), through: p), expected)
        XCTAssertEqual(p.bytes.count, Int64(bytes.count), "every wire byte is counted")
        XCTAssertEqual(p.frames.count, 4)
        XCTAssertTrue(try p.channel.finish().isClean)
    }

    func testEveryCutIntoTwoReads() throws {
        let bytes = transcript
        for cut in 0...bytes.count {
            let p = try pipe()
            XCTAssertEqual(try frames(bytes, cuts: [cut], through: p), expected, "cut at \(cut)")
            XCTAssertTrue(try p.channel.finish().isClean, "cut at \(cut)")
        }
    }

    func testEveryCutIntoThreeReads() throws {
        let bytes = transcript
        for first in stride(from: 0, through: bytes.count, by: 11) {
            for second in first...bytes.count {
                let p = try pipe()
                XCTAssertEqual(try frames(bytes, cuts: [first, second], through: p), expected, "cuts at \(first), \(second)")
            }
        }
    }

    func testAFramingErrorIsReportedOnceAndLaterBytesAreIgnored() throws {
        let p = try pipe()
        XCTAssertThrowsError(try p.channel.writeInbound(ByteBuffer(string: "CHUNK 0 10 -5 s 00000000\n"))) { error in
            XCTAssertTrue(error is ReplyFramingError, "\(error)")
        }
        XCTAssertNoThrow(try p.channel.writeInbound(ByteBuffer(string: "OK fine\n")), "nothing more after the error")
        XCTAssertNil(try p.channel.readInbound(as: ReplyFrame.self))
    }

    func testTheFramesBeforeAFramingErrorInTheSameReadArePassedOn() throws {
        let p = try pipe()
        XCTAssertThrowsError(try p.channel.writeInbound(ByteBuffer(string: "OK 1\nERR 404 gone\nCHUNK 0 10 -5 s 00000000\nOK 2\n")))
        XCTAssertEqual(try p.channel.readInbound(as: ReplyFrame.self).map(describe), "line OK 1")
        XCTAssertEqual(try p.channel.readInbound(as: ReplyFrame.self).map(describe), "line ERR 404 gone")
        XCTAssertNil(try p.channel.readInbound(as: ReplyFrame.self), "nothing after the error")
        XCTAssertEqual(p.frames.count, 2)
    }

    func testALineLongerThanTheLimitIsRefusedBeforeItEnds() throws {
        let p = try pipe()
        let long = ByteBuffer(repeating: UInt8(ascii: "a"), count: FerryLimits.maxReplyLine + 1)
        XCTAssertThrowsError(try p.channel.writeInbound(long)) { error in
            XCTAssertTrue(error is ReplyFramingError, "\(error)")
        }
    }

    // MARK: - The read timeout

    /// Connects the channel: the wait for the greeting starts.
    private func connected(timeout: TimeAmount) throws -> Pipe {
        let p = try pipe(timeout: timeout)
        try p.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 7446)).wait()
        return p
    }

    /// The error the handler reported, if any (reading it clears it).
    private func timeoutError(_ p: Pipe) -> String? {
        do { try p.channel.throwIfErrorCaught() } catch let e as ReplyTimeout { return e.description } catch { return "\(error)" }
        return nil
    }

    func testSilenceWhileWaitingForTheGreetingTimesOut() throws {
        let p = try connected(timeout: .seconds(2))
        p.channel.embeddedEventLoop.advanceTime(by: .milliseconds(1999))
        XCTAssertNil(timeoutError(p))
        XCTAssertTrue(p.channel.isActive)
        p.channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        XCTAssertEqual(timeoutError(p), "sent nothing for 2 s while ferry waited for a reply")
        XCTAssertFalse(p.channel.isActive, "the channel is closed")
    }

    func testATricklingLineMustStillBeCompleteWithinTheTimeout() throws {
        let p = try connected(timeout: .seconds(2))
        for _ in 0..<3 {
            p.channel.embeddedEventLoop.advanceTime(by: .milliseconds(600))
            try p.channel.writeInbound(ByteBuffer(string: "FE"))
        }
        XCTAssertNil(timeoutError(p), "bytes keep coming")
        p.channel.embeddedEventLoop.advanceTime(by: .milliseconds(200))
        XCTAssertEqual(timeoutError(p), "did not complete a reply line within 2 s (6 bytes trickled in)")
    }

    func testNothingIsTimedBetweenWaits() throws {
        let p = try connected(timeout: .seconds(1))
        try p.channel.writeInbound(ByteBuffer(string: "FERRY 1 name=srv id=00\n"))
        XCTAssertNotNil(try p.channel.readInbound(as: ReplyFrame.self))
        // The client is busy with its own work: no wait, no timeout.
        p.channel.embeddedEventLoop.advanceTime(by: .seconds(3600))
        XCTAssertNil(timeoutError(p))
        XCTAssertTrue(p.channel.isActive)
        // It asks for the next frame: now the clock runs.
        p.channel.pipeline.triggerUserOutboundEvent(ReplyStreamHandler.BeginWait(taken: 1), promise: nil)
        p.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        XCTAssertEqual(timeoutError(p), "sent nothing for 1 s while ferry waited for a reply")
    }

    func testAChunkPayloadGetsTimeForItsSizeButMayNotPause() throws {
        let p = try connected(timeout: .seconds(1))
        try p.channel.writeInbound(ByteBuffer(string: "FERRY 1 name=srv id=00\n"))
        _ = try p.channel.readInbound(as: ReplyFrame.self)
        p.channel.pipeline.triggerUserOutboundEvent(ReplyStreamHandler.BeginWait(taken: 1), promise: nil)
        // 64 KiB: 1 s plus 8 s at the minimum payload rate.
        let size = 64 * 1024
        try p.channel.writeInbound(ByteBuffer(string: "CHUNK 0 \(size) \(size) s 00000000\n"))
        var sent = 0
        for _ in 0..<8 {
            p.channel.embeddedEventLoop.advanceTime(by: .milliseconds(900))
            try p.channel.writeInbound(ByteBuffer(repeating: 0x41, count: 4096))
            sent += 4096
        }
        XCTAssertNil(timeoutError(p), "7.2 s into a payload allowed 9 s, never silent for 1 s")
        p.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        XCTAssertEqual(timeoutError(p), "stopped sending in the middle of a \(size)-byte chunk (nothing for 1 s)")
        XCTAssertEqual(p.bytes.count, Int64("FERRY 1 name=srv id=00\n".utf8.count + "CHUNK 0 \(size) \(size) s 00000000\n".utf8.count + sent))
    }

    func testASlowPayloadTimesOutAtItsDeadline() throws {
        let p = try connected(timeout: .seconds(1))
        let size = 16 * 1024  // 1 s + 2 s
        try p.channel.writeInbound(ByteBuffer(string: "CHUNK 0 \(size) \(size) s 00000000\n"))
        var error: String?
        var elapsed = 0
        while error == nil && elapsed < 5000 {
            p.channel.embeddedEventLoop.advanceTime(by: .milliseconds(500))
            elapsed += 500
            error = timeoutError(p)
            if error == nil { try p.channel.writeInbound(ByteBuffer(repeating: 0x41, count: 100)) }
        }
        XCTAssertEqual(error, "sent a \(size)-byte chunk too slowly (not complete within 3 s)")
        XCTAssertEqual(elapsed, 3000, "bytes kept coming: the payload's deadline, not silence, ended it")
    }
}
