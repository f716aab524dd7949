import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// `ferry serve` as a systemd service runs it: stderr connected to the journal (which systemd
/// announces with JOURNAL_STREAM=DEVICE:INODE), the level from FERRY_LOG, stopped by SIGTERM.
final class ServiceLoggingTests: XCTestCase {
    /// Runs `ferry serve` with stderr appended to `log`; with `journal`, JOURNAL_STREAM names
    /// that file as systemd names the journal stream. Serves one `get`, then stops on SIGTERM.
    private func serve(log: URL, journal: Bool, level: String?, work: URL) throws -> Int32 {
        let sample = try TestSupport.materializeFixtures(in: work)
        let announce = journal ? "export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); " : ""
        let wrapper = ["/bin/sh", "-c", "exec 2>>\"$FERRY_TEST_LOG\"; \(announce)exec \"$@\"", "sh"]
        var environment = ["FERRY_TEST_LOG": log.path]
        if let level { environment["FERRY_LOG"] = level }
        if !journal { environment["JOURNAL_STREAM"] = "1:1" }  // inherited, naming another stream
        let server = try ServerProcess(
            serving: sample, arguments: ["--bind", "127.0.0.1", "--no-discovery",
                                         "--state-dir", work.appendingPathComponent("state").path],
            wrapper: wrapper, environment: environment)
        let got = try TestSupport.ferry(["get", "\(server.address)/hello world.txt", work.appendingPathComponent("h").path])
        XCTAssertEqual(got.status, 0, got.stderr)
        return server.stop(grace: 5)
    }

    private func lines(_ url: URL) throws -> [String] {
        try String(contentsOf: url, encoding: .utf8).split(separator: "\n").map(String.init)
    }

    func testServeWritesOneJournalLinePerEventWithItsPriority() throws {
        let work = try TestSupport.makeTemporaryDirectory("ferry-journal")
        defer { TestSupport.removeTemporaryDirectory(work) }
        let log = work.appendingPathComponent("journal")
        XCTAssertEqual(try serve(log: log, journal: true, level: nil, work: work), 0, "SIGTERM must stop it with status 0")

        let lines = try lines(log)
        XCTAssertFalse(lines.isEmpty, "serve logs at info by default")
        for line in lines {
            XCTAssertNotNil(line.range(of: #"^<[2-7]>ferry\.[a-z]+: "#, options: .regularExpression),
                            "not a journal line (priority prefix, no timestamp): \(line)")
        }
        XCTAssertTrue(lines.contains("<6>ferry.serve: stopped"), "\(lines)")
        XCTAssertTrue(lines.contains("<6>ferry.serve: stopping"), "\(lines)")
    }

    func testTheJournalGetsOnlyWhatFerryLogAllows() throws {
        let work = try TestSupport.makeTemporaryDirectory("ferry-journal-level")
        defer { TestSupport.removeTemporaryDirectory(work) }
        let log = work.appendingPathComponent("journal")
        XCTAssertEqual(try serve(log: log, journal: true, level: "warning", work: work), 0)
        let lines = try lines(log)
        XCTAssertFalse(lines.contains { $0.hasPrefix("<6>") || $0.hasPrefix("<7>") }, "\(lines)")
    }

    func testAnotherStreamKeepsTheOrdinaryFormat() throws {
        let work = try TestSupport.makeTemporaryDirectory("ferry-journal-other")
        defer { TestSupport.removeTemporaryDirectory(work) }
        let log = work.appendingPathComponent("stderr")
        XCTAssertEqual(try serve(log: log, journal: false, level: nil, work: work), 0)
        let lines = try lines(log)
        XCTAssertTrue(lines.contains { $0.hasSuffix("stopped") }, "\(lines)")
        XCTAssertFalse(lines.contains { $0.hasPrefix("<") }, "\(lines)")
    }

    func testVersionNamesTheSoftwareAndTheProtocol() throws {
        let result = try TestSupport.ferry(["--version"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stdout, "ferry \(FerryDefaults.softwareVersion) (protocol \(FerryDefaults.protocolRevision), works with 1.0)\n")
    }
}
