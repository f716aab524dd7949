#if canImport(Glibc)
import Glibc
#endif
import FerryClient
import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import NIOCore
import XCTest

/// Many concurrent clients, authentication, SIGTERM mid-transfer and a full disk, against the
/// real `ferry` binaries.
final class LoadAndShutdownTests: XCTestCase {
    var work: URL!
    var served: URL!
    var expected: [String: String] = [:]

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-load")
        served = work.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: served.appendingPathComponent("sub"), withIntermediateDirectories: true)
        var rng = SplitMix64(seed: 99)
        for (i, size) in [0, 1, 1000, 65_536, 300_000, 1 << 20].enumerated() {
            let name = i % 2 == 0 ? "f\(i).bin" : "sub/f\(i).txt"
            let bytes: [UInt8] = i % 2 == 0 ? (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }
                                            : Array(String(repeating: "line \(i) of text\n", count: size / 16 + 1).utf8.prefix(size))
            try Data(bytes).write(to: served.appendingPathComponent(name))
            expected[name] = try sha256(of: served.appendingPathComponent(name))
        }
    }

    override func tearDown() {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    func serve(_ extra: [String] = [], port: Int? = nil, environment: [String: String]? = nil) throws -> ServerProcess {
        var args = ["--bind", "127.0.0.1", "--no-discovery", "--state-dir", work.appendingPathComponent("state").path]
        if let port { args += ["--port", String(port)] }
        return try ServerProcess(serving: served, tls: false, arguments: args + extra, environment: environment)
    }

    /// glibc settings under which the server's resident size follows what it has allocated:
    /// one arena (with many threads glibc otherwise starts arenas at unpredictable moments, each
    /// keeping its freed pages — a one-time jump of 20 MiB in one round made the earlier
    /// three-round version of this test fail), freed memory at the top of the heap returned at
    /// once, and every block of 32 KiB or more (chunk and socket buffers) in its own mapping,
    /// returned when freed (glibc otherwise raises the mmap threshold after the first free and
    /// keeps them in the heap, where a few long-lived blocks pin megabytes). With these, the
    /// resident size after ten healthy rounds varies by under 2 MiB; a leak still grows it.
    static let trackingAllocator = [
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_TRIM_THRESHOLD_": "0",
        "MALLOC_MMAP_THRESHOLD_": "32768",
    ]

    /// 200 clients connected at the same time list and fetch (every answer checked), round
    /// after round; afterwards the server's descriptors are back to baseline, its peak memory is
    /// bounded, and its memory reaches a plateau: after two warm-up rounds, the median resident
    /// size of the last three rounds may exceed that of rounds 3–5 by at most 6 MiB. A healthy
    /// server moved by under 2 MiB in every run tried; a leak of 1 KiB per request (injected
    /// into the server to check this test) added 10 MiB between the two windows. `FERRY_LOAD_ROUNDS` sets the number of rounds (default 10, at least 8).
    func testTwoHundredConcurrentClients() async throws {
        let clients = 200
        let server = try serve(["--max-connections", "512", "--max-per-address", "512"], environment: Self.trackingAllocator)
        defer { server.stop() }
        let pid = server.process.processIdentifier
        let endpoint = Endpoint(host: "127.0.0.1", port: server.port)
        let names = expected.keys.sorted()
        let hashes = expected
        try await Self.fetch(endpoint, "f4.bin", expected: hashes)
        let baselineFDs = ProcessStats.openDescriptors(pid)
        let baselineKiB = ProcessStats.residentKiB(pid)

        let rounds = max(8, Int(ProcessInfo.processInfo.environment["FERRY_LOAD_ROUNDS"] ?? "") ?? 10)
        var afterRounds = [Int]()
        for round in 1...rounds {
            let together = ConcurrencyProbe(clients: clients) { ProcessStats.openDescriptors(pid) }
            let counts = try await Self.load(endpoint, clients: clients, seconds: 2, names: names, expected: hashes,
                                             probe: together)
            let peakKiB = ProcessStats.peakResidentKiB(pid)
            let settled = ProcessStats.eventually(timeout: 10) { ProcessStats.openDescriptors(pid) <= baselineFDs + 1 }
            usleep(500_000)
            let afterKiB = ProcessStats.residentKiB(pid)
            afterRounds.append(afterKiB)
            let openTogether = together.descriptorsWhenAllWereServed
            let idleFDs = ProcessStats.openDescriptors(pid)
            print("load round \(round): \(clients) clients, \(counts.reduce(0, +)) requests; server fds \(baselineFDs) → \(openTogether) with all clients connected → \(ProcessStats.openDescriptors(pid)); threads \(ProcessStats.threads(pid)); RSS \(baselineKiB / 1024) MiB → peak \(peakKiB / 1024) MiB → after \(afterKiB) KiB")
            // Every client was served while all the others were connected too.
            XCTAssertGreaterThanOrEqual(openTogether, idleFDs + clients,
                                        "the server never held all \(clients) connections at once (\(idleFDs) descriptors when idle)")
            XCTAssertTrue(settled, "descriptors did not return to baseline \(baselineFDs): \(ProcessStats.openDescriptors(pid))")
            XCTAssertLessThan(peakKiB, 256 * 1024, "server peak RSS over 256 MiB")
            XCTAssertLessThan(afterKiB, baselineKiB + 64 * 1024, "server memory did not come back down")
        }
        func median(_ values: ArraySlice<Int>) -> Int { values.sorted()[values.count / 2] }
        let early = median(afterRounds[2..<5]), late = median(afterRounds.suffix(3))
        XCTAssertLessThanOrEqual(late - early, 6 * 1024,
                                 "resident memory keeps growing with repeated load (median of rounds 3-5 \(early) KiB, of the last three \(late) KiB): \(afterRounds) KiB")
        try await Self.fetch(endpoint, "f4.bin", expected: hashes)
    }

    /// `clients` connections that each list a directory and fetch a file (checked) in a loop
    /// for `seconds`, and on until every client has been served once while connected (so all
    /// are open together at that moment, which `probe` records); returns the requests each made.
    static func load(_ endpoint: Endpoint, clients: Int, seconds: Int, names: [String],
                     expected: [String: String], probe: ConcurrencyProbe) async throws -> [Int] {
        let deadline = ContinuousClock.now + .seconds(seconds)
        return try await withThrowingTaskGroup(of: Int.self) { group in
            for c in 0..<clients {
                group.addTask {
                    var done = 0
                    try await FerryConnection.with(endpoint, options: ConnectionOptions(readTimeout: .seconds(60))) { conn in
                        repeat {
                            let listing = try await conn.list(try RemotePath(validating: "sub"))
                            guard listing.count == 3 else { throw RawClient.Failure(description: "LIST sub gave \(listing.count) entries") }
                            let name = names[(c + done) % names.count]
                            try await Self.fetch(on: conn, name, expected: expected)
                            done += 2
                            if done == 2 { probe.served() }
                        } while ContinuousClock.now < deadline || !probe.allServed
                    }
                    return done
                }
            }
            var all = [Int]()
            for try await n in group { all.append(n) }
            return all
        }
    }

    static func fetch(_ endpoint: Endpoint, _ name: String, expected: [String: String]) async throws {
        try await FerryConnection.with(endpoint) { try await fetch(on: $0, name, expected: expected) }
    }

    static func fetch(on conn: FerryConnection, _ name: String, expected: [String: String]) async throws {
        try await conn.send(.get(try RemotePath(validating: name), offset: 0, length: nil, validator: nil))
        _ = try await conn.expect(GetHead.self, for: "GET \(name)")
        var hasher = SHA256Hasher()
        while true {
            switch try await conn.nextStreamItem() {
            case .chunk(let header, let wire):
                hasher.update(try ChunkDecoder.decode(header: header, wire: wire))
            case .end(let sha, _):
                let got = hasher.finalizeHex()
                guard sha == expected[name], got == sha else {
                    throw RawClient.Failure(description: "\(name): END \(sha), data \(got), expected \(expected[name] ?? "?")")
                }
                return
            case .error(let reply):
                throw RawClient.Failure(description: "\(name): \(reply)")
            }
        }
    }

    func testTokenIsRequiredAndRepeatedFailuresAreSlowedDown() throws {
        let tokenURL = work.appendingPathComponent("token")
        try Data("correct horse battery staple\n".utf8).write(to: tokenURL)
        chmod(tokenURL.path, 0o600)
        let server = try serve(["--token-file", tokenURL.path])
        defer { server.stop() }

        // Before AUTH: 401, and the connection stays open for AUTH.
        let raw = try RawClient(port: server.port)
        let greeting = try raw.readLine() ?? ""
        XCTAssertTrue(greeting.contains("auth=hmac-sha256 nonce="), greeting)
        try raw.send("LIST .\n")
        XCTAssertTrue(try raw.readLine()?.hasPrefix("ERR 401") ?? false)

        // Wrong tokens: 403 and the connection closes; each retry from this address waits longer.
        // The exact schedule is AuthThrottleTests' (through the throttle's clock); here only that
        // the server applies it: the k-th failure's reply cannot come sooner than the throttle's
        // delay after the previous one (0.5 s, 1 s, 2 s). Lower bounds only: a busy machine
        // makes replies late, never early.
        var replies = [Date]()
        for _ in 0..<4 {
            let c = try RawClient(port: server.port, timeout: 30)
            _ = try c.readLine()
            try c.send("AUTH " + String(repeating: "ab", count: 32) + "\n")
            let reply = try c.readLine() ?? ""
            replies.append(Date())
            XCTAssertTrue(reply.hasPrefix("ERR 403"), reply)
            XCTAssertNil(try c.readLine(), "the connection must close after a failed AUTH")
        }
        let gaps = zip(replies.dropFirst(), replies).map { $0.timeIntervalSince($1) }
        XCTAssertGreaterThan(gaps[0], 0.4, "the 2nd failure was not delayed: \(gaps)")
        XCTAssertGreaterThan(gaps[1], 0.85, "the 3rd failure was not delayed by 1 s: \(gaps)")
        XCTAssertGreaterThan(gaps[2], 1.8, "the 4th failure was not delayed by 2 s: \(gaps)")

        // The CLI: no token → exit 3 with advice; the right token (flag or environment) works.
        let none = try TestSupport.ferry(["ls", server.address])
        XCTAssertEqual(none.status, 3, none.stderr)
        XCTAssertTrue(none.stderr.contains("--token-file"), none.stderr)
        let flag = try TestSupport.ferry(["ls", server.address, "--token-file", tokenURL.path], timeout: 60)
        XCTAssertEqual(flag.status, 0, flag.stderr)
        XCTAssertTrue(flag.stdout.contains("f0.bin"), flag.stdout)
        let env = try TestSupport.ferry(["ls", server.address], timeout: 60, environment: ["FERRY_TOKEN_FILE": tokenURL.path])
        XCTAssertEqual(env.status, 0, env.stderr)

        // A token file others can read is refused, by the client and by the server.
        chmod(tokenURL.path, 0o644)
        let loose = try TestSupport.ferry(["ls", server.address, "--token-file", tokenURL.path])
        XCTAssertNotEqual(loose.status, 0)
        XCTAssertTrue(loose.stderr.contains("chmod 600"), loose.stderr)
        XCTAssertThrowsError(try serve(["--token-file", tokenURL.path]))
    }

    /// SIGTERM while clients are mid-transfer: the server exits 0 promptly, the client fails
    /// with a clear network error and keeps its partial, and the next run resumes.
    func testSIGTERMDuringATransferThenResume() throws {
        let bigURL = served.appendingPathComponent("big.bin")
        try randomData(48 << 20).write(to: bigURL)
        let bigHash = try sha256(of: bigURL)
        let server = try serve()
        let port = server.port
        let dest = work.appendingPathComponent("big.copy")

        // A second, raw client that stops reading: the server must not wait for it either.
        let stalled = try RawClient(port: port)
        _ = try stalled.readLine()
        try stalled.send("GET big.bin 0 *\n")

        let client = TestSupport.process([TestSupport.ferryExecutable.path, "get", "\(server.address)/big.bin", dest.path,
                                          "--retries", "1", "--quiet"])
        let errURL = work.appendingPathComponent("client.err")
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        client.standardError = try FileHandle(forWritingTo: errURL)
        client.standardOutput = FileHandle.nullDevice
        try client.run()
        let partialURL = work.appendingPathComponent(".big.copy.ferry-partial")
        let started = ProcessStats.eventually(timeout: 20) {
            ((try? FileManager.default.attributesOfItem(atPath: partialURL.path)[.size] as? Int) ?? 0) > 0
        }
        kill(client.processIdentifier, SIGSTOP)
        XCTAssertTrue(started, "the client never started writing its partial file")

        let t0 = Date()
        let status = server.stop(grace: 10)
        XCTAssertEqual(status, 0, "SIGTERM must stop the server with status 0")
        XCTAssertLessThan(Date().timeIntervalSince(t0), 5, "the server took too long to stop with transfers running")
        kill(client.processIdentifier, SIGCONT)
        client.waitUntilExit()
        let clientErr = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
        XCTAssertEqual(client.terminationStatus, 2, clientErr)
        XCTAssertFalse(clientErr.isEmpty, "the client must say what went wrong")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dest.path), "no file may appear under the final name")
        let kept = (try? FileManager.default.attributesOfItem(atPath: partialURL.path)[.size] as? Int) ?? 0
        XCTAssertGreaterThan(kept, 0, "the partial data must be kept for resume")

        // The server comes back on the same port; the next run resumes.
        let again = try serve(port: port)
        defer { again.stop() }
        let resumed = try TestSupport.ferry(["get", "\(again.address)/big.bin", dest.path, "--json"], timeout: 120)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(try sha256(of: dest), bigHash)
        XCTAssertFalse(FileManager.default.fileExists(atPath: partialURL.path))
    }
}

/// Counts clients served at least once; when the last one is, records what `measure` says
/// (the server's open descriptors) while every client is still connected.
final class ConcurrencyProbe: @unchecked Sendable {
    private let lock = NSLock()
    private let clients: Int
    private let measure: () -> Int
    private var count = 0
    private var measured = -1

    init(clients: Int, measure: @escaping () -> Int) {
        self.clients = clients
        self.measure = measure
    }

    func served() {
        lock.lock()
        defer { lock.unlock() }
        count += 1
        if count == clients { measured = measure() }
    }

    var allServed: Bool {
        lock.lock()
        defer { lock.unlock() }
        return count >= clients
    }

    /// -1 until every client was served.
    var descriptorsWhenAllWereServed: Int {
        lock.lock()
        defer { lock.unlock() }
        return measured
    }
}
