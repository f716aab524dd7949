#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// DEST may hold what ferry did not make: a FIFO, a socket, a device. Opening one to read or
/// to set attributes must neither block (a FIFO's open waits for a writer) nor change it.
final class LocalTreeSafetyTests: XCTestCase {
    func testSpecialFilesAreRefusedAtOnceAndLeftAsTheyWere() throws {
        let dir = try TestSupport.makeTemporaryDirectory("ferry-localtree")
        defer { TestSupport.removeTemporaryDirectory(dir) }
        let fifo = dir.appendingPathComponent("pipe")
        XCTAssertEqual(mkfifo(fifo.path, 0o600), 0)
        let tree = try LocalTree(path: dir.path, create: false)
        let path = try RemotePath(validating: "pipe")

        let start = Date()
        XCTAssertThrowsError(try tree.openFile(path)) { error in
            XCTAssertTrue("\(error)".contains("it is a FIFO here, which ferry leaves alone"), "\(error)")
        }
        XCTAssertThrowsError(try tree.setAttributes(path, mode: 0o644, mtime: Timestamp(seconds: 1, nanoseconds: 0)))
        XCTAssertLessThan(Date().timeIntervalSince(start), 2, "opening a FIFO must not wait for a writer")
        var st = stat()
        XCTAssertEqual(lstat(fifo.path, &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o600, "the FIFO's mode was changed")
        XCTAssertNotEqual(st.st_mtim.tv_sec, 1, "the FIFO's mtime was changed")

        // Regular files and directories still work.
        try Data("x".utf8).write(to: dir.appendingPathComponent("file"))
        XCTAssertNoThrow(try tree.openFile(try RemotePath(validating: "file")))
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("sub"), withIntermediateDirectories: true)
        XCTAssertNoThrow(try tree.setAttributes(try RemotePath(validating: "sub"), mode: 0o750, mtime: Timestamp(seconds: 1000, nanoseconds: 0)))
    }

    func testADestinationThatIsNotADirectorySaysSo() throws {
        let dir = try TestSupport.makeTemporaryDirectory("ferry-localtree")
        defer { TestSupport.removeTemporaryDirectory(dir) }
        let file = dir.appendingPathComponent("afile")
        try Data("x".utf8).write(to: file)
        XCTAssertThrowsError(try LocalTree(path: file.path, create: true)) { error in
            XCTAssertTrue("\(error)".contains("it is not a directory (DEST must be a folder"), "\(error)")
        }
    }
}
