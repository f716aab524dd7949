import CZstd
import FerryFiles
import FerryProtocol
import FerryTestSupport
import NIOCore
import XCTest

/// The codec registry, every codec's round trip, and the zstd frames a chunk decoder must refuse
/// (the zlib ones are in `ChunkCodingTests`; bombs of both in `ChunkDecoderFuzzTests`).
final class ChunkCodecsTests: XCTestCase {
    private let allocator = ByteBufferAllocator()

    private func encode(_ raw: [UInt8], _ decision: ChunkDecision, offset: Int64 = 0) -> (ChunkHeader, [UInt8]) {
        var encoder = ChunkEncoder(decision)
        let (header, wire) = raw.withUnsafeBytes { encoder.encode(raw: $0, offset: offset, allocator: allocator) }
        return (header, Array(wire.readableBytesView))
    }

    private func decodeError(_ header: ChunkHeader, _ wire: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> ChunkError? {
        do {
            let out = try ChunkDecoder.decode(header: header, wire: ByteBuffer(bytes: wire))
            XCTFail("a bad chunk decoded to \(out.count) bytes", file: file, line: line)
            return nil
        } catch {
            return error
        }
    }

    /// A zstd chunk of `raw`, checked to be one.
    private func zstdChunk(_ raw: [UInt8], level: Int32 = 3, offset: Int64 = 0,
                           file: StaticString = #filePath, line: UInt = #line) -> (ChunkHeader, [UInt8]) {
        let (header, wire) = encode(raw, .compress(.zstd(level)), offset: offset)
        XCTAssertEqual(header.codec, .zstd, file: file, line: line)
        return (header, wire)
    }

    // MARK: The registry

    func testRegistryHasOneGluePerCompressingCodec() throws {
        for codec in ChunkCodec.allCases {
            guard let compressor = ChunkCodecs.compressor(for: codec) else {
                XCTAssertEqual(codec, .stored, "only stored has no glue")
                XCTAssertNil(ChunkCompression(codec: codec, level: 1))
                continue
            }
            XCTAssertEqual(compressor.codec, codec)
            XCTAssertEqual(ChunkCodecs.compressor(named: compressor.name)?.codec, codec)
            XCTAssertTrue(ChunkCodecs.compressors.contains { $0.codec == codec })
            XCTAssertTrue(compressor.levels.contains(1), "\(compressor.name): level 1 is every codec's base level")
            XCTAssertNil(ChunkCompression(codec: codec, level: compressor.levels.upperBound + 1))
            XCTAssertNil(ChunkCompression(codec: codec, level: compressor.levels.lowerBound - 1))
            XCTAssertEqual(ChunkCompression(codec: codec, level: compressor.levels.upperBound)?.description,
                           "\(compressor.name):\(compressor.levels.upperBound)")
        }
        XCTAssertNil(ChunkCodecs.compressor(named: "lz4"))
        XCTAssertEqual(ChunkCompression.zlib(12), ChunkCompression(codec: .zlib, level: 9), "brought into range")
        XCTAssertEqual(ChunkCompression.zstd(-100), ChunkCompression(codec: .zstd, level: ZstdCodec.levels.lowerBound))
        XCTAssertEqual(ChunkCodec.zstd.rawValue, "zstd", "the wire token (PROTOCOL.md section 7)")
        XCTAssertEqual(ChunkCodec.baseline, [.stored, .zlib], "what a 1.0 peer decodes")
    }

    func testEveryCodecRoundTripsAtItsLevels() throws {
        var rng = SplitMix64(seed: 0xC0DEC)
        let inputs = [rng.text(1), rng.text(100), rng.text(40_000), rng.text(FerryLimits.defaultChunkSize),
                      rng.bytes(5000), [UInt8](repeating: 0, count: 70_000)]
        for compressor in ChunkCodecs.compressors {
            let levels = Set([compressor.levels.lowerBound, 1, 3, compressor.levels.upperBound])
            for level in levels {
                let compression = try XCTUnwrap(ChunkCompression(codec: compressor.codec, level: level))
                for raw in inputs {
                    for decision in [ChunkDecision.compress(compression), .sampleThenCompress(compression)] {
                        let (header, wire) = encode(raw, decision, offset: 77)
                        XCTAssertEqual(try ChunkHeader.parse(Substring(header.line)), header, "the receiver's bounds")
                        XCTAssertEqual(try ChunkDecoder.decode(header: header, wire: ByteBuffer(bytes: wire)), raw,
                                       "\(compression), \(raw.count) bytes")
                        if header.codec == .stored {
                            XCTAssertEqual(wire, raw)
                        } else {
                            XCTAssertEqual(header.codec, compressor.codec)
                            XCTAssertLessThanOrEqual(Double(wire.count), Double(raw.count) * 0.97, "saves at least 3%")
                        }
                    }
                }
                let text = inputs[3]
                XCTAssertEqual(encode(text, .compress(compression)).0.codec, compressor.codec, "\(compression) shrinks text")
            }
        }
    }

    func testZstdCompressesTextBetterThanZlibAtLevelOne() {
        var rng = SplitMix64(seed: 0x5EED)
        let text = rng.text(FerryLimits.defaultChunkSize)
        let zlib = encode(text, .compress(.zlib(1))).1.count
        let zstd = encode(text, .compress(.zstd(1))).1.count
        XCTAssertLessThan(zstd, zlib)
    }

    func testIncompressibleDataIsSentStoredWithZstd() {
        var rng = SplitMix64(seed: 0xBAD)
        let random = rng.bytes(FerryLimits.defaultChunkSize)
        var encoder = ChunkEncoder(.sampleThenCompress(.zstd(1)))
        let chunk = encoder.encode(ByteBuffer(bytes: random), offset: 0, allocator: allocator)
        XCTAssertEqual(chunk.header.codec, .stored)
        XCTAssertEqual(chunk.report.attempt, .sampleRejected)
        XCTAssertEqual(chunk.report.compression, .zstd(1))
        var whole = ChunkEncoder(.compress(.zstd(19)))
        let rejected = whole.encode(ByteBuffer(bytes: random), offset: 0, allocator: allocator)
        XCTAssertEqual(rejected.header.codec, .stored)
        XCTAssertEqual(rejected.report.attempt, .rejected)
    }

    // MARK: zstd frames a decoder must refuse

    func testZstdFrameDeclaresTheRawLength() {
        var rng = SplitMix64(seed: 1)
        let raw = rng.text(100_000)
        let (header, wire) = zstdChunk(raw)
        XCTAssertEqual(Array(wire.prefix(4)), [0x28, 0xB5, 0x2F, 0xFD], "the zstd frame magic")
        XCTAssertEqual(wire.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress, $0.count) }, UInt64(raw.count))
        XCTAssertEqual(wire.withUnsafeBytes { ZSTD_findFrameCompressedSize($0.baseAddress, $0.count) }, wire.count)
        XCTAssertEqual(header.crc32, CRC32.checksum(raw))
    }

    func testZstdDeclaredSizeMustBeTheRawLength() {
        var rng = SplitMix64(seed: 2)
        let raw = rng.text(20_000)
        let (header, wire) = zstdChunk(raw, offset: 5)
        var more = header
        more.rawLength -= 1
        guard case .decompress(5, let why)? = decodeError(more, wire) else { return XCTFail("a frame declaring more was accepted") }
        XCTAssertTrue(why.contains("more than announced"), why)
        var less = header
        less.rawLength += 1
        guard case .decompress(5, let why2)? = decodeError(less, wire) else { return XCTFail("a frame declaring less was accepted") }
        XCTAssertTrue(why2.contains("less than announced"), why2)
    }

    func testZstdFrameWithoutContentSizeIsRefused() throws {
        var rng = SplitMix64(seed: 3)
        let raw = rng.text(30_000)
        let context = try XCTUnwrap(ZSTD_createCCtx())
        defer { ZSTD_freeCCtx(context) }
        XCTAssertEqual(ZSTD_isError(ZSTD_CCtx_setParameter(context, ZSTD_c_contentSizeFlag, 0)), 0)
        var frame = [UInt8](repeating: 0, count: ZSTD_compressBound(raw.count))
        let size = frame.withUnsafeMutableBytes { f in raw.withUnsafeBytes { r in ZSTD_compress2(context, f.baseAddress, f.count, r.baseAddress, r.count) } }
        XCTAssertEqual(ZSTD_isError(size), 0)
        frame = Array(frame.prefix(size))
        XCTAssertEqual(frame.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress, $0.count) }, UInt64.max, "ZSTD_CONTENTSIZE_UNKNOWN")
        let header = ChunkHeader(offset: 0, rawLength: raw.count, wireLength: frame.count, codec: .zstd, crc32: CRC32.checksum(raw))
        guard case .decompress(_, let why)? = decodeError(header, frame) else { return XCTFail("a frame without its size was accepted") }
        XCTAssertTrue(why.contains("content size"), why)
    }

    func testTruncatedZstdFramesAreRefused() {
        var rng = SplitMix64(seed: 4)
        let raw = rng.text(50_000)
        let (header, wire) = zstdChunk(raw)
        for cut in [0, 1, 3, 4, 5, 8, wire.count / 2, wire.count - 4, wire.count - 1] {
            var short = header
            short.wireLength = cut
            XCTAssertNotNil(decodeError(short, Array(wire.prefix(cut))), "cut to \(cut) of \(wire.count)")
        }
    }

    func testTrailingBytesAfterAZstdFrameAreRefused() {
        var rng = SplitMix64(seed: 5)
        let raw = rng.text(10_000)
        let (header, wire) = zstdChunk(raw)
        for trailer in [[0x00], Array("x".utf8), wire] {
            var long = header
            long.wireLength += trailer.count
            guard case .decompress(_, let why)? = decodeError(long, wire + trailer) else {
                return XCTFail("\(trailer.count) trailing bytes accepted")
            }
            XCTAssertTrue(why.contains("trailing"), why)
        }
    }

    func testNonFramesAreRefused() {
        var rng = SplitMix64(seed: 6)
        let raw = rng.text(1000)
        let crc = CRC32.checksum(raw)
        // A skippable frame (magic 0x184D2A5?), then a zlib stream and random bytes labelled zstd.
        let skippable: [UInt8] = [0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]
        let zlib = encode(raw, .compress(.zlib(6))).1
        for wire in [skippable, zlib, rng.bytes(300)] {
            let header = ChunkHeader(offset: 0, rawLength: raw.count, wireLength: wire.count, codec: .zstd, crc32: crc)
            guard case .decompress(_, let why)? = decodeError(header, wire) else { return XCTFail("a non-frame was accepted") }
            XCTAssertTrue(why.contains("not a zstd frame"), why)
        }
    }

    func testZstdFrameThatNeedsADictionaryIsRefused() throws {
        var rng = SplitMix64(seed: 9)
        let raw = rng.text(200)
        let (header, wire) = zstdChunk(raw)
        // The same frame with a one-byte dictionary ID in its header (Dictionary_ID_flag = 1).
        let descriptor = wire[4]
        XCTAssertEqual(descriptor & 0x03, 0, "no dictionary ID yet")
        let withID = Array(wire[0..<4]) + [descriptor | 0x01] + Array(wire[5..<(descriptor & 0x20 != 0 ? 5 : 6)]) + [7]
            + Array(wire[(descriptor & 0x20 != 0 ? 5 : 6)...])
        XCTAssertEqual(withID.withUnsafeBytes { ZSTD_getDictID_fromFrame($0.baseAddress, $0.count) }, 7)
        var h = header
        h.wireLength = withID.count
        guard case .decompress(_, let why)? = decodeError(h, withID) else { return XCTFail("a frame needing a dictionary was accepted") }
        XCTAssertTrue(why.contains("dictionary"), why)
    }

    /// Flipping any single bit of a zstd chunk's wire either fails the chunk or still yields
    /// exactly the raw bytes (the CRC-32 catches what the frame's structure does not).
    func testEveryFlippedBitOfAZstdChunkIsCaught() {
        var rng = SplitMix64(seed: 7)
        let raw = rng.text(3000)
        let (header, good) = zstdChunk(raw, level: 19)
        var caught = 0
        for index in good.indices {
            var bad = good
            bad[index] ^= UInt8(1) << UInt8(index % 8)
            do {
                let out = try ChunkDecoder.decode(header: header, wire: ByteBuffer(bytes: bad))
                XCTAssertEqual(out, raw, "byte \(index) of a zstd chunk was damaged yet accepted")
            } catch {
                caught += 1
                switch error {
                case .checksum(offset: 0), .decompress(offset: 0, _), .length(offset: 0, _, _): break
                default: XCTFail("byte \(index): unexpected \(error)")
                }
            }
        }
        // A few bits of a frame change nothing (an unused bit of a header, say); those decode
        // to the raw bytes, as checked above.
        XCTAssertGreaterThanOrEqual(Double(caught), Double(good.count) * 0.98)
    }

    func testZstdDecodesIntoALargerDestinationWithoutTouchingThePastEnd() throws {
        var rng = SplitMix64(seed: 8)
        let raw = rng.text(5000)
        let (header, wire) = zstdChunk(raw)
        var destination = [UInt8](repeating: 0xEE, count: 6000)
        try destination.withUnsafeMutableBytes { d in try ChunkDecoder.decode(header: header, wire: ByteBuffer(bytes: wire), into: d) }
        XCTAssertEqual(Array(destination[0..<5000]), raw)
        XCTAssertEqual(Array(destination[5000...]), [UInt8](repeating: 0xEE, count: 1000))
    }
}
