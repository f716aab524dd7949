#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// `ferry sync` end to end: the built executable against a `ferry serve` child on loopback.
final class SyncEndToEndTests: XCTestCase {
    var work: URL!
    var stateDir: URL!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-sync-e2e")
        stateDir = work.appendingPathComponent("state")
    }

    override func tearDownWithError() throws {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    private func serve(_ dir: URL) throws -> ServerProcess {
        try ServerProcess(serving: dir, arguments: serveArguments(stateDir: stateDir))
    }

    /// Runs `ferry sync SERVER DEST ARGS --json` and returns the result and its summary.
    private func sync(_ server: ServerProcess, _ dest: URL, _ extra: [String] = [], json: Bool = true,
                      file: StaticString = #filePath, line: UInt = #line) throws -> (TestSupport.ProcessResult, [String: Any]) {
        let result = try TestSupport.ferry(["sync", server.address, dest.path] + extra + (json ? ["--json"] : []), timeout: 120)
        let summary = json ? JSONLines.summary(result.stdout) : nil
        if json { XCTAssertNotNil(summary, "no summary line in: \(result.stdout.suffix(500)) \(result.stderr)", file: file, line: line) }
        return (result, summary ?? [:])
    }

    private func int(_ s: [String: Any], _ key: String) -> Int { JSONLines.int(s, key) ?? -1 }

    /// The fixture tree with some extra attributes worth preserving.
    private func makeSource() throws -> URL {
        let src = try TestSupport.materializeFixtures(in: work)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: src.appendingPathComponent("café.txt").path)
        try FileManager.default.setAttributes([.posixPermissions: 0o750], ofItemAtPath: src.appendingPathComponent("photos").path)
        try Files.setMtime(src.appendingPathComponent("hello world.txt"), seconds: 1_600_000_000, nanos: 123_456_789)
        try Files.setMtime(src.appendingPathComponent("docs/guides"), seconds: 1_500_000_000)
        try Files.setMtime(src.appendingPathComponent("empty-dir"), seconds: 1_400_000_000)
        return src
    }

    private static let fixtureFiles = 7

    // MARK: - Exact copy, no-op re-sync

    func testSyncOfFixturesIsAnExactCopyAndANoOpResyncFetchesNothing() throws {
        let src = try makeSource()
        // Links that leave the tree: skipped with a warning, never recreated.
        try Files.symlink(src.appendingPathComponent("outside-abs"), to: "/etc")
        try Files.symlink(src.appendingPathComponent("docs/outside-up"), to: "../../outside.txt")
        try Files.symlink(src.appendingPathComponent("abs-inside"), to: src.appendingPathComponent("hello world.txt").path)
        try Files.symlink(src.appendingPathComponent("photos/inside-up"), to: "../docs/guides")
        // Lexically inside, but `here` is the root itself, so `here/..` is its parent on disk.
        try Files.symlink(src.appendingPathComponent("here"), to: ".")
        try Files.symlink(src.appendingPathComponent("via-here"), to: "here/..")
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")

        let (first, s1) = try sync(server, dest)
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertEqual(int(s1, "filesFetched"), Self.fixtureFiles)
        XCTAssertEqual(int(s1, "linksSkipped"), 4)
        XCTAssertEqual(int(s1, "failures"), 0)
        let warnings = JSONLines.parse(first.stdout).filter { ($0["event"] as? String) == "warning" }.compactMap { $0["message"] as? String }
        for name in ["outside-abs", "docs/outside-up", "abs-inside", "via-here"] {
            XCTAssertTrue(warnings.contains { $0.contains(name) }, "no warning for \(name): \(warnings)")
            XCTAssertFalse(Files.exists(dest.appendingPathComponent(name)), "\(name) must be skipped")
        }
        let files = Int64(int(s1, "bytesWritten"))
        XCTAssertEqual(files, 12 + 14 + 23 + 61 + 341_331 + 70_000, "bytesWritten counts the file bytes written")

        let outsideLinks: Set<String> = ["outside-abs", "docs/outside-up", "abs-inside", "via-here"]
        var expected = try TreeSnapshot.take(src)
        for l in outsideLinks { expected.items.removeValue(forKey: l) }
        let copy = try TreeSnapshot.take(dest)
        XCTAssertEqual(expected.differences(from: copy), [], "copy:\n\(copy)")
        XCTAssertEqual(copy.items["docs/hello-link"]?.type, "l")
        XCTAssertEqual(copy.items["docs/hello-link"]?.target, "../hello world.txt")
        XCTAssertEqual(copy.items["photos/inside-up"]?.target, "../docs/guides")
        XCTAssertEqual(copy.items["here"]?.target, ".")
        XCTAssertEqual(copy.items["empty-dir"]?.type, "d")
        XCTAssertEqual(copy.items["docs/build.sh"]?.mode, 0o755)
        XCTAssertEqual(copy.items["café.txt"]?.mode, 0o600)
        XCTAssertEqual(copy.items["hello world.txt"]?.mtimeNanos, 123_456_789)
        XCTAssertFalse(Files.exists(dest.appendingPathComponent(".ferry-partial")), "the partial folder is removed when empty")
        // `ferry manifest` of both trees agrees too (types, modes, sizes, mtimes, hashes, targets).
        let srcManifest = try TestSupport.ferry(["manifest", src.path], check: true).stdout.split(separator: "\n")
        let destManifest = try TestSupport.ferry(["manifest", dest.path], check: true).stdout.split(separator: "\n")
        // Symlink lines are `l MODE SIZE MTIME PATH TARGET`: drop the skipped links.
        let expectedManifest = srcManifest.filter { line in
            !(line.hasPrefix("l ") && outsideLinks.contains { line.split(separator: " ").dropLast().last.map(String.init) == PercentEncoding.encode($0) })
        }
        XCTAssertEqual(expectedManifest.count, srcManifest.count - outsideLinks.count)
        XCTAssertEqual(destManifest, expectedManifest)

        // Nothing changed: no file data crosses the wire and DEST is untouched.
        let (second, s2) = try sync(server, dest)
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertEqual(int(s2, "filesFetched"), 0)
        XCTAssertEqual(int(s2, "fileWireBytes"), 0)
        XCTAssertEqual(int(s2, "filesUnchanged"), Self.fixtureFiles)
        XCTAssertEqual(int(s2, "bytesWritten"), 0)
        XCTAssertGreaterThan(int(s2, "manifestWireBytes"), 0)
        XCTAssertEqual(int(s2, "wireBytes"), int(s2, "manifestWireBytes"))
        XCTAssertEqual(try TreeSnapshot.take(dest).differences(from: copy), [])
        XCTAssertFalse(JSONLines.parse(second.stdout).contains { ($0["event"] as? String) == "start" }, "no file may start")

        // The human summary line (no --json).
        let (third, _) = try sync(server, dest, json: false)
        XCTAssertEqual(third.status, 0)
        XCTAssertTrue(third.stdout.contains("fetched 0 files"), third.stdout)
        XCTAssertTrue(third.stdout.contains("\(Self.fixtureFiles) unchanged"), third.stdout)
    }

    /// Every file ends with exactly the server's mode, whatever the client's umask, including
    /// modes the umask would strip and modes that let others write.
    func testModesAreExactWhateverTheClientsUmask() throws {
        let src = work.appendingPathComponent("modes")
        try FileManager.default.createDirectory(at: src, withIntermediateDirectories: true)
        let modes: [Int] = [0o644, 0o755, 0o600, 0o640, 0o666, 0o444, 0o700, 0o604, 0o1755]
        for mode in modes {
            let file = src.appendingPathComponent(String(mode, radix: 8))
            try Data("mode \(mode)".utf8).write(to: file)
            XCTAssertEqual(chmod(file.path, mode_t(mode)), 0)
        }
        let server = try serve(src)
        defer { server.stop() }
        for umask in ["022", "077", "000", "027"] {
            let dest = work.appendingPathComponent("dest-\(umask)")
            let arguments = TestServers.withTrust(["sync", server.address, dest.path, "--quiet"])
            let command = "umask \(umask) && exec '\(TestSupport.ferryExecutable.path)' " + arguments.map { "'\($0)'" }.joined(separator: " ")
            let result = try TestSupport.run("/bin/sh", ["-c", command], check: false)
            XCTAssertEqual(result.status, 0, "umask \(umask): \(result.stderr)")
            for mode in modes {
                var info = stat()
                XCTAssertEqual(lstat(dest.appendingPathComponent(String(mode, radix: 8)).path, &info), 0)
                XCTAssertEqual(Int(info.st_mode) & 0o7777, mode, "mode \(String(mode, radix: 8)) under umask \(umask)")
            }
        }
    }

    func testSyncOfASubdirectoryAndIntoAFreshNestedDestination() throws {
        let src = try makeSource()
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("docs-copy")
        let result = try TestSupport.ferry(["sync", server.address + "/docs", dest.path, "--json"])
        XCTAssertEqual(result.status, 0, result.stderr)
        // docs/hello-link points to ../hello world.txt: outside the synced subtree, so skipped.
        var expected = try TreeSnapshot.take(src.appendingPathComponent("docs"))
        XCTAssertNotNil(expected.items.removeValue(forKey: "hello-link"))
        XCTAssertEqual(expected.differences(from: try TreeSnapshot.take(dest)), [])
        XCTAssertTrue(result.stdout.contains("hello-link"), "a warning event names the skipped link: \(result.stdout)")
        // A file is not a directory to sync.
        let file = try TestSupport.ferry(["sync", server.address + "/empty.txt", work.appendingPathComponent("x").path])
        XCTAssertEqual(file.status, 3, file.stderr)
        XCTAssertFalse(Files.exists(work.appendingPathComponent("x")))
        let missing = try TestSupport.ferry(["sync", server.address + "/nope", work.appendingPathComponent("y").path])
        XCTAssertEqual(missing.status, 3, missing.stderr)
        XCTAssertTrue(missing.stderr.contains("not found"), missing.stderr)
    }

    /// Serving a directory that was itself a sync destination mid-transfer: its
    /// `.ferry-partial/` folder is the client's scratch space and must be ignored entirely.
    func testTheServersPartialFolderIsNotCopied() throws {
        let src = work.appendingPathComponent("src")
        try Files.write(src.appendingPathComponent("real.txt"), "real")
        try Files.write(src.appendingPathComponent(".ferry-partial/0123456789abcdef.part"), "left over from another sync")
        try Files.write(src.appendingPathComponent(".ferry-partial/sub/x"), "deeper")
        try Files.write(src.appendingPathComponent("docs/.ferry-partial/kept.txt"), "only the top-level folder is special")
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")
        let (first, s1) = try sync(server, dest)
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertEqual(int(s1, "filesFetched"), 2)
        XCTAssertFalse(Files.exists(dest.appendingPathComponent(".ferry-partial")), "nothing may land in DEST's partial folder")
        XCTAssertEqual(Files.text(dest.appendingPathComponent("docs/.ferry-partial/kept.txt")), "only the top-level folder is special")
        let (second, s2) = try sync(server, dest, ["--delete"])
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertEqual(int(s2, "filesFetched"), 0, "a no-op re-sync fetches nothing")
        XCTAssertEqual(int(s2, "filesDeleted"), 0)
    }

    // MARK: - Delta

    func testAChangedBlockFetchesOnlyThatBlock() throws {
        let src = work.appendingPathComponent("src")
        let size = 32 << 20
        var bytes = try Files.randomBytes(size)
        let big = src.appendingPathComponent("big.bin")
        try Files.write(big, bytes)
        try Files.write(src.appendingPathComponent("small.txt"), "unchanged\n")
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")
        let (first, s1) = try sync(server, dest)
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertGreaterThanOrEqual(int(s1, "fileWireBytes"), size, "random data does not compress")

        // Overwrite 1 MiB in the middle, not block-aligned, keeping the size; new mtime.
        let offset = 15 * (1 << 20) + 12_345
        let patch = try Files.randomBytes(1 << 20)
        let handle = try XCTUnwrap(Foundation.FileHandle(forWritingAtPath: big.path))
        try handle.seek(toOffset: UInt64(offset))
        handle.write(Data(patch))
        try handle.close()
        bytes.replaceSubrange(offset..<(offset + patch.count), with: patch)
        try Files.setMtime(big, seconds: Int(Date().timeIntervalSince1970) + 60)

        let (second, s2) = try sync(server, dest)
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertEqual(int(s2, "filesFetched"), 1)
        XCTAssertEqual(int(s2, "filesDelta"), 1)
        let wire = int(s2, "fileWireBytes")
        XCTAssertGreaterThan(wire, 1 << 20, "the changed MiB must be fetched")
        XCTAssertLessThan(wire, 3 << 20, "only the changed blocks may cross the wire (got \(wire) bytes)")
        print("delta re-sync of a 32 MiB file with 1 MiB changed: fileWireBytes=\(wire), manifestWireBytes=\(int(s2, "manifestWireBytes"))")
        XCTAssertEqual(Files.read(dest.appendingPathComponent("big.bin")).map(SHA256Hasher.hex), SHA256Hasher.hex(bytes))
        XCTAssertEqual(Files.mtime(dest.appendingPathComponent("big.bin")).0, Files.mtime(big).0)
    }

    // MARK: - --delete, --exclude, --dry-run

    func testDeleteRemovesExtrasAndExcludeProtectsThem() throws {
        let src = try makeSource()
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")
        XCTAssertEqual(try sync(server, dest).0.status, 0)

        let extras = ["extra.txt", "extra-dir/sub/file.txt", "docs/extra-nested.txt", "photos/2024/extra.raw"]
        for e in extras { try Files.write(dest.appendingPathComponent(e), "extra") }
        try Files.symlink(dest.appendingPathComponent("extra-link"), to: "hello world.txt")
        try Files.symlink(dest.appendingPathComponent("docs/dangling-link"), to: "nowhere")
        let kept = ["keep.tmp", "docs/notes.tmp", "cache/data.bin", "cache/deeper/more.bin"]
        for k in kept { try Files.write(dest.appendingPathComponent(k), "precious") }

        // Without --delete nothing local is removed.
        let (plain, _) = try sync(server, dest)
        XCTAssertEqual(plain.status, 0, plain.stderr)
        for e in extras + ["extra-link", "docs/dangling-link"] { XCTAssertTrue(Files.exists(dest.appendingPathComponent(e)), e) }

        let (deleted, s) = try sync(server, dest, ["--delete", "--exclude", "*.tmp", "--exclude", "cache/**"])
        XCTAssertEqual(deleted.status, 0, deleted.stderr)
        for e in extras + ["extra-dir", "extra-link", "docs/dangling-link"] {
            XCTAssertFalse(Files.exists(dest.appendingPathComponent(e)), "\(e) must be deleted")
        }
        for k in kept {
            XCTAssertEqual(Files.text(dest.appendingPathComponent(k)), "precious", "\(k) is excluded and must be kept")
        }
        XCTAssertGreaterThanOrEqual(int(s, "filesDeleted"), 6)
        var copy = try TreeSnapshot.take(dest)
        for k in kept + ["cache", "cache/deeper"] { copy.items.removeValue(forKey: k) }
        XCTAssertEqual(try TreeSnapshot.take(src).differences(from: copy), [])
    }

    func testDeleteReplacesEntriesWhoseTypeChanged() throws {
        let src = work.appendingPathComponent("src")
        try Files.write(src.appendingPathComponent("was-dir"), "now a file")
        try Files.write(src.appendingPathComponent("was-file/inner.txt"), "now a dir")
        try Files.symlink(src.appendingPathComponent("was-link"), to: "was-dir")
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")
        try Files.write(dest.appendingPathComponent("was-dir/old.txt"), "old")
        try Files.write(dest.appendingPathComponent("was-file"), "old")
        try Files.write(dest.appendingPathComponent("was-link"), "old regular file")
        let (r, _) = try sync(server, dest, ["--delete"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try TreeSnapshot.take(src).differences(from: try TreeSnapshot.take(dest)), [])
    }

    func testDryRunPrintsThePlanAndChangesNothing() throws {
        let src = try makeSource()
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")
        XCTAssertEqual(try sync(server, dest).0.status, 0)

        // Changes on both sides.
        try Files.write(src.appendingPathComponent("new.txt"), "new on the server")
        try Files.write(src.appendingPathComponent("docs/guides/README.md"), "changed on the server, longer than before....................................")
        try Files.write(src.appendingPathComponent("new-dir/inner.txt"), "inner")
        try FileManager.default.removeItem(at: src.appendingPathComponent("empty.txt"))
        try Files.write(dest.appendingPathComponent("local-only.txt"), "local")
        let before = try TreeSnapshot.take(dest)

        let (plan, _) = try sync(server, dest, ["--dry-run", "--delete"], json: false)
        XCTAssertEqual(plan.status, 0, plan.stderr)
        for line in ["would fetch new.txt", "would fetch new-dir/inner.txt", "would mkdir new-dir",
                     "would delete local-only.txt", "would delete empty.txt"] {
            XCTAssertTrue(plan.stdout.contains(line), "missing '\(line)' in:\n\(plan.stdout)")
        }
        XCTAssertTrue(plan.stdout.contains("docs/guides/README.md"), plan.stdout)
        XCTAssertFalse(plan.stdout.contains("hello world.txt"), "unchanged files are not in the plan:\n\(plan.stdout)")
        XCTAssertEqual(try TreeSnapshot.take(dest).differences(from: before), [], "--dry-run must not touch DEST")
        XCTAssertEqual(try TreeSnapshot.take(dest), before)

        let (jsonPlan, s) = try sync(server, dest, ["--dry-run", "--delete"])
        XCTAssertEqual(jsonPlan.status, 0)
        XCTAssertEqual(s["dryRun"] as? Bool, true)
        XCTAssertEqual(int(s, "filesFetched"), 3)
        XCTAssertEqual(int(s, "fileWireBytes"), 0)
        XCTAssertEqual(try TreeSnapshot.take(dest), before)

        // A dry run into a destination that does not exist creates nothing.
        let fresh = work.appendingPathComponent("fresh")
        let (freshPlan, fs) = try sync(server, fresh, ["--dry-run"])
        XCTAssertEqual(freshPlan.status, 0, freshPlan.stderr)
        XCTAssertEqual(int(fs, "filesFetched"), Self.fixtureFiles + 2 - 1, "the fixtures, new.txt, new-dir/inner.txt, not empty.txt")
        XCTAssertFalse(Files.exists(fresh), "--dry-run must not create DEST")

        // The real run then does what the plan said.
        let (real, rs) = try sync(server, dest, ["--delete"])
        XCTAssertEqual(real.status, 0, real.stderr)
        XCTAssertEqual(int(rs, "filesFetched"), 3)
        XCTAssertEqual(try TreeSnapshot.take(src).differences(from: try TreeSnapshot.take(dest)), [])
    }

    func testExcludeGlobsSkipPaths() throws {
        let src = work.appendingPathComponent("src")
        let all = ["a.log", "b.log", "c.log", "img1.png", "img2.png", "img10.png", "x.tmp", "sub/y.tmp", "sub/z.txt",
                   "build/out/x.o", "deep/a/secret/key.pem", "deep/secret-not.txt", "keep.txt"]
        for p in all { try Files.write(src.appendingPathComponent(p), p) }
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")
        let (r, s) = try sync(server, dest, ["--exclude", "*.tmp", "--exclude", "build/**", "--exclude", "img?.png",
                                             "--exclude", "[ab]*.log", "--exclude", "**/secret"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let present = Set(try TreeSnapshot.take(dest).items.filter { $0.value.type == "f" }.keys)
        XCTAssertEqual(present, ["c.log", "img10.png", "sub/z.txt", "deep/secret-not.txt", "keep.txt"])
        XCTAssertFalse(Files.exists(dest.appendingPathComponent("build/out")))
        XCTAssertFalse(Files.exists(dest.appendingPathComponent("deep/a/secret")))
        XCTAssertEqual(int(s, "filesFetched"), 5)

        // Excluded paths are not compared either: a local change under an excluded name stays.
        try Files.write(dest.appendingPathComponent("x.tmp"), "mine")
        let (again, s2) = try sync(server, dest, ["--exclude", "*.tmp", "--delete"])
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertEqual(Files.text(dest.appendingPathComponent("x.tmp")), "mine")
        XCTAssertFalse(Files.exists(dest.appendingPathComponent("sub/y.tmp")), "excluded on the server side too")
        XCTAssertEqual(int(s2, "filesFetched"), 6, "the rest of the formerly excluded files arrive")

        // A bad pattern is a usage error.
        let bad = try TestSupport.ferry(["sync", server.address, dest.path, "--exclude", "[z-a]"])
        XCTAssertEqual(bad.status, 64, bad.stderr)
    }

    // MARK: - --checksum

    func testChecksumDetectsASameSizeSameMtimeChangeTheQuickCheckMisses() throws {
        let src = work.appendingPathComponent("src")
        let file = src.appendingPathComponent("data.txt")
        try Files.write(file, String(repeating: "A", count: 4096))
        try Files.setMtime(file, seconds: 1_650_000_000, nanos: 5)
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")
        XCTAssertEqual(try sync(server, dest).0.status, 0)

        // Same size, same mtime, other content (a new file renamed over the old one).
        let replacement = src.appendingPathComponent(".data.new")
        try Files.write(replacement, String(repeating: "B", count: 4096))
        try Files.setMtime(replacement, seconds: 1_650_000_000, nanos: 5)
        XCTAssertEqual(rename(replacement.path, file.path), 0)

        let (quick, qs) = try sync(server, dest)
        XCTAssertEqual(quick.status, 0, quick.stderr)
        XCTAssertEqual(int(qs, "filesFetched"), 0, "the quick check cannot see this change")
        XCTAssertEqual(Files.text(dest.appendingPathComponent("data.txt")), String(repeating: "A", count: 4096))

        let (full, fs) = try sync(server, dest, ["--checksum"])
        XCTAssertEqual(full.status, 0, full.stderr)
        XCTAssertEqual(int(fs, "filesFetched"), 1)
        XCTAssertEqual(Files.text(dest.appendingPathComponent("data.txt")), String(repeating: "B", count: 4096))
        XCTAssertEqual(Files.mtime(dest.appendingPathComponent("data.txt")).0, 1_650_000_000)
        XCTAssertEqual(Files.mtime(dest.appendingPathComponent("data.txt")).1, 5)

        let (again, as2) = try sync(server, dest, ["--checksum"])
        XCTAssertEqual(again.status, 0)
        XCTAssertEqual(int(as2, "filesFetched"), 0)
        XCTAssertEqual(int(as2, "filesUnchanged"), 1)
    }

    /// The same, but the file is rewritten in place (same inode), as many tools do; the
    /// server's hash cache must not hand out the old hash: the cache key includes ctime
    /// (Sources/FerryFiles/HashCache.swift), which a restored mtime does not restore.
    func testChecksumDetectsAnInPlaceRewriteWithRestoredMtime() throws {
        let src = work.appendingPathComponent("src")
        let file = src.appendingPathComponent("data.txt")
        try Files.write(file, String(repeating: "A", count: 64))
        try Files.setMtime(file, seconds: 1_650_000_000, nanos: 5)
        let server = try serve(src)
        defer { server.stop() }
        let dest = work.appendingPathComponent("dest")
        XCTAssertEqual(try sync(server, dest, ["--checksum"]).0.status, 0)

        let handle = try XCTUnwrap(Foundation.FileHandle(forWritingAtPath: file.path))
        handle.write(Data(String(repeating: "B", count: 64).utf8))
        try handle.close()
        try Files.setMtime(file, seconds: 1_650_000_000, nanos: 5)

        let (full, fs) = try sync(server, dest, ["--checksum"])
        XCTAssertEqual(full.status, 0, full.stderr)
        XCTAssertEqual(int(fs, "filesFetched"), 1, "the content changed; --checksum must fetch it")
        XCTAssertEqual(Files.text(dest.appendingPathComponent("data.txt")), String(repeating: "B", count: 64))
        let out = work.appendingPathComponent("fresh-copy.txt")
        let get = try TestSupport.ferry(["get", "\(server.address)/data.txt", out.path])
        XCTAssertEqual(get.status, 0, "a fresh fetch must succeed: \(get.stderr)")
        XCTAssertEqual(Files.text(out), String(repeating: "B", count: 64))
    }
}
