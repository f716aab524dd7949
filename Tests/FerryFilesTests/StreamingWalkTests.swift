#if canImport(Glibc)
import Glibc
#endif
@testable import FerryFiles
import FerryProtocol
import Foundation
import XCTest

/// The pieces a server streams a huge manifest with: a walk that stops and goes on (`TreeCursor`)
/// and a spool that moves to a temporary file when it outgrows memory.
final class StreamingWalkTests: XCTestCase {
    private var work: URL!

    override func setUpWithError() throws {
        work = FileManager.default.temporaryDirectory.appendingPathComponent("walk-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: work)
    }

    /// A tree with nested directories, a symlink, a FIFO and names that sort unusually.
    private func makeTree() throws -> URL {
        let root = work.appendingPathComponent("tree")
        let fm = FileManager.default
        for d in ["a", "a/b", "a/b/c", "B", "z z"] {
            try fm.createDirectory(at: root.appendingPathComponent(d), withIntermediateDirectories: true)
        }
        for (i, f) in ["a/1", "a/b/2", "a/b/c/3", "B/4", "z z/5 five", "top", "a/b/c/%x"].enumerated() {
            try Data(repeating: UInt8(i), count: i * 10).write(to: root.appendingPathComponent(f))
        }
        try fm.createSymbolicLink(atPath: root.appendingPathComponent("link").path, withDestinationPath: "top")
        XCTAssertEqual(mkfifo(root.appendingPathComponent("a/fifo").path, 0o644), 0)
        return root
    }

    func testAWalkInSlicesOfAnySizeEqualsTheWalkInOneGo() throws {
        let root = try makeTree()
        let fd = open(root.path, O_RDONLY | O_DIRECTORY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        let whole = try TreeWalker.walkReporting(directory: fd)
        XCTAssertEqual(whole.entries.count, 13)
        XCTAssertEqual(whole.notes, [.special(try RemotePath(validating: "a/fifo"))])
        for slice in [1, 2, 3, 5, 100] {
            let cursor = TreeCursor(directory: fd)
            var entries: [Entry] = []
            var slices = 0
            while try cursor.advance(entries: slice, visitFile: { _, _, _, _ in }, emit: { entries.append($0) }) {
                slices += 1
                XCTAssertLessThanOrEqual(entries.count, slices * slice, "a slice emits at most its size")
            }
            XCTAssertEqual(entries, whole.entries, "slices of \(slice)")
            XCTAssertEqual(cursor.notes, whole.notes)
            XCTAssertEqual(cursor.count, whole.entries.count)
        }
    }

    /// Directories are read with `getdents64` on the walk's own descriptor: names come out
    /// whole (long, odd, many: more than one 32 KiB read), `fresh` or rewound alike, and a
    /// directory removed after it was opened reads as empty, as `readdir` says, not as an error.
    func testDirectoryReadsGiveEveryNameAndARemovedDirectoryIsEmpty() throws {
        let dir = work.appendingPathComponent("many")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var expected = Set<[UInt8]>()
        for i in 0..<1_500 {
            let name = "f\(i)-" + String(repeating: "x", count: i % 200) + (i % 7 == 0 ? "\ncafé %" : "")
            XCTAssertTrue(FileManager.default.createFile(atPath: dir.appendingPathComponent(name).path, contents: nil))
            expected.insert(Array(name.utf8))
        }
        let fd = open(dir.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        for fresh in [true, false, false] {  // a second read without `fresh` rewinds first
            var names = Set<[UInt8]>()
            try POSIX.forEachDirectoryName(fd, fresh: fresh) { names.insert(Array($0)) }
            XCTAssertEqual(names, expected)
        }
        let gone = work.appendingPathComponent("gone")
        try FileManager.default.createDirectory(at: gone, withIntermediateDirectories: true)
        let goneFD = open(gone.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        XCTAssertGreaterThanOrEqual(goneFD, 0)
        defer { close(goneFD) }
        XCTAssertEqual(rmdir(gone.path), 0)
        var count = 0
        XCTAssertNoThrow(try POSIX.forEachDirectoryName(goneFD, fresh: true) { _ in count += 1 })
        XCTAssertEqual(count, 0)
    }

    func testTooManyEntriesEndsTheWalk() throws {
        let root = try makeTree()
        let fd = open(root.path, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        let cursor = TreeCursor(directory: fd, options: .init(maxEntries: 4))
        var emitted = 0
        XCTAssertThrowsError(try { while try cursor.advance(entries: 2, visitFile: { _, _, _, _ in }, emit: { _ in emitted += 1 }) {} }()) { error in
            guard case TreeWalker.WalkError.tooManyEntries(4) = error else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(emitted, 4)
    }

    func testASmallSpoolStaysInMemory() throws {
        let spool = Spool(directory: work.path, memoryLimit: 1024)
        try spool.append { $0.append(contentsOf: Array("hello\n".utf8)) }
        guard case .memory(let bytes) = try spool.finish() else { return XCTFail("spilled 6 bytes") }
        XCTAssertEqual(bytes, Array("hello\n".utf8))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: work.path), [])
    }

    func testALargeSpoolGoesToAnUnnamedFileAndReadsBackExactly() throws {
        let spool = Spool(directory: work.path, memoryLimit: 1000)
        var expected: [UInt8] = []
        for i in 0..<5000 {
            let line = Array("line \(i) \(String(repeating: "x", count: i % 300))\n".utf8)
            expected += line
            try spool.append { $0.append(contentsOf: line) }
        }
        XCTAssertEqual(spool.count, Int64(expected.count))
        guard case .file(let handle, let length) = try spool.finish() else { return XCTFail("\(expected.count) bytes stayed in memory") }
        XCTAssertEqual(length, Int64(expected.count))
        XCTAssertEqual(try handle.read(count: expected.count, at: 0), expected)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: work.path), [], "the spool file has no name")
    }

    func testASpoolInAFolderItCannotWriteSaysWhere() throws {
        let spool = Spool(directory: work.appendingPathComponent("missing").path, memoryLimit: 10)
        XCTAssertThrowsError(try spool.append { $0.append(contentsOf: [UInt8](repeating: 1, count: 20)) }) { error in
            XCTAssertTrue("\(error)".contains("missing"), "\(error)")
        }
    }

    func testANameListSortsAsManifestOrderDoes() {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("aAbB zZ%.-_0129".utf8) + [0xC3, 0xA9, 0xFF, 0x01]
        // `alphabet` is not empty: `randomElement` always has one.
        let names = (0..<3000).map { _ in (0..<Int.random(in: 1...12, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! } }
        var list = NameList()
        for name in names { name.withUnsafeBufferPointer { list.append($0) } }
        list.sort()
        let expected = names.sorted { a, b in
            a.withUnsafeBufferPointer { x in b.withUnsafeBufferPointer { y in RemotePath.manifestOrder(x, y) < 0 } }
        }
        XCTAssertEqual((0..<list.count).map { list[$0] }, expected)
    }
}
