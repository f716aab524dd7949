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

    /// The digest a manifest writes as bytes spells exactly the hex `lookup` gives, and a
    /// manifest line written from it equals the one written from the string.
    func testADigestWritesTheSameHexAsTheLookupAndTheSameManifestLine() throws {
        let cache = HashCache(persistingTo: nil)
        let path = try RemotePath(validating: "dir/f")
        for i in 0..<50 {
            cache.store(path, key(Int64(i)), sha256: sha(i))
            let digest = try XCTUnwrap(cache.lookupDigest(path, key(Int64(i))))
            var hex: [UInt8] = []
            digest.appendHex(to: &hex)
            XCTAssertEqual(String(decoding: hex, as: UTF8.self), sha(i))
            var entry = Entry(type: .file, mode: 0o644, size: Int64(i), mtime: Timestamp(seconds: 1_700_000_000, nanoseconds: 5), path: path)
            var fromBytes: [UInt8] = []
            entry.appendLine(to: &fromBytes, manifest: true, sha256Field: { digest.appendHex(to: &$0) })
            entry.sha256 = sha(i)
            var fromString: [UInt8] = []
            entry.appendLine(to: &fromString, manifest: true)
            XCTAssertEqual(fromBytes, fromString)
        }
        XCTAssertNil(cache.lookupDigest(path, key(99)))
    }

    func testManyEntriesSurviveGrowthAndASaveAndLoad() throws {
        let file = work.appendingPathComponent("hashes.txt").path
        let cache = HashCache(persistingTo: file)
        let paths = try (0..<50_000).map { try RemotePath(validating: "d\($0 % 97)/f\($0)") }
        for (i, p) in paths.enumerated() { cache.store(p, key(Int64(i)), sha256: sha(i)) }
        XCTAssertEqual(cache.count, 50_000)
        try cache.save()
        let text = try String(contentsOfFile: file, encoding: .utf8)
        let header = try XCTUnwrap(text.split(separator: "\n").first)
        XCTAssertNotNil(HashCache.parseKey(header: header), "format 4 with its key: \(header)")
        // No path text: a path has a `/`, which hex never has (looking for "f49999" failed about
        // one run in ten, whenever the random fingerprints happened to contain those digits).
        XCTAssertFalse(text.contains("/"), "the file holds fingerprints, not paths")
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

    func testTheKeyComesBackWithTheFileAndEachCacheMakesItsOwn() throws {
        let path = try RemotePath(validating: "photos/2026/a.jpg")
        let first = HashCache(persistingTo: work.appendingPathComponent("one").path)
        let second = HashCache(persistingTo: work.appendingPathComponent("two").path)
        XCTAssertNotEqual(first.fingerprint(path.bytes), second.fingerprint(path.bytes),
                          "two caches fingerprint one path alike only by a 2^-64 chance: the key is random")
        first.store(path, key(3), sha256: sha(3))
        try first.save()
        let reloaded = HashCache(persistingTo: work.appendingPathComponent("one").path)
        XCTAssertEqual(reloaded.fingerprint(path.bytes), first.fingerprint(path.bytes), "the key is read back")
        XCTAssertEqual(reloaded.fingerprint(key(3)), first.fingerprint(key(3)))
        XCTAssertEqual(reloaded.lookup(path, key(3)), sha(3))
    }

    func testFormat3IsNotReadAndABadKeyIsAnotherFormat() throws {
        let file = work.appendingPathComponent("format3.txt").path
        try "ferry-hash-cache 3\n0000000000000001 0000000000000002 \(sha(1))\n".write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(HashCache(persistingTo: file).count, 0, "fingerprints of another function are not kept")
        for header in ["ferry-hash-cache 4", "ferry-hash-cache 4 00112233445566778899aabbccddeeff0",
                       "ferry-hash-cache 4 00112233445566778899AABBCCDDEEFF", "ferry-hash-cache 4 0011223344556677 8899aabbccddeef"] {
            try "\(header)\n0000000000000001 0000000000000002 \(sha(1))\n".write(toFile: file, atomically: true, encoding: .utf8)
            XCTAssertEqual(HashCache(persistingTo: file).count, 0, header)
        }
        try "ferry-hash-cache 4 00112233445566778899aabbccddeeff\n0000000000000001 0000000000000002 \(sha(1))\n"
            .write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(HashCache(persistingTo: file).count, 1)
    }

    /// The test vector of the SipHash paper (appendix A): key 00 01 … 0f, message 00 01 … 0e.
    func testSipHashMatchesThePapersVector() {
        let key = (UInt64(0x0706_0504_0302_0100), UInt64(0x0f0e_0d0c_0b0a_0908))
        XCTAssertEqual(HashCache.fingerprint(Array(0..<15), key: key), 0xa129_ca61_49be_45e5)
        XCTAssertEqual(HashCache.fingerprint([], key: key), 0x726f_db47_dd0e_0e31, "the empty message")
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
