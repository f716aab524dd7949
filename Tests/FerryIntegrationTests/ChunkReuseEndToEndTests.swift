#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// Issue 15 end to end: the built `ferry sync` against a `ferry serve` child on loopback builds
/// files from chunks already in DEST (content-defined chunk maps, capability `cdc`), so an
/// insertion, a rename and a duplicate cost only their new chunks on the wire, and every copy
/// is byte-identical.
final class ChunkReuseEndToEndTests: XCTestCase {
    var work: URL!
    var src: URL!
    var dest: URL!
    var server: ServerProcess!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-cdc-e2e")
        src = work.appendingPathComponent("src")
        dest = work.appendingPathComponent("dest")
        try FileManager.default.createDirectory(at: src, withIntermediateDirectories: true)
        server = try ServerProcess(serving: src, arguments: serveArguments(stateDir: work.appendingPathComponent("state")))
    }

    override func tearDownWithError() throws {
        server?.stop()
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    /// The last sync's JSON events (`retry`, `warning`, ...).
    private var events: [[String: Any]] = []

    private func sync(_ extra: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let result = try TestSupport.ferry(["sync", server.address, dest.path, "--json"] + extra, timeout: 120)
        XCTAssertEqual(result.status, 0, result.stderr, file: file, line: line)
        events = JSONLines.parse(result.stdout)
        return try XCTUnwrap(JSONLines.summary(result.stdout), result.stdout.suffix(400) + result.stderr, file: file, line: line)
    }

    /// The messages of the last sync's `retry` events.
    private var retries: [String] { events.filter { $0["event"] as? String == "retry" }.compactMap { $0["message"] as? String } }

    private func fileWire(_ s: [String: Any]) -> Int { JSONLines.int(s, "fileWireBytes") ?? -1 }

    /// DEST equals the source, byte for byte.
    private func assertSameTree(file: StaticString = #filePath, line: UInt = #line) throws {
        let a = try TreeSnapshot.take(src), b = try TreeSnapshot.take(dest, skip: [".ferry-partial"])
        XCTAssertEqual(a.items.mapValues(\.sha256), b.items.mapValues(\.sha256), file: file, line: line)
    }

    private func write(_ name: String, _ bytes: [UInt8]) throws {
        let url = src.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Files.write(url, bytes)
    }

    /// Random bytes from a seed: the chunk boundaries, and so the figures, are the same every run.
    private func seeded(_ count: Int, seed: UInt64) -> [UInt8] {
        var g = SplitMix64(seed: seed)
        return g.packedBytes(count)
    }

    func testInsertionNearTheStartCostsOnlyTheNewChunks() throws {
        let size = 16 << 20
        var bytes = seeded(size, seed: 42)
        try write("big.bin", bytes)
        _ = try sync()
        bytes.insert(contentsOf: Array("hello".utf8), at: 1000)
        try write("big.bin", bytes)
        try Files.setMtime(src.appendingPathComponent("big.bin"), seconds: Int(Date().timeIntervalSince1970) + 60)
        let s = try sync()
        let wire = fileWire(s)
        print("5 bytes inserted at 1000 in \(size >> 20) MiB: fileWireBytes=\(wire) (\(Double(wire) * 100 / Double(size))%)")
        XCTAssertEqual(JSONLines.int(s, "filesDelta"), 1)
        XCTAssertLessThan(wire, size / 100, "an insertion costs its chunk and the map, not the rest of the file")
        try assertSameTree()
    }

    func testAnAppendCostsOnlyTheNewBytes() throws {
        let size = 8 << 20
        var bytes = try Files.randomBytes(size)
        try write("log.bin", bytes)
        _ = try sync()
        let tail = try Files.randomBytes(100_000)
        bytes += tail
        try write("log.bin", bytes)
        try Files.setMtime(src.appendingPathComponent("log.bin"), seconds: Int(Date().timeIntervalSince1970) + 60)
        let s = try sync()
        let wire = fileWire(s)
        print("100,000 bytes appended to \(size >> 20) MiB: fileWireBytes=\(wire)")
        XCTAssertLessThan(wire, tail.count + 4096, "an append costs the new bytes and one HASH, no map")
        try assertSameTree()
    }

    func testRenameAndDuplicateCostOnlyTheMap() throws {
        let size = 8 << 20
        let a = try Files.randomBytes(size), b = try Files.randomBytes(size / 2)
        try write("dir/a.bin", a)
        try write("b.bin", b)
        _ = try sync()
        // On the server: a renamed into another folder, b copied under a new name.
        try FileManager.default.createDirectory(at: src.appendingPathComponent("moved"), withIntermediateDirectories: true)
        try FileManager.default.moveItem(at: src.appendingPathComponent("dir/a.bin"), to: src.appendingPathComponent("moved/renamed.bin"))
        try write("b copy.bin", b)
        let s = try sync(["--delete"])
        let wire = fileWire(s)
        print("rename of \(size >> 20) MiB + duplicate of \(size >> 21) MiB: fileWireBytes=\(wire)")
        XCTAssertEqual(JSONLines.int(s, "filesFetched"), 2)
        XCTAssertLessThan(wire, (size + size / 2) / 200, "a rename and a copy cost their chunk maps only")
        try assertSameTree()
        XCTAssertFalse(Files.exists(dest.appendingPathComponent("dir/a.bin")), "--delete removed the old name after it was reused")
    }

    func testARenamedFolderOfManyFilesCostsLittle() throws {
        var total = 0
        var g = SplitMix64(seed: 15)
        for i in 0..<300 {
            let size = 16 * 1024 + Int(g.next() % (96 * 1024))
            total += size
            try write("photos/IMG_\(i).jpg", try Files.randomBytes(size))
        }
        _ = try sync()
        try FileManager.default.moveItem(at: src.appendingPathComponent("photos"), to: src.appendingPathComponent("photos-2024"))
        let s = try sync(["--delete"])
        let wire = JSONLines.int(s, "wireBytes") ?? -1
        print("folder of 300 files (\(total >> 20) MiB) renamed: wireBytes=\(wire) (\(Double(wire) * 100 / Double(total))%)")
        XCTAssertEqual(JSONLines.int(s, "filesFetched"), 300)
        XCTAssertLessThan(wire, total / 100, "a renamed folder costs its manifest and chunk maps, under 1% of its bytes")
        try assertSameTree()
    }

    /// Where `ferry sync` keeps the chunk index of DEST (in the tests' throwaway state folder).
    private var indexPath: String {
        let state = TestSupport.isolatedVariables["XDG_STATE_HOME"] ?? ""
        return state + "/ferry/chunks-" + SHA256Hasher.hex(Array(dest.standardizedFileURL.path.utf8)).prefix(16) + ".idx"
    }

    func testTheIndexIsKeptAcrossRunsAndAFileThatChangedUnderItIsNotTrusted() throws {
        let size = 4 << 20
        let a = try Files.randomBytes(size)
        try write("a.bin", a)
        _ = try sync()
        try write("b.bin", try Files.randomBytes(ContentChunker.maxSize))
        _ = try sync()
        let saved = try XCTUnwrap(LocalChunkIndex.load(indexPath), "the index of DEST is saved in the state folder")
        XCTAssertEqual(saved.files.map(\.path.description), ["a.bin"])

        // Damage dest/a.bin so that its key no longer tells (the index is edited to carry the
        // new key with the old chunks: a change the key cannot see, say one made within the
        // timestamps' resolution). Then ask for copies of the original: one all reusable, one
        // with new bytes in the middle (a ranged GET in flight while the bad chunks are read).
        let local = dest.appendingPathComponent("a.bin")
        var damaged = a
        for i in stride(from: 0, to: size, by: 4096) { damaged[i] ^= 0xFF }
        try Files.write(local, damaged)
        let info = try FerryFiles.POSIX.stat(local.path)
        let lying = LocalChunkIndex(files: saved.files.map { LocalChunkIndex.File(path: $0.path, key: HashKey(info), chunks: $0.chunks) })
        try lying.save(to: indexPath)
        var shifted = a
        shifted.insert(contentsOf: try Files.randomBytes(100_000), at: size / 2)
        try write("copy.bin", a)
        try write("shifted.bin", shifted)
        _ = try sync()
        XCTAssertEqual(Files.read(dest.appendingPathComponent("copy.bin")).map(SHA256Hasher.hex), SHA256Hasher.hex(a))
        // Each chunk read from DEST is checked as it is read: with nothing else in flight the
        // bad ones are fetched at once, and copy.bin never reaches a whole-file mismatch. (A file
        // with ranged GETs in flight is tried again without reuse instead.)
        XCTAssertFalse(retries.contains { $0.hasPrefix("copy.bin") }, "\(retries)")
        XCTAssertEqual(Files.read(dest.appendingPathComponent("shifted.bin")).map(SHA256Hasher.hex), SHA256Hasher.hex(shifted))
        XCTAssertEqual(Files.read(local).map(SHA256Hasher.hex), SHA256Hasher.hex(a), "the damaged file is fetched again too")
    }

    func testWithoutReuseTheFileIsFetchedWhole() throws {
        let size = 4 << 20
        let a = try Files.randomBytes(size)
        try write("a.bin", a)
        _ = try sync()
        try write("copy.bin", a)
        let s = try sync(["--no-reuse"])
        XCTAssertGreaterThanOrEqual(fileWire(s), size, "--no-reuse fetches the copy")
        try assertSameTree()
    }
}
