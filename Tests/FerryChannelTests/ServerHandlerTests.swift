@testable import FerryServer
import FerryProtocol
import Logging
import NIOCore
import NIOEmbedded
import NIOTestUtils
import XCTest

/// The server's inbound handlers in an `EmbeddedChannel`: `IdleCloser` and the request framer.
final class ServerHandlerTests: XCTestCase {
    private let logger = Logger(label: "test")

    private func idleChannel(_ activity: ConnectionActivity) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(IdleCloser(activity: activity, timeout: .seconds(300), logger: logger))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 50_000)).wait()
        return channel
    }

    func testAnIdleConnectionIsToldWhyAndClosed() throws {
        let channel = try idleChannel(ConnectionActivity())
        channel.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.all)
        let line = try channel.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) }
        XCTAssertEqual(line, "ERR 408 idle for more than 300 s; closing the connection\n")
        XCTAssertFalse(channel.isActive)
    }

    func testOtherEventsPassThrough() throws {
        final class Recorder: ChannelInboundHandler, @unchecked Sendable {
            typealias InboundIn = ByteBuffer
            var events: [String] = []
            func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) { events.append("\(event)") }
        }
        let channel = try idleChannel(ConnectionActivity())
        let recorder = Recorder()
        try channel.pipeline.syncOperations.addHandler(recorder)
        channel.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.read)
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        XCTAssertEqual(recorder.events, ["read", "inputClosed"])
        XCTAssertTrue(channel.isActive, "only the all-idle event closes")
        XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self))
    }

    func testABusyConnectionIsLeftAlone() async throws {
        let channel = NIOAsyncTestingChannel()
        let activity = ConnectionActivity()
        try await channel.pipeline.addHandler(IdleCloser(activity: activity, timeout: .seconds(300), logger: logger))
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 50_000))
        try await activity.run {
            // Building a manifest of a huge tree may write nothing for minutes.
            channel.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.all)
            await channel.testingEventLoop.run()
            let written = try await channel.readOutbound(as: ByteBuffer.self)
            XCTAssertNil(written)
            XCTAssertTrue(channel.isActive)
        }
        channel.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.all)
        await channel.testingEventLoop.run()
        let written = try await channel.readOutbound(as: ByteBuffer.self)
        XCTAssertNotNil(written, "idle again once the request is answered")
        XCTAssertFalse(channel.isActive)
    }

    func testRequestLinesInEveryCut() throws {
        // A 24-byte limit keeps the verifier's every-cut runs short.
        try ByteToMessageDecoderVerifier.verifyDecoder(stringInputOutputPairs: [
            ("LIST docs\n", [RequestFrame.line("LIST docs")]),
            ("STAT a\r\nQUIT\n", [.line("STAT a"), .line("QUIT")]),
            ("GET a-rather-long-file-name 0 *\nQUIT\n", [.tooLong, .line("QUIT")]),
            ("LIST \u{FF}\n", [.line("LIST \u{FF}")]),
        ]) {
            RequestLineDecoder(maxLine: 24)
        }
    }

    func testARequestLineThatIsNotUTF8IsNamedSo() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(RequestLineDecoder()))
        try channel.writeInbound(ByteBuffer(bytes: Array("LIST ".utf8) + [0xFF, 0xFE, 0x0A]))
        XCTAssertEqual(try channel.readInbound(as: RequestFrame.self), .notUTF8)
        XCTAssertTrue(try channel.finish().isClean)
    }
}
