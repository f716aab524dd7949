#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import XCTest

/// Manifest notes (PROTOCOL.md 8.4), the `report` argument of MANIFEST, the walker's reports,
/// and sparse writes.
final class ManifestNoteTests: XCTestCase {
    private func path(_ s: String) throws -> RemotePath { try RemotePath(validating: s) }

    private func parseNote(_ line: String) throws -> ManifestNote {
        let bytes = Array(line.utf8)
        return try bytes.withUnsafeBufferPointer { b throws -> ManifestNote in try ManifestNote(bytes: b) }
    }

    func testNoteLinesRoundTrip() throws {
        let notes: [ManifestNote] = [
            .unreadable(try path("private dir")), .unreadable(.root), .special(try path("a/fifo")),
            .tooLong(parent: try path("deep/er"), name: Array("n\u{e9} x".utf8)), .tooLong(parent: .root, name: [0x61]),
        ]
        XCTAssertEqual(notes[0].line, "! unreadable private%20dir")
        XCTAssertEqual(notes[1].line, "! unreadable .")
        XCTAssertEqual(notes[3].line, "! too-long deep/er n%C3%A9%20x")
        for note in notes { XCTAssertEqual(try parseNote(note.line), note, note.line) }
    }

    func testBadNoteLinesAreRefused() {
        for line in ["!", "! unreadable", "! unreadable a b", "! special .", "! special ../x", "! odd a",
                     "! too-long a", "! too-long a b%2Fc", "! too-long a ..", "!  unreadable a", "x unreadable a"] {
            XCTAssertThrowsError(try parseNote(line), line)
        }
    }

    func testManifestCarriesNotesAfterItsEntries() throws {
        let entry = Entry(type: .directory, mode: 0o755, size: 0, mtime: Timestamp(seconds: 1, nanoseconds: 0), path: try path("d"))
        let manifest = Manifest(entries: [entry], notes: [.unreadable(try path("d")), .special(try path("p"))])
        XCTAssertTrue(manifest.text.hasSuffix("d\n! unreadable d\n! special p\n"), manifest.text)
        XCTAssertEqual(try Manifest.parse(manifest.text), manifest)
        XCTAssertEqual(try Manifest.parse(Manifest(entries: [entry]).text).notes, [])
        XCTAssertThrowsError(try Manifest.parse("ferry-manifest 1\n! special p\nd 0755 0 1.000000000 d\n"),
                             "entries after a note are refused")
        XCTAssertThrowsError(try Manifest.parse("ferry-manifest 1\n! nonsense p\n"))
    }

    func testManifestRequestReportArgument() throws {
        func parse(_ line: String) throws -> Request { try Request.parse(Substring(line)) }
        XCTAssertEqual(try parse("MANIFEST . report=yes"), .manifest(.root, hashes: true, report: true))
        XCTAssertEqual(try parse("MANIFEST . hashes=no report=yes"), .manifest(.root, hashes: false, report: true))
        XCTAssertEqual(try parse("MANIFEST . report=yes hashes=no"), .manifest(.root, hashes: false, report: true))
        XCTAssertEqual(try parse("MANIFEST . report=no"), .manifest(.root, hashes: true, report: false))
        XCTAssertEqual(Request.manifest(.root, hashes: false, report: true).line, "MANIFEST . hashes=no report=yes")
        XCTAssertEqual(Request.manifest(.root, hashes: true).line, "MANIFEST .", "1.0 servers never see the argument unasked")
        for bad in ["MANIFEST . report=yes report=yes", "MANIFEST . report=maybe", "MANIFEST . hashes=no hashes=no",
                    "MANIFEST . a b c"] {
            XCTAssertThrowsError(try parse(bad), bad)
        }
    }

    /// The walker notes what it leaves out instead of dropping it silently.
    func testWalkerReportsSpecialFilesUnreadableDirectoriesAndTooLongPaths() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("ferry-notes-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: root) }
        try FileManager.default.createDirectory(at: root.appendingPathComponent("ok"), withIntermediateDirectories: true)
        XCTAssertEqual(mkfifo(root.appendingPathComponent("ok/fifo").path, 0o600), 0)
        let fd = open(root.path, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        var walk = try TreeWalker.walkReporting(directory: fd)
        XCTAssertEqual(walk.entries.map(\.path.description), ["ok"])
        XCTAssertEqual(walk.notes, [.special(try path("ok/fifo"))])

        // A directory nobody may open (only meaningful when permissions apply to us).
        guard geteuid() != 0 else { return }
        try FileManager.default.createDirectory(at: root.appendingPathComponent("locked"), withIntermediateDirectories: true)
        chmod(root.appendingPathComponent("locked").path, 0o000)
        defer { chmod(root.appendingPathComponent("locked").path, 0o755) }
        walk = try TreeWalker.walkReporting(directory: fd)
        XCTAssertTrue(walk.notes.contains(.unreadable(try path("locked"))), "\(walk.notes)")
    }

    func testSparseWriterLeavesZeroBlocksAsHoles() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("ferry-sparse-\(UUID().uuidString.prefix(8))")
        defer { unlink(url.path) }
        let fd = open(url.path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let handle = FileHandle(fd: fd)
        var data = [UInt8](repeating: 0, count: 4 << 20)
        for i in 0..<5000 { data[i] = 1 }                        // the first two blocks
        data[(2 << 20) + 17] = 2                                   // one byte in the middle
        let end = try data.withUnsafeBytes { try SparseWriter.write($0, at: 0, to: handle, path: url.path) }
        XCTAssertEqual(end, (2 << 20) + 4096, "the last block written ends the written range")
        XCTAssertEqual(ftruncate(fd, off_t(data.count)), 0)
        XCTAssertEqual(try handle.read(count: data.count, at: 0), data)
        var st = stat()
        XCTAssertEqual(fstat(fd, &st), 0)
        XCTAssertLessThanOrEqual(Int(st.st_blocks) * 512, 64 * 1024, "only three 4 KiB blocks hold data")
        XCTAssertTrue(SparseWriter.isZero(UnsafeRawBufferPointer(start: nil, count: 0)))
        XCTAssertFalse([0, 0, 0, 0, 0, 0, 0, 0, 0, 1].withUnsafeBytes { SparseWriter.isZero($0) })
    }
}
