#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// One file fails alone (issue 12, item 3): an unreadable file, a file the server cannot read
/// every time, a file corrupt on every attempt. Each is reported once under its own name, every
/// other file still syncs, and the exit status is 1 with the list of what failed.
final class SyncFailureTests: XCTestCase {
    var work: URL!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-sync-fail")
        // The server may run as `nobody`: it must reach the tree and its state folder.
        chmod(work.path, 0o755)
    }

    override func tearDownWithError() throws {
        if let work {
            _ = try? TestSupport.run("/bin/chmod", ["-R", "u+rwX", work.path], check: false)
            TestSupport.removeTemporaryDirectory(work)
        }
    }

    /// Runs `ferry serve` as an unprivileged user: as `nobody` through setpriv when the tests
    /// run as root (root reads chmod-000 files, an ordinary user does not), else as ourselves.
    private func serveUnprivileged(_ dir: URL, tls: Bool = true) throws -> ServerProcess {
        let state = work.appendingPathComponent("state-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        chmod(state.path, 0o777)
        let arguments = ["--bind", "127.0.0.1", "--no-discovery", "--state-dir", state.path]
        guard geteuid() == 0 else { return try ServerProcess(serving: dir, tls: tls, arguments: arguments) }
        let setpriv = "/usr/bin/setpriv"
        guard FileManager.default.isExecutableFile(atPath: setpriv) else {
            throw XCTSkip("running as root without \(setpriv): cannot serve as an ordinary user, and root reads chmod-000 files")
        }
        return try ServerProcess(serving: dir, tls: tls, arguments: arguments,
                                 wrapper: [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"])
    }

    /// Runs `ferry ARGS` as an ordinary user too (`nobody` through setpriv when we are root).
    private func ferryUnprivileged(_ arguments: [String]) throws -> TestSupport.ProcessResult {
        let setpriv = "/usr/bin/setpriv"
        guard geteuid() == 0, FileManager.default.isExecutableFile(atPath: setpriv) else {
            return try TestSupport.ferry(arguments, timeout: 120)
        }
        return try TestSupport.run(setpriv, ["--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                             TestSupport.ferryExecutable.path] + arguments, timeout: 120, check: false)
    }

    private func sync(_ address: String, _ dest: URL, _ extra: [String] = []) throws -> (TestSupport.ProcessResult, [[String: Any]], [String: Any]) {
        let result = try ferryUnprivileged(["sync", address, dest.path, "--json"] + extra)
        let events = JSONLines.parse(result.stdout)
        let summary = JSONLines.summary(result.stdout) ?? [:]
        XCTAssertFalse(summary.isEmpty, "no summary in \(result.stdout.suffix(400)) \(result.stderr)")
        return (result, events, summary)
    }

    private func errorEvents(_ events: [[String: Any]]) -> [String] {
        events.filter { ($0["event"] as? String) == "error" }.compactMap { $0["path"] as? String }
    }

    private func failedPaths(_ summary: [String: Any]) -> [String] {
        (summary["failed"] as? [[String: Any]] ?? []).compactMap { $0["path"] as? String }
    }

    /// A tree of many small files and two multi-chunk ones, one of them unreadable by the
    /// server, plus a directory the server cannot read whose local copy holds local-only data.
    func testUnreadableFileAndDirectoryFailAloneAndDeleteLeavesTheLocalCopy() throws {
        let src = work.appendingPathComponent("src")
        var expected: [String: [UInt8]] = [:]
        var rng = SplitMix64(seed: 12)
        for i in 0..<60 {
            let name = "d\(i % 4)/f\(String(format: "%02d", i)).txt"
            let size = i == 7 ? 700_000 : Int(rng.next() % 3000) + 1
            let bytes = (0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            try Files.write(src.appendingPathComponent(name), bytes)
            expected[name] = bytes
        }
        // Unreadable: a small file among the others (pipelined) and a multi-chunk one.
        try Files.write(src.appendingPathComponent("d1/secret-small.txt"), "nobody may read this")
        try Files.write(src.appendingPathComponent("d2/secret-big.bin"), try Files.randomBytes(600_000))
        try Files.write(src.appendingPathComponent("locked/inside.txt"), "the server cannot list this")
        chmod(src.appendingPathComponent("d1/secret-small.txt").path, 0o000)
        chmod(src.appendingPathComponent("d2/secret-big.bin").path, 0o000)
        chmod(src.appendingPathComponent("locked").path, 0o000)

        let dest = work.appendingPathComponent("dest")
        try Files.write(dest.appendingPathComponent("locked/local-only.txt"), "mine, not the server's")
        chmod(dest.path, 0o777)  // the client may run as `nobody` too
        let server = try serveUnprivileged(src)
        defer { server.stop() }

        let (result, events, summary) = try sync(server.address, dest, ["--delete"])
        XCTAssertEqual(result.status, 1, result.stderr)
        let errors = errorEvents(events)
        XCTAssertEqual(errors.sorted(), ["d1/secret-small.txt", "d2/secret-big.bin", "locked"],
                       "one error event per failed entry, each under its own name: \(result.stdout)")
        XCTAssertEqual(failedPaths(summary).sorted(), ["d1/secret-small.txt", "d2/secret-big.bin", "locked"])
        XCTAssertEqual(JSONLines.int(summary, "failures"), 3)
        XCTAssertEqual(JSONLines.int(summary, "filesFetched"), 60, "every other file is fetched")
        for (name, bytes) in expected {
            assertSameBytes(Files.read(dest.appendingPathComponent(name)), bytes, name)
        }
        XCTAssertFalse(Files.exists(dest.appendingPathComponent("d1/secret-small.txt")))
        if geteuid() == 0 {
            var st = stat()
            XCTAssertEqual(stat(dest.appendingPathComponent("d0/f00.txt").path, &st), 0)
            XCTAssertNotEqual(st.st_uid, 0, "the client ran as an ordinary user")
        }
        XCTAssertEqual(Files.text(dest.appendingPathComponent("locked/local-only.txt")), "mine, not the server's",
                       "--delete must not delete below a directory the server could not read")
        let messages = events.filter { ($0["event"] as? String) == "error" }.compactMap { $0["message"] as? String }
        XCTAssertTrue(messages.contains { $0.contains("permission denied") }, "\(messages)")
        // A permanent failure is not retried: no retry events at all.
        XCTAssertFalse(events.contains { ($0["event"] as? String) == "retry" }, result.stdout)

        // The text output ends with the list of what failed, names escaped.
        let text = try ferryUnprivileged(["sync", server.address, dest.path])
        XCTAssertEqual(text.status, 1)
        let tail = text.stderr.components(separatedBy: "not synced:").last ?? ""
        for name in ["d1/secret-small.txt", "d2/secret-big.bin", "locked"] {
            XCTAssertTrue(tail.contains(name), "final list lacks \(name): \(text.stderr)")
        }
    }

    /// The server answers the status of a `GET` it cannot read with a code a client can tell
    /// apart: 423 (permission denied, permanent) — not the generic 500.
    func testServerReportsPermissionDeniedAs423() throws {
        let src = work.appendingPathComponent("src")
        try Files.write(src.appendingPathComponent("secret.txt"), "x")
        chmod(src.appendingPathComponent("secret.txt").path, 0o000)
        try FileManager.default.createDirectory(at: src.appendingPathComponent("locked"), withIntermediateDirectories: true)
        chmod(src.appendingPathComponent("locked").path, 0o000)
        let server = try serveUnprivileged(src, tls: false)  // spoken to raw below
        defer { server.stop() }
        let client = try RawClient(port: server.port)
        _ = try client.readLine()
        try client.send("GET secret.txt 0 *\nLIST locked\nSTAT secret.txt\n")
        XCTAssertTrue(try client.readLine().hasPrefix("ERR 423 "))
        XCTAssertTrue(try client.readLine().hasPrefix("ERR 423 "))
        XCTAssertTrue(try client.readLine().hasPrefix("OK f 0000 1 "), "the connection stays usable")
    }

    /// A fake server whose chunks for one file fail their CRC every time, and which cannot read
    /// another (`ERR 520`): both fail alone after a few attempts, the files behind them on the
    /// same connection arrive, and neither is charged to another file.
    func testFileCorruptOnEveryAttemptAndReadErrorFailAlone() throws {
        var served: [String: [UInt8]] = [:]
        var manifest: [String] = []
        let mt = FakeServer.mtime
        for i in 0..<20 {
            let name = String(format: "f%02d.bin", i)
            let data: [UInt8] = i == 5 ? try Files.randomBytes(300_000) : Array("file number \(i)\n".utf8)
            served[name] = data
            manifest.append("f 0644 \(data.count) \(mt) \(FakeServer.sha256Hex(data)) \(name)")
        }
        let files = served
        let good = FakeServer.treeResponder(manifest: manifest, files: files)
        let fake = try FakeServer { line in
            let f = line.split(separator: " ").map(String.init)
            if f.first == "GET", f.count >= 4, let data = files[f[1]] {
                if f[1] == "f03.bin" {
                    return Array("OK \(data.count) \(mt) -\n".utf8) + FakeServer.chunkStream(data, corruption: .crc)
                }
                if f[1] == "f05.bin" {
                    // A read error half way: the first chunk, then ERR 520 in place of the next;
                    // the resumed request gets the error at once.
                    let failure = Array("ERR 520 read f05.bin failed on the server: Input/output error\n".utf8)
                    guard f[2] == "0" else { return failure }
                    let stream = FakeServer.chunkStream(Array(data[0..<65536]), chunkSize: 65536, compress: false)
                    let chunk = stream.prefix(stream.count - 69)  // without "END <64 hex>\n"
                    return Array("OK \(data.count) \(mt) -\n".utf8) + chunk + failure
                }
                if f[1] == "f09.bin" { return Array("ERR 423 open f09.bin: permission denied on the server\n".utf8) }
            }
            // The check of kept data before a resume.
            if f.first == "HASH", f.count >= 4, let data = files[f[1]], let offset = Int(f[2]), let length = Int(f[3]) {
                return Array("OK \(FakeServer.sha256Hex(Array(data[offset..<(offset + length)])))\n".utf8)
            }
            return good(line)
        }
        defer { fake.stop() }
        let dest = work.appendingPathComponent("dest")
        try FileManager.default.createDirectory(at: dest, withIntermediateDirectories: true)
        chmod(dest.path, 0o777)
        let started = Date()
        let (result, events, summary) = try sync(fake.address, dest, ["--parallel", "1"])
        XCTAssertLessThan(Date().timeIntervalSince(started), 60)
        XCTAssertEqual(result.status, 1, result.stderr)
        XCTAssertEqual(errorEvents(events).sorted(), ["f03.bin", "f05.bin", "f09.bin"], result.stdout)
        XCTAssertEqual(failedPaths(summary).sorted(), ["f03.bin", "f05.bin", "f09.bin"])
        XCTAssertEqual(JSONLines.int(summary, "filesFetched"), 17)
        for (name, data) in files where !["f03.bin", "f05.bin", "f09.bin"].contains(name) {
            assertSameBytes(Files.read(dest.appendingPathComponent(name)), data, name)
        }
        for name in ["f03.bin", "f05.bin", "f09.bin"] { XCTAssertFalse(Files.exists(dest.appendingPathComponent(name))) }
        // Bounded attempts: three for the corrupt file and the read error, one for the refusal.
        let gets = fake.requests.filter { $0.hasPrefix("GET ") }
        XCTAssertEqual(gets.filter { $0.hasPrefix("GET f03.bin ") }.count, 3, "\(gets)")
        XCTAssertEqual(gets.filter { $0.hasPrefix("GET f05.bin ") }.count, 3, "\(gets)")
        XCTAssertEqual(gets.filter { $0.hasPrefix("GET f09.bin ") }.count, 1, "\(gets)")
        XCTAssertEqual(gets.filter { $0.hasPrefix("GET f10.bin ") }.count, 1, "a file behind a failure is fetched once: \(gets)")
        // No reconnection was needed: the failures were the GETs' replies, not the connection's.
        XCTAssertFalse(events.contains { ($0["message"] as? String)?.contains("reconnecting") ?? false }, result.stdout)
    }
}
