import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// Content-defined chunking (issue 15): the cut points are a pure function of the bytes,
/// sizes stay within the parameters, and an edit disturbs only the chunks around it.
final class ContentChunkerTests: XCTestCase {
    private func random(_ count: Int, seed: UInt64) -> [UInt8] {
        var g = SplitMix64(seed: seed)
        return g.packedBytes(count)
    }

    /// Chunk (offset, bytes) pairs of a buffer.
    private func chunks(_ data: [UInt8]) -> [(Int, ArraySlice<UInt8>)] {
        var out: [(Int, ArraySlice<UInt8>)] = []
        var start = 0
        for n in ContentChunker.lengths(of: data) {
            out.append((start, data[start..<(start + n)]))
            start += n
        }
        return out
    }

    func testLengthsCoverTheDataWithinTheLimitsAndAverageNearTheTarget() {
        let data = random(16 << 20, seed: 1)
        let lengths = ContentChunker.lengths(of: data)
        XCTAssertEqual(lengths.reduce(0, +), data.count)
        for n in lengths.dropLast() {
            XCTAssertGreaterThanOrEqual(n, ContentChunker.minSize)
            XCTAssertLessThanOrEqual(n, ContentChunker.maxSize)
        }
        let average = data.count / lengths.count
        // Normalized chunking with the minimum skipped: the mean lands near min + avg.
        XCTAssertTrue((48 * 1024...112 * 1024).contains(average), "average chunk \(average) bytes")
        let atMax = lengths.filter { $0 == ContentChunker.maxSize }.count
        XCTAssertLessThan(atMax, lengths.count / 50, "few chunks are cut by the maximum alone")
    }

    func testShortAndEdgeInputs() {
        XCTAssertEqual(ContentChunker.lengths(of: []), [])
        XCTAssertEqual(ContentChunker.lengths(of: [7]), [1])
        XCTAssertEqual(ContentChunker.lengths(of: random(ContentChunker.minSize, seed: 2)), [ContentChunker.minSize])
        // Data without any boundary (all zeros: the gear hash never has the mask's bits clear
        // only by chance) is cut at the maximum.
        let zeros = [UInt8](repeating: 0, count: 3 * ContentChunker.maxSize + 5)
        let lengths = ContentChunker.lengths(of: zeros)
        XCTAssertEqual(lengths.reduce(0, +), zeros.count)
        XCTAssertTrue(lengths.allSatisfy { $0 <= ContentChunker.maxSize })
    }

    func testCutPointsArePureAndDependOnlyOnTheBytes() {
        let data = random(2 << 20, seed: 3)
        XCTAssertEqual(ContentChunker.lengths(of: data), ContentChunker.lengths(of: data))
        // The same bytes at another place in a larger buffer give the same cut.
        let prefix = random(1000, seed: 4)
        let both = prefix + data
        let first = data.withUnsafeBytes { ContentChunker.cut($0) }
        let shifted = both.withUnsafeBytes { ContentChunker.cut(UnsafeRawBufferPointer(rebasing: $0[1000...])) }
        XCTAssertEqual(first, shifted)
    }

    /// The point of content-defined chunks: after an insertion (or deletion) near the start,
    /// almost every chunk of the rest keeps its bytes, so its hash is found again.
    func testMostChunksSurviveInsertionsAndDeletions() {
        let data = random(8 << 20, seed: 5)
        let before = Set(chunks(data).map { Data($0.1) })
        for (name, edited) in [
            ("insert 3 bytes at 100 KiB", Array(data[..<102_400]) + [1, 2, 3] + Array(data[102_400...])),
            ("delete 11 bytes at 5 MiB", Array(data[..<(5 << 20)]) + Array(data[((5 << 20) + 11)...])),
            ("insert 100 KiB at 1 byte", Array(data[..<1]) + random(100 << 10, seed: 6) + Array(data[1...])),
        ] {
            let after = chunks(edited).map { Data($0.1) }
            let kept = after.filter(before.contains).count
            XCTAssertGreaterThanOrEqual(after.count - kept, 1, name)
            XCTAssertLessThanOrEqual(after.count - kept, 4, "\(name): \(after.count - kept) of \(after.count) chunks are new")
        }
    }

    func testFileMapperMatchesTheBufferAndHashesEachChunk() throws {
        let dir = try TestSupport.makeTemporaryDirectory("ferry-cdc")
        defer { TestSupport.removeTemporaryDirectory(dir) }
        // Over the mapper's 4 MiB read step, so chunks straddle its refills.
        let data = random(9 << 20 + 12_345, seed: 7)
        let url = dir.appendingPathComponent("f")
        try Data(data).write(to: url)
        let fd = open(url.path, O_RDONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let handle = FerryFiles.FileHandle(fd: fd)
        let mapper = ChunkMapper(file: handle, size: Int64(data.count), wholeFileHash: true)
        var records: [ChunkRecord] = []
        while !mapper.isDone { records += try mapper.advance(by: 1 << 20) }
        XCTAssertEqual(records.map(\.length), ContentChunker.lengths(of: data))
        for r in records.prefix(20) {
            let slice = Array(data[Int(r.offset)..<(Int(r.offset) + r.length)])
            XCTAssertEqual(r.digest.hex, SHA256Hasher.hex(slice))
        }
        XCTAssertEqual(mapper.wholeFileSHA256(), SHA256Hasher.hex(data))
        // A file shorter than the size it was mapped for is an error, not a short map.
        let short = ChunkMapper(file: handle, size: Int64(data.count) + 100, wholeFileHash: false)
        XCTAssertThrowsError(try { while !short.isDone { _ = try short.advance(by: 8 << 20) } }())
    }
}
