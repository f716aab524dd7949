#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import NIOCore
import XCTest

/// Hostile and misbehaving clients against a real `ferry serve` process: every bad line gets
/// an error reply, other clients keep being served, and descriptors return to baseline.
final class HostileClientTests: XCTestCase {
    var work: URL!
    var served: URL!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-hostile")
        served = work.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: served, withIntermediateDirectories: true)
        try Data("hello\n".utf8).write(to: served.appendingPathComponent("a.txt"))
        try Data().write(to: served.appendingPathComponent("empty"))
        try randomData(3 << 20).write(to: served.appendingPathComponent("big.bin"))
        // 8 GiB of holes: enough blocks to pass the BLOCKS count limit, no disk space used.
        let huge = served.appendingPathComponent("huge.sparse")
        _ = FileManager.default.createFile(atPath: huge.path, contents: nil)
        try FileHandle(forWritingTo: huge).truncate(atOffset: 8 << 30)
        // The string-prefix trap: a sibling whose name starts with the served directory's.
        let sibling = work.appendingPathComponent("data2")
        try FileManager.default.createDirectory(at: sibling, withIntermediateDirectories: true)
        try Data("secret\n".utf8).write(to: sibling.appendingPathComponent("secret.txt"))
        try FileManager.default.createSymbolicLink(atPath: served.appendingPathComponent("out").path, withDestinationPath: sibling.path)
    }

    override func tearDown() {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    func serve(_ extra: [String] = []) throws -> ServerProcess {
        try ServerProcess(serving: served, tls: false, arguments: ["--bind", "127.0.0.1", "--no-discovery",
                                                       "--state-dir", work.appendingPathComponent("state").path] + extra)
    }

    /// One request on a fresh raw connection; returns the first reply line.
    func ask(_ server: ServerProcess, _ client: RawClient, _ line: [UInt8]) throws -> String {
        try client.send(line)
        return try XCTUnwrap(try client.readLine(), "server closed the connection after \(String(decoding: line, as: UTF8.self).prefix(60))")
    }

    func testEveryHostileLineGetsAnErrorAndTheConnectionStaysUsable() throws {
        let server = try serve()
        defer { server.stop() }
        let client = try RawClient(port: server.port)
        XCTAssertTrue(try client.readLine()?.hasPrefix("FERRY 1 ") ?? false)
        let cases: [(String, [UInt8])] = [
            ("ERR 421", Array("STAT ..\n".utf8)),
            ("ERR 421", Array("LIST a/../..\n".utf8)),
            ("ERR 421", Array("STAT /etc/passwd\n".utf8)),
            ("ERR 421", Array("GET out/secret.txt 0 *\n".utf8)),
            ("ERR 421", Array("LIST out\n".utf8)),
            ("ERR 4", Array("GET a%00.txt 0 *\n".utf8)),
            ("ERR 400", [0x53, 0x54, 0x41, 0x54, 0x20, 0x61, 0x00, 0x0A]),
            ("ERR 400", [0xFF, 0xFE, 0x0A]),
            ("ERR 400", Array("FROB a.txt\n".utf8)),
            ("ERR 400", Array("GET a.txt -5 *\n".utf8)),
            ("ERR 400", Array("GET a.txt 0 99999999999999999999999999\n".utf8)),
            ("ERR 400", Array("GET a.txt 0 * 5,notatime\n".utf8)),
            ("ERR 400", Array("\n".utf8)),
            ("ERR 404", Array("GET missing 0 *\n".utf8)),
            ("ERR 416", Array("GET big.bin 99999999999 *\n".utf8)),
            ("ERR 409", Array("GET a.txt 0 * 5,1.000000000\n".utf8)),
            ("ERR 422", Array("GET . 0 *\n".utf8)),
            ("ERR 400", Array("BLOCKS big.bin 1\n".utf8)),
            ("ERR 413", Array("BLOCKS huge.sparse 4096\n".utf8)),
            ("ERR 413", Array(("STAT " + String(repeating: "x", count: 20_000) + "\n").utf8)),
            ("ERR 413", Array(String(repeating: "A", count: 100_000).utf8) + [0x0A]),
        ]
        for (expected, line) in cases {
            let reply = try ask(server, client, line)
            XCTAssertTrue(reply.hasPrefix(expected), "\(String(decoding: line.prefix(40), as: UTF8.self)) → \(reply)")
        }
        // Still usable: a missing file and an empty file are different answers.
        XCTAssertTrue(try ask(server, client, Array("STAT empty\n".utf8)).hasPrefix("OK f "))
        let get = try ask(server, client, Array("GET empty 0 *\n".utf8))
        XCTAssertTrue(get.hasPrefix("OK 0 "), get)
        XCTAssertEqual(try client.readLine(), "END e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertTrue(try ask(server, client, Array("STAT a.txt\n".utf8)).hasPrefix("OK f 0644 6 "))
    }

    /// Eight attackers at once, each opening connection after connection for four seconds and
    /// keeping its last twelve open (so about a hundred hostile connections are open together,
    /// most of them stuck mid-request or with replies nobody reads), while a well-behaved client
    /// keeps fetching and checking files. The good client is served throughout, the server
    /// really held the attackers' connections at the same time, and afterwards its descriptors
    /// return to baseline.
    func testGarbageFloodsDoNotCostOtherClientsAndLeakNothing() throws {
        let server = try serve()
        defer { server.stop() }
        let pid = server.process.processIdentifier
        let port = server.port
        // Warm up (thread pools, hash cache) before measuring the baseline.
        try fetchAndCheck(port: port, path: "big.bin")
        let baselineFDs = ProcessStats.openDescriptors(pid)

        let stop = Date().addingTimeInterval(4)
        let root: URL = served
        let good = Background.run { () throws -> (fetches: Int, slowest: TimeInterval) in
            var n = 0
            var slowest: TimeInterval = 0
            while Date() < stop {
                let started = Date()
                try Self.fetchAndCheck(port: port, path: n % 2 == 0 ? "big.bin" : "a.txt", served: root)
                slowest = max(slowest, Date().timeIntervalSince(started))
                n += 1
            }
            return (n, slowest)
        }
        let attackers = (0..<8).map { index in
            Background.run { () -> (connections: Int, refused: Int) in
                var rng = SplitMix64(seed: 42 + UInt64(index))
                var held: [RawClient] = []
                var connections = 0, refused = 0
                while Date() < stop {
                    connections += 1
                    do {
                        // Each attacker is a machine of its own (127.0.0.2…9), as the per-address cap is not
                        // what this test is about.
                        let client = try RawClient(port: port, source: "127.0.0.\(2 + index)", timeout: 5)
                        held.append(client)
                        if held.count > 12 { held.removeFirst() }
                        _ = try client.readLine()
                        try Self.attack(client, kind: (connections + index) % 6, rng: &rng)
                    } catch {
                        refused += 1  // the server may close a hostile connection mid-send
                    }
                }
                held.removeAll()
                return (connections, refused)
            }
        }
        // While the flood runs: how many connections does the server hold at once?
        var peakFDs = 0
        while Date() < stop {
            peakFDs = max(peakFDs, ProcessStats.openDescriptors(pid))
            usleep(50_000)
        }
        let results = try attackers.map { try $0.value() }
        let (goodFetches, slowest) = try good.value()
        let total = results.reduce(0) { $0 + $1.connections }
        print("flood: \(total) hostile connections from 8 attackers (\(results.reduce(0) { $0 + $1.refused }) cut by the server), server fds \(baselineFDs) → peak \(peakFDs); good client: \(goodFetches) fetches, slowest \(slowest) s")
        XCTAssertGreaterThan(goodFetches, 2, "the well-behaved client was starved")
        XCTAssertLessThan(slowest, 3, "a good fetch took \(slowest) s during the flood")
        XCTAssertGreaterThanOrEqual(peakFDs, baselineFDs + 60, "the attackers' connections were never open together")
        XCTAssertTrue(server.process.isRunning, "the server died: \(server.stderr)")
        let settled = ProcessStats.eventually(timeout: 10) { ProcessStats.openDescriptors(pid) <= baselineFDs + 1 }
        XCTAssertTrue(settled, "descriptors did not return to baseline: \(baselineFDs) → \(ProcessStats.openDescriptors(pid)) after \(total) hostile clients")
        try fetchAndCheck(port: port, path: "big.bin")
    }

    /// One kind of hostile behaviour on an open connection (the greeting already read).
    static func attack(_ client: RawClient, kind: Int, rng: inout SplitMix64) throws {
        switch kind {
        case 0:  // random bytes, no LF at all
            try client.send((0..<70_000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }.filter { $0 != 0x0A })
        case 1:  // random lines
            try client.send(rng.bytes(20_000))
        case 2:  // thousands of pipelined requests, never reading the replies
            try client.send(Array(String(repeating: "GET big.bin 0 *\n", count: 2000).utf8))
        case 3:  // half a line, then nothing
            try client.send(Array("GET big.bi".utf8))
        case 4:  // request a big file and read only a little
            try client.send(Array("GET big.bin 0 *\n".utf8))
            _ = try client.readLine()
        default:  // NULs and control characters
            try client.send([UInt8](repeating: 0, count: 5000) + [0x0A, 0x1B, 0x5B, 0x32, 0x4A, 0x0A])
        }
    }

    func testConnectionLimitRefusesTheExtraClientOnly() throws {
        let server = try serve(["--max-connections", "3"])
        defer { server.stop() }
        var held = try (0..<3).map { _ in try RawClient(port: server.port) }
        for c in held { XCTAssertTrue(try c.readLine()?.hasPrefix("FERRY 1") ?? false) }
        let extra = try RawClient(port: server.port)
        let refusal = try extra.readLine() ?? ""
        XCTAssertTrue(refusal.hasPrefix("ERR 429 too many connections"), refusal)
        XCTAssertNil(try extra.readLine(), "the refused connection must be closed")
        // The admitted ones are unaffected.
        XCTAssertTrue(try ask(server, held[0], Array("STAT a.txt\n".utf8)).hasPrefix("OK f"))
        held.removeLast()
        let admitted = ProcessStats.eventually(timeout: 5) {
            guard let c = try? RawClient(port: server.port), let line = try? c.readLine() else { return false }
            return line.hasPrefix("FERRY 1")
        }
        XCTAssertTrue(admitted, "a slot freed by a closed connection was not reused")
    }

    /// One machine cannot lock the others out: with `--max-per-address 3`, a fourth connection
    /// from 127.0.0.1 is refused with a reason while one from 127.0.0.2 is admitted, and a slot
    /// freed by 127.0.0.1 is its own again.
    func testOneAddressCannotTakeEveryConnection() throws {
        let server = try serve(["--max-connections", "100", "--max-per-address", "3"])
        defer { server.stop() }
        var held = try (0..<3).map { _ in try RawClient(port: server.port) }
        for c in held { XCTAssertTrue(try c.readLine()?.hasPrefix("FERRY 1") ?? false) }
        let extra = try RawClient(port: server.port)
        let refusal = try extra.readLine() ?? ""
        XCTAssertTrue(refusal.hasPrefix("ERR 429 too many connections from your address (limit 3)"), refusal)
        XCTAssertNil(try extra.readLine(), "the refused connection must be closed")
        let other = try RawClient(port: server.port, source: "127.0.0.2")
        XCTAssertTrue(try other.readLine()?.hasPrefix("FERRY 1") ?? false, "another address was locked out")
        XCTAssertTrue(try ask(server, other, Array("STAT a.txt\n".utf8)).hasPrefix("OK f"))
        held.removeLast()
        let admitted = ProcessStats.eventually(timeout: 5) {
            guard let c = try? RawClient(port: server.port), let line = try? c.readLine() else { return false }
            return line.hasPrefix("FERRY 1")
        }
        XCTAssertTrue(admitted, "a slot freed by the address was not given back to it")
    }

    /// Slowloris: a client that trickles a request line one byte every 0.2 s never looks idle,
    /// but with `--request-timeout 1` it is told `ERR 408` and closed about a second after the
    /// line began; a normal client on another connection is served throughout.
    func testATrickledRequestLineIsCutOffInTime() throws {
        let server = try serve(["--request-timeout", "1", "--idle-timeout", "30"])
        defer { server.stop() }
        let slow = try RawClient(port: server.port, timeout: 10)
        _ = try slow.readLine()
        let started = Date()
        var closedAfter: TimeInterval?
        for byte in Array("STAT aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".utf8) {
            if (try? slow.send([byte])) == nil { closedAfter = Date().timeIntervalSince(started); break }
            usleep(200_000)
            if Date().timeIntervalSince(started) > 6 { break }
        }
        let reply = (try? slow.readLine()) ?? nil
        XCTAssertTrue(reply?.hasPrefix("ERR 408 request line not complete") ?? false, reply ?? "no reply")
        XCTAssertNil((try? slow.readLine()) ?? nil, "the connection must be closed")
        XCTAssertLessThan(closedAfter ?? Date().timeIntervalSince(started), 6)
        // A complete line sent in pieces within the limit is fine.
        let normal = try RawClient(port: server.port)
        _ = try normal.readLine()
        try normal.send(Array("STAT a.".utf8))
        usleep(300_000)
        XCTAssertTrue(try ask(server, normal, Array("txt\n".utf8)).hasPrefix("OK f"))
    }

    func testIdleConnectionsAreClosedWithAReasonButBusyOnesAreNot() throws {
        let server = try serve(["--idle-timeout", "0.6"])
        defer { server.stop() }
        let idle = try RawClient(port: server.port)
        _ = try idle.readLine()
        let started = Date()
        let reply = try idle.readLine() ?? ""
        XCTAssertTrue(reply.hasPrefix("ERR 408 idle"), reply)
        XCTAssertNil(try idle.readLine())
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)

        let chatty = try RawClient(port: server.port)
        _ = try chatty.readLine()
        for _ in 0..<8 {
            usleep(250_000)
            XCTAssertTrue(try ask(server, chatty, Array("STAT a.txt\n".utf8)).hasPrefix("OK f"))
        }
    }

    /// GET through a raw socket: every chunk decoded and checked, the END hash compared with
    /// the file on disk.
    func fetchAndCheck(port: Int, path: String) throws {
        try Self.fetchAndCheck(port: port, path: path, served: served)
    }

    static func fetchAndCheck(port: Int, path: String, served: URL) throws {
        let client = try RawClient(port: port)
        _ = try client.readLine()
        try client.send("GET \(path) 0 *\n")
        guard let ok = try client.readLine() else { throw RawClient.Failure(description: "GET \(path): no reply") }
        guard ok.hasPrefix("OK ") else { throw RawClient.Failure(description: "GET \(path): \(ok)") }
        var hasher = SHA256Hasher()
        var offset: Int64 = 0
        while let line = try client.readLine() {
            if line.hasPrefix("END ") {
                let expected = try sha256(of: served.appendingPathComponent(path))
                guard String(line.dropFirst(4)) == expected, hasher.finalizeHex() == expected else {
                    throw RawClient.Failure(description: "GET \(path): hash mismatch")
                }
                return
            }
            let header = try ChunkHeader.parse(Substring(line))
            guard header.offset == offset else { throw RawClient.Failure(description: "chunk at \(header.offset), expected \(offset)") }
            var wire = ByteBufferAllocator().buffer(capacity: header.wireLength)
            wire.writeBytes(try client.readBytes(header.wireLength))
            let raw = try ChunkDecoder.decode(header: header, wire: wire)
            hasher.update(raw)
            offset += Int64(raw.count)
        }
        throw RawClient.Failure(description: "GET \(path): connection closed before END")
    }
}

/// Runs a throwing closure on its own thread; `value()` waits for it.
enum Background {
    final class Result<T>: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        private var result: Swift.Result<T, Error>?
        fileprivate func set(_ r: Swift.Result<T, Error>) { result = r; done.signal() }
        func value() throws -> T {
            done.wait()
            return try result!.get()  // set exactly once before the signal
        }
    }

    /// A thread of its own (not a dispatch queue, whose pool may run only as many blocking
    /// bodies at once as there are cores).
    static func run<T>(_ body: @escaping @Sendable () throws -> T) -> Result<T> {
        let r = Result<T>()
        let thread = Thread { r.set(Swift.Result { try body() }) }
        thread.stackSize = 1 << 20
        thread.start()
        return r
    }
}

func sha256(of url: URL) throws -> String {
    var hasher = SHA256Hasher()
    hasher.update(Array(try Data(contentsOf: url)))
    return hasher.finalizeHex()
}

/// Random bytes from the kernel (fast even in debug builds).
func randomData(_ count: Int) throws -> Data {
    let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
    defer { try? handle.close() }
    var data = Data()
    while data.count < count {
        guard let more = try handle.read(upToCount: count - data.count), !more.isEmpty else { break }
        data.append(more)
    }
    return data
}
