import FerryProtocol
import FerryTestSupport
import NIOCore
import XCTest

/// `ReplyFrameSplitter` must yield exactly the frames `ReplyFrameDecoder` yields on the whole
/// stream, however the stream is cut into reads, and reject what the decoder rejects.
final class ReplyFrameSplitterTests: XCTestCase {
    private typealias Frame = ComparableReplyFrame
    private func frame(_ f: ReplyFrame) -> Frame { Frame(f) }

    /// A reply stream: status lines, chunks of every size class (including ones larger than
    /// the reads), LIST-style lines, END trailers.
    private func transcript(_ rng: inout SplitMix64, sizes: [Int] = [1, 2, 17, 4096, 65_536, 262_144, 300_001]) -> [UInt8] {
        var out: [UInt8] = []
        for i in 0..<40 {
            out += Array("OK \(i) 1700000000.000000000 -\n".utf8)
            for _ in 0..<Int(rng.next() % 3) {
                let size = sizes[Int(rng.next() % UInt64(sizes.count))]
                let payload = (0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                // Payload bytes may contain LF and "CHUNK": they must never be taken for lines.
                out += Array("CHUNK \(i) \(size) \(size) s 0000abcd\n".utf8) + payload
            }
            out += Array("END \(String(repeating: "ab", count: 32))\n".utf8)
        }
        return out
    }

    private func reference(_ bytes: [UInt8]) throws -> [Frame] {
        var d = ReplyFrameDecoder()
        var buf = ByteBuffer(bytes: bytes)
        var out: [Frame] = []
        while let f = try d.nextFrame(&buf) { out.append(frame(f)) }
        return out
    }

    private func split(_ bytes: [UInt8], cuts: [Int]) throws -> (frames: [Frame], partial: Bool) {
        var s = ReplyFrameSplitter()
        var out: [Frame] = []
        var start = 0
        for end in cuts.map({ min($0, bytes.count) }) + [bytes.count] where end > start {
            out += try s.feed(ByteBuffer(bytes: bytes[start..<end]), allocator: ByteBufferAllocator()).map(frame)
            start = end
        }
        return (out, s.hasPartialFrame)
    }

    func testTinyReadsGiveTheSameFramesAsTheDecoder() throws {
        var rng = SplitMix64(seed: 7)
        let bytes = transcript(&rng, sizes: [1, 2, 17, 300, 4096])
        let expected = try reference(bytes)
        for readSize in [1, 2, 3, 7, 64] {
            let cuts = Array(stride(from: readSize, to: bytes.count, by: readSize))
            let (frames, partial) = try split(bytes, cuts: cuts)
            XCTAssertEqual(frames, expected, "reads of \(readSize) bytes")
            XCTAssertFalse(partial)
        }
    }

    func testAnyCutGivesTheSameFramesAsTheDecoder() throws {
        var rng = SplitMix64(seed: 42)
        let bytes = transcript(&rng)
        let expected = try reference(bytes)
        XCTAssertGreaterThan(expected.count, 100)
        for readSize in [1000, 4095, 65_536, 100_000, 262_144, 1 << 20, bytes.count] {
            let cuts = Array(stride(from: readSize, to: bytes.count, by: readSize))
            let (frames, partial) = try split(bytes, cuts: cuts)
            XCTAssertEqual(frames, expected, "reads of \(readSize) bytes")
            XCTAssertFalse(partial)
        }
        for round in 0..<20 {
            var cuts: [Int] = []
            var at = 0
            while at < bytes.count {
                at += 1 + Int(rng.next() % UInt64(round % 2 == 0 ? 3_000 : 400_000))
                cuts.append(at)
            }
            let (frames, partial) = try split(bytes, cuts: cuts)
            XCTAssertEqual(frames, expected, "random cuts, round \(round)")
            XCTAssertFalse(partial)
        }
    }

    func testACutStreamLeavesAPartialFrame() throws {
        let bytes = Array("OK 1\nCHUNK 0 10 10 s 0000abcd\nhello".utf8)
        let (frames, partial) = try split(bytes, cuts: [3, 20])
        XCTAssertEqual(frames, [.line("OK 1")])
        XCTAssertTrue(partial)
    }

    /// Whether `part`'s bytes lie in the memory of `whole` (a slice of it, not a copy).
    private static func lies(_ part: ByteBuffer, inside whole: ByteBuffer) -> Bool {
        whole.withUnsafeReadableBytes { w in part.withUnsafeReadableBytes { p in
            guard let start = p.baseAddress, let base = w.baseAddress else { return false }
            return start >= base && start < base + w.count
        } }
    }

    func testAPayloadInsideOneReadIsASliceOfIt() throws {
        var s = ReplyFrameSplitter()
        let payload = [UInt8](repeating: 7, count: 100_000)
        let read = ByteBuffer(bytes: Array("CHUNK 0 100000 100000 s 0000abcd\n".utf8) + payload + Array("END x\n".utf8))
        let frames = try s.feed(read, allocator: ByteBufferAllocator())
        guard case .chunk(_, let slice)? = frames.first else { return XCTFail("no chunk: \(frames)") }
        XCTAssertTrue(Self.lies(slice, inside: read), "the payload must not be copied")
    }

    func testACopyingSplitterKeepsNoSliceOfItsInputAndGivesTheSameFrames() throws {
        var s = ReplyFrameSplitter(copiesPayloads: true)
        let payload = [UInt8](repeating: 7, count: 100_000)
        let read = ByteBuffer(bytes: Array("CHUNK 0 100000 100000 s 0000abcd\n".utf8) + payload + Array("END x\n".utf8))
        let frames = try s.feed(read, allocator: ByteBufferAllocator())
        guard case .chunk(_, let copy)? = frames.first else { return XCTFail("no chunk: \(frames)") }
        XCTAssertFalse(Self.lies(copy, inside: read), "swift-nio-ssl writes its next plaintext into this buffer")
        XCTAssertEqual(copy.readableBytesView.elementsEqual(payload), true)
        // Every cut of a mixed transcript still gives the decoder's frames.
        var rng = SplitMix64(seed: 15)
        let bytes = transcript(&rng)
        var copying = ReplyFrameSplitter(copiesPayloads: true)
        var out: [Frame] = []
        var start = 0
        while start < bytes.count {
            let end = min(bytes.count, start + 1 + Int(rng.next() % 200_000))
            out += try copying.feed(ByteBuffer(bytes: bytes[start..<end]), allocator: ByteBufferAllocator()).map(frame)
            start = end
        }
        XCTAssertEqual(out, try reference(bytes))
    }

    func testLimitsStillHold() {
        // A line longer than the limit, arriving in small reads with no LF.
        var s = ReplyFrameSplitter(maxLine: 100)
        XCTAssertThrowsError(try {
            for _ in 0..<10 { _ = try s.feed(ByteBuffer(bytes: [UInt8](repeating: 0x41, count: 30)), allocator: ByteBufferAllocator()) }
        }()) { XCTAssertTrue($0 is ReplyFramingError, "\($0)") }
        // A chunk header announcing more than the protocol allows is refused before any payload.
        var t = ReplyFrameSplitter()
        XCTAssertThrowsError(try t.feed(ByteBuffer(string: "CHUNK 0 99999999999 99999999999 s 0000abcd\n"), allocator: ByteBufferAllocator()))
        // Not UTF-8.
        var u = ReplyFrameSplitter()
        XCTAssertThrowsError(try u.feed(ByteBuffer(bytes: [0x4F, 0x4B, 0xFF, 0x0A]), allocator: ByteBufferAllocator()))
    }
}
