import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import NIOCore
import XCTest

final class ChunkCodingTests: XCTestCase {
    private let allocator = ByteBufferAllocator()

    private func encode(_ raw: [UInt8], _ encoder: inout ChunkEncoder, offset: Int64 = 0) -> (ChunkHeader, ByteBuffer) {
        raw.withUnsafeBytes { encoder.encode(raw: $0, offset: offset, allocator: allocator) }
    }

    private func encode(_ raw: [UInt8], _ decision: ChunkDecision, offset: Int64 = 0) -> (ChunkHeader, ByteBuffer) {
        var encoder = ChunkEncoder(decision)
        return encode(raw, &encoder, offset: offset)
    }

    private func decodeError(_ header: ChunkHeader, _ wire: ByteBuffer,
                             file: StaticString = #filePath, line: UInt = #line) -> ChunkError? {
        do {
            let out = try ChunkDecoder.decode(header: header, wire: wire)
            XCTFail("a bad chunk decoded to \(out.count) bytes", file: file, line: line)
            return nil
        } catch {
            return error
        }
    }

    private func bytes(_ buffer: ByteBuffer) -> [UInt8] { Array(buffer.readableBytesView) }

    private func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

    /// The RFC 1950 header: deflate method, 32 KiB window at most, FCHECK makes it a multiple of 31.
    private func assertZlibHeader(_ wire: [UInt8], file: StaticString = #filePath, line: UInt = #line) {
        guard wire.count >= 6 else { return XCTFail("too short for a zlib stream", file: file, line: line) }
        XCTAssertEqual(wire[0] & 0x0F, 8, "CM = deflate", file: file, line: line)
        XCTAssertLessThanOrEqual(wire[0] >> 4, 7, file: file, line: line)
        XCTAssertEqual((Int(wire[0]) << 8 | Int(wire[1])) % 31, 0, file: file, line: line)
        XCTAssertEqual(wire[1] & 0x20, 0, "no preset dictionary", file: file, line: line)
    }

    // MARK: CRC-32

    func testCRC32KnownVectors() {
        XCTAssertEqual(CRC32.checksum(Array("123456789".utf8)), 0xCBF4_3926)
        XCTAssertEqual(CRC32.checksum(Array("hello world".utf8)), 0x0D4A_1185, "the value in PROTOCOL.md's GET transcript")
        XCTAssertEqual(CRC32.checksum(Array("The quick brown fox jumps over the lazy dog".utf8)), 0x414F_A339)
        XCTAssertEqual(CRC32.checksum(Array("a".utf8)), 0xE8B7_BE43)
        XCTAssertEqual(CRC32.checksum([]), 0)
        XCTAssertEqual(CRC32.checksum([UInt8](repeating: 0, count: 32)), 0x190A_55AD)
        XCTAssertEqual(CRC32.checksum([UInt8](repeating: 0xFF, count: 32)), 0xFF6C_AB0B)
        var rng = SplitMix64(seed: 1)
        let data = rng.bytes(1000)
        XCTAssertEqual(data.withUnsafeBytes { CRC32.checksum($0) }, CRC32.checksum(data))
    }

    // MARK: Encoding decisions

    func testStoreAlwaysStores() throws {
        var rng = SplitMix64(seed: 2)
        let raw = rng.text(FerryLimits.defaultChunkSize)
        let (header, wire) = encode(raw, .store, offset: 262_144)
        XCTAssertEqual(header, ChunkHeader(offset: 262_144, rawLength: raw.count, wireLength: raw.count, codec: .stored,
                                           crc32: CRC32.checksum(raw)))
        XCTAssertEqual(bytes(wire), raw)
        XCTAssertEqual(try ChunkDecoder.decode(header: header, wire: wire), raw)
    }

    func testLevelsCompressText() throws {
        var rng = SplitMix64(seed: 3)
        let raw = rng.text(FerryLimits.defaultChunkSize)
        for level: Int32 in [1, 6, 9] {
            let (header, wire) = encode(raw, .compress(.zlib(level)), offset: 5)
            XCTAssertEqual(header.codec, .zlib, "level \(level)")
            XCTAssertEqual(header.rawLength, raw.count)
            XCTAssertEqual(header.wireLength, wire.readableBytes)
            XCTAssertEqual(header.offset, 5)
            XCTAssertEqual(header.crc32, CRC32.checksum(raw))
            XCTAssertLessThan(header.wireLength, raw.count / 2, "word soup compresses well")
            assertZlibHeader(bytes(wire))
            XCTAssertEqual(try ChunkDecoder.decode(header: header, wire: wire), raw)
            XCTAssertEqual(try ChunkHeader.parse(Substring(header.line)), header, "the header passes the receiver's bounds")
        }
    }

    func testRandomDataIsStoredUnderEveryDecision() throws {
        var rng = SplitMix64(seed: 4)
        let raw = rng.bytes(FerryLimits.defaultChunkSize)
        for decision: ChunkDecision in [.store, .compress(.zlib(1)), .compress(.zlib(9)), .sampleThenCompress(.zlib(1))] {
            let (header, wire) = encode(raw, decision)
            XCTAssertEqual(header.codec, .stored, "\(decision)")
            XCTAssertEqual(header.wireLength, raw.count)
            XCTAssertEqual(bytes(wire), raw)
            XCTAssertEqual(try ChunkDecoder.decode(header: header, wire: wire), raw)
        }
    }

    func testThreePercentRule() throws {
        var rng = SplitMix64(seed: 5)
        let size = 64 * 1024
        // 1% zeros + random: zlib saves ~1%, not enough to be worth an inflate.
        let barely = [UInt8](repeating: 0, count: size / 100) + rng.bytes(size - size / 100)
        // 10% zeros + random: zlib saves ~10%.
        let clearly = [UInt8](repeating: 0, count: size / 10) + rng.bytes(size - size / 10)
        for level: Int32 in [1, 9] {
            let (h1, w1) = encode(barely, .compress(.zlib(level)))
            XCTAssertEqual(h1.codec, .stored, "a saving under 3% is not worth it (level \(level))")
            XCTAssertEqual(try ChunkDecoder.decode(header: h1, wire: w1), barely)
            let (h2, w2) = encode(clearly, .compress(.zlib(level)))
            XCTAssertEqual(h2.codec, .zlib, "a saving over 3% is (level \(level))")
            XCTAssertLessThanOrEqual(h2.wireLength, Int(Double(size) * 0.97))
            XCTAssertEqual(try ChunkDecoder.decode(header: h2, wire: w2), clearly)
        }
        // Any compressed chunk saves at least 3%, at every size.
        for count in [1, 2, 10, 33, 34, 100, 1000, 4097] {
            for raw in [rng.text(count), [UInt8](repeating: 0x61, count: count), rng.bytes(count)] {
                let (h, w) = encode(raw, .compress(.zlib(9)))
                if h.codec == .zlib {
                    XCTAssertLessThanOrEqual(Double(h.wireLength), Double(count) * 0.97, "\(count) bytes")
                } else {
                    XCTAssertEqual(h.wireLength, count)
                }
                XCTAssertEqual(try ChunkDecoder.decode(header: h, wire: w), raw)
            }
        }
        // A single byte can never shrink by 3%.
        XCTAssertEqual(encode([0x61], .compress(.zlib(9))).0.codec, .stored)
    }

    func testSamplingEncoderAdaptsAndRecovers() throws {
        var rng = SplitMix64(seed: 6)
        var encoder = ChunkEncoder(.sampleThenCompress(.zlib(1)))
        let chunk = FerryLimits.defaultChunkSize
        var offset: Int64 = 0
        var stream: [UInt8] = []
        var codecs: [ChunkCodec] = []
        for kind in ["text", "random", "random", "text", "small-random", "text", "random", "small-text"] {
            let raw: [UInt8]
            switch kind {
            case "text": raw = rng.text(chunk)
            case "random": raw = rng.bytes(chunk)
            case "small-random": raw = rng.bytes(1000)
            default: raw = rng.text(1000)
            }
            let (h, w) = encode(raw, &encoder, offset: offset)
            XCTAssertEqual(h.offset, offset)
            codecs.append(h.codec)
            stream += try ChunkDecoder.decode(header: h, wire: w)
            offset += Int64(raw.count)
        }
        XCTAssertEqual(codecs, [.zlib, .stored, .stored, .zlib, .stored, .zlib, .stored, .zlib],
                       "incompressible data is stored; compressible data after it is compressed again")
        XCTAssertEqual(Int64(stream.count), offset)
    }

    func testRoundTripsAtManySizes() throws {
        var rng = SplitMix64(seed: 7)
        for count in [1, 2, 3, 100, 16 * 1024, 32 * 1024, 32 * 1024 + 1, 256 * 1024 - 1, 256 * 1024] {
            for raw in [rng.text(count), rng.bytes(count), [UInt8](repeating: 0, count: count)] {
                for decision: ChunkDecision in [.store, .compress(.zlib(1)), .compress(.zlib(9)), .sampleThenCompress(.zlib(1))] {
                    let (h, w) = encode(raw, decision)
                    XCTAssertEqual(try ChunkDecoder.decode(header: h, wire: w), raw, "\(count) bytes, \(decision)")
                }
            }
        }
    }

    func testLargestChunk() throws {
        var rng = SplitMix64(seed: 8)
        for raw in [rng.text(FerryLimits.maxChunkRaw), rng.bytes(FerryLimits.maxChunkRaw)] {
            let (h, w) = encode(raw, .sampleThenCompress(.zlib(1)))
            XCTAssertEqual(h.rawLength, FerryLimits.maxChunkRaw)
            XCTAssertEqual(try ChunkHeader.parse(Substring(h.line)), h)
            XCTAssertEqual(try ChunkDecoder.decode(header: h, wire: w), raw)
        }
    }

    func testDecodeIntoALargerDestination() throws {
        var rng = SplitMix64(seed: 9)
        let raw = rng.text(5000)
        let (h, w) = encode(raw, .compress(.zlib(6)))
        var destination = [UInt8](repeating: 0xEE, count: 6000)
        try destination.withUnsafeMutableBytes { d in try ChunkDecoder.decode(header: h, wire: w, into: d) }
        XCTAssertEqual(Array(destination[0..<5000]), raw)
        XCTAssertEqual(Array(destination[5000...]), [UInt8](repeating: 0xEE, count: 1000), "nothing past rawLength is touched")
    }

    // MARK: Rejection

    func testWrongCRCIsRejected() throws {
        var rng = SplitMix64(seed: 10)
        for raw in [rng.text(10_000), rng.bytes(10_000)] {
            var (h, w) = encode(raw, .compress(.zlib(6)), offset: 42)
            XCTAssertEqual(try ChunkDecoder.decode(header: h, wire: w), raw)
            h.crc32 ^= 1
            XCTAssertEqual(decodeError(h, w), .checksum(offset: 42))
            h.crc32 ^= 0x8000_0001
            XCTAssertEqual(decodeError(h, w), .checksum(offset: 42))
            w = ByteBuffer()
            XCTAssertNotNil(decodeError(h, w))
        }
    }

    /// Flipping any single bit of the wire bytes either fails the chunk or (for the few bits
    /// deflate ignores, such as the final byte's padding) still yields exactly the raw bytes:
    /// damaged data is never handed on.
    func testEveryFlippedBitIsCaught() {
        var rng = SplitMix64(seed: 11)
        for raw in [rng.text(3000), rng.bytes(300)] {
            let (h, w) = encode(raw, .compress(.zlib(9)))
            let good = bytes(w)
            var caught = 0
            for index in good.indices {
                var bad = good
                bad[index] ^= UInt8(1) << UInt8(index % 8)
                do {
                    let out = try ChunkDecoder.decode(header: h, wire: buffer(bad))
                    XCTAssertEqual(out, raw, "byte \(index) of a \(h.codec) chunk was damaged yet accepted")
                } catch {
                    caught += 1
                    switch (h.codec, error) {
                    case (.stored, .checksum), (.zlib, .checksum), (.zlib, .decompress), (.zlib, .length): break
                    default: XCTFail("byte \(index) of a \(h.codec) chunk: unexpected \(error)")
                    }
                }
            }
            XCTAssertGreaterThanOrEqual(caught, good.count - 2, "\(h.codec)")
        }
    }

    func testCorruptZlibStreams() throws {
        var rng = SplitMix64(seed: 12)
        let raw = rng.text(20_000)
        let (h, w) = encode(raw, .compress(.zlib(6)), offset: 7)
        XCTAssertEqual(h.codec, .zlib)
        let good = bytes(w)

        // Not a zlib stream at all.
        var notZlib = good
        notZlib[0] = 0x00
        guard case .decompress(offset: 7, _)? = decodeError(h, buffer(notZlib)) else { return XCTFail("bad header accepted") }

        // Random bytes labelled as zlib.
        let junk = rng.bytes(200)
        guard case .decompress? = decodeError(ChunkHeader(offset: 0, rawLength: 500, wireLength: 200, codec: .zlib, crc32: 0),
                                           buffer(junk)) else { return XCTFail("junk accepted") }

        // Truncated: the stream ends early (header adjusted so only the stream is wrong).
        for cut in [1, 4, good.count / 2, good.count - 3] {
            let short = Array(good.prefix(cut))
            var hs = h
            hs.wireLength = short.count
            guard case .decompress? = decodeError(hs, buffer(short)) else { return XCTFail("truncated to \(cut) accepted") }
        }

        // Trailing bytes after a complete stream.
        var hl = h
        hl.wireLength += 1
        guard case .decompress(_, let why)? = decodeError(hl, buffer(good + [0])) else { return XCTFail("trailing byte accepted") }
        XCTAssertTrue(why.contains("trailing"), why)

        // The stream inflates to more than announced.
        var hm = h
        hm.rawLength -= 1
        guard case .decompress? = decodeError(hm, w) else { return XCTFail("over-long inflate accepted") }

        // The stream inflates to less than announced.
        var hf = h
        hf.rawLength += 1
        XCTAssertEqual(decodeError(hf, w), .length(offset: 7, expected: raw.count + 1, got: raw.count))
    }

    func testWireLengthMustMatchTheHeader() {
        var rng = SplitMix64(seed: 13)
        for raw in [rng.text(4000), rng.bytes(4000)] {
            let (h, w) = encode(raw, .sampleThenCompress(.zlib(1)), offset: 9)
            let good = bytes(w)
            XCTAssertEqual(decodeError(h, buffer(Array(good.dropLast()))),
                           .length(offset: 9, expected: h.wireLength, got: h.wireLength - 1))
            XCTAssertEqual(decodeError(h, buffer(good + [0x00])),
                           .length(offset: 9, expected: h.wireLength, got: h.wireLength + 1))
        }
    }

    func testStoredHeaderThatContradictsItselfIsRejected() {
        let raw = Array("0123456789".utf8)
        let crc = CRC32.checksum(raw)
        // wire longer than raw: must not copy past the destination.
        let long = ChunkHeader(offset: 0, rawLength: 10, wireLength: 12, codec: .stored, crc32: crc)
        XCTAssertEqual(decodeError(long, buffer(raw + [0x41, 0x42])), .length(offset: 0, expected: 10, got: 12))
        // wire shorter than raw.
        let short = ChunkHeader(offset: 0, rawLength: 10, wireLength: 8, codec: .stored, crc32: crc)
        XCTAssertNotNil(decodeError(short, buffer(Array(raw.prefix(8)))))
    }

    func testErrorDescriptionsNameTheOffset() {
        XCTAssertTrue(ChunkError.checksum(offset: 262_144).description.contains("262144"))
        XCTAssertTrue(ChunkError.decompress(offset: 5, "corrupt zlib stream").description.contains("corrupt"))
        XCTAssertTrue(ChunkError.length(offset: 1, expected: 2, got: 3).description.contains("expected 2"))
    }

    // MARK: Fixture files, chunked as the server sends them

    func testFixtureFilesTravelAsExpected() throws {
        let sample = TestSupport.packageRoot.appendingPathComponent("Fixtures/sample")
        let cases: [(String, ChunkCodec)] = [("docs/server.log", .zlib), ("photos/2024/IMG_0001.raw", .stored)]
        for (name, codec) in cases {
            let data = [UInt8](try Data(contentsOf: sample.appendingPathComponent(name)))
            XCTAssertGreaterThan(data.count, 0)
            var encoder = ChunkEncoder(.sampleThenCompress(.zlib(1)))
            var rebuilt = [UInt8](repeating: 0, count: data.count)
            var offset = 0
            var chunks = 0
            while offset < data.count {
                let end = min(offset + FerryLimits.defaultChunkSize, data.count)
                let (h, w) = encode(Array(data[offset..<end]), &encoder, offset: Int64(offset))
                let parsed = try ChunkHeader.parse(Substring(h.line))
                XCTAssertEqual(parsed, h)
                XCTAssertEqual(h.codec, codec, "\(name) chunk \(chunks)")
                try rebuilt.withUnsafeMutableBytes { d in
                    try ChunkDecoder.decode(header: parsed, wire: w,
                                            into: UnsafeMutableRawBufferPointer(rebasing: d[Int(parsed.offset)...]))
                }
                offset = end
                chunks += 1
            }
            XCTAssertEqual(rebuilt, data, name)
            XCTAssertEqual(chunks, (data.count + FerryLimits.defaultChunkSize - 1) / FerryLimits.defaultChunkSize)
        }
    }
}
