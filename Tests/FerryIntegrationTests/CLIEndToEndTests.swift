#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryTestSupport
import Foundation
import XCTest

/// `ferry get`, `ferry ls`, address parsing, exit codes and shutdown, end to end with the
/// built executable.
final class CLIEndToEndTests: XCTestCase {
    var work: URL!
    var sample: URL!
    var server: ServerProcess?

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-cli-e2e")
        sample = try TestSupport.materializeFixtures(in: work)
    }

    override func tearDownWithError() throws {
        server?.stop()
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    private func startServer(tls: Bool = true, _ extra: [String] = ["--bind", "127.0.0.1"]) throws -> ServerProcess {
        let s = try ServerProcess(serving: sample, tls: tls,
                                  arguments: extra + ["--no-discovery", "--state-dir", work.appendingPathComponent("state").path])
        server = s
        return s
    }

    // MARK: - get

    /// `ferry ls SERVER | head -c 1` and `ferry sync --json` into a closed pipe: ferry stops
    /// quietly with exactly 141 (as if ended by SIGPIPE), never a crash report, never 0. The
    /// listing is far bigger than a pipe's buffer, so its writer must hit the closed pipe.
    func testAClosedStandardOutputEndsQuietly() throws {
        let many = sample.appendingPathComponent("many")
        try FileManager.default.createDirectory(at: many, withIntermediateDirectories: true)
        let name = String(repeating: "a-rather-long-file-name-to-fill-the-pipe-", count: 3)
        try TestSupport.run("/bin/sh", ["-c", "cd \"$1\" && i=0; while [ $i -lt 2000 ]; do : > \"$2$i.txt\"; i=$((i+1)); done",
                                        "sh", many.path, name])
        let s = try startServer()
        let ferry = TestSupport.ferryExecutable.path

        // The reader goes away after one byte, mid-stream (about 300 KB of listing).
        let trust = s.clientArguments.joined(separator: " ")
        let mid = try TestSupport.run("/bin/bash", ["-c", "'\(ferry)' ls \(s.address)/many \(trust) | head -c 1 >/dev/null; echo \"status=${PIPESTATUS[0]}\" >&2"],
                                      check: false)
        XCTAssertFalse(mid.stderr.contains("Fatal error") || mid.stderr.contains("crashed"), mid.stderr)
        XCTAssertTrue(mid.stderr.contains("status=141"), mid.stderr)

        // The reader is gone before ferry writes anything.
        for command in [["ls", "\(s.address)/many"], ["ls", "\(s.address)/many", "--json"],
                        ["sync", s.address, work.appendingPathComponent("piped").path, "--json"]] {
            let r = try Self.runWithClosedStdout([ferry] + command)
            XCTAssertEqual(r.reason, .exit, "\(command): ended by a signal: \(r.stderr)")
            XCTAssertEqual(r.status, 141, "\(command): \(r.stderr)")
            XCTAssertFalse(r.stderr.contains("Fatal error") || r.stderr.contains("crashed"), r.stderr)
        }
    }

    /// Runs `command` with stdout a pipe whose read end is already closed.
    static func runWithClosedStdout(_ command: [String]) throws -> (status: Int32, reason: Process.TerminationReason, stderr: String) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw IntegrationFailure("pipe: errno \(errno)") }
        close(fds[0])
        let dir = try TestSupport.makeTemporaryDirectory("ferry-closed-stdout")
        defer { TestSupport.removeTemporaryDirectory(dir) }
        let errURL = dir.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let process = TestSupport.process(command)
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle(fileDescriptor: fds[1], closeOnDealloc: true)
        process.standardError = try FileHandle(forWritingTo: errURL)
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw IntegrationFailure("\(command) did not stop with a closed stdout")
        }
        return (process.terminationStatus, process.terminationReason, (try? String(contentsOf: errURL, encoding: .utf8)) ?? "")
    }

    func testGetFetchesVerifiesAndPreservesAttributes() throws {
        let s = try startServer()
        let big = try Files.randomBytes(3 << 20)
        try Files.write(sample.appendingPathComponent("photos/big.bin"), big, mode: 0o640)
        try Files.setMtime(sample.appendingPathComponent("photos/big.bin"), seconds: 1_600_000_000, nanos: 42)

        let out = work.appendingPathComponent("big-copy.bin")
        let r = try TestSupport.ferry(["get", "\(s.address)/photos/big.bin", out.path, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        assertSameBytes(Files.read(out), big)
        let summary = JSONLines.summary(r.stdout)
        XCTAssertEqual(summary?["sha256"] as? String, SHA256Hasher.hex(big))
        XCTAssertEqual(JSONLines.int(summary, "size"), big.count)
        XCTAssertEqual(JSONLines.int(summary, "bytesWritten"), big.count)
        XCTAssertGreaterThanOrEqual(JSONLines.int(summary, "wireBytes") ?? 0, big.count)
        XCTAssertEqual(JSONLines.int(summary, "resumedFrom"), 0)
        var st = stat()
        XCTAssertEqual(lstat(out.path, &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o640)
        XCTAssertEqual(Files.mtime(out).0, 1_600_000_000)
        XCTAssertEqual(Files.mtime(out).1, 42)
        XCTAssertFalse(Files.exists(work.appendingPathComponent(".big-copy.bin.ferry-partial")))

        // Into an existing directory, under the file's own name; names with spaces and UTF-8.
        let dir = work.appendingPathComponent("into")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for name in ["hello world.txt", "café.txt", "empty.txt"] {
            let g = try TestSupport.ferry(["get", "\(s.address)/\(name)", dir.path])
            XCTAssertEqual(g.status, 0, g.stderr)
            assertSameBytes(Files.read(dir.appendingPathComponent(name)), Files.read(sample.appendingPathComponent(name)), name)
        }
        // ferry:// URLs.
        let url = try TestSupport.ferry(["get", "ferry://\(s.address)/docs/guides/README.md", work.appendingPathComponent("readme").path])
        XCTAssertEqual(url.status, 0, url.stderr)
        assertSameBytes(Files.read(work.appendingPathComponent("readme")), Files.read(sample.appendingPathComponent("docs/guides/README.md")))
        // An in-tree symlink is followed.
        let link = try TestSupport.ferry(["get", "\(s.address)/docs/hello-link", work.appendingPathComponent("via-link").path])
        XCTAssertEqual(link.status, 0, link.stderr)
        assertSameBytes(Files.read(work.appendingPathComponent("via-link")), Files.read(sample.appendingPathComponent("hello world.txt")))
    }

    /// A file the server lists but may not read (`STAT` answers, `GET` is refused with 423, as
    /// a server running as an ordinary user answers for a chmod-000 file): exit 3, and no empty
    /// `.NAME.ferry-partial` or sidecar is left beside LOCAL for ever.
    func testGetOfAFileTheServerMayNotReadLeavesNoPartial() throws {
        let fake = try FakeServer { line in
            let f = line.split(separator: " ").map(String.init)
            switch f.first {
            case "STAT": return Array("OK f 0644 7 \(FakeServer.mtime) secret.txt\n".utf8)
            case "GET": return Array("ERR 423 open secret.txt: permission denied on the server\n".utf8)
            default: return Array("ERR 400 not supported by this fake server\n".utf8)
            }
        }
        defer { fake.stop() }
        let dir = work.appendingPathComponent("getdir")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let r = try TestSupport.ferry(["get", "\(fake.address)/secret.txt", dir.appendingPathComponent("secret.txt").path])
        XCTAssertEqual(r.status, 3, r.stderr)
        XCTAssertTrue(r.stderr.contains("permission denied"), r.stderr)
        XCTAssertTrue(fake.requests.contains { $0.hasPrefix("GET ") }, "the test must reach the GET: \(fake.requests)")
        XCTAssertEqual(Files.names(dir), [], "nothing may be left beside LOCAL")
    }

    /// `ferry manifest` never drops anything silently: a directory it cannot read (not an empty
    /// one) and a path longer than 4096 bytes end the manifest as note lines (PROTOCOL.md 8.4);
    /// they, an unreadable file and a FIFO are named on stderr; exit 1 since the tree could not
    /// be described whole. Run as `nobody` through setpriv when root (root reads chmod-000 entries).
    func testManifestReportsWhatItLeavesOut() throws {
        chmod(work.path, 0o755)
        let tree = work.appendingPathComponent("tree")
        try Files.write(tree.appendingPathComponent("ok.txt"), "ok\n")
        try Files.write(tree.appendingPathComponent("secret.txt"), "secret\n")
        try FileManager.default.createDirectory(at: tree.appendingPathComponent("locked"), withIntermediateDirectories: true)
        try Files.write(tree.appendingPathComponent("locked/inside.txt"), "x\n")
        XCTAssertEqual(mkfifo(tree.appendingPathComponent("pipe").path, 0o644), 0)
        let component = String(repeating: "n", count: 200)
        // 21 levels of 200-byte names: a path of 4220 bytes, made and removed with *at() calls
        // (longer than PATH_MAX from the root).
        var fds = [open(tree.path, O_RDONLY | O_DIRECTORY)]
        for _ in 0..<21 {
            XCTAssertEqual(mkdirat(fds[fds.count - 1], component, 0o755), 0)
            fds.append(openat(fds[fds.count - 1], component, O_RDONLY | O_DIRECTORY))
        }
        XCTAssertFalse(fds.contains(-1))
        defer {
            for i in stride(from: fds.count - 2, through: 0, by: -1) { unlinkat(fds[i], component, AT_REMOVEDIR) }
            fds.forEach { close($0) }
        }
        chmod(tree.appendingPathComponent("secret.txt").path, 0o000)
        chmod(tree.appendingPathComponent("locked").path, 0o000)
        defer { chmod(tree.appendingPathComponent("locked").path, 0o755) }
        let setpriv = "/usr/bin/setpriv"
        let r: TestSupport.ProcessResult
        if geteuid() == 0 {
            guard FileManager.default.isExecutableFile(atPath: setpriv) else {
                throw XCTSkip("running as root without \(setpriv): root reads chmod-000 entries")
            }
            r = try TestSupport.run(setpriv, ["--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                              TestSupport.ferryExecutable.path, "manifest", tree.path], check: false)
        } else {
            r = try TestSupport.ferry(["manifest", tree.path])
        }
        XCTAssertEqual(r.status, 1, r.stderr)
        let notes = r.stdout.split(separator: "\n").filter { $0.hasPrefix("! ") }
        XCTAssertTrue(notes.contains("! unreadable locked"), "\(notes)")
        XCTAssertFalse(notes.contains { $0.hasPrefix("! special") }, "a copy lacks FIFOs too: stderr only: \(notes)")
        XCTAssertTrue(notes.contains { $0.hasPrefix("! too-long ") }, "\(notes)")
        XCTAssertTrue(r.stdout.contains(" - secret.txt\n"), r.stdout)
        for name in ["locked", "pipe", "secret.txt", component + "/" + component] {
            XCTAssertTrue(r.stderr.contains(name), "stderr does not name \(name): \(r.stderr)")
        }
    }

    func testGetOfAMissingFileExits3AndCreatesNothing() throws {
        let s = try startServer()
        try Files.symlink(sample.appendingPathComponent("out-link"), to: "../outside.txt")
        try Files.write(work.appendingPathComponent("outside.txt"), "outside")
        let out = work.appendingPathComponent("got")
        for path in ["no-such-file.txt", "docs/nope/deeper.txt", "docs", "out-link", "../outside.txt"] {
            let before = Files.names(work)
            let r = try TestSupport.ferry(["get", "\(s.address)/\(path)", out.path])
            if path.hasPrefix("..") {
                XCTAssertEqual(r.status, 64, "\(path): \(r.stderr)")
            } else {
                XCTAssertEqual(r.status, 3, "\(path): \(r.stderr)")
            }
            XCTAssertTrue(r.stderr.hasPrefix("ferry: "), r.stderr)
            XCTAssertEqual(Files.names(work), before, "\(path): nothing may be created")
        }
        let missing = try TestSupport.ferry(["get", "\(s.address)/no-such-file.txt", out.path])
        XCTAssertTrue(missing.stderr.contains("not found"), missing.stderr)
        XCTAssertTrue(missing.stderr.contains("ferry ls"), "the error says what to do: \(missing.stderr)")
        // The empty file, by contrast, arrives as an empty file.
        let empty = try TestSupport.ferry(["get", "\(s.address)/empty.txt", out.path])
        XCTAssertEqual(empty.status, 0, empty.stderr)
        assertSameBytes(Files.read(out), [])
    }

    // MARK: - addresses

    func testBadAddressesAreUsageErrorsBeforeAnythingIsSent() throws {
        let cases: [(String, String)] = [
            ("256.1.1.1/x", "0 to 255"),
            ("10.0.0/x", "four numbers"),
            ("1.2.3.4.5/x", "four numbers"),
            ("127.0.0.1:0/x", "1 to 65535"),
            ("127.0.0.1:70000/x", "1 to 65535"),
            ("127.0.0.1:/x", "1 to 65535"),
            ("127.0.0.1:12ab/x", "1 to 65535"),
            ("::1/x", "brackets"),
            ("[::1/x", "]"),
            ("[::g]:7446/x", "IPv6"),
            ("http://127.0.0.1/x", "ferry://"),
            ("ferry://", "no host"),
            ("127.0.0.1:7446/../etc/passwd", "'..'"),
            ("127.0.0.1:7446//etc/passwd", "path"),
            ("bad_host!/x", "host name"),
        ]
        for (address, why) in cases {
            let start = Date()
            for command in [["get", address, work.appendingPathComponent("x").path], ["ls", address]] {
                let r = try TestSupport.ferry(command, timeout: 20)
                XCTAssertEqual(r.status, 64, "\(command): \(r.stderr)")
                XCTAssertTrue(r.stderr.contains("invalid server address"), "\(command): \(r.stderr)")
                XCTAssertTrue(r.stderr.contains(why), "\(command): expected '\(why)' in \(r.stderr)")
            }
            XCTAssertLessThan(Date().timeIntervalSince(start), 10, "\(address): no lookups or probes for a bad address")
        }
        XCTAssertFalse(Files.exists(work.appendingPathComponent("x")))
    }

    /// IPv6 loopback in this network namespace, as any user. Where `::1` is missing this skips
    /// loudly; `IPv6PrivilegedTests` runs the same scenario in a namespace of its own, where
    /// IPv6 loopback is always set up, so the root phase of `scripts/test` always tests it.
    func testIPv6Loopback() throws {
        let ok = IPv6Scenario.loopbackIsUsable()
        if !ok { print("WARNING: ::1 is not available here; IPv6 loopback is tested only by IPv6PrivilegedTests (root)") }
        try XCTSkipUnless(ok, "::1 is not available on this machine; IPv6PrivilegedTests covers it as root")
        try IPv6Scenario.run(work: work, sample: sample, wrapper: [])
    }

    // MARK: - ls

    func testLsJSONHasTheDocumentedFields() throws {
        let s = try startServer()
        try Files.setMtime(sample.appendingPathComponent("docs/build.sh"), seconds: 1_234_567_890, nanos: 500_000_000)
        let r = try TestSupport.ferry(["ls", "\(s.address)/docs", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let objects = JSONLines.parse(r.stdout)
        XCTAssertEqual(objects.count, Files.names(sample.appendingPathComponent("docs")).count)
        let byName = Dictionary(uniqueKeysWithValues: objects.compactMap { o in (o["name"] as? String).map { ($0, o) } })
        let build = try XCTUnwrap(byName["build.sh"])
        XCTAssertEqual(build["type"] as? String, "file")
        XCTAssertEqual(JSONLines.int(build, "size"), 23)
        XCTAssertEqual(build["mode"] as? String, "0755")
        XCTAssertEqual((build["mtime"] as? NSNumber)?.doubleValue ?? 0, 1_234_567_890.5, accuracy: 0.001)
        XCTAssertNil(build["target"])
        let guides = try XCTUnwrap(byName["guides"])
        XCTAssertEqual(guides["type"] as? String, "directory")
        let link = try XCTUnwrap(byName["hello-link"])
        XCTAssertEqual(link["type"] as? String, "symlink")
        XCTAssertEqual(link["target"] as? String, "../hello world.txt")
        XCTAssertEqual(JSONLines.int(link, "size"), "../hello world.txt".utf8.count)
        for o in objects {
            for key in ["type", "name", "size", "mtime", "mode"] { XCTAssertNotNil(o[key], "\(key) missing in \(o)") }
        }

        let plain = try TestSupport.ferry(["ls", s.address])
        XCTAssertEqual(plain.status, 0)
        XCTAssertTrue(plain.stdout.split(separator: "\n").contains { $0.hasSuffix(" docs/") && $0.hasPrefix("d") }, plain.stdout)
        let docs = try TestSupport.ferry(["ls", "\(s.address)/docs"])
        XCTAssertTrue(docs.stdout.contains("hello-link -> ../hello world.txt"), docs.stdout)
        XCTAssertTrue(docs.stdout.contains("-rwxr-xr-x"), docs.stdout)

        XCTAssertEqual(try TestSupport.ferry(["ls", "\(s.address)/nope"]).status, 3)
        XCTAssertEqual(try TestSupport.ferry(["ls", "\(s.address)/empty.txt"]).status, 3)
    }

    // MARK: - exit codes

    func testExitCodesForNetworkAndLocalFailures() throws {
        // Nobody listening: take a free port and close it again.
        let probe = try FakeServer { _ in nil }
        let port = probe.port
        probe.stop()
        let refused = try TestSupport.ferry(["ls", "127.0.0.1:\(port)"], timeout: 30)
        XCTAssertEqual(refused.status, 2, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("cannot connect"), refused.stderr)

        let notFerry = try FakeServer(greeting: "SSH-2.0-OpenSSH_9.6") { _ in nil }
        defer { notFerry.stop() }
        let nf = try TestSupport.ferry(["ls", notFerry.address], timeout: 30)
        XCTAssertEqual(nf.status, 2, nf.stderr)
        XCTAssertTrue(nf.stderr.contains("not a ferry server"), nf.stderr)

        let future = try FakeServer(greeting: "FERRY 2 name=future id=0123456789abcdef0123456789abcdef auth=none") { _ in nil }
        defer { future.stop() }
        let fv = try TestSupport.ferry(["ls", future.address], timeout: 30)
        XCTAssertEqual(fv.status, 2, fv.stderr)
        XCTAssertTrue(fv.stderr.contains("version 2"), fv.stderr)

        // DEST is a regular file: a local error.
        let s = try startServer()
        let blocker = work.appendingPathComponent("blocker")
        try Files.write(blocker, "not a directory")
        let local = try TestSupport.ferry(["sync", s.address, blocker.path])
        XCTAssertEqual(local.status, 5, local.stderr)
        assertSameBytes(Files.read(blocker), Array("not a directory".utf8))

        // Usage errors.
        XCTAssertEqual(try TestSupport.ferry(["get", s.address]).status, 64, "get needs a path")
        XCTAssertEqual(try TestSupport.ferry(["sync"]).status, 64)
        XCTAssertEqual(try TestSupport.ferry(["frobnicate"]).status, 64)
    }

    // MARK: - shutdown

    func testSIGTERMStopsTheServerWhileAClientFetches() throws {
        let s = try startServer(tls: false)  // the stalled client below speaks the protocol raw
        let size = 64 << 20
        try Files.write(sample.appendingPathComponent("huge.bin"), try Files.randomBytes(size))

        // A raw client that asks for the file and reads nothing: the server is stuck on
        // back-pressure and must still stop promptly.
        let stalled = try RawClient(port: s.port, timeout: 15)
        _ = try stalled.readLine()
        try stalled.send("GET huge.bin 0 *\n")
        XCTAssertTrue(try stalled.readLine().hasPrefix("OK \(size) "))

        // A real `ferry get`, frozen mid-transfer while the server stops.
        let out = work.appendingPathComponent("huge-copy.bin")
        let partial = work.appendingPathComponent(".huge-copy.bin.ferry-partial")
        let errURL = work.appendingPathComponent("get.err")
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let get = TestSupport.process([TestSupport.ferryExecutable.path, "get", "\(s.address)/huge.bin", out.path,
                                       "--retries", "0", "--timeout", "10"])
        get.standardOutput = FileHandle.nullDevice
        get.standardError = try FileHandle(forWritingTo: errURL)
        try get.run()
        defer { if get.isRunning { kill(get.processIdentifier, SIGKILL); get.waitUntilExit() } }
        let deadline = Date().addingTimeInterval(30)
        var started = false
        while Date() < deadline && get.isRunning {
            var st = stat()
            if lstat(partial.path, &st) == 0 && st.st_size > 0 { started = true; break }
            usleep(500)
        }
        XCTAssertTrue(get.isRunning, "the fetch finished before the test could interrupt it; use a bigger file")
        XCTAssertTrue(started, "the fetch never started")
        kill(get.processIdentifier, SIGSTOP)

        let stopStart = Date()
        let status = s.stop()
        server = nil
        XCTAssertEqual(status, 0, "SIGTERM must stop the server with status 0")
        XCTAssertLessThan(Date().timeIntervalSince(stopStart), 9, "the server must not hang on clients that do not read")

        kill(get.processIdentifier, SIGCONT)
        let exitDeadline = Date().addingTimeInterval(30)
        while get.isRunning && Date() < exitDeadline { usleep(10_000) }
        XCTAssertFalse(get.isRunning, "the client must give up")
        get.waitUntilExit()
        let stderr = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
        XCTAssertEqual(get.terminationStatus, 2, stderr)
        XCTAssertTrue(stderr.contains("closed the connection") || stderr.contains("shutting down"), stderr)
        XCTAssertFalse(Files.exists(out), "an incomplete file must not appear under its final name")
        XCTAssertTrue(Files.exists(partial), "the partial data is kept for resume")

        // The stalled raw client sees the connection end before the file did.
        var received = 0
        while true {
            guard let line = try? stalled.readLine(), line.hasPrefix("CHUNK ") else { break }
            guard let h = try? ChunkHeaderParse.parse(line), (try? stalled.readBytes(h)) != nil else { break }
            received += h
        }
        XCTAssertLessThan(received, size)
    }
}

/// Only the wire length matters to the stalled client above.
enum ChunkHeaderParse {
    static func parse(_ line: String) throws -> Int {
        let f = line.split(separator: " ")
        guard f.count == 6, let wire = Int(f[3]) else { throw IntegrationFailure("bad chunk header \(line)") }
        return wire
    }
}

/// `ferry serve --bind ::1` and the clients over IPv6 loopback, optionally all inside a
/// network namespace (`wrapper` is `ip netns exec NS`).
enum IPv6Scenario {
    static func loopbackIsUsable() -> Bool {
        let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var a = sockaddr_in6()
        a.sin6_family = sa_family_t(AF_INET6)
        a.sin6_addr = in6addr_loopback
        return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } } == 0
    }

    static func run(work: URL, sample: URL, wrapper: [String]) throws {
        let ferry = TestSupport.ferryExecutable.path
        func client(_ arguments: [String]) throws -> TestSupport.ProcessResult {
            let command = wrapper + [ferry] + arguments
            return try TestSupport.run(command[0], Array(command.dropFirst()), check: false)
        }
        let s = try ServerProcess(serving: sample, arguments: ["--bind", "::1", "--no-discovery",
                                                               "--state-dir", work.appendingPathComponent("state6").path],
                                  wrapper: wrapper)
        defer { s.stop() }
        XCTAssertEqual(s.host, "::1")
        XCTAssertTrue(s.address.hasPrefix("[::1]:"), s.address)
        let ls = try client(["ls", s.address])
        XCTAssertEqual(ls.status, 0, ls.stderr)
        XCTAssertTrue(ls.stdout.contains("hello world.txt"), ls.stdout)
        let out = work.appendingPathComponent("v6.txt")
        let get = try client(["get", "ferry://\(s.address)/café.txt", out.path])
        XCTAssertEqual(get.status, 0, get.stderr)
        assertSameBytes(Files.read(out), Files.read(sample.appendingPathComponent("café.txt")))
        let dest = work.appendingPathComponent("v6-dest")
        let sync = try client(["sync", s.address, dest.path])
        XCTAssertEqual(sync.status, 0, sync.stderr)
        XCTAssertEqual(Files.text(dest.appendingPathComponent("docs/server.log")), Files.text(sample.appendingPathComponent("docs/server.log")))
        // The server listens on ::1 only: the IPv4 loopback is not served.
        let v4 = try client(["ls", "127.0.0.1:\(s.port)", "--timeout", "5"])
        XCTAssertEqual(v4.status, 2, v4.stderr)
    }
}

/// IPv6 loopback where it is certain to exist: a fresh network namespace (needs root) with
/// `lo` up and IPv6 enabled. Nothing in it can reach any other host.
final class IPv6PrivilegedTests: XCTestCase {
    func testIPv6LoopbackInAPrivateNamespace() throws {
        try TestSupport.requireRoot("creates a network namespace whose loopback has ::1")
        let found = TestSupport.executable(["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"])
        try TestSupport.requireForPrivilegedTest(found != nil, "the `ip` tool (iproute2) is not installed; scripts/setup installs it")
        guard let ip = found else { return }
        let work = try TestSupport.makeTemporaryDirectory("ferry-ipv6")
        defer { TestSupport.removeTemporaryDirectory(work) }
        let sample = try TestSupport.materializeFixtures(in: work)
        let ns = "ferry-t6-\(getpid())"
        try TestSupport.run(ip, ["netns", "add", ns], timeout: 20)
        defer { _ = try? TestSupport.run(ip, ["netns", "del", ns], timeout: 20, check: false) }
        try TestSupport.run(ip, ["netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0"], timeout: 10)
        try TestSupport.run(ip, ["-n", ns, "link", "set", "lo", "up"], timeout: 10)
        let wrapper = [ip, "netns", "exec", ns]
        // ::1 may take a moment to leave the tentative state.
        let deadline = Date().addingTimeInterval(10)
        var address = ""
        while Date() < deadline {
            address = (try TestSupport.run(ip, ["-n", ns, "-6", "addr", "show", "dev", "lo"], timeout: 10, check: false)).stdout
            if address.contains("::1/128") && !address.contains("tentative") { break }
            usleep(50_000)
        }
        XCTAssertTrue(address.contains("::1/128"), "no ::1 in the namespace: \(address)")
        try IPv6Scenario.run(work: work, sample: sample, wrapper: wrapper)
    }
}
