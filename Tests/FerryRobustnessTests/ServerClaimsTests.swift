#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import NIOCore
import XCTest

/// Claims of the README, docs/ARCHITECTURE.md and docs/SECURITY.md about `ferry serve` that
/// only a real server process can show: it never writes inside DIR, a file changed while it is
/// sent ends in `ERR 409`, a connection whose request is being worked on is not idle-closed,
/// and pipelined requests cannot make it buffer without bound.
final class ServerClaimsTests: XCTestCase {
    var work: URL!
    var served: URL!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-claims")
        served = work.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: served.appendingPathComponent("sub/deeper"), withIntermediateDirectories: true)
        try Data("hello\n".utf8).write(to: served.appendingPathComponent("a.txt"))
        try randomData(3 << 20).write(to: served.appendingPathComponent("sub/big.bin"))
        try Data(String(repeating: "text ", count: 50_000).utf8).write(to: served.appendingPathComponent("sub/deeper/t.txt"))
    }

    override func tearDown() {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    func serve(_ extra: [String] = [], environment: [String: String]? = nil) throws -> ServerProcess {
        try ServerProcess(serving: served, tls: false, arguments: ["--bind", "127.0.0.1", "--no-discovery"] + extra, environment: environment)
    }

    // MARK: - DIR is read-only to the server

    /// Everything a client can ask for — list, stat, get (whole, ranged, resumed), hash,
    /// blocks, manifest with hashes, a sync and a delta re-sync — then a clean stop (which saves
    /// the hash cache): not one entry inside DIR was created, removed, renamed, written or
    /// chmod-ed (lstat of every entry, ctime included, is unchanged), although the server's user
    /// could write there. The hash cache went to the state folder.
    func testTheServerNeverWritesInsideItsDirectory() throws {
        let before = try Self.snapshot(served)
        let state = work.appendingPathComponent("state")
        let server = try serve(["--state-dir", state.path])
        let client = try RawClient(port: server.port)
        _ = try client.readLine()
        for request in ["LIST .", "LIST sub", "STAT sub/big.bin", "HASH sub/big.bin 0 1000", "BLOCKS sub/big.bin"] {
            try client.send(request + "\n")
            let reply = try XCTUnwrap(try client.readLine(), request)
            XCTAssertTrue(reply.hasPrefix("OK"), "\(request): \(reply)")
            if request.hasPrefix("LIST") || request.hasPrefix("BLOCKS") {
                let count = Int(reply.split(separator: " ").last ?? "") ?? 0
                for _ in 0..<count { _ = try client.readLine() }
            }
        }
        let dest = work.appendingPathComponent("copy")
        let sync = try TestSupport.ferry(["sync", server.address, dest.path, "--checksum"])
        XCTAssertEqual(sync.status, 0, sync.stderr)
        // A local edit makes the re-sync a delta transfer (BLOCKS, ranged GETs).
        let handle = try FileHandle(forUpdating: dest.appendingPathComponent("sub/big.bin"))
        try handle.seek(toOffset: 1 << 20)
        try handle.write(contentsOf: Data(repeating: 0xAA, count: 4096))
        try handle.close()
        let resync = try TestSupport.ferry(["sync", server.address, dest.path, "--checksum"])
        XCTAssertEqual(resync.status, 0, resync.stderr)
        let got = try TestSupport.ferry(["get", "\(server.address)/sub/deeper/t.txt", work.appendingPathComponent("t.txt").path])
        XCTAssertEqual(got.status, 0, got.stderr)
        XCTAssertEqual(server.stop(), 0)

        XCTAssertEqual(try Self.snapshot(served), before, "the server changed something inside DIR")
        let cache = (try? FileManager.default.contentsOfDirectory(atPath: state.path)) ?? []
        XCTAssertTrue(cache.contains { $0.hasPrefix("hashes-") }, "the hash cache was not saved to --state-dir: \(cache)")
    }

    /// `--state-dir` inside DIR (directly, as DIR itself, through `XDG_STATE_HOME`, or through a
    /// symlink that leads into DIR) is refused before anything is written.
    func testAStateFolderInsideTheServedDirectoryIsRefused() throws {
        let link = work.appendingPathComponent("link-to-data")
        try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: served.path)
        let before = try Self.snapshot(served)
        let cases: [([String], [String: String]?)] = [
            (["--state-dir", served.appendingPathComponent("state").path], nil),
            (["--state-dir", served.path], nil),
            (["--state-dir", served.appendingPathComponent("sub/../state").path], nil),
            (["--state-dir", link.appendingPathComponent("state").path], nil),
            ([], ["XDG_STATE_HOME": served.appendingPathComponent(".state").path]),
        ]
        for (arguments, environment) in cases {
            let r = try TestSupport.ferry(["serve", served.path, "--bind", "127.0.0.1", "--port", "0", "--no-discovery"] + arguments,
                                          timeout: 20, environment: environment)
            XCTAssertNotEqual(r.status, 0, "\(arguments) \(environment ?? [:]): the server started")
            XCTAssertTrue(r.stderr.contains("inside the served directory"), "\(arguments): \(r.stderr)")
            XCTAssertFalse(r.stdout.contains("listening on"), r.stdout)
        }
        XCTAssertEqual(try Self.snapshot(served), before, "a refused server wrote inside DIR")
        // DIR given through the link, the state folder by its real path inside it.
        let r = try TestSupport.ferry(["serve", link.path, "--bind", "127.0.0.1", "--port", "0", "--no-discovery",
                                       "--state-dir", served.appendingPathComponent("state").path], timeout: 20)
        XCTAssertNotEqual(r.status, 0, "DIR through a symlink: the server started")
        XCTAssertTrue(r.stderr.contains("inside the served directory"), r.stderr)
        XCTAssertEqual(try Self.snapshot(served), before, "a refused server wrote inside DIR")
    }

    /// lstat of every entry below and including `root` (path → type, mode, size, inode, mtime,
    /// ctime, link count); reading leaves it unchanged (atime is left out).
    static func snapshot(_ root: URL) throws -> [String: String] {
        var result: [String: String] = [:]
        func visit(_ path: String, _ relative: String) throws {
            var st = stat()
            guard lstat(path, &st) == 0 else { throw RawClient.Failure(description: "lstat \(path): errno \(errno)") }
            result[relative] = "\(st.st_mode) \(st.st_size) \(st.st_ino) \(st.st_nlink) "
                + "m\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec) c\(st.st_ctim.tv_sec).\(st.st_ctim.tv_nsec)"
            if st.st_mode & S_IFMT == S_IFDIR {
                for name in try FileManager.default.contentsOfDirectory(atPath: path) {
                    try visit(path + "/" + name, relative + "/" + name)
                }
            }
        }
        try visit(root.path, ".")
        return result
    }

    // MARK: - A file that changes while it is sent

    /// The server is held mid-file by a client that stops reading; the file changes (grows,
    /// gets a new mtime with the same size, or shrinks); the client reads on: the stream ends in
    /// `ERR 409 changed during transfer`, never in `END`.
    func testAFileChangedWhileBeingSentEndsIn409() throws {
        let size = 64 << 20
        let server = try serve(["--compress", "off"])
        defer { server.stop() }
        let changes: [(String, (URL) throws -> Void)] = [
            ("appended", { url in
                let h = try FileHandle(forWritingTo: url)
                try h.seekToEnd()
                try h.write(contentsOf: Data([1]))
                try h.close()
            }),
            ("new mtime, same size", { url in
                var times = [timespec(tv_sec: 1_500_000_000, tv_nsec: 0), timespec(tv_sec: 1_500_000_000, tv_nsec: 0)]
                guard utimensat(AT_FDCWD, url.path, &times, 0) == 0 else { throw RawClient.Failure(description: "utimensat: errno \(errno)") }
            }),
            ("truncated", { url in
                guard truncate(url.path, off_t(size / 4)) == 0 else { throw RawClient.Failure(description: "truncate: errno \(errno)") }
            }),
        ]
        for (what, change) in changes {
            let file = served.appendingPathComponent("changing.bin")
            try? FileManager.default.removeItem(at: file)
            // Sparse zeros: instant to make, sent stored (--compress off), so the socket fills.
            XCTAssertTrue(FileManager.default.createFile(atPath: file.path, contents: nil))
            XCTAssertEqual(truncate(file.path, off_t(size)), 0)
            let client = try RawClient(port: server.port, timeout: 30)
            _ = try client.readLine()
            try client.send("GET changing.bin 0 *\n")
            let ok = try XCTUnwrap(try client.readLine())
            XCTAssertTrue(ok.hasPrefix("OK \(size) "), ok)
            // Read one chunk, then leave the server blocked on the full socket while the file changes.
            let first = try ChunkHeader.parse(Substring(try XCTUnwrap(try client.readLine())))
            _ = try client.readBytes(first.wireLength)
            usleep(300_000)
            try change(file)
            var received = Int(first.rawLength)
            var last = ""
            while let line = try client.readLine() {
                guard line.hasPrefix("CHUNK ") else { last = line; break }
                let header = try ChunkHeader.parse(Substring(line))
                _ = try client.readBytes(header.wireLength)
                received += Int(header.rawLength)
            }
            XCTAssertLessThan(received, size + 1, "\(what): more data than the file had")
            XCTAssertEqual(last, "ERR 409 changed during transfer", "\(what): after \(received) bytes")
            // The connection stays usable.
            try client.send("STAT a.txt\n")
            XCTAssertTrue(try client.readLine()?.hasPrefix("OK f ") ?? false, what)
        }
    }

    // MARK: - Idle closing

    /// With `--idle-timeout 0.5`, a request the server works on for seconds without writing
    /// anything (a HASH of 1 GiB) is not idle: its reply comes. Once the request is done, the same
    /// connection is closed for idling (`ERR 408`), so the closer was active all along.
    func testARequestBeingWorkedOnIsNeverIdleClosed() throws {
        let size: Int64 = 1 << 30
        let file = served.appendingPathComponent("long.bin")
        XCTAssertTrue(FileManager.default.createFile(atPath: file.path, contents: nil))
        XCTAssertEqual(truncate(file.path, off_t(size)), 0)
        let server = try serve(["--idle-timeout", "0.5"])
        defer { server.stop() }
        let client = try RawClient(port: server.port, timeout: 120)
        _ = try client.readLine()
        let asked = Date()
        try client.send("HASH long.bin 0 \(size - 1)\n")
        let reply = try client.readLine() ?? ""
        let worked = Date().timeIntervalSince(asked)
        XCTAssertTrue(reply.hasPrefix("OK "), reply)
        XCTAssertGreaterThan(worked, 1, "the hash was too quick to show anything (\(worked) s)")
        let closing = try client.readLine() ?? ""
        XCTAssertTrue(closing.hasPrefix("ERR 408 idle"), "an idle connection after the request must be closed: \(closing)")
    }

    /// A client that pauses reading a 64 MiB GET for less than the idle timeout keeps its
    /// transfer: it completes and verifies.
    func testAShortPauseInReadingIsNotIdle() throws {
        let (received, trailer, expected) = try fetchPausing(seconds: 1.5, idleTimeout: "4")
        XCTAssertEqual(received, 64 << 20, "the transfer was cut: \(trailer)")
        XCTAssertEqual(trailer, "END " + expected)
    }

    /// A client that stops reading its reply for longer than the idle timeout holds the
    /// server's buffers for nothing: it is closed (issue 17: `--idle-timeout 5` used to do
    /// nothing against a reply that is never read), and the server serves others meanwhile.
    func testAClientThatDoesNotReadItsReplyIsClosed() throws {
        let (received, trailer, _) = try fetchPausing(seconds: 4, idleTimeout: "1")
        XCTAssertLessThan(received, 64 << 20, "the stalled reader was not closed")
        XCTAssertFalse(trailer.hasPrefix("END "), trailer)
    }

    /// GETs a 64 MiB sparse file stored, pausing once after 1 MiB; returns the bytes received,
    /// the line that ended the stream ("" when the connection closed) and the hash of what came.
    func fetchPausing(seconds: Double, idleTimeout: String) throws -> (Int, String, String) {
        let size = 64 << 20
        let file = served.appendingPathComponent("long.bin")
        XCTAssertTrue(FileManager.default.createFile(atPath: file.path, contents: nil))
        XCTAssertEqual(truncate(file.path, off_t(size)), 0)
        let server = try serve(["--compress", "off", "--idle-timeout", idleTimeout])
        defer { server.stop() }
        let client = try RawClient(port: server.port, timeout: 30)
        _ = try client.readLine()
        try client.send("GET long.bin 0 *\n")
        XCTAssertTrue(try client.readLine()?.hasPrefix("OK \(size) ") ?? false)
        var hasher = SHA256Hasher()
        var received = 0
        var paused = false
        var trailer = ""
        do {
            while let line = try client.readLine() {
                guard line.hasPrefix("CHUNK ") else { trailer = line; break }
                let header = try ChunkHeader.parse(Substring(line))
                var wire = ByteBufferAllocator().buffer(capacity: header.wireLength)
                wire.writeBytes(try client.readBytes(header.wireLength))
                let raw = try ChunkDecoder.decode(header: header, wire: wire)
                hasher.update(raw)
                received += raw.count
                if !paused && received >= 1 << 20 {
                    paused = true
                    usleep(UInt32(seconds * 1_000_000))
                    // Meanwhile another client is served.
                }
            }
        } catch {
            trailer = "\(error)"
        }
        XCTAssertTrue(paused)
        let other = try RawClient(port: server.port)
        _ = try other.readLine()
        try other.send("STAT a.txt\n")
        XCTAssertTrue(try other.readLine()?.hasPrefix("OK f ") ?? false)
        return (received, trailer, hasher.finalizeHex())
    }

    // MARK: - Pipelining

    /// One client asks for a 64 MiB file, reads nothing, and pipelines request lines of 4 KB as
    /// fast as the socket takes them. The server stops reading the socket once 64 parsed
    /// requests wait (docs/ARCHITECTURE.md), so the client's sends stall after what the kernel's
    /// buffers hold, and the server's memory stays flat. Without the cap the server would keep
    /// reading, and the client could send everything it tried.
    func testThePipeliningCapBoundsMemory() throws {
        let size = 64 << 20
        let file = served.appendingPathComponent("huge.bin")
        XCTAssertTrue(FileManager.default.createFile(atPath: file.path, contents: nil))
        XCTAssertEqual(truncate(file.path, off_t(size)), 0)
        let server = try serve(["--compress", "off"])
        defer { server.stop() }
        let pid = server.process.processIdentifier
        let baselineKiB = ProcessStats.residentKiB(pid)

        let client = try RawClient(port: server.port, timeout: 30)
        var small: Int32 = 256 * 1024
        setsockopt(client.fd, SOL_SOCKET, SO_SNDBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        _ = try client.readLine()
        try client.send("GET huge.bin 0 *\n")
        // A valid request line of about 4 KB (a path of 16 components of 250 bytes).
        let path = (0..<16).map { _ in String(repeating: "p", count: 250) }.joined(separator: "/")
        let line = Array("STAT \(path)\n".utf8)
        var sendBuffer = [UInt8]()
        for _ in 0..<64 { sendBuffer += line }

        // What the kernel can hold between the two processes, plus the 64 parsed requests and
        // NIO's read buffers; the attempt is far beyond it.
        let rmemMax = Self.kernelLimit("/proc/sys/net/ipv4/tcp_rmem")
        var sndbuf: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(client.fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len)
        let bound = Int(sndbuf) + rmemMax + FerryLimits.maxPipelined * line.count + (8 << 20)
        let attempt = 3 * bound
        var sent = 0
        var stalledFor = 0.0
        let deadline = Date().addingTimeInterval(120)
        while sent < attempt && stalledFor < 3 && Date() < deadline {
            let n = sendBuffer.withUnsafeBytes { Glibc.send(client.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if n > 0 {
                sent += n
                stalledFor = 0
                if n < sendBuffer.count { sendBuffer = Array(sendBuffer[n...]) + Array(sendBuffer[..<n]) }
                continue
            }
            guard n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) else {
                return XCTFail("send failed after \(sent) bytes: errno \(errno)")
            }
            var pfd = pollfd(fd: client.fd, events: Int16(POLLOUT), revents: 0)
            let waited = Date()
            _ = poll(&pfd, 1, 500)
            stalledFor += Date().timeIntervalSince(waited)
        }
        let peakKiB = ProcessStats.residentKiB(pid)
        print("pipelining: \(sent) bytes of 4 KB requests taken before the socket stalled (bound \(bound), tried up to \(attempt)); server RSS \(baselineKiB / 1024) → \(peakKiB / 1024) MiB")
        XCTAssertGreaterThanOrEqual(stalledFor, 3, "the server kept reading pipelined requests: \(sent) bytes taken")
        XCTAssertLessThanOrEqual(sent, bound, "the server took more pipelined bytes than its cap allows")
        XCTAssertLessThan(peakKiB - baselineKiB, 64 * 1024, "the server's memory grew with the pipelined requests")
        XCTAssertTrue(server.process.isRunning, server.stderr)

        // The connection is intact: the file, then one reply per request, in order.
        XCTAssertTrue(try client.readLine()?.hasPrefix("OK \(size) ") ?? false)
        var streamed = 0
        while let reply = try client.readLine(), reply.hasPrefix("CHUNK ") {
            let header = try ChunkHeader.parse(Substring(reply))
            _ = try client.readBytes(header.wireLength)
            streamed += Int(header.rawLength)
            if streamed >= size { break }
        }
        XCTAssertEqual(streamed, size)
        XCTAssertTrue(try client.readLine()?.hasPrefix("END ") ?? false)
        XCTAssertTrue(try client.readLine()?.hasPrefix("ERR 404") ?? false)
    }

    private static func kernelLimit(_ path: String) -> Int {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return Int(text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).last ?? "") ?? (32 << 20)
    }
}
