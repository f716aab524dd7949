#if canImport(Glibc)
import Glibc
#endif
import FerryTestSupport
import Foundation
import XCTest

/// A full disk, made real with a small tmpfs (mounting needs root; `scripts/test` runs this in
/// its root phase, where a skip is a failure).
final class FullDiskPrivilegedTests: XCTestCase {
    /// A full disk is a clear local error (exit 5) that keeps the verified partial data.
    func testFullDiskGivesAClearErrorAndKeepsThePartial() throws {
        try TestSupport.requireRoot("mounts a 4 MiB tmpfs to fill it")
        let work = try TestSupport.makeTemporaryDirectory("ferry-full-disk")
        defer { TestSupport.removeTemporaryDirectory(work) }
        let served = work.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: served, withIntermediateDirectories: true)
        try randomData(12 << 20).write(to: served.appendingPathComponent("big.bin"))
        let mount = work.appendingPathComponent("small")
        try FileManager.default.createDirectory(at: mount, withIntermediateDirectories: true)
        let mountTool = TestSupport.executable(["/bin/mount", "/usr/bin/mount"]) ?? "/bin/mount"
        let umountTool = TestSupport.executable(["/bin/umount", "/usr/bin/umount"]) ?? "/bin/umount"
        try TestSupport.run(mountTool, ["-t", "tmpfs", "-o", "size=4m,mode=0777", "ferry-test-tmpfs", mount.path])
        defer { _ = try? TestSupport.run(umountTool, [mount.path], check: false) }
        let server = try ServerProcess(serving: served, arguments: ["--bind", "127.0.0.1", "--no-discovery",
                                                                    "--state-dir", work.appendingPathComponent("state").path])
        defer { server.stop() }
        let dest = mount.appendingPathComponent("big.bin")
        let result = try TestSupport.ferry(["get", "\(server.address)/big.bin", dest.path], timeout: 60)
        XCTAssertEqual(result.status, 5, result.stderr)
        XCTAssertTrue(result.stderr.lowercased().contains("no space left"), result.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dest.path))
        let partial = mount.appendingPathComponent(".big.bin.ferry-partial")
        let kept = (try? FileManager.default.attributesOfItem(atPath: partial.path)[.size] as? Int) ?? 0
        XCTAssertGreaterThan(kept, 1 << 20, "the verified partial data must be kept")
        XCTAssertLessThanOrEqual(kept, 4 << 20, "the 4 MiB disk was the limit")
    }
}
