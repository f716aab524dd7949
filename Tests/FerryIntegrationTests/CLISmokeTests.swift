import FerryTestSupport
import Foundation
import XCTest

/// The built `ferry` executable against a real `ferry serve` on loopback.
final class CLISmokeTests: XCTestCase {
    func testListAndGetFromARealServer() throws {
        let work = try TestSupport.makeTemporaryDirectory("ferry-smoke")
        defer { TestSupport.removeTemporaryDirectory(work) }
        let sample = try TestSupport.materializeFixtures(in: work)
        let server = try ServerProcess(serving: sample, arguments: ["--bind", "127.0.0.1", "--no-discovery"])
        defer { server.stop() }

        let ls = try TestSupport.ferry(["ls", server.address])
        XCTAssertEqual(ls.status, 0, ls.stderr)
        XCTAssertTrue(ls.stdout.contains("hello world.txt"), ls.stdout)

        let out = work.appendingPathComponent("fetched.txt")
        let get = try TestSupport.ferry(["get", "\(server.address)/hello world.txt", out.path])
        XCTAssertEqual(get.status, 0, get.stderr)
        XCTAssertEqual(FileManager.default.contents(atPath: out.path),
                       FileManager.default.contents(atPath: sample.appendingPathComponent("hello world.txt").path))
        XCTAssertEqual(server.stop(), 0, "SIGTERM must stop the server with status 0")
    }
}
