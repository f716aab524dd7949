import FerryProtocol
import XCTest

final class ChunkHeaderTests: XCTestCase {
    private func refused(_ line: String, file: StaticString = #filePath, line n: UInt = #line) {
        do {
            let h = try ChunkHeader.parse(Substring(line))
            XCTFail("'\(line.debugDescription)' was accepted as \(h)", file: file, line: n)
        } catch {
            XCTAssertTrue(error.description.hasPrefix("malformed chunk header"), file: file, line: n)
        }
    }

    func testLineFormat() {
        XCTAssertEqual(ChunkHeader(offset: 0, rawLength: 11, wireLength: 11, codec: .stored, crc32: 0x0D4A_1185).line,
                       "CHUNK 0 11 11 s 0d4a1185")
        XCTAssertEqual(ChunkHeader(offset: 7, rawLength: 100, wireLength: 40, codec: .zlib, crc32: 1).line,
                       "CHUNK 7 100 40 z 00000001")
        XCTAssertEqual(ChunkHeader(offset: 0, rawLength: 1, wireLength: 1, codec: .stored, crc32: 0).line,
                       "CHUNK 0 1 1 s 00000000")
        XCTAssertEqual(ChunkHeader(offset: 9, rawLength: 300, wireLength: 60, codec: .zstd, crc32: 2).line,
                       "CHUNK 9 300 60 zstd 00000002")
        XCTAssertEqual(ChunkHeader(offset: 0, rawLength: 1, wireLength: 1, codec: .stored, crc32: .max).line,
                       "CHUNK 0 1 1 s ffffffff")
    }

    func testSpecExamples() throws {
        XCTAssertEqual(try ChunkHeader.parse("CHUNK 0 11 11 s 0d4a1185"),
                       ChunkHeader(offset: 0, rawLength: 11, wireLength: 11, codec: .stored, crc32: 0x0D4A_1185))
        XCTAssertEqual(try ChunkHeader.parse("CHUNK 524288 262144 262144 s 1c291ca3"),
                       ChunkHeader(offset: 524_288, rawLength: 262_144, wireLength: 262_144, codec: .stored, crc32: 0x1C29_1CA3))
    }

    func testRoundTripsAtTheLimits() throws {
        let max = FerryLimits.maxChunkRaw
        let headers = [
            ChunkHeader(offset: 0, rawLength: 1, wireLength: 1, codec: .stored, crc32: 0xDEAD_BEEF),
            ChunkHeader(offset: .max, rawLength: max, wireLength: max, codec: .stored, crc32: 0),
            ChunkHeader(offset: 1, rawLength: max, wireLength: max + FerryLimits.chunkWireSlack, codec: .zlib, crc32: 5),
            ChunkHeader(offset: 2, rawLength: 1, wireLength: 1 + FerryLimits.chunkWireSlack, codec: .zlib, crc32: 5),
            ChunkHeader(offset: 3, rawLength: 262_144, wireLength: 1, codec: .zlib, crc32: 0x8000_0000),
            ChunkHeader(offset: 4, rawLength: max, wireLength: max + FerryLimits.chunkWireSlack, codec: .zstd, crc32: 6),
            ChunkHeader(offset: 5, rawLength: 262_144, wireLength: 9, codec: .zstd, crc32: 7),
        ]
        for h in headers {
            XCTAssertEqual(try ChunkHeader.parse(Substring(h.line)), h, h.line)
        }
    }

    func testLengthLimits() {
        let max = FerryLimits.maxChunkRaw
        XCTAssertEqual(max, 4 * 1024 * 1024)
        refused("CHUNK 0 0 0 s 00000000")  // raw must be >= 1
        refused("CHUNK 0 0 1 z 00000000")
        refused("CHUNK 0 \(max + 1) \(max + 1) s 00000000")  // raw > 4 MiB
        refused("CHUNK 0 \(max + 1) 10 z 00000000")
        refused("CHUNK 0 9223372036854775807 10 z 00000000")
        refused("CHUNK 0 100 \(100 + 1025) z 00000000")  // wire > raw + 1024
        refused("CHUNK 0 \(max) \(max + 1025) z 00000000")
        refused("CHUNK 0 100 0 z 00000000")  // wire must be >= 1
        refused("CHUNK 0 100 99 s 00000000")  // stored: wire == raw
        refused("CHUNK 0 100 101 s 00000000")
        refused("CHUNK 0 100 1124 s 00000000")
    }

    func testMalformedFields() {
        for line in [
            "", "CHUNK", "CHUNK 0 1 1 s", "CHUNK 0 1 1 s 00000000 x", "chunk 0 1 1 s 00000000", "DATA 0 1 1 s 00000000",
            "CHUNK -1 1 1 s 00000000", "CHUNK +1 1 1 s 00000000", "CHUNK 12345678901234567890 1 1 s 00000000",
            "CHUNK 9223372036854775808 1 1 s 00000000", "CHUNK x 1 1 s 00000000", "CHUNK 0 +1 1 s 00000000",
            "CHUNK 0 1 +1 s 00000000", "CHUNK 0 1 1 S 00000000", "CHUNK 0 1 1 Z 00000000", "CHUNK 0 1 1 x 00000000",
            "CHUNK 0 1 1 zz 00000000", "CHUNK 0 1 1  00000000", "CHUNK 0 1 1 s 0000000", "CHUNK 0 1 1 s 000000000",
            "CHUNK 0 1 1 s 0000000g", "CHUNK 0 1 1 s +0d4a118", "CHUNK 0 1 1 s -0000000", "CHUNK 0 1 1 s 0x000000",
            "CHUNK 0 1 1 s 0000 000", "CHUNK  0 1 1 s 00000000", "CHUNK 0 1 1 s 00000000 ", "CHUNK 0 1 1 s 00000000\r",
            "CHUNK 0 1 1 s ００００００００",
        ] {
            refused(line)
        }
    }
}
