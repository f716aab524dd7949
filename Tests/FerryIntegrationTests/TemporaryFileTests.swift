#if canImport(Glibc)
import Glibc
#endif
@testable import FerryClient
import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import Logging
import XCTest

/// Files of at most one chunk are written to a temporary beside their target
/// (`.~ferry-XXXXXXXXXXXXXXXX`) and renamed within that directory; these tests pin down that
/// temporaries never survive a sync, never count as content, and stale ones are cleaned up.
final class TemporaryFileTests: XCTestCase {
    var work: URL!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-temporaries")
    }

    override func tearDownWithError() throws {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    func testTemporaryNamesAreRecognisedExactly() throws {
        XCTAssertTrue(PartialFile.isTemporaryName(Array(".~ferry-0123456789abcdef".utf8)))
        for name in [".~ferry-0123456789abcde", ".~ferry-0123456789abcdef0", ".~ferry-0123456789ABCDEF",
                     "x.~ferry-0123456789abcdef", ".~ferry-0123456789abcdeg", "~ferry-0123456789abcdef0"] {
            XCTAssertFalse(PartialFile.isTemporaryName(Array(name.utf8)), name)
            XCTAssertFalse(PartialFile.isTemporary(try RemotePath(validating: "dir/" + name)), name)
        }
        // The path form looks at the last component only.
        XCTAssertTrue(PartialFile.isTemporary(try RemotePath(validating: ".~ferry-0123456789abcdef")))
        XCTAssertTrue(PartialFile.isTemporary(try RemotePath(validating: "a/b/.~ferry-0123456789abcdef")))
        XCTAssertFalse(PartialFile.isTemporary(try RemotePath(validating: ".~ferry-0123456789abcdef/x")))
        XCTAssertFalse(PartialFile.isTemporary(try RemotePath(validating: "a.~ferry-0123456789abcdef")))
        // A temporary made here has such a name.
        let made = try PartialFile.temporary(in: FerryFiles.FileHandle(fd: open(work.path, O_RDONLY | O_DIRECTORY)), directoryDisplay: work.path,
                                             for: PartialIdentity(size: 0, mtime: Timestamp(seconds: 0, nanoseconds: 0), sha256: nil),
                                             label: "t")
        let names = try FileManager.default.contentsOfDirectory(atPath: work.path).filter { $0.hasPrefix(".~ferry-") }
        XCTAssertEqual(names.count, 1)
        XCTAssertTrue(PartialFile.isTemporaryName(Array(names[0].utf8)), names[0])
        withExtendedLifetime(made) {}
    }

    func testATemporaryIsRenamedIntoPlaceOrRemovedWhenDropped() throws {
        let dest = work.appendingPathComponent("dest")
        let tree = try LocalTree(path: dest.path, create: true)
        let identity = PartialIdentity(size: 5, mtime: Timestamp(seconds: 1_600_000_000, nanoseconds: 5), sha256: nil)
        let path = try RemotePath(validating: Array("a.txt".utf8))

        // Dropped unfinished (a connection lost mid-file): nothing is left behind.
        do {
            let partial = try PartialFile.temporary(in: tree.root, directoryDisplay: dest.path, for: identity, label: "a.txt")
            try "hel".utf8.withContiguousStorageIfAvailable { try partial.append(UnsafeRawBufferPointer($0), at: 0) }
            XCTAssertEqual(try names(dest).count, 1)
        }
        XCTAssertEqual(try names(dest), [])

        // Finished: renamed into place with its mode and mtime, replacing an empty directory in
        // the way (one holding anything is never removed to make room).
        try FileManager.default.createDirectory(at: dest.appendingPathComponent("a.txt"), withIntermediateDirectories: true)
        let partial = try PartialFile.temporary(in: tree.root, directoryDisplay: dest.path, for: identity, label: "a.txt")
        try Array("hello".utf8).withUnsafeBytes { try partial.append($0, at: 0) }
        try partial.finish(into: tree, at: path, partialDir: tree.root, mode: 0o640, mtime: identity.mtime)
        XCTAssertEqual(try names(dest), ["a.txt"])
        XCTAssertEqual(try String(contentsOf: dest.appendingPathComponent("a.txt"), encoding: .utf8), "hello")
        let info = try POSIX.lstat(dest.appendingPathComponent("a.txt").path)
        XCTAssertEqual(info.mode, 0o640)
        XCTAssertEqual(info.mtime, identity.mtime)
    }

    func testStaleTemporariesAreRemovedAndFreshOnesKept() throws {
        let dest = work.appendingPathComponent("dest")
        try FileManager.default.createDirectory(at: dest.appendingPathComponent("d"), withIntermediateDirectories: true)
        let stale = dest.appendingPathComponent("d/.~ferry-00000000000000aa")
        try Data("left by a killed run".utf8).write(to: stale)
        let tree = try LocalTree(path: dest.path, create: false)
        let syncer = Syncer(endpoint: Endpoint(host: "127.0.0.1", port: 9), remotePath: .root, destination: dest.path,
                            options: .init(), logger: Logger(label: "test"))
        let path = try RemotePath(validating: Array("d/.~ferry-00000000000000aa".utf8))
        syncer.removeStaleTemporaries([path], in: tree)  // changed just now: may belong to a running sync
        XCTAssertTrue(FileManager.default.fileExists(atPath: stale.path))
        syncer.removeStaleTemporaries([path], in: tree, olderThan: 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale.path))
    }

    /// A sync of many small files (each through a temporary) and some multi-chunk ones leaves
    /// an exact copy: no temporary, no partial folder; a temporary already in DEST is not
    /// listed as content, and with no other sync live in DEST it was left by a dead run and goes.
    func testASyncLeavesNoTemporariesBehind() throws {
        let src = work.appendingPathComponent("src")
        var rng = SplitMix64(seed: 7)
        for i in 0..<300 {
            let dir = src.appendingPathComponent("d\(i % 7)/e\(i % 3)")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let size = i % 50 == 0 ? 700_000 + i : Int(rng.next() % 20_000)
            try Data((0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) }).write(to: dir.appendingPathComponent("f\(i)"))
        }
        try Data().write(to: src.appendingPathComponent("empty"))
        let server = try ServerProcess(serving: src, arguments: serveArguments(stateDir: work.appendingPathComponent("state")))
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")
        try FileManager.default.createDirectory(at: dest, withIntermediateDirectories: true)
        let fresh = dest.appendingPathComponent(".~ferry-0000000000000bbb")
        try Data("another run's".utf8).write(to: fresh)

        let result = try TestSupport.ferry(["sync", server.address, dest.path, "--delete"], timeout: 120)
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: fresh.path), "no live sync holds DEST: a dead run's temporary")
        let diff = try TestSupport.run("/usr/bin/diff", ["-r", src.path, dest.path], check: false)
        XCTAssertEqual(diff.status, 0, diff.stdout + diff.stderr)
        let leftovers = FileManager.default.enumerator(atPath: dest.path)?.compactMap { $0 as? String }
            .filter { $0.contains(".~ferry-") || $0.contains(".ferry-partial") } ?? ["?"]
        XCTAssertEqual(leftovers, [])
    }

    private func names(_ dir: URL) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
    }
}
