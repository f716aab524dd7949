@testable import FerryFiles
import FerryProtocol
import Foundation
import XCTest

/// The server's hash cache: lookups only for an unchanged file, the compact table, and its file
/// (written in pieces, read a line at a time, the format before fingerprints still read).
final class HashCacheTests: XCTestCase {
    private var work: URL!

    override func setUpWithError() throws {
        work = FileManager.default.temporaryDirectory.appendingPathComponent("hashcache-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: work)
    }

    private func key(_ size: Int64, inode: UInt64 = 7, mtime: Int64 = 1_700_000_000) -> HashKey {
        HashKey(size: size, mtime: Timestamp(seconds: mtime, nanoseconds: 5), inode: inode, ctime: Timestamp(seconds: mtime, nanoseconds: 9))
    }

    private func sha(_ i: Int) -> String { SHA256Hasher.hex(Array("content \(i)".utf8)) }

    func testALookupAnswersOnlyForTheSamePathAndKey() throws {
        let cache = HashCache(persistingTo: nil)
        let path = try RemotePath(validating: "dir/file name.txt")
        cache.store(path, key(10), sha256: sha(1))
        XCTAssertEqual(cache.lookup(path, key(10)), sha(1))
        XCTAssertNil(cache.lookup(path, key(11)), "another size")
        XCTAssertNil(cache.lookup(path, key(10, inode: 8)), "another inode")
        XCTAssertNil(cache.lookup(path, key(10, mtime: 1_700_000_001)), "another mtime")
        XCTAssertNil(cache.lookup(try RemotePath(validating: "dir/other"), key(10)), "another path")
        cache.store(path, key(11), sha256: sha(2))
        XCTAssertEqual(cache.lookup(path, key(11)), sha(2), "a new version replaces the old")
        XCTAssertNil(cache.lookup(path, key(10)))
        XCTAssertEqual(cache.count, 1)
        cache.store(path, key(12), sha256: "not a hash")
        XCTAssertEqual(cache.lookup(path, key(11)), sha(2), "a malformed digest is not stored")
    }

    func testManyEntriesSurviveGrowthAndASaveAndLoad() throws {
        let file = work.appendingPathComponent("hashes.txt").path
        let cache = HashCache(persistingTo: file)
        let paths = try (0..<50_000).map { try RemotePath(validating: "d\($0 % 97)/f\($0)") }
        for (i, p) in paths.enumerated() { cache.store(p, key(Int64(i)), sha256: sha(i)) }
        XCTAssertEqual(cache.count, 50_000)
        try cache.save()
        let text = try String(contentsOfFile: file, encoding: .utf8)
        XCTAssertTrue(text.hasPrefix("ferry-hash-cache 3\n"))
        XCTAssertFalse(text.contains("f49999"), "the file holds fingerprints, not paths")
        XCTAssertEqual(text.split(separator: "\n").count, 50_001)
        let reloaded = HashCache(persistingTo: file)
        XCTAssertEqual(reloaded.count, 50_000)
        for i in stride(from: 0, to: 50_000, by: 997) {
            XCTAssertEqual(reloaded.lookup(paths[i], key(Int64(i))), sha(i), paths[i].description)
            XCTAssertNil(reloaded.lookup(paths[i], key(Int64(i) + 1)))
        }
    }

    func testTheFormatWithPathsIsStillReadAndBadLinesAreSkipped() throws {
        let file = work.appendingPathComponent("old.txt").path
        let path = try RemotePath(validating: "a b/c")
        let k = key(42)
        let lines = [
            "ferry-hash-cache 2",
            "\(k.size) \(k.mtime) \(k.inode) \(k.ctime) \(sha(1)) \(PercentEncoding.encode(path.bytes))",
            "garbage line",
            "1 2 3 4 5 6",
        ]
        try (lines.joined(separator: "\n") + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        let cache = HashCache(persistingTo: file)
        XCTAssertEqual(cache.count, 1)
        XCTAssertEqual(cache.lookup(path, k), sha(1))
    }

    func testAFileOfAnotherFormatIsIgnored() throws {
        let file = work.appendingPathComponent("other.txt").path
        try "something else\n0000000000000001 0000000000000002 \(sha(1))\n".write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(HashCache(persistingTo: file).count, 0)
    }

    func testLinesAreReadAcrossPieceBoundaries() throws {
        let file = work.appendingPathComponent("lines.txt").path
        let expected = (0..<40_000).map { "line \($0) " + String(repeating: "y", count: $0 % 200) }
        try (expected.joined(separator: "\n")).write(toFile: file, atomically: true, encoding: .utf8)
        var seen: [String] = []
        try AtomicFile.forEachLine(of: file) { seen.append(String(decoding: $0, as: UTF8.self)); return true }
        XCTAssertEqual(seen, expected, "the last line has no LF")
    }
}
