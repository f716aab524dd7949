#if canImport(Glibc)
import Glibc
#endif
import FerryTestSupport
import Foundation
import XCTest

/// What a client refuses to take from a server even when the server is honest about it.
final class ClientSafetyTests: XCTestCase {
    /// setuid/setgid bits are never applied: a server must not be able to plant a set-id
    /// program on the client (the client may well run as root). Permission bits and the
    /// sticky bit are kept, and a re-sync sees nothing to fix.
    func testSetIDBitsAreNeverApplied() throws {
        let work = try TestSupport.makeTemporaryDirectory("ferry-setid")
        defer { TestSupport.removeTemporaryDirectory(work) }
        let served = work.appendingPathComponent("src")
        let shared = served.appendingPathComponent("shared")
        try FileManager.default.createDirectory(at: shared, withIntermediateDirectories: true)
        let tool = served.appendingPathComponent("tool")
        try Data("#!/bin/sh\necho hi\n".utf8).write(to: tool)
        XCTAssertEqual(chmod(tool.path, 0o4755), 0)
        XCTAssertEqual(chmod(shared.path, 0o3775), 0)  // setgid + sticky

        let server = try ServerProcess(serving: served, arguments: ["--bind", "127.0.0.1", "--no-discovery",
                                                                   "--state-dir", work.appendingPathComponent("state").path])
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")
        let sync = try TestSupport.ferry(["sync", server.address, dest.path, "--json"])
        XCTAssertEqual(sync.status, 0, sync.stderr)
        XCTAssertEqual(try mode(dest.appendingPathComponent("tool")), 0o755)
        XCTAssertEqual(try mode(dest.appendingPathComponent("shared")), 0o1775)

        let got = work.appendingPathComponent("tool.copy")
        let get = try TestSupport.ferry(["get", "\(server.address)/tool", got.path])
        XCTAssertEqual(get.status, 0, get.stderr)
        XCTAssertEqual(try mode(got), 0o755)

        let again = try TestSupport.ferry(["sync", server.address, dest.path, "--dry-run"])
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertFalse(again.stdout.contains("tool"), "a re-sync keeps trying to fix the stripped mode: \(again.stdout)")
    }

    private func mode(_ url: URL) throws -> UInt32 {
        var st = stat()
        guard stat(url.path, &st) == 0 else { throw CocoaError(.fileNoSuchFile) }
        return UInt32(st.st_mode & 0o7777)
    }
}
