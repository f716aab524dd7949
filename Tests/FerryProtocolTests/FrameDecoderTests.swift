import FerryProtocol
import NIOCore
import XCTest

final class RequestLineDecoderTests: XCTestCase {
    private func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }
    private func buffer(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    /// Every frame currently decodable from `buf`.
    private func drain(_ decoder: inout RequestLineDecoder, _ buf: inout ByteBuffer) -> [RequestFrame] {
        var out: [RequestFrame] = []
        while let f = decoder.nextFrame(&buf) { out.append(f) }
        return out
    }

    func testPipelinedLines() {
        var d = RequestLineDecoder()
        var buf = buffer("LIST .\nSTAT a\r\nGET c 0 *\n")
        XCTAssertEqual(drain(&d, &buf), [.line("LIST ."), .line("STAT a"), .line("GET c 0 *")])
        XCTAssertEqual(buf.readableBytes, 0)
    }

    func testCRLFAndEmptyLines() {
        var d = RequestLineDecoder()
        var buf = buffer("\n\r\nQUIT\r\na\rb\n")
        XCTAssertEqual(drain(&d, &buf), [.line(""), .line(""), .line("QUIT"), .line("a\rb")])
        // The lone CR in the middle survives framing and is refused by the parser.
        XCTAssertThrowsError(try Request.parse("a\rb"))
    }

    func testLineSplitAcrossReads() {
        var d = RequestLineDecoder()
        var buf = buffer("LI")
        XCTAssertNil(d.nextFrame(&buf))
        XCTAssertEqual(buf.readableBytes, 2, "a partial line stays buffered")
        buf.writeString("ST caf%C3%A9")
        XCTAssertNil(d.nextFrame(&buf))
        buf.writeString(".txt\r")
        XCTAssertNil(d.nextFrame(&buf))
        buf.writeString("\nQU")
        XCTAssertEqual(d.nextFrame(&buf), .line("LIST caf%C3%A9.txt"))
        XCTAssertNil(d.nextFrame(&buf))
        buf.writeString("IT\n")
        XCTAssertEqual(d.nextFrame(&buf), .line("QUIT"))
    }

    func testLimitIsIncludingTheLF() {
        let limit = FerryLimits.maxRequestLine
        XCTAssertEqual(limit, 16384)
        // limit - 1 bytes + LF: accepted.
        var d = RequestLineDecoder()
        let ok = "LIST " + String(repeating: "a", count: limit - 1 - 5)
        var buf = buffer(ok + "\n")
        XCTAssertEqual(d.nextFrame(&buf), .line(ok))
        // With CRLF the CR counts too.
        let okCR = String(repeating: "b", count: limit - 2)
        buf = buffer(okCR + "\r\n")
        XCTAssertEqual(d.nextFrame(&buf), .line(okCR))
        buf = buffer(String(repeating: "b", count: limit - 1) + "\r\n")
        XCTAssertEqual(d.nextFrame(&buf), .tooLong)
    }

    func testTooLongLineThenNextLineStillDecodes() {
        var d = RequestLineDecoder()
        var buf = buffer(String(repeating: "x", count: FerryLimits.maxRequestLine) + "\nQUIT\n")
        XCTAssertEqual(d.nextFrame(&buf), .tooLong)
        XCTAssertEqual(d.nextFrame(&buf), .line("QUIT"))
        XCTAssertNil(d.nextFrame(&buf))
        // The decoder is back to normal afterwards.
        buf.writeString("LIST .\n")
        XCTAssertEqual(d.nextFrame(&buf), .line("LIST ."))
    }

    func testLongLineArrivingInPiecesIsDiscardedWithBoundedMemory() {
        var d = RequestLineDecoder()
        var buf = ByteBufferAllocator().buffer(capacity: 0)
        var frames: [RequestFrame] = []
        // A megabyte without a newline, 1000 bytes at a time.
        for _ in 0..<1000 {
            buf.writeBytes([UInt8](repeating: 0x41, count: 1000))
            frames += drain(&d, &buf)
            XCTAssertLessThan(buf.readableBytes, FerryLimits.maxRequestLine + 1000, "an endless line must not be buffered")
        }
        XCTAssertEqual(frames, [], "nothing is reported until the LF arrives")
        buf.writeString("tail of the long line\nSTAT a\n")
        XCTAssertEqual(drain(&d, &buf), [.tooLong, .line("STAT a")], "exactly one .tooLong per long line")
        XCTAssertEqual(buf.readableBytes, 0)
    }

    func testLimitReachedExactlyWithoutLF() {
        var d = RequestLineDecoder()
        let limit = FerryLimits.maxRequestLine
        var buf = buffer(String(repeating: "y", count: limit - 1))
        XCTAssertNil(d.nextFrame(&buf))
        XCTAssertEqual(buf.readableBytes, limit - 1, "a line that may still fit stays buffered")
        buf.writeString("\n")
        XCTAssertEqual(d.nextFrame(&buf), .line(String(repeating: "y", count: limit - 1)))

        buf = buffer(String(repeating: "y", count: limit))
        XCTAssertNil(d.nextFrame(&buf))
        buf.writeString("\nQUIT\n")
        XCTAssertEqual(drain(&d, &buf), [.tooLong, .line("QUIT")])
    }

    func testNotUTF8LineIsReportedAndSkipped() {
        for bad: [UInt8] in [[0xFF], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xE2, 0x82], [0xF8, 0x88, 0x80, 0x80, 0x80]] {
            var d = RequestLineDecoder()
            var buf = buffer(Array("LIST a".utf8) + bad + Array("b\nQUIT\n".utf8))
            XCTAssertEqual(drain(&d, &buf), [.notUTF8, .line("QUIT")], "\(bad)")
        }
        var d = RequestLineDecoder()
        var buf = buffer("LIST café\n")
        XCTAssertEqual(d.nextFrame(&buf), .line("LIST café"), "valid UTF-8 passes the framing layer")
    }

    func testNULSurvivesFramingAndIsRefusedByTheParser() {
        var d = RequestLineDecoder()
        var buf = buffer([0x4C, 0x49, 0x53, 0x54, 0x20, 0x61, 0x00, 0x62, 0x0A])
        guard case .line(let line)? = d.nextFrame(&buf) else { return XCTFail("expected a line") }
        XCTAssertEqual(Array(line.utf8), [0x4C, 0x49, 0x53, 0x54, 0x20, 0x61, 0x00, 0x62])
        XCTAssertThrowsError(try Request.parse(Substring(line)))
    }

    func testCustomLimit() {
        var d = RequestLineDecoder(maxLine: 8)
        var buf = buffer("1234567\n12345678\nabc\n")
        XCTAssertEqual(drain(&d, &buf), [.line("1234567"), .tooLong, .line("abc")])
    }

    func testEveryRequestSurvivesFramingAndParsing() throws {
        let requests: [Request] = [
            .list(try RemotePath(validating: "a b\nc")), .stat(try RemotePath(validating: [0xFF])),
            .get(.root, offset: 1, length: 2, validator: nil), .quit,
        ]
        var buf = ByteBuffer(string: requests.map { $0.line + "\r\n" }.joined())
        var d = RequestLineDecoder()
        var parsed: [Request] = []
        while let f = d.nextFrame(&buf) {
            guard case .line(let l) = f else { return XCTFail("\(f)") }
            parsed.append(try Request.parse(Substring(l)))
        }
        XCTAssertEqual(parsed, requests)
    }
}

final class ReplyFrameDecoderTests: XCTestCase {
    private typealias Frame = ComparableReplyFrame
    private func frame(_ f: ReplyFrame) -> Frame { Frame(f) }

    private func drain(_ d: inout ReplyFrameDecoder, _ buf: inout ByteBuffer) throws -> [Frame] {
        var out: [Frame] = []
        while let f = try d.nextFrame(&buf) { out.append(frame(f)) }
        return out
    }

    private func assertFramingError(_ d: inout ReplyFrameDecoder, _ buf: inout ByteBuffer,
                                    file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try drain(&d, &buf), file: file, line: line) { error in
            XCTAssertTrue(error is ReplyFramingError, "\(error)", file: file, line: line)
        }
    }

    private let helloHeader = ChunkHeader(offset: 0, rawLength: 11, wireLength: 11, codec: .stored, crc32: 0x0D4A_1185)
    private let sha = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"

    private var fetchTranscript: [UInt8] {
        Array("OK 11 1700000000.000000000 -\nCHUNK 0 11 11 s 0d4a1185\nhello world".utf8) + Array("END \(sha)\n".utf8)
    }

    func testLinesAndChunks() throws {
        var d = ReplyFrameDecoder()
        var buf = ByteBuffer(bytes: fetchTranscript)
        XCTAssertEqual(try drain(&d, &buf), [
            .line("OK 11 1700000000.000000000 -"),
            .chunk(helloHeader, Array("hello world".utf8)),
            .line("END \(sha)"),
        ])
        XCTAssertEqual(buf.readableBytes, 0)
    }

    func testByteAtATime() throws {
        var d = ReplyFrameDecoder()
        var buf = ByteBufferAllocator().buffer(capacity: 0)
        var frames: [Frame] = []
        for b in fetchTranscript {
            buf.writeInteger(b)
            frames += try drain(&d, &buf)
        }
        XCTAssertEqual(frames.count, 3)
        XCTAssertEqual(frames[1], .chunk(helloHeader, Array("hello world".utf8)))
    }

    func testPayloadIsOpaque() throws {
        // LF, CR, NUL, invalid UTF-8 and text that looks like a header: all plain payload bytes.
        let payload: [UInt8] = [0x0A, 0x0D, 0x00, 0xFF, 0xC0] + Array("\nCHUNK 0 1 1 s 00000000\nERR 500 x\n".utf8)
        let header = ChunkHeader(offset: 10, rawLength: payload.count, wireLength: payload.count, codec: .stored, crc32: 7)
        var d = ReplyFrameDecoder()
        var buf = ByteBuffer(string: "\(header.line)\r\n")
        buf.writeBytes(payload)
        buf.writeString("ERR 500 read error\r\n")
        XCTAssertEqual(try drain(&d, &buf), [.chunk(header, payload), .line("ERR 500 read error")])
    }

    func testBackToBackChunks() throws {
        let h1 = ChunkHeader(offset: 0, rawLength: 3, wireLength: 3, codec: .stored, crc32: 1)
        let h2 = ChunkHeader(offset: 3, rawLength: 100, wireLength: 2, codec: .zlib, crc32: 2)
        var d = ReplyFrameDecoder()
        var buf = ByteBuffer(string: "\(h1.line)\nabc\(h2.line)\nxy")
        XCTAssertEqual(try drain(&d, &buf), [.chunk(h1, Array("abc".utf8)), .chunk(h2, Array("xy".utf8))])
    }

    func testPartialPayloadWaitsWithoutConsumingIt() throws {
        var d = ReplyFrameDecoder()
        var buf = ByteBuffer(string: "CHUNK 0 11 11 s 0d4a1185\nhello")
        XCTAssertNil(try d.nextFrame(&buf))
        XCTAssertEqual(buf.readableBytes, 5, "the header is consumed, the partial payload is not")
        XCTAssertNil(try d.nextFrame(&buf))
        buf.writeString(" world")
        XCTAssertEqual(try d.nextFrame(&buf).map(frame), .chunk(helloHeader, Array("hello world".utf8)))
    }

    func testBadChunkHeaderFailsBeforeAnyPayloadIsBuffered() {
        let max = FerryLimits.maxChunkRaw
        for header in [
            "CHUNK 0 \(max + 1) \(max + 1) s 00000000",  // raw over 4 MiB
            "CHUNK 0 9223372036854775807 9223372036854775807 s 00000000",
            "CHUNK 0 100 1125 z 00000000",  // wire > raw + 1024
            "CHUNK 0 100 99 s 00000000",  // stored with wire != raw
            "CHUNK 0 0 0 s 00000000",
            "CHUNK 0 1 1 q 00000000",
            "CHUNK x",
            "CHUNK ",
        ] {
            // Only the header line: no payload has arrived, and none must be waited for.
            var d = ReplyFrameDecoder()
            var buf = ByteBuffer(string: header + "\n")
            assertFramingError(&d, &buf)
        }
    }

    func testLargestChunk() throws {
        let max = FerryLimits.maxChunkRaw
        let header = ChunkHeader(offset: 0, rawLength: max, wireLength: max, codec: .stored, crc32: 0)
        var d = ReplyFrameDecoder()
        var buf = ByteBuffer(string: header.line + "\n")
        buf.writeBytes([UInt8](repeating: 0x0A, count: max - 1))
        XCTAssertNil(try d.nextFrame(&buf))
        buf.writeBytes([0x0A])
        guard case .chunk(let h, let payload)? = try d.nextFrame(&buf) else { return XCTFail("expected a chunk") }
        XCTAssertEqual(h, header)
        XCTAssertEqual(payload.readableBytes, max)
    }

    func testReplyLineLimit() throws {
        let limit = FerryLimits.maxReplyLine
        XCTAssertEqual(limit, 65_536)
        let fits = "OK " + String(repeating: "a", count: limit - 4)  // + LF = 65536
        var d = ReplyFrameDecoder()
        var buf = ByteBuffer(string: fits + "\n")
        XCTAssertEqual(try drain(&d, &buf), [.line(fits)])

        d = ReplyFrameDecoder()
        buf = ByteBuffer(string: fits + "a\n")
        assertFramingError(&d, &buf)

        // Without any LF: waiting is fine up to the limit, past it the stream is broken.
        d = ReplyFrameDecoder()
        buf = ByteBuffer(string: String(repeating: "b", count: limit))
        XCTAssertNil(try d.nextFrame(&buf))
        buf.writeString("b")
        assertFramingError(&d, &buf)
    }

    func testNonUTF8ReplyLineIsAFramingError() {
        var d = ReplyFrameDecoder()
        var buf = ByteBuffer(bytes: Array("OK ".utf8) + [0xFF, 0xFE, 0x0A])
        assertFramingError(&d, &buf)
    }

    func testCRLFReplyLines() throws {
        var d = ReplyFrameDecoder()
        var buf = ByteBuffer(string: "OK 1\r\nd 0755 0 1700000000.000000000 docs\r\n")
        XCTAssertEqual(try drain(&d, &buf), [.line("OK 1"), .line("d 0755 0 1700000000.000000000 docs")])
    }

    func testCustomLimit() throws {
        var d = ReplyFrameDecoder(maxLine: 8)
        var buf = ByteBuffer(string: "1234567\n")
        XCTAssertEqual(try drain(&d, &buf), [.line("1234567")])
        buf.writeString("12345678\n")
        assertFramingError(&d, &buf)
    }

    func testFramingErrorDescription() {
        XCTAssertEqual(ReplyFramingError("x").description, "the server broke the protocol: x")
    }
}

/// A reply frame with its payload as bytes, so frames compare by value in assertions.
enum ComparableReplyFrame: Equatable {
    case line(String)
    case chunk(ChunkHeader, [UInt8])

    init(_ f: ReplyFrame) {
        switch f {
        case .line(let l): self = .line(l)
        case .chunk(let h, let b): self = .chunk(h, Array(b.readableBytesView))
        }
    }
}
