import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

final class HashingTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestSupport.makeTemporaryDirectory("ferry-hash")
    }

    override func tearDown() {
        if let directory { TestSupport.removeTemporaryDirectory(directory) }
    }

    /// Writes `bytes` to a fresh file and opens it for reading as ferry does.
    private func openFile(_ bytes: [UInt8]) throws -> FerryFiles.FileHandle {
        let url = directory.appendingPathComponent(UUID().uuidString)
        try Data(bytes).write(to: url)
        let fd = open(url.path, O_RDONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        return FerryFiles.FileHandle(fd: fd)
    }

    private let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    func testSHA256KnownVectors() {
        XCTAssertEqual(SHA256Hasher.hex([]), empty)
        XCTAssertEqual(SHA256Hasher.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256Hasher.hex(Array("hello world".utf8)),
                       "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9", "the trailer in PROTOCOL.md's GET transcript")
        XCTAssertEqual(SHA256Hasher.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(SHA256Hasher.hex([UInt8](repeating: 0x61, count: 1_000_000)),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func testStreamingEqualsOneShot() {
        var rng = SplitMix64(seed: 20)
        let data = rng.bytes(100_003)
        let whole = SHA256Hasher.hex(data)
        XCTAssertTrue(isSHA256Hex(whole), "lowercase hex, 64 digits")
        for step in [1, 7, 64, 4096, 65_536] {
            var h = SHA256Hasher()
            var i = 0
            while i < data.count {
                let end = min(i + step, data.count)
                if step == 4096 {
                    data[i..<end].withUnsafeBytes { h.update($0) }
                } else {
                    h.update(Array(data[i..<end]))
                }
                i = end
            }
            XCTAssertEqual(h.finalizeHex(), whole, "step \(step)")
        }
        var other = SHA256Hasher()
        other.update(Array(data.dropLast()))
        XCTAssertNotEqual(other.finalizeHex(), whole)
    }

    func testFileHashingWholeAndRanges() throws {
        var rng = SplitMix64(seed: 21)
        // More than two of FileHashing's 1 MiB read steps, not a multiple of anything.
        let data = rng.bytes(2 * 1024 * 1024 + 512 * 1024 + 17)
        let file = try openFile(data)
        XCTAssertEqual(try FileHashing.sha256(of: file, length: Int64(data.count)), SHA256Hasher.hex(data))
        let ranges: [Range<Int>] = [0..<0, 0..<1, 1000..<1_501_000, 1_048_575..<1_048_577, data.count - 1..<data.count,
                                    524_288..<data.count, 0..<1_048_576]
        for r in ranges {
            XCTAssertEqual(try FileHashing.sha256(of: file, offset: Int64(r.lowerBound), length: Int64(r.count)),
                           SHA256Hasher.hex(Array(data[r])), "\(r)")
        }
    }

    func testEmptyFileHashesLikeEmptyInput() throws {
        let file = try openFile([])
        XCTAssertEqual(try FileHashing.sha256(of: file, length: 0), empty)
    }

    func testFixtureFileHash() throws {
        let url = TestSupport.packageRoot.appendingPathComponent("Fixtures/sample/docs/server.log")
        let data = [UInt8](try Data(contentsOf: url))
        let fd = open(url.path, O_RDONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let file = FerryFiles.FileHandle(fd: fd)
        XCTAssertEqual(try FileHashing.sha256(of: file, length: Int64(data.count)), SHA256Hasher.hex(data))
    }

    /// XXH3-128 against values from the reference implementation (Python's `xxhash` 3.x,
    /// `xxh3_128_hexdigest`), in one call and fed in every kind of cut.
    func testXXH128MatchesTheReference() {
        // Every vector code this CPU has (SSE2, AVX2, AVX-512), the best one last.
        let best = XXH128Hasher.bestVectorLevel
        defer { XXH128Hasher.useVectorLevel(best) }
        for level in 0...best {
            XCTAssertTrue(XXH128Hasher.useVectorLevel(level))
            checkXXH128Reference(level: level)
        }
        XCTAssertFalse(XXH128Hasher.useVectorLevel(3), "no such level")
    }

    private func checkXXH128Reference(level: Int) {
        XCTAssertEqual(XXH128Hasher.hex([]), "99aa06d3014798d86001c324468d497f")
        XCTAssertEqual(XXH128Hasher.hex(Array("ferry".utf8)), "85ca3a0dfcfe59849331f43fcdbd2eb8")
        let pattern = (0..<1_000_003).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let expected = "dbe0cd4f15fc27026fb4080543f32e5b"
        XCTAssertEqual(XXH128Hasher.hex(pattern), expected)
        for cut in [1, 63, 64, 240, 241, 1024, 65_536, 262_144, 999_999] {
            let h = XXH128Hasher()
            var i = 0
            while i < pattern.count {
                let end = min(pattern.count, i + cut)
                pattern[i..<end].withUnsafeBytes { h.update($0) }
                i = end
            }
            XCTAssertEqual(h.finalizeHex(), expected, "cut \(cut), level \(level)")
        }
        let empty = XXH128Hasher()
        empty.update([])
        XCTAssertEqual(empty.finalizeHex(), "99aa06d3014798d86001c324468d497f")
    }
}
