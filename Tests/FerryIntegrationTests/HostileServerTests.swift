#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import NIOCore
import FerryTestSupport
import Foundation
import XCTest

/// The built `ferry` against a lying server: hostile manifests must never make it write
/// outside DEST, and data that does not match its checksums must never land under a final name.
final class HostileServerTests: XCTestCase {
    var work: URL!
    let mt = FakeServer.mtime
    let evil = Array("EVIL!".utf8)

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-hostile")
    }

    override func tearDownWithError() throws {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    /// Every regular file below `dir` whose content is `bytes` (found without following links).
    private func files(containing bytes: [UInt8], in dir: URL) -> [String] {
        guard let e = FileManager.default.enumerator(atPath: dir.path) else { return [] }
        var out: [String] = []
        while let rel = e.nextObject() as? String {
            let full = dir.appendingPathComponent(rel)
            var st = stat()
            guard lstat(full.path, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { continue }
            if Files.read(full) == bytes { out.append(rel) }
        }
        return out
    }

    /// Every symlink below `dest` that resolves to something outside `dest`.
    private func linksLeaving(_ dest: URL) -> [String] {
        guard let e = FileManager.default.enumerator(atPath: dest.path) else { return [] }
        let root = dest.resolvingSymlinksInPath().path
        var out: [String] = []
        while let rel = e.nextObject() as? String {
            let full = dest.appendingPathComponent(rel)
            var st = stat()
            guard lstat(full.path, &st) == 0, st.st_mode & S_IFMT == S_IFLNK else { continue }
            guard let resolved = realpath(full.path, nil) else { continue }  // dangling: points nowhere
            let path = String(cString: resolved)
            free(resolved)
            if path != root && !path.hasPrefix(root + "/") { out.append("\(rel) -> \(path)") }
        }
        return out
    }

    private func fsync(_ fake: FakeServer, _ dest: URL, _ extra: [String] = []) throws -> TestSupport.ProcessResult {
        try TestSupport.ferry(["sync", fake.address, dest.path, "--retries", "0"] + extra, timeout: 60)
    }

    // MARK: - Hostile manifests

    func testHostileManifestPathsAreRefusedAndNothingIsWrittenOutsideDest() throws {
        let abs = work.appendingPathComponent("abs-escape")
        let cases: [(String, [String])] = [
            ("dot-dot", ["f 0644 5 \(mt) - ../escape"]),
            ("absolute", ["f 0644 5 \(mt) - \(abs.path)"]),
            ("dot-dot inside", ["d 0755 0 \(mt) a", "f 0644 5 \(mt) - a/../../escape"]),
            ("encoded dot-dot", ["f 0644 5 \(mt) - %2E%2E/escape"]),
            ("encoded slash", ["f 0644 5 \(mt) - a%2F..%2F..%2Fescape"]),
            ("encoded NUL", ["f 0644 5 \(mt) - x%00y"]),
            ("file below a symlink to /tmp", ["l 0777 \(work.path.utf8.count) \(mt) link \(work.path)", "f 0644 5 \(mt) - link/escape"]),
            ("file below a symlink to ..", ["l 0777 2 \(mt) link ..", "f 0644 5 \(mt) - link/escape"]),
            ("file below a file", ["f 0644 5 \(mt) - plain", "f 0644 5 \(mt) - plain/escape"]),
            ("orphan", ["f 0644 5 \(mt) - nodir/escape"]),
            ("duplicate", ["d 0755 0 \(mt) a", "d 0755 0 \(mt) a", "f 0644 5 \(mt) - a/x"]),
            ("unsorted", ["f 0644 5 \(mt) - b", "f 0644 5 \(mt) - a"]),
            ("empty component", ["f 0644 5 \(mt) - a//b"]),
            ("dot component", ["d 0755 0 \(mt) a", "f 0644 5 \(mt) - a/./b"]),
        ]
        for (name, manifest) in cases {
            let served = Dictionary(uniqueKeysWithValues: ["../escape", abs.path, "a/../../escape", "%2E%2E/escape",
                                                          "a%2F..%2F..%2Fescape", "x%00y", "link/escape", "plain",
                                                          "plain/escape", "nodir/escape", "a/x", "a", "b", "a//b", "a/./b"].map { ($0, evil) })
            let fake = try FakeServer(responder: FakeServer.treeResponder(manifest: manifest, files: served))
            defer { fake.stop() }
            let dest = work.appendingPathComponent("dest-\(name.replacingOccurrences(of: " ", with: "-"))")
            let before = Files.names(work)
            let r = try fsync(fake, dest)
            XCTAssertNotEqual(r.status, 0, "\(name): a hostile manifest must fail the sync")
            XCTAssertTrue(r.stderr.contains("manifest") || r.stderr.contains("refused"), "\(name): stderr must say why: \(r.stderr)")
            XCTAssertFalse(fake.requests.contains { $0.hasPrefix("GET ") }, "\(name): nothing may be fetched from a hostile manifest")
            XCTAssertEqual(files(containing: evil, in: work), [], "\(name): hostile data landed somewhere")
            XCTAssertTrue(Files.names(work).subtracting(before).isSubset(of: [dest.lastPathComponent]), "\(name): \(Files.names(work).subtracting(before))")
            XCTAssertFalse(Files.exists(abs))
        }
        XCTAssertFalse(Files.exists(work.deletingLastPathComponent().appendingPathComponent("escape")))
    }

    func testSymlinksLeavingDestAreSkippedWithAWarning() throws {
        let hello = Array("hello".utf8)
        let manifest = [
            "l 0777 1 \(mt) dot .",
            "l 0777 2 \(mt) dot-dot ..",
            "l 0777 4 \(mt) etc /etc",
            "f 0644 5 \(mt) \(FakeServer.sha256Hex(hello)) hello.txt",
            "l 0777 9 \(mt) inside hello.txt",
            "d 0755 0 \(mt) p",
            "d 0755 0 \(mt) p/q",
            "l 0777 2 \(mt) p/q/up ..",
            "l 0777 8 \(mt) p/q/up-out ../../..",
            // Lexically these stay inside; on disk `dot` is DEST and `p/q/up` is `p`, so they
            // would lead out of DEST.
            "l 0777 6 \(mt) p/q/via-up up/../..",
            "l 0777 6 \(mt) via-dot dot/..",
        ]
        let fake = try FakeServer(responder: FakeServer.treeResponder(manifest: manifest, files: ["hello.txt": hello]))
        defer { fake.stop() }
        let dest = work.appendingPathComponent("dest")
        let r = try fsync(fake, dest)
        XCTAssertEqual(r.status, 0, "links that leave the tree are skipped with a warning, not failures: \(r.stderr)")
        assertSameBytes(Files.read(dest.appendingPathComponent("hello.txt")), hello)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: dest.appendingPathComponent("inside").path), "hello.txt")
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: dest.appendingPathComponent("p/q/up").path), "..")
        for name in ["dot-dot", "etc", "p/q/up-out"] {
            XCTAssertFalse(Files.exists(dest.appendingPathComponent(name)), "\(name) leaves DEST and must be skipped")
            XCTAssertTrue(r.stderr.contains("warning") && r.stderr.contains(name), "no warning naming \(name): \(r.stderr)")
        }
        XCTAssertEqual(linksLeaving(dest), [], "a symlink in DEST leads outside it")
    }

    func testExistingSymlinksInDestAreNeverWrittenThrough() throws {
        let outside = work.appendingPathComponent("outside")
        try Files.write(outside.appendingPathComponent("target.txt"), "ORIGINAL")
        let dest = work.appendingPathComponent("dest")
        try Files.symlink(dest.appendingPathComponent("sub"), to: outside.path)
        try Files.symlink(dest.appendingPathComponent("file.txt"), to: outside.appendingPathComponent("target.txt").path)
        try Files.symlink(dest.appendingPathComponent("rel"), to: "../outside")
        let manifest = [
            "f 0644 5 \(mt) - file.txt",
            "d 0755 0 \(mt) rel",
            "f 0644 5 \(mt) - rel/target.txt",
            "d 0755 0 \(mt) sub",
            "f 0644 5 \(mt) - sub/evil",
        ]
        let fake = try FakeServer(responder: FakeServer.treeResponder(
            manifest: manifest, files: ["file.txt": evil, "rel/target.txt": evil, "sub/evil": evil]))
        defer { fake.stop() }
        let r = try fsync(fake, dest)
        XCTAssertEqual(r.status, 0, r.stderr)
        assertSameBytes(Files.read(outside.appendingPathComponent("target.txt")), Array("ORIGINAL".utf8))
        XCTAssertEqual(Files.names(outside), ["target.txt"], "nothing may be created through a link")
        XCTAssertEqual(files(containing: evil, in: outside), [])
        // The links were replaced by what the server describes.
        for p in ["file.txt", "rel/target.txt", "sub/evil"] {
            assertSameBytes(Files.read(dest.appendingPathComponent(p)), evil, p)
        }
        XCTAssertEqual(linksLeaving(dest), [])
    }

    /// DEST's partial folder replaced by a link to elsewhere: partial data must not follow it.
    /// The file is bigger than one chunk (so it is fetched through `.ferry-partial`, not a
    /// temporary), and the first server hangs up after three of its chunks, so whatever partial
    /// data was written stays where it was written.
    func testAPartialFolderSymlinkInDestIsNotFollowed() throws {
        let size = 600_000
        let data = try Files.randomBytes(size)
        let manifest = ["f 0644 \(size) \(mt) - f.bin"]
        let whole = FakeServer.treeResponder(manifest: manifest, files: ["f.bin": data])
        let cutting: FakeServer.Responder = { line in
            guard let reply = whole(line) else { return nil }
            return line.hasPrefix("GET ") ? Array(reply.prefix(3 * 65_600 + 10_000)) + FakeServer.hangUp : reply
        }
        let cutter = try FakeServer(responder: cutting)
        defer { cutter.stop() }

        // Control: into a plain DEST the interrupted file leaves its verified chunks in
        // DEST/.ferry-partial, so that is the folder the link below stands in for.
        let plain = work.appendingPathComponent("plain")
        let control = try fsync(cutter, plain)
        XCTAssertNotEqual(control.status, 0, control.stderr)
        let kept = Files.names(plain.appendingPathComponent(".ferry-partial")).filter { $0.hasSuffix(".part") }
        XCTAssertEqual(kept.count, 1, "the interrupted file was not fetched through the partial folder: \(control.stderr)")
        let keptSize = kept.first.map { Files.read(plain.appendingPathComponent(".ferry-partial/\($0)"))?.count ?? 0 } ?? 0
        XCTAssertGreaterThanOrEqual(keptSize, 3 * 65_536, "verified chunks must be kept")

        let outside = work.appendingPathComponent("outside")
        try FileManager.default.createDirectory(at: outside, withIntermediateDirectories: true)
        let dest = work.appendingPathComponent("dest")
        let link = dest.appendingPathComponent(".ferry-partial")
        try Files.symlink(link, to: outside.path)
        let r = try fsync(cutter, dest)
        XCTAssertNotEqual(r.status, 0, r.stderr)
        XCTAssertEqual(Files.names(outside), [], "partial data went through the link: \(r.stderr)")
        var st = stat()
        XCTAssertEqual(lstat(link.path, &st), 0)
        if st.st_mode & S_IFMT == S_IFLNK {
            XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: link.path), outside.path)
            XCTAssertTrue(r.stderr.contains(".ferry-partial"), "a refusal must name the folder: \(r.stderr)")
        } else {
            XCTAssertEqual(st.st_mode & S_IFMT, S_IFDIR, "the link was replaced by something other than a folder")
        }

        // With a server that sends everything, the sync either completes beside the link or
        // refuses naming it; nothing ever lands outside.
        let honest = try FakeServer(responder: whole)
        defer { honest.stop() }
        let full = try fsync(honest, dest)
        XCTAssertEqual(Files.names(outside), [], "partial data went through the link: \(full.stderr)")
        if full.status == 0 {
            assertSameBytes(Files.read(dest.appendingPathComponent("f.bin")), data)
        } else {
            XCTAssertTrue(full.stderr.contains(".ferry-partial"), "the failure must name the folder: \(full.stderr)")
            XCTAssertFalse(Files.exists(dest.appendingPathComponent("f.bin")))
        }
    }

    // MARK: - Data that does not match its checksums

    func testCorruptOrMislabelledDataIsNeverRenamedIntoPlace() throws {
        let data = try Files.randomBytes(200_000)
        let text = Array(String(repeating: "compressible text ", count: 20_000).utf8)
        for corruption in [FakeServer.Corruption.crc, .flippedByte, .endSHA] {
            for (name, bytes) in [("random.bin", data), ("text.txt", text)] {
                let manifest = ["f 0644 \(bytes.count) \(mt) - \(name)"]
                let fake = try FakeServer(responder: FakeServer.treeResponder(manifest: manifest, files: [name: bytes], corruption: corruption))
                defer { fake.stop() }
                let dest = work.appendingPathComponent("dest-\(corruption)-\(name)")
                let r = try fsync(fake, dest)
                XCTAssertNotEqual(r.status, 0, "\(corruption) \(name)")
                XCTAssertTrue(r.stderr.contains(name), "\(corruption): the failure must name the file: \(r.stderr)")
                XCTAssertFalse(Files.exists(dest.appendingPathComponent(name)), "\(corruption) \(name): unverified data renamed into place")
                XCTAssertTrue(fake.requests.contains { $0.hasPrefix("GET ") })

                let out = work.appendingPathComponent("get-\(corruption)-\(name)")
                let g = try TestSupport.ferry(["get", "\(fake.address)/\(name)", out.path, "--retries", "0"], timeout: 60)
                XCTAssertEqual(g.status, 4, "\(corruption) \(name): integrity failures exit 4: \(g.stderr)")
                XCTAssertFalse(Files.exists(out), "\(corruption) \(name): ferry get renamed unverified data into place")
            }
        }
    }

    func testManifestHashThatDisagreesWithTheDataFailsTheFile() throws {
        let good = Array("good file\n".utf8)
        let served = Array("other data\n".utf8)
        let manifest = [
            "f 0644 \(good.count) \(mt) \(FakeServer.sha256Hex(good)) good.txt",
            "f 0644 \(served.count) \(mt) \(FakeServer.sha256Hex(good + [1])) liar.txt",
        ]
        let fake = try FakeServer(responder: FakeServer.treeResponder(manifest: manifest, files: ["good.txt": good, "liar.txt": served]))
        defer { fake.stop() }
        let dest = work.appendingPathComponent("dest")
        let r = try fsync(fake, dest, ["--json"])
        XCTAssertEqual(r.status, 1, "some entries failed: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("liar.txt"), r.stderr)
        assertSameBytes(Files.read(dest.appendingPathComponent("good.txt")), good, "the good file still arrives")
        XCTAssertFalse(Files.exists(dest.appendingPathComponent("liar.txt")))
        let summary = JSONLines.summary(r.stdout)
        XCTAssertEqual(JSONLines.int(summary, "failures"), 1)
        XCTAssertEqual(JSONLines.int(summary, "filesFetched"), 1)
    }

    func testStreamsThatBreakTheFramingAreRejected() throws {
        let bytes = Array("0123456789".utf8)
        let variants: [(String, @Sendable (String) -> [UInt8])] = [
            ("more data than the file has", { _ in
                Array("OK 10 \(FakeServer.mtime) -\n".utf8) + FakeServer.chunkStream(bytes + bytes, compress: false) }),
            ("a chunk at the wrong offset", { _ in
                Array("OK 10 \(FakeServer.mtime) -\n".utf8) + FakeServer.chunkStream(bytes, offset: 0, compress: false)
                    .replacing(Array("CHUNK 0 ".utf8), with: Array("CHUNK 5 ".utf8)) }),
            ("another version of the file", { _ in
                Array("OK 10 1700000999.000000000 -\n".utf8) + FakeServer.chunkStream(bytes, compress: false) }),
            ("END before all data", { _ in
                Array("OK 10 \(FakeServer.mtime) -\nEND \(FakeServer.sha256Hex(bytes))\n".utf8) }),
            ("the connection drops mid-stream", { _ in
                Array("OK 10 \(FakeServer.mtime) -\nCHUNK 0 10 10 s 00000000\n01234".utf8) }),
        ]
        for (name, getReply) in variants {
            let base = FakeServer.treeResponder(manifest: ["f 0644 10 \(mt) - f.txt"], files: ["f.txt": bytes])
            let fake = try FakeServer { line in
                if line.hasPrefix("GET ") {
                    return getReply(line) + (name == "the connection drops mid-stream" ? FakeServer.hangUp : [])
                }
                return base(line)
            }
            defer { fake.stop() }
            let dest = work.appendingPathComponent("dest-\(name.replacingOccurrences(of: " ", with: "-"))")
            let r = try fsync(fake, dest, ["--timeout", "3"])
            XCTAssertNotEqual(r.status, 0, name)
            XCTAssertTrue(r.stderr.contains("f.txt"), "\(name): \(r.stderr)")
            XCTAssertFalse(Files.exists(dest.appendingPathComponent("f.txt")), name)
        }
    }
}

extension HostileServerTests {
    /// A 1.0 server (no `caps=` in its greeting, so the client enables nothing) that sends a
    /// well-formed zstd chunk: the client refuses it as a protocol violation instead of decoding
    /// a codec it never agreed to, and nothing lands under the file's name.
    func testAZstdChunkOnAConnectionThatDidNotEnableZstdIsRefused() throws {
        let text = Array(String(repeating: "ferry text that compresses well ", count: 400).utf8)
        var encoder = ChunkEncoder(.compress(.zstd(3)))
        let (header, wire) = text.withUnsafeBytes { encoder.encode(raw: $0, offset: 0, allocator: ByteBufferAllocator()) }
        XCTAssertEqual(header.codec, .zstd, "the fixture must really be a zstd chunk")
        let reply = Array("OK \(text.count) \(FakeServer.mtime) -\n\(header.line)\n".utf8) + Array(wire.readableBytesView)
            + Array("END \(FakeServer.sha256Hex(text))\n".utf8)
        let base = FakeServer.treeResponder(manifest: ["f 0644 \(text.count) \(mt) - t.txt"], files: ["t.txt": text])
        let fake = try FakeServer { line in line.hasPrefix("GET ") ? reply : base(line) }
        defer { fake.stop() }
        XCTAssertFalse(fake.requests.contains { $0.hasPrefix("CAPS") })
        let out = work.appendingPathComponent("t.txt")
        let g = try TestSupport.ferry(["get", "\(fake.address)/t.txt", out.path, "--retries", "0", "--timeout", "3"], timeout: 60)
        XCTAssertNotEqual(g.status, 0, g.stderr)
        XCTAssertTrue(g.stderr.contains("did not enable zstd"), g.stderr)
        XCTAssertFalse(Files.exists(out))
    }
}

extension Array where Element == UInt8 {
    /// The first occurrence of `pattern` replaced.
    func replacing(_ pattern: [UInt8], with replacement: [UInt8]) -> [UInt8] {
        guard pattern.count <= count else { return self }
        for i in 0...(count - pattern.count) where Array(self[i..<(i + pattern.count)]) == pattern {
            return Array(self[..<i]) + replacement + Array(self[(i + pattern.count)...])
        }
        return self
    }
}
