#if canImport(Glibc)
import Glibc
#endif
import FerryClient
import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// `--timeout` bounds every wait for the server, however the server stalls: silence, a reply
/// line trickled a byte at a time, a chunk payload that stops or crawls. A refused connection
/// fails at once, unless the server was serving this run moments ago (a restart).
final class TimeoutTests: XCTestCase {
    var work: URL!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-timeout")
        chmod(work.path, 0o777)  // for a run as an ordinary user
    }

    override func tearDown() {
        TestSupport.removeTemporaryDirectory(work)
    }

    static let greeting = "FERRY 1 name=slow id=0123456789abcdef0123456789abcdef auth=none\n"
    static let entry = "f 0644 12 1700000000.000000000 hello.txt\n"

    /// Runs `ferry` and measures how long it took.
    func timedFerry(_ arguments: [String], limit: TimeInterval = 60) throws -> (TestSupport.ProcessResult, TimeInterval) {
        let start = Date()
        let result = try TestSupport.ferry(arguments, timeout: limit)
        return (result, Date().timeIntervalSince(start))
    }

    // MARK: - Trickling replies

    func testGreetingTrickledOneByteAtATimeTimesOut() throws {
        // One byte every 0.3 s: the greeting would take 20 s, and the connection never goes
        // 2 s without a byte, so only a deadline for the whole line can end the wait.
        let server = try TrickleServer { connection in
            connection.trickle(Array(Self.greeting.utf8), every: 0.3)
            connection.hold(seconds: 30)
        }
        defer { server.stop() }
        let (r, elapsed) = try timedFerry(["ls", server.address, "--timeout", "2"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("did not complete a reply line within 2 s"), r.stderr)
        XCTAssertGreaterThan(elapsed, 1.8, "the timeout is 2 s: \(r.stderr)")
        XCTAssertLessThan(elapsed, 5, "a trickled greeting must fail within about --timeout")
    }

    func testListEntryTrickledTimesOut() throws {
        let server = try TrickleServer { connection in
            connection.send(Array(Self.greeting.utf8))
            guard connection.readLine()?.hasPrefix("LIST") == true else { return }
            connection.send(Array(("OK 2\n" + Self.entry).utf8))
            connection.trickle(Array(Self.entry.utf8), every: 0.25)
            connection.hold(seconds: 30)
        }
        defer { server.stop() }
        let (r, elapsed) = try timedFerry(["ls", server.address, "--timeout", "2"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("did not complete a reply line within 2 s"), r.stderr)
        XCTAssertTrue(r.stderr.contains(server.address), "the message names the server: \(r.stderr)")
        XCTAssertEqual(r.stdout, "", "nothing is listed from an incomplete reply")
        XCTAssertLessThan(elapsed, 5, "a trickled entry must fail within about --timeout")
    }

    func testSilentServerTimesOut() throws {
        let server = try TrickleServer { connection in connection.hold(seconds: 30) }
        defer { server.stop() }
        let (r, elapsed) = try timedFerry(["ls", server.address, "--timeout", "0.5"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("sent nothing for 0.5 s"), r.stderr)
        XCTAssertLessThan(elapsed, 3)
    }

    func testTimeoutMustBePositive() throws {
        for bad in ["0", "-1", "nan", "100000"] {
            let r = try TestSupport.ferry(["ls", "127.0.0.1:1", "--timeout", bad], timeout: 30)
            XCTAssertEqual(r.status, 64, "--timeout \(bad): \(r.stderr)")
        }
    }

    // MARK: - Chunk payloads

    /// A `ferry get` of `f.bin` from a server that answers STAT at once and writes the GET
    /// reply as `deliver` says.
    func fakeFileServer(_ data: [UInt8], deliver: @escaping @Sendable (TrickleServer.Connection, [UInt8]) -> Void) throws -> TrickleServer {
        try TrickleServer { connection in
            connection.send(Array(Self.greeting.utf8))
            while let line = connection.readLine() {
                if line.hasPrefix("STAT ") {
                    connection.send(Array("OK f 0644 \(data.count) \(FakeServer.mtime) f.bin\n".utf8))
                } else if line.hasPrefix("GET ") {
                    deliver(connection, Array("OK \(data.count) \(FakeServer.mtime) -\n".utf8)
                        + FakeServer.chunkStream(data, chunkSize: data.count, compress: false))
                } else if line.hasPrefix("QUIT") {
                    connection.send(Array("OK bye\n".utf8))
                    return
                } else {
                    connection.send(Array("ERR 400 not supported here\n".utf8))
                }
            }
        }
    }

    func testStalledChunkPayloadTimesOut() throws {
        let data = try Files.randomBytes(32 * 1024)
        let server = try fakeFileServer(data) { connection, reply in
            connection.send(Array(reply.prefix(reply.count / 2)))
            connection.hold(seconds: 30)
        }
        defer { server.stop() }
        let out = work.appendingPathComponent("f.bin")
        let (r, elapsed) = try timedFerry(["get", "\(server.address)/f.bin", out.path, "--timeout", "1", "--retries", "0"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("stopped sending in the middle of a 32768-byte chunk"), r.stderr)
        XCTAssertLessThan(elapsed, 4)
        XCTAssertFalse(Files.exists(out))
    }

    func testSlowChunkPayloadGetsMoreTimeThanALine() throws {
        // 32 KiB in 2 KiB pieces every 0.2 s: 3.2 s for the payload, over the 1 s timeout but
        // within 1 s + 32 KiB / 8 KiB/s = 5 s, and never 1 s without a byte.
        let data = try Files.randomBytes(32 * 1024)
        let server = try fakeFileServer(data) { connection, reply in
            connection.trickle(reply, every: 0.2, piece: 2048)
        }
        defer { server.stop() }
        let out = work.appendingPathComponent("f.bin")
        let (r, elapsed) = try timedFerry(["get", "\(server.address)/f.bin", out.path, "--timeout", "1", "--retries", "0"])
        XCTAssertEqual(r.status, 0, r.stderr)
        assertSameBytes(Files.read(out), data)
        XCTAssertGreaterThan(elapsed, 3, "the payload took over three timeouts to arrive")
    }

    func testCrawlingChunkPayloadTimesOut() throws {
        // 256 bytes every 0.4 s (640 B/s): never silent for 1 s, but the 32 KiB payload would
        // take 51 s; it gets 1 s + 4 s.
        let data = try Files.randomBytes(32 * 1024)
        let server = try fakeFileServer(data) { connection, reply in
            connection.trickle(reply, every: 0.4, piece: 256)
        }
        defer { server.stop() }
        let out = work.appendingPathComponent("f.bin")
        let (r, elapsed) = try timedFerry(["get", "\(server.address)/f.bin", out.path, "--timeout", "1", "--retries", "0"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("sent a 32768-byte chunk too slowly"), r.stderr)
        XCTAssertGreaterThan(elapsed, 4.5)
        XCTAssertLessThan(elapsed, 9)
    }

    func testFastTransferWithShortTimeoutSucceeds() throws {
        // A short timeout does not hurt a transfer that makes progress: 24 MiB over loopback
        // with --timeout 1, on a client that also writes to disk between frames.
        let served = work.appendingPathComponent("served")
        try FileManager.default.createDirectory(at: served, withIntermediateDirectories: true)
        let data = try Files.randomBytes(24 << 20)
        try Files.write(served.appendingPathComponent("big.bin"), data)
        let state = work.appendingPathComponent("state")
        let server = try ServerProcess(serving: served, arguments: serveArguments(stateDir: state))
        defer { server.stop() }
        let out = work.appendingPathComponent("big.bin")
        let r = try TestSupport.ferry(["get", "\(server.address)/big.bin", out.path, "--timeout", "1", "--retries", "0"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(SHA256Hasher.hex(Files.read(out) ?? []), SHA256Hasher.hex(data))
    }

    // MARK: - Refused connections

    func testRefusedConnectionFailsAtOnce() throws {
        let port = try closedPort()
        for command in [["ls", "127.0.0.1:\(port)"],
                        ["get", "127.0.0.1:\(port)/f.bin", work.appendingPathComponent("f.bin").path],
                        ["sync", "127.0.0.1:\(port)", work.appendingPathComponent("dest").path]] {
            let (r, elapsed) = try timedFerry(command + ["--retries", "5"].filter { _ in command[0] != "ls" })
            XCTAssertEqual(r.status, 2, "\(command[0]): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("connection refused — nothing is listening on that port"), "\(command[0]): \(r.stderr)")
            XCTAssertFalse(r.stderr.contains("retrying"), "\(command[0]): nobody is listening, so nothing is retried: \(r.stderr)")
            XCTAssertLessThan(elapsed, 1, "\(command[0]) must fail at once, not after retries")
        }
    }

    func testServerRestartingDuringGetIsRetried() throws {
        let out = work.appendingPathComponent("big.bin")
        try restartServerDuring(partial: {
            let partial = self.work.appendingPathComponent(".big.bin.ferry-partial")
            var st = stat()
            return lstat(partial.path, &st) == 0 && st.st_size > 0
        }, retryWord: "retrying", result: out) { address in ["get", "\(address)/big.bin", out.path, "--retries", "5"] }
    }

    func testServerRestartingDuringSyncIsRetried() throws {
        let dest = work.appendingPathComponent("dest")
        try restartServerDuring(partial: {
            let folder = dest.appendingPathComponent(".ferry-partial")
            return Files.names(folder).contains { name in
                var st = stat()
                return name.hasSuffix(".part") && lstat(folder.appendingPathComponent(name).path, &st) == 0 && st.st_size > 0
            }
        }, retryWord: "reconnecting", result: dest.appendingPathComponent("big.bin")) { address in
            ["sync", address, dest.path, "--retries", "5"]
        }
    }

    /// Runs the command `arguments(address)` against a real server holding a 96 MiB `big.bin`;
    /// once `partial` says data has arrived, freezes the client, kills the server, lets the
    /// client find the port closed for about a second, and starts the server again on the same
    /// port. The client must treat those refused connections as a restart: retry and finish.
    func restartServerDuring(partial: () -> Bool, retryWord: String, result: URL,
                             arguments: (String) -> [String]) throws {
        let served = work.appendingPathComponent("served")
        try FileManager.default.createDirectory(at: served, withIntermediateDirectories: true)
        let bytes = try Files.randomBytes(96 << 20)
        try Files.write(served.appendingPathComponent("big.bin"), bytes)
        let state = work.appendingPathComponent("state")
        let common = serveArguments(stateDir: state)
        var server = try ServerProcess(serving: served, arguments: common)
        let port = server.port
        defer { server.stop() }

        let errURL = work.appendingPathComponent("client.err")
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let client = TestSupport.process([TestSupport.ferryExecutable.path] + arguments(server.address))
        client.standardInput = FileHandle.nullDevice
        client.standardOutput = FileHandle.nullDevice
        client.standardError = try FileHandle(forWritingTo: errURL)
        try client.run()
        defer { if client.isRunning { kill(client.processIdentifier, SIGKILL); client.waitUntilExit() } }

        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline && client.isRunning && !partial() { usleep(500) }
        XCTAssertTrue(client.isRunning, "the transfer finished before the test could interrupt it; use a bigger file")
        kill(client.processIdentifier, SIGSTOP)
        kill(server.process.processIdentifier, SIGKILL)
        server.process.waitUntilExit()
        kill(client.processIdentifier, SIGCONT)
        usleep(1_200_000)
        server = try ServerProcess(serving: served, arguments: common + ["--port", String(port)])
        XCTAssertEqual(server.port, port)

        let exitDeadline = Date().addingTimeInterval(60)
        while client.isRunning && Date() < exitDeadline { usleep(10_000) }
        XCTAssertFalse(client.isRunning, "the client must finish")
        client.waitUntilExit()
        let stderr = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
        XCTAssertEqual(client.terminationStatus, 0, stderr)
        XCTAssertTrue(stderr.contains("connection refused") && stderr.contains(retryWord),
                      "the restart window must have been met with refused connections, and those retried: \(stderr)")
        XCTAssertEqual(SHA256Hasher.hex(Files.read(result) ?? []), SHA256Hasher.hex(bytes))
    }

    /// A TCP port on 127.0.0.1 that nobody listens on (bound, then closed).
    func closedPort() throws -> Int {
        let probe = try FakeServer { _ in nil }
        let port = probe.port
        probe.stop()
        return port
    }
}

/// A TCP server on 127.0.0.1 that runs a script per connection — send, trickle, read a line,
/// hold — on its own thread. Every wait is bounded, and `stop()` ends them all promptly.
final class TrickleServer: @unchecked Sendable {
    final class Connection: @unchecked Sendable {
        let fd: Int32
        let stopped: @Sendable () -> Bool
        private var buffer: [UInt8] = []

        init(fd: Int32, stopped: @escaping @Sendable () -> Bool) {
            self.fd = fd
            self.stopped = stopped
        }

        /// Sends everything; false when the peer is gone.
        @discardableResult
        func send(_ bytes: [UInt8]) -> Bool { sendAll(fd, bytes) }

        /// Sends `bytes` `piece` bytes at a time, pausing `every` seconds between pieces.
        func trickle(_ bytes: [UInt8], every: Double, piece: Int = 1) {
            var offset = 0
            while offset < bytes.count && !stopped() {
                let end = min(bytes.count, offset + piece)
                guard send(Array(bytes[offset..<end])) else { return }
                offset = end
                if offset < bytes.count { sleepUnlessStopped(every) }
            }
        }

        /// Keeps the connection open without sending, up to `seconds`, until the peer closes it
        /// or the server stops.
        func hold(seconds: Double) {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline && !stopped() {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, 100) > 0 else { continue }
                var scratch = [UInt8](repeating: 0, count: 4096)
                let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n <= 0 { return }
            }
        }

        /// The next request line (without LF), or nil when the peer closed, the server stopped
        /// or 30 s passed.
        func readLine() -> String? {
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline && !stopped() {
                if let lf = buffer.firstIndex(of: 0x0A) {
                    let line = String(decoding: buffer[..<lf], as: UTF8.self)
                    buffer.removeFirst(lf + 1)
                    return line
                }
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, 100) > 0 else { continue }
                var chunk = [UInt8](repeating: 0, count: 4096)
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n <= 0 { return nil }
                buffer += chunk[0..<n]
            }
            return nil
        }

        private func sleepUnlessStopped(_ seconds: Double) {
            let deadline = Date().addingTimeInterval(seconds)
            while !stopped() {
                let left = deadline.timeIntervalSinceNow
                if left <= 0 { return }
                usleep(useconds_t(min(left, 0.05) * 1_000_000))
            }
        }
    }

    private let listener: LoopbackListener

    init(script: @escaping @Sendable (Connection) -> Void) throws {
        listener = try LoopbackListener(backlog: 16) { fd, stopped in script(Connection(fd: fd, stopped: stopped)) }
    }

    var port: Int { listener.port }
    var address: String { listener.address }

    func stop() { listener.stop() }
}
