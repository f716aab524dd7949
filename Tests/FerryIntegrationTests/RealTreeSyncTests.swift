#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// Real trees (issue 12, items 4 and 8): sync never destroys what only DEST holds, reports
/// what it does not copy, leaves nothing behind a killed run, and keeps sparse files sparse.
final class RealTreeSyncTests: XCTestCase {
    var work: URL!
    var stateDir: URL!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-real-tree")
        stateDir = work.appendingPathComponent("state")
    }

    override func tearDownWithError() throws {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    private func serve(_ dir: URL, tls: Bool = true) throws -> ServerProcess {
        try ServerProcess(serving: dir, tls: tls, arguments: serveArguments(stateDir: stateDir))
    }

    private func sync(_ address: String, _ dest: URL, _ extra: [String] = [], json: Bool = true)
        throws -> (TestSupport.ProcessResult, [[String: Any]], [String: Any]) {
        let result = try TestSupport.ferry(["sync", address, dest.path] + extra + (json ? ["--json"] : []), timeout: 120)
        return (result, JSONLines.parse(result.stdout), JSONLines.summary(result.stdout) ?? [:])
    }

    private func events(_ all: [[String: Any]], _ kind: String) -> [String] {
        all.filter { ($0["event"] as? String) == kind }.compactMap { $0["path"] as? String }
    }

    // MARK: - Type changes

    /// A directory that became a file on the server, and a file that became a directory, while
    /// DEST holds content there: left alone and reported as conflicts without --delete (exit 1);
    /// replaced with --delete.
    func testTypeChangesOverLocalContentAreConflictsUnlessDelete() throws {
        let src = work.appendingPathComponent("src")
        try Files.write(src.appendingPathComponent("became-file"), "now a file on the server")
        try Files.write(src.appendingPathComponent("became-dir/inside.txt"), "now a directory on the server")
        try Files.write(src.appendingPathComponent("was-empty-dir"), "replaces an empty local directory")
        try Files.write(src.appendingPathComponent("plain.txt"), "synced as usual")
        let dest = work.appendingPathComponent("dest")
        try Files.write(dest.appendingPathComponent("became-file/local-only.txt"), "precious")
        try Files.write(dest.appendingPathComponent("became-file/deeper/more.txt"), "also precious")
        try Files.write(dest.appendingPathComponent("became-dir"), "a local file")
        try FileManager.default.createDirectory(at: dest.appendingPathComponent("was-empty-dir"), withIntermediateDirectories: true)
        let server = try serve(src)
        defer { server.stop() }

        let (first, all, summary) = try sync(server.address, dest)
        XCTAssertEqual(first.status, 1, first.stderr)
        XCTAssertEqual(events(all, "conflict").sorted(), ["became-dir", "became-file"], first.stdout)
        XCTAssertEqual((summary["conflicts"] as? [[String: Any]])?.count, 2)
        XCTAssertEqual(Files.text(dest.appendingPathComponent("became-file/local-only.txt")), "precious")
        XCTAssertEqual(Files.text(dest.appendingPathComponent("became-file/deeper/more.txt")), "also precious")
        XCTAssertEqual(Files.text(dest.appendingPathComponent("became-dir")), "a local file")
        XCTAssertEqual(Files.text(dest.appendingPathComponent("was-empty-dir")), "replaces an empty local directory",
                       "an empty directory holds nothing the server lacks: replaced")
        XCTAssertEqual(Files.text(dest.appendingPathComponent("plain.txt")), "synced as usual")
        XCTAssertTrue(first.stderr.contains("became-file"), first.stderr)

        // A dry run with --delete itemises the replacement and the deletions, with bytes.
        let before = try TreeSnapshot.take(dest)
        let (plan, _, _) = try sync(server.address, dest, ["--delete", "--dry-run"], json: false)
        XCTAssertEqual(plan.status, 0, plan.stderr)
        for line in ["would replace became-file (24 B)", "would delete became-file/local-only.txt (8 B)",
                     "would delete became-file/deeper/more.txt (13 B)", "would replace became-dir (12 B)",
                     "would fetch became-dir/inside.txt (29 B)", "delete 3 (21 B)"] {
            XCTAssertTrue(plan.stdout.contains(line), "missing '\(line)' in:\n\(plan.stdout)")
        }
        XCTAssertEqual(try TreeSnapshot.take(dest), before, "--dry-run touches nothing")

        let (second, _, s2) = try sync(server.address, dest, ["--delete"])
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertEqual((s2["conflicts"] as? [[String: Any]])?.count, 0)
        XCTAssertEqual(Files.text(dest.appendingPathComponent("became-file")), "now a file on the server")
        XCTAssertEqual(Files.text(dest.appendingPathComponent("became-dir/inside.txt")), "now a directory on the server")
    }

    /// With --delete, a directory replaced by a file still holding excluded entries is not
    /// emptied of them: it stays, as a conflict.
    func testDeleteNeverRemovesExcludedEntriesToReplaceADirectory() throws {
        let src = work.appendingPathComponent("src")
        try Files.write(src.appendingPathComponent("thing"), "a file on the server")
        let dest = work.appendingPathComponent("dest")
        try Files.write(dest.appendingPathComponent("thing/keep.tmp"), "excluded, so not ferry's to delete")
        try Files.write(dest.appendingPathComponent("thing/other.txt"), "the server lacks it")
        let server = try serve(src)
        defer { server.stop() }
        let (result, all, _) = try sync(server.address, dest, ["--delete", "--exclude", "*.tmp"])
        XCTAssertEqual(result.status, 1, result.stderr)
        XCTAssertEqual(events(all, "conflict"), ["thing"], result.stdout)
        XCTAssertEqual(Files.text(dest.appendingPathComponent("thing/keep.tmp")), "excluded, so not ferry's to delete")
    }

    // MARK: - What is not copied is reported

    func testSpecialFilesAndReservedNamesAreReportedAndNotFetchedAgain() throws {
        let src = work.appendingPathComponent("src")
        try Files.write(src.appendingPathComponent("a.txt"), "a")
        XCTAssertEqual(mkfifo(src.appendingPathComponent("pipe").path, 0o644), 0)
        try FileManager.default.createDirectory(at: src.appendingPathComponent("sub"), withIntermediateDirectories: true)
        XCTAssertEqual(mkfifo(src.appendingPathComponent("sub/pipe2").path, 0o644), 0)
        try Files.write(src.appendingPathComponent(".ferry-partial/inner.txt"), "a served tree that is itself a DEST")
        try Files.write(src.appendingPathComponent("sub/.~ferry-0123456789abcdef"), "looks like a temporary")
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")

        let (first, all, s1) = try sync(server.address, dest)
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertEqual((s1["specialSkipped"] as? [String])?.sorted(), ["pipe", "sub/pipe2"])
        XCTAssertEqual((s1["reservedSkipped"] as? [String])?.sorted(), [".ferry-partial", "sub/.~ferry-0123456789abcdef"])
        let warnings = all.filter { ($0["event"] as? String) == "warning" }.compactMap { $0["message"] as? String }
        XCTAssertTrue(warnings.contains { $0.hasPrefix("skipped 2 special files") && $0.contains("sub/pipe2") }, "\(warnings)")
        XCTAssertTrue(warnings.contains { $0.contains(".~ferry-0123456789abcdef") }, "\(warnings)")
        XCTAssertFalse(Files.exists(dest.appendingPathComponent("sub/.~ferry-0123456789abcdef")))
        XCTAssertFalse(Files.exists(dest.appendingPathComponent(".ferry-partial")))

        let (second, _, s2) = try sync(server.address, dest)
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertEqual(JSONLines.int(s2, "filesFetched"), 0, "nothing is fetched again on every run")

        let text = try TestSupport.ferry(["sync", server.address, dest.path])
        XCTAssertTrue(text.stderr.contains("skipped 2 special files"), text.stderr)
    }

    /// A path longer than the protocol's 4096 bytes is reported as not synced (exit 1), not
    /// silently omitted.
    func testTooLongPathIsReported() throws {
        let src = work.appendingPathComponent("src")
        try FileManager.default.createDirectory(at: src, withIntermediateDirectories: true)
        try Files.write(src.appendingPathComponent("short.txt"), "fine")
        // Built one directory at a time with *at() calls: the whole path is longer than PATH_MAX.
        let name = String(repeating: "n", count: 250)
        var fd = open(src.path, O_RDONLY | O_DIRECTORY)
        for i in 1...17 {
            XCTAssertEqual(mkdirat(fd, name + "\(i)", 0o755), 0)
            let next = openat(fd, name + "\(i)", O_RDONLY | O_DIRECTORY)
            close(fd)
            fd = next
        }
        let file = openat(fd, "f", O_WRONLY | O_CREAT, 0o644)
        XCTAssertGreaterThanOrEqual(file, 0)
        close(file)
        close(fd)
        defer { _ = try? TestSupport.run("/bin/rm", ["-rf", work.path], check: false) }
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")
        let (result, all, summary) = try sync(server.address, dest)
        XCTAssertEqual(result.status, 1, result.stderr)
        let failed = (summary["failed"] as? [[String: Any]] ?? []).compactMap { $0["message"] as? String }
        XCTAssertTrue(failed.contains { $0.contains("longer than 4096 bytes") }, "\(failed) \(all.count)")
        let errors = events(all, "error")
        XCTAssertEqual(errors.count, 1, "one error event, under the entry's own path: \(errors)")
        XCTAssertTrue(errors.first?.hasSuffix("/" + name + "17") ?? false, "\(errors)")
        XCTAssertEqual(Files.text(dest.appendingPathComponent("short.txt")), "fine")
    }

    // MARK: - Leftovers of a killed run

    /// What a killed run leaves — a temporary beside its target, a sidecar whose data was
    /// renamed into place, the partial of a file no longer wanted — is gone after the next
    /// run, at once; while another sync holds DEST, it is left alone.
    func testLeftoversOfAKilledRunAreRemovedByTheNextRun() throws {
        let src = work.appendingPathComponent("src")
        try Files.write(src.appendingPathComponent("d/a.txt"), "a")
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")
        XCTAssertEqual(try sync(server.address, dest).0.status, 0)

        let temporary = dest.appendingPathComponent("d/.~ferry-00000000000000aa")
        let partials = dest.appendingPathComponent(".ferry-partial")
        func plant() throws {
            try Files.write(temporary, "left by a killed run a moment ago")
            try Files.write(partials.appendingPathComponent("0123456789012345678901234567890123456789.part.meta"), "ferry-partial 1\n")
            try Files.write(partials.appendingPathComponent("abcdefabcdefabcdefabcdefabcdefabcdefabcd.part"), "stale data")
            try Files.write(partials.appendingPathComponent("abcdefabcdefabcdefabcdefabcdefabcdefabcd.part.meta"), "ferry-partial 1\n")
        }

        // Another sync is live in DEST (it holds the lock shared): its files are not ours.
        try plant()
        let fd = open(dest.path, O_RDONLY | O_DIRECTORY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(flock(fd, LOCK_SH), 0)
        let (busy, _, _) = try sync(server.address, dest)
        XCTAssertEqual(busy.status, 0, busy.stderr)
        XCTAssertTrue(Files.exists(temporary), "a live sync's temporary is kept")
        XCTAssertTrue(Files.exists(partials.appendingPathComponent("abcdefabcdefabcdefabcdefabcdefabcdefabcd.part")))
        close(fd)

        // No other sync: everything a dead run left goes, the partial folder with it.
        let (next, _, summary) = try sync(server.address, dest)
        XCTAssertEqual(next.status, 0, next.stderr)
        XCTAssertEqual(JSONLines.int(summary, "filesFetched"), 0)
        XCTAssertFalse(Files.exists(temporary), "a temporary of a dead run is removed by the next run")
        XCTAssertFalse(Files.exists(partials), "no orphan sidecar keeps .ferry-partial alive")
    }

    // MARK: - Sparse files

    /// A sparse file stays sparse through `sync` and `get`: runs of zeros are holes, not
    /// written blocks, and the content is exact.
    func testSparseFileStaysSparse() throws {
        let src = work.appendingPathComponent("src")
        try FileManager.default.createDirectory(at: src, withIntermediateDirectories: true)
        let file = src.appendingPathComponent("sparse.img")
        try TestSupport.run("/usr/bin/truncate", ["-s", "96M", file.path])
        for offset in [0, 40, 95] {
            try TestSupport.run("/bin/dd", ["if=/dev/urandom", "of=\(file.path)", "bs=1M", "count=1", "seek=\(offset)",
                                            "conv=notrunc", "status=none"])
        }
        func allocated(_ url: URL) -> Int64 {
            var st = stat()
            return stat(url.path, &st) == 0 ? Int64(st.st_blocks) * 512 : -1
        }
        guard allocated(file) < 16 << 20 else { throw XCTSkip("this file system does not keep holes") }
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")
        let (result, _, _) = try sync(server.address, dest)
        XCTAssertEqual(result.status, 0, result.stderr)
        let synced = dest.appendingPathComponent("sparse.img")
        XCTAssertEqual(try TestSupport.run("/usr/bin/cmp", [file.path, synced.path], check: false).status, 0)
        XCTAssertLessThan(allocated(synced), 8 << 20, "96 MiB with 3 MiB of data must not take 96 MiB")

        let got = work.appendingPathComponent("got.img")
        let get = try TestSupport.ferry(["get", "\(server.address)/sparse.img", got.path])
        XCTAssertEqual(get.status, 0, get.stderr)
        XCTAssertEqual(try TestSupport.run("/usr/bin/cmp", [file.path, got.path], check: false).status, 0)
        XCTAssertLessThan(allocated(got), 8 << 20)
    }

    // MARK: - Compatibility

    /// A 1.0 server refuses `report=yes` with ERR 400: the client asks again plainly and syncs.
    func testNewClientAgainstAServerWithoutReports() throws {
        let data = Array("hello\n".utf8)
        let manifest = ["f 0644 6 \(FakeServer.mtime) \(FakeServer.sha256Hex(data)) hello.txt"]
        let tree = FakeServer.treeResponder(manifest: manifest, files: ["hello.txt": data])
        let fake = try FakeServer { line in
            if line.hasPrefix("MANIFEST "), line.contains("report") {
                return Array("ERR 400 unknown MANIFEST option 'report=yes'\n".utf8)
            }
            return tree(line)
        }
        defer { fake.stop() }
        let dest = work.appendingPathComponent("dest")
        let (result, _, summary) = try sync(fake.address, dest)
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(JSONLines.int(summary, "filesFetched"), 1)
        XCTAssertEqual(Files.text(dest.appendingPathComponent("hello.txt")), "hello\n")
        XCTAssertEqual(fake.requests.filter { $0.hasPrefix("MANIFEST") }, ["MANIFEST . hashes=no report=yes", "MANIFEST . hashes=no"])
    }

    /// A client that does not ask for reports (1.0) never receives a note line.
    func testServerSendsNotesOnlyWhenAsked() throws {
        let src = work.appendingPathComponent("src")
        try Files.write(src.appendingPathComponent("a.txt"), "a")
        XCTAssertEqual(mkfifo(src.appendingPathComponent("pipe").path, 0o644), 0)
        let server = try serve(src, tls: false)
        defer { server.stop() }
        let client = try RawClient(port: server.port)
        _ = try client.readLine()
        try client.send("MANIFEST .\n")
        XCTAssertEqual(try client.readLine(), "OK 1")
        let plain = String(decoding: try client.readStream().decoded(), as: UTF8.self)
        XCTAssertFalse(plain.contains("\n!"), plain)
        try client.send("MANIFEST . report=yes\n")
        XCTAssertEqual(try client.readLine(), "OK 1")
        let reported = String(decoding: try client.readStream().decoded(), as: UTF8.self)
        XCTAssertTrue(reported.hasSuffix("\n! special pipe\n"), reported)
    }
}
