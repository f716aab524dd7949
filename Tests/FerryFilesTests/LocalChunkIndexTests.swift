#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// The client's index of the chunks already in DEST: found by hash, rebuilt only for files
/// whose key changed, saved compactly and never trusted when damaged.
final class LocalChunkIndexTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestSupport.makeTemporaryDirectory("ferry-index")
    }

    override func tearDown() {
        if let directory { TestSupport.removeTemporaryDirectory(directory) }
    }

    private func random(_ count: Int, seed: UInt64) -> [UInt8] {
        var g = SplitMix64(seed: seed)
        return (0..<count).map { _ in UInt8(truncatingIfNeeded: g.next()) }
    }

    private func opener(_ name: String) -> (RemotePath, () -> (FerryFiles.FileHandle, FileInfo)?) {
        let url = directory.appendingPathComponent(name)
        // Invariant: the test's names are valid paths.
        return (try! RemotePath(validating: name), {
            let fd = open(url.path, O_RDONLY)
            guard fd >= 0 else { return nil }
            let h = FerryFiles.FileHandle(fd: fd)
            guard let info = try? h.stat() else { return nil }
            return (h, info)
        })
    }

    func testChunksAreFoundByHashAndUnchangedFilesAreNotReadAgain() throws {
        let a = random(1 << 20, seed: 1), b = random(300_000, seed: 2)
        try Data(a).write(to: directory.appendingPathComponent("a"))
        try Data(b).write(to: directory.appendingPathComponent("b"))
        try Data().write(to: directory.appendingPathComponent("empty"))
        let (index, read) = LocalChunkIndex.build([opener("a"), opener("b"), opener("empty"), opener("missing")], previous: nil)
        XCTAssertEqual(read, Int64(a.count + b.count))
        XCTAssertEqual(index.files.map(\.path.description), ["a", "b"], "empty and missing files are left out")

        // Every chunk of b is found in b, at its offset.
        var offset = 0
        for n in ContentChunker.lengths(of: b) {
            let digest = Array(b[offset..<(offset + n)]).withUnsafeBytes { ChunkDigest.sha256($0) }
            let places = index.locations(of: digest, length: n)
            XCTAssertEqual(places.first?.path.description, "b")
            XCTAssertEqual(places.first?.offset, Int64(offset))
            offset += n
        }
        let unknown = random(20_000, seed: 3).withUnsafeBytes { ChunkDigest.sha256($0) }
        XCTAssertEqual(index.locations(of: unknown, length: 20_000), [])

        // Unchanged files come from the previous index; a changed one is read again.
        let (same, none) = LocalChunkIndex.build([opener("a"), opener("b")], previous: index)
        XCTAssertEqual(none, 0)
        XCTAssertEqual(same.files, index.files)
        try Data(b + [1]).write(to: directory.appendingPathComponent("b"))
        let (changed, again) = LocalChunkIndex.build([opener("a"), opener("b")], previous: index)
        XCTAssertEqual(again, Int64(b.count + 1))
        XCTAssertNotEqual(changed.files[1], index.files[1])
    }

    func testAReadBudgetLeavesOutFilesThatWouldPassIt() throws {
        try Data(random(300_000, seed: 5)).write(to: directory.appendingPathComponent("first"))
        try Data(random(300_000, seed: 6)).write(to: directory.appendingPathComponent("second"))
        let (partial, read) = LocalChunkIndex.build([opener("first"), opener("second")], previous: nil, readBudget: 500_000)
        XCTAssertEqual(partial.files.map(\.path.description), ["first"])
        XCTAssertEqual(read, 300_000)
        // The next run reads what the last one left out; what it knows costs nothing.
        let (whole, more) = LocalChunkIndex.build([opener("first"), opener("second")], previous: partial, readBudget: 500_000)
        XCTAssertEqual(whole.files.map(\.path.description), ["first", "second"])
        XCTAssertEqual(more, 300_000)
    }

    func testSavedIndexRoundTripsAndDamageIsRefused() throws {
        try Data(random(700_000, seed: 4)).write(to: directory.appendingPathComponent("x y"))
        let (index, _) = LocalChunkIndex.build([opener("x y")], previous: nil)
        let bytes = index.encoded()
        // Compact: about 12 bytes per chunk.
        XCTAssertLessThan(bytes.count, 100 + index.chunkCount * 12 + 64)
        XCTAssertEqual(LocalChunkIndex.decode(bytes)?.files, index.files)
        let path = directory.appendingPathComponent("saved.idx").path
        try index.save(to: path)
        XCTAssertEqual(LocalChunkIndex.load(path)?.files, index.files)
        XCTAssertNil(LocalChunkIndex.load(directory.appendingPathComponent("nothing").path))
        // Every truncation and a wrong magic are refused, never half-read.
        for cut in stride(from: 1, to: bytes.count, by: 7) {
            let decoded = LocalChunkIndex.decode(Array(bytes[..<cut]))
            XCTAssertTrue(decoded == nil || decoded?.files.isEmpty == true, "cut at \(cut)")
        }
        var wrong = bytes
        wrong[0] ^= 1
        XCTAssertNil(LocalChunkIndex.decode(wrong))
        // Lengths that do not add up to the size are refused.
        var lying = bytes
        lying[lying.count - 9] ^= 0x40
        XCTAssertNil(LocalChunkIndex.decode(lying))
    }
}
