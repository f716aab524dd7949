#if canImport(Glibc)
import Glibc
#endif
import FerryClient
import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// What a person sees and what ferry must never do to their files, end to end with the built
/// executable (issue: real users, real trees). Runs as whoever runs the tests; the parts that
/// differ for root and for an ordinary user say so.
final class CLIRealUserTests: XCTestCase {
    var work: URL!
    var tree: URL!
    var server: ServerProcess?

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-real-user")
        tree = work.appendingPathComponent("tree")
        try FileManager.default.createDirectory(at: tree, withIntermediateDirectories: true)
        try Files.write(tree.appendingPathComponent("hello.txt"), "hello\n")
    }

    override func tearDownWithError() throws {
        server?.stop()
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    private var stateDir: String { work.appendingPathComponent("state").path }

    private func startServer(_ extra: [String] = []) throws -> ServerProcess {
        let s = try ServerProcess(serving: tree, arguments: ["--bind", "127.0.0.1", "--no-discovery", "--state-dir", stateDir] + extra)
        server = s
        return s
    }

    // MARK: - sockets

    /// TCP_NODELAY is set at IPPROTO_TCP level on both ends (it was once set as option 1 at
    /// SOL_SOCKET level — SO_DEBUG, which needs CAP_NET_ADMIN — so no ordinary user could
    /// connect). Read back with getsockopt on the test process's own sockets.
    func testTCPNoDelayIsOnAtBothEnds() async throws {
        let server = try await InProcessServer.start(root: tree)
        defer { Task { await server.stop() } }
        let port = server.port
        try await FerryConnection.with(Endpoint(host: "127.0.0.1", port: port)) { connection in
            _ = try await connection.stat(.root)
            let sockets = Self.tcpSockets(touchingPort: port)
            XCTAssertGreaterThanOrEqual(sockets.count, 2, "expected the client's and the server's socket of this connection")
            for (fd, role) in sockets {
                var value: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                XCTAssertEqual(getsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &value, &length), 0)
                XCTAssertEqual(value, 1, "TCP_NODELAY is off on the \(role) socket")
                var debug: Int32 = -1
                length = socklen_t(MemoryLayout<Int32>.size)
                XCTAssertEqual(getsockopt(fd, SOL_SOCKET, SO_DEBUG, &debug, &length), 0)
                XCTAssertEqual(debug, 0, "SO_DEBUG must not be set on the \(role) socket")
            }
            await connection.quit()
        }
    }

    /// This process's connected TCP sockets whose local or peer port is `port` (the server's
    /// accepted socket has it as local port, the client's as peer port).
    static func tcpSockets(touchingPort port: Int) -> [(Int32, String)] {
        var out: [(Int32, String)] = []
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        for name in names {
            guard let fd = Int32(name) else { continue }
            var local = sockaddr_in(), peer = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let gotLocal = withUnsafeMutablePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            guard gotLocal == 0, local.sin_family == sa_family_t(AF_INET) else { continue }
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let gotPeer = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
            }
            guard gotPeer == 0 else { continue }  // the listening socket has no peer
            if Int(UInt16(bigEndian: local.sin_port)) == port { out.append((fd, "server")) }
            if Int(UInt16(bigEndian: peer.sin_port)) == port { out.append((fd, "client")) }
        }
        return out
    }

    // MARK: - get never destroys what it does not own

    /// A device node, FIFO or directory at LOCAL is refused (exit 5) and left exactly as it
    /// was; nothing is written beside it. A symlink at LOCAL is replaced by the file and its
    /// target is not touched.
    func testGetNeverReplacesDevicesFIFOsOrDirectories() throws {
        let s = try startServer()
        let out = work.appendingPathComponent("out")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)

        let fifo = out.appendingPathComponent("pipe")
        XCTAssertEqual(mkfifo(fifo.path, 0o644), 0)
        // As root a device node of our own (mknod needs CAP_MKNOD); as an ordinary user the
        // machine's /dev/null, which ferry could not replace anyway, but must refuse cleanly.
        let device: String
        if geteuid() == 0 {
            device = out.appendingPathComponent("null-device").path
            // dev_t (1 << 8) | 3 is makedev(1, 3): the numbers of /dev/null.
            XCTAssertEqual(mknod(device, S_IFCHR | 0o666, dev_t((1 << 8) | 3)), 0, "mknod: \(errno)")
        } else {
            device = "/dev/null"
        }
        var before = stat()
        XCTAssertEqual(lstat(device, &before), 0)
        for target in [device, fifo.path] {
            let r = try TestSupport.ferry(["get", "\(s.address)/hello.txt", target], timeout: 30)
            XCTAssertEqual(r.status, 5, "\(target): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("never replaces or writes into devices, FIFOs or sockets"), r.stderr)
        }
        var after = stat()
        XCTAssertEqual(lstat(device, &after), 0)
        XCTAssertEqual(after.st_mode & S_IFMT, S_IFCHR, "the device node was replaced")
        XCTAssertEqual(after.st_ino, before.st_ino)
        var fifoInfo = stat()
        XCTAssertEqual(lstat(fifo.path, &fifoInfo), 0)
        XCTAssertEqual(fifoInfo.st_mode & S_IFMT, S_IFIFO, "the FIFO was replaced")
        XCTAssertEqual(Files.names(out).filter { $0.contains("ferry-partial") }, [], "nothing may be left beside them")

        // A directory at LOCAL/NAME (LOCAL names a directory, whose entry NAME is a directory).
        try FileManager.default.createDirectory(at: out.appendingPathComponent("hello.txt/keep"), withIntermediateDirectories: true)
        let dir = try TestSupport.ferry(["get", "\(s.address)/hello.txt", out.path + "/"], timeout: 30)
        XCTAssertEqual(dir.status, 5, dir.stderr)
        XCTAssertTrue(Files.exists(out.appendingPathComponent("hello.txt/keep")))

        // A symlink at LOCAL: replaced by the file; what it pointed to stays as it was.
        let outside = work.appendingPathComponent("outside.txt")
        try Files.write(outside, "not ferry's\n")
        let link = out.appendingPathComponent("link")
        try Files.symlink(link, to: outside.path)
        let r = try TestSupport.ferry(["get", "\(s.address)/hello.txt", link.path], timeout: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(Files.text(outside), "not ferry's\n", "get wrote through a symlink")
        XCTAssertEqual(Files.text(link), "hello\n")
        var linkInfo = stat()
        XCTAssertEqual(lstat(link.path, &linkInfo), 0)
        XCTAssertEqual(linkInfo.st_mode & S_IFMT, S_IFREG)
    }

    /// A FIFO in DEST where the server has a file, and one where it has a directory: without
    /// --delete both are left alone as conflicts (exit 1) — never renamed over, never opened
    /// (opening a FIFO waits for a writer for ever; sync once hung there); with --delete they
    /// are replaced. A FIFO only DEST has is left alone either way.
    func testSyncNeverReplacesOrOpensAFIFOInDestUnasked() throws {
        try FileManager.default.createDirectory(at: tree.appendingPathComponent("dir"), withIntermediateDirectories: true)
        try Files.write(tree.appendingPathComponent("dir/inside.txt"), "inside\n")
        let s = try startServer()
        let dest = work.appendingPathComponent("dest")
        try FileManager.default.createDirectory(at: dest, withIntermediateDirectories: true)
        for name in ["hello.txt", "dir", "lonely"] {
            XCTAssertEqual(mkfifo(dest.appendingPathComponent(name).path, 0o644), 0)
        }
        func type(_ name: String) -> mode_t {
            var st = stat()
            return lstat(dest.appendingPathComponent(name).path, &st) == 0 ? st.st_mode & S_IFMT : 0
        }
        let first = try TestSupport.ferry(["sync", s.address, dest.path], timeout: 30)
        XCTAssertEqual(first.status, 1, first.stderr)
        for name in ["hello.txt", "dir"] {
            XCTAssertTrue(first.stderr.contains("conflict: \(name) is a FIFO"), first.stderr)
            XCTAssertEqual(type(name), S_IFIFO, "\(name) must be left alone")
        }
        let second = try TestSupport.ferry(["sync", s.address, dest.path, "--delete"], timeout: 30)
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertEqual(Files.read(dest.appendingPathComponent("hello.txt")), Array("hello\n".utf8))
        XCTAssertEqual(Files.read(dest.appendingPathComponent("dir/inside.txt")), Array("inside\n".utf8))
        XCTAssertEqual(type("lonely"), S_IFIFO)
        XCTAssertTrue(second.stderr.contains("left alone 1 special file (FIFO, socket or device) that only DEST has"),
                      "a local-only FIFO that --delete keeps is named: \(second.stderr)")
        XCTAssertTrue(second.stderr.contains("lonely"), second.stderr)
    }

    /// A sync that finds another one holding DEST alone (its start-up) says so and waits,
    /// boundedly, then goes on once DEST is free.
    func testASecondSyncIntoTheSameDestWaitsAndSaysSo() throws {
        let s = try startServer()
        let dest = work.appendingPathComponent("dest")
        try FileManager.default.createDirectory(at: dest, withIntermediateDirectories: true)
        let fd = open(dest.path, O_RDONLY | O_DIRECTORY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(flock(fd, LOCK_EX), 0, "the test holds DEST as a starting sync would")
        let release = DispatchWorkItem { close(fd) }
        DispatchQueue.global().asyncAfter(deadline: .now() + 1.5, execute: release)
        let start = Date()
        let r = try TestSupport.ferry(["sync", s.address, dest.path], timeout: 60)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertGreaterThan(Date().timeIntervalSince(start), 1.2, "it went on while DEST was held")
        XCTAssertTrue(r.stderr.contains("another ferry sync into"), r.stderr)
        XCTAssertEqual(Files.read(dest.appendingPathComponent("hello.txt")), Array("hello\n".utf8))
    }

    // MARK: - ls

    /// `ferry ls` shows setuid/setgid/sticky bits and what a special file is, as `ls -l` does.
    func testLsShowsSpecialBitsAndKinds() throws {
        XCTAssertEqual(mkfifo(tree.appendingPathComponent("fifo").path, 0o640), 0)
        try Files.write(tree.appendingPathComponent("setuid"), "x", mode: 0o4755)
        try Files.write(tree.appendingPathComponent("setgid"), "x", mode: 0o2750)
        let sticky = tree.appendingPathComponent("sticky")
        try FileManager.default.createDirectory(at: sticky, withIntermediateDirectories: true)
        XCTAssertEqual(chmod(sticky.path, 0o1777), 0)
        let unixSocket = tree.appendingPathComponent("sock")
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in unixSocket.path.utf8.prefix(raw.count - 1).enumerated() { raw[i] = b }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        XCTAssertEqual(bound, 0)

        let s = try startServer()
        let r = try TestSupport.ferry(["ls", s.address], timeout: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stdout.split(separator: "\n").map(String.init)
        func line(_ name: String) -> String { lines.first { $0.hasSuffix("  " + name) || $0.hasSuffix("  " + name + "/") } ?? "<missing \(name)>" }
        XCTAssertTrue(line("fifo").hasPrefix("prw-r----- "), line("fifo"))
        XCTAssertTrue(line("sock").hasPrefix("s"), line("sock"))
        XCTAssertTrue(line("setuid").hasPrefix("-rwsr-xr-x "), line("setuid"))
        XCTAssertTrue(line("setgid").hasPrefix("-rwxr-s--- "), line("setgid"))
        XCTAssertTrue(line("sticky").hasPrefix("drwxrwxrwt "), line("sticky"))

        let json = try TestSupport.ferry(["ls", s.address, "--json"], timeout: 30)
        XCTAssertTrue(json.stdout.contains("\"kind\":\"FIFO\""), json.stdout)
        XCTAssertTrue(json.stdout.contains("\"mode\":\"4755\""), json.stdout)
    }

    /// A 1.0 client never asks for kinds and so never sees the extra field (its parser allows
    /// none): `LIST` without the option answers exactly as before.
    func testListWithoutKindsHasNoExtraField() async throws {
        XCTAssertEqual(mkfifo(tree.appendingPathComponent("fifo").path, 0o644), 0)
        let server = try await InProcessServer.start(root: tree)
        defer { Task { await server.stop() } }
        try await FerryConnection.with(Endpoint(host: "127.0.0.1", port: server.port)) { c in
            let plain = try await c.list(.root)
            XCTAssertEqual(plain.first { $0.path.description == "fifo" }?.special, nil)
            let detailed = try await c.list(.root, kinds: true)
            XCTAssertEqual(detailed.first { $0.path.description == "fifo" }?.special, .fifo)
            await c.quit()
        }
    }

    // MARK: - what reaches the terminal

    /// A server-chosen name or link target holding ESC sequences reaches the terminal escaped
    /// (`\x1b`) from every command: ls, get, sync (including its warnings and dry-run list).
    func testControlCharactersInNamesNeverReachTheTerminal() throws {
        let evil = "red\u{1B}[31mname\u{07}"
        try Files.write(tree.appendingPathComponent(evil), "x")
        try Files.symlink(tree.appendingPathComponent("link\u{1B}]0;title\u{07}"), to: "/outside\u{1B}[2J")
        let s = try startServer()
        let dest = work.appendingPathComponent("dest")
        let runs = [
            try TestSupport.ferry(["ls", s.address], timeout: 30),
            try TestSupport.ferry(["sync", s.address, dest.path, "--dry-run"], timeout: 30),
            try TestSupport.ferry(["sync", s.address, dest.path], timeout: 30),
            try TestSupport.ferry(["get", "\(s.address)/\(evil)", work.appendingPathComponent("copy").path], timeout: 30),
        ]
        for r in runs {
            XCTAssertFalse(r.stdout.utf8.contains(0x1B) || r.stderr.utf8.contains(0x1B), "raw ESC in output: \(r.stdout) \(r.stderr)")
            XCTAssertFalse(r.stdout.utf8.contains(0x07) || r.stderr.utf8.contains(0x07), "raw BEL in output")
        }
        XCTAssertTrue(runs[0].stdout.contains("red\\x1b[31mname\\x07"), runs[0].stdout)
        XCTAssertTrue(runs[1].stdout.contains("red\\x1b[31mname\\x07"), runs[1].stdout)
        XCTAssertTrue(runs[2].stderr.contains("\\x1b[2J"), "the skipped link's target is named, escaped: \(runs[2].stderr)")
        XCTAssertTrue(Files.exists(dest.appendingPathComponent(evil)), "the file itself is synced under its real name")
    }

    /// `--help` paragraphs are not wrapped in the source: the argument parser wraps them to the
    /// terminal, so a wide terminal shows a paragraph on one line.
    func testHelpIsWrappedByTheTerminalNotTheSource() throws {
        let r = try TestSupport.ferry(["sync", "--help"], environment: ["COLUMNS": "400"])
        XCTAssertEqual(r.status, 0)
        XCTAssertTrue(r.stdout.contains("Fetches only what differs: by default a file is unchanged when its size and mtime match"),
                      r.stdout)
    }

    // MARK: - errors

    func testBindToAnAddressThisMachineLacksSaysSo() throws {
        // 192.0.2.1 (TEST-NET-1) is on no interface here: bind fails with EADDRNOTAVAIL locally,
        // before anything could be sent.
        let r = try TestSupport.ferry(["serve", tree.path, "--bind", "192.0.2.1", "--port", "0", "--no-discovery",
                                       "--state-dir", stateDir], timeout: 30)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("this machine has no address 192.0.2.1"), r.stderr)
        XCTAssertFalse(r.stderr.contains("port is in use"), r.stderr)
    }

    func testWrongTokenGivesItsHintOnce() throws {
        let right = work.appendingPathComponent("right.token"), wrong = work.appendingPathComponent("wrong.token")
        try Files.write(right, "right secret\n", mode: 0o600)
        try Files.write(wrong, "wrong secret\n", mode: 0o600)
        let s = try startServer(["--token-file", right.path])
        let r = try TestSupport.ferry(["ls", s.address, "--token-file", wrong.path], timeout: 30)
        XCTAssertEqual(r.status, 3, r.stderr)
        XCTAssertEqual(r.stderr.components(separatedBy: "--token-file").count - 1, 1, r.stderr)
    }

    /// With `--json`, an error that ends the run is also a JSON `error` object on stdout.
    func testFatalErrorIsAJSONObjectWithJSON() throws {
        let r = try TestSupport.ferry(["ls", "127.0.0.1:\(try Self.closedPort())", "--json"], timeout: 60)
        XCTAssertNotEqual(r.status, 0)
        let objects = JSONLines.parse(r.stdout)
        let error = objects.first { $0["event"] as? String == "error" }
        XCTAssertEqual(error?["fatal"] as? Bool, true, r.stdout)
        XCTAssertEqual(JSONLines.int(error, "exitCode").map(Int32.init), r.status, r.stdout)
        XCTAssertNotNil(error?["message"] as? String)
    }

    /// A port nobody listens on: bound, then closed.
    static func closedPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        _ = inet_pton(AF_INET, "127.0.0.1", &a.sin_addr)
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: a.sin_port))
    }

    /// Ctrl-C (SIGINT) while waiting on a server: exit 130 and how to continue.
    func testInterruptExitsWith130AndSaysHowToContinue() throws {
        // Greets, then never answers: the client waits on its first request.
        let fake = try FakeServer { _ in [] }
        defer { fake.stop() }
        let process = TestSupport.process([TestSupport.ferryExecutable.path, "get", "\(fake.address)/file",
                                           work.appendingPathComponent("file").path, "--timeout", "60"])
        let errPipe = Pipe()
        process.standardError = errPipe
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(10)
        while fake.requests.isEmpty && Date() < deadline { usleep(20_000) }
        XCTAssertFalse(fake.requests.isEmpty, "the client never sent a request")
        kill(process.processIdentifier, SIGINT)
        let exitDeadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < exitDeadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        let stderr = String(decoding: errPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(process.terminationReason, .exit)
        XCTAssertEqual(process.terminationStatus, 130, stderr)
        XCTAssertTrue(stderr.contains("interrupted — run the same command again to continue"), stderr)
    }

    /// An ordinary user syncing into a folder they cannot write is told so once, naming the
    /// folder and the permission error, not once per file nor with a later ENOENT.
    func testUnwritableDestinationIsNamedOnce() throws {
        try TestSupport.requireNonRoot("root may write into any folder, so a chmod 555 DEST proves nothing")
        let s = try startServer()
        let locked = work.appendingPathComponent("locked")
        try FileManager.default.createDirectory(at: locked, withIntermediateDirectories: true)
        XCTAssertEqual(chmod(locked.path, 0o555), 0)
        defer { chmod(locked.path, 0o755) }
        for dest in [locked.path, locked.appendingPathComponent("sub").path] {
            let r = try TestSupport.ferry(["sync", s.address, dest], timeout: 30)
            XCTAssertEqual(r.status, 5, r.stderr)
            XCTAssertTrue(r.stderr.contains("Permission denied"), r.stderr)
            XCTAssertTrue(r.stderr.contains(dest), r.stderr)
            XCTAssertFalse(r.stderr.contains("No such file"), r.stderr)
            XCTAssertEqual(r.stderr.split(separator: "\n").filter { $0.hasPrefix("ferry:") }.count, 1, r.stderr)
        }
    }
}
