#if canImport(Glibc)
import Glibc
#endif
import FerryTestSupport
import Foundation
import XCTest

/// Issue 17, parts 2 and 3: a few short request lines used to take the server down. `HASH` of an
/// 8 GiB range costs ~19 s of CPU; four connections pipelining eight each held both of Swift's
/// cooperative threads, so every other client timed out. `BLOCKS big 8192` built a 165 MB map
/// per request. Now expensive work runs on a pool of its own at a lower priority, in slices,
/// stops when its client goes, and block maps are streamed.
final class ExpensiveRequestTests: XCTestCase {
    var work: URL!
    var served: URL!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-expensive")
        served = work.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: served.appendingPathComponent("docs"), withIntermediateDirectories: true)
        for i in 0..<20 { try Data("note \(i)\n".utf8).write(to: served.appendingPathComponent("docs/n\(i).txt")) }
        var rng = SplitMix64(seed: 17)
        try Data(rng.bytes(10 << 20)).write(to: served.appendingPathComponent("ten.bin"))
        // 8 GiB of holes: as costly to hash as real data, no disk space used.
        let huge = served.appendingPathComponent("huge.sparse")
        _ = FileManager.default.createFile(atPath: huge.path, contents: nil)
        XCTAssertEqual(truncate(huge.path, off_t(8) << 30), 0)
    }

    override func tearDown() {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    func serve(_ extra: [String] = []) throws -> ServerProcess {
        try ServerProcess(serving: served, tls: false, arguments: ["--bind", "127.0.0.1", "--no-discovery",
                                                       "--state-dir", work.appendingPathComponent("state").path] + extra)
    }

    /// Median wall time of `ferry ls` and of `ferry get` of 10 MiB, three runs each.
    func innocentTimes(_ server: ServerProcess) throws -> (ls: Double, get: Double) {
        var ls: [Double] = [], get: [Double] = []
        for i in 0..<3 {
            var started = Date()
            let listing = try TestSupport.ferry(["ls", server.address + "/docs"], timeout: 60)
            ls.append(Date().timeIntervalSince(started))
            XCTAssertEqual(listing.status, 0, listing.stderr)
            let local = work.appendingPathComponent("got-\(i).bin")
            started = Date()
            let fetched = try TestSupport.ferry(["get", server.address + "/ten.bin", local.path], timeout: 60)
            get.append(Date().timeIntervalSince(started))
            XCTAssertEqual(fetched.status, 0, fetched.stderr)
            try? FileManager.default.removeItem(at: local)
        }
        return (ls.sorted()[1], get.sorted()[1])
    }

    /// Opens `connections` connections (the i-th from `source(i)`, a loopback address, when
    /// given) that each pipeline `requests` copies of `line` and read nothing.
    func attack(_ server: ServerProcess, connections: Int, requests: Int, line: String,
                source: (Int) -> String? = { _ in nil }) throws -> [RawClient] {
        try (0..<connections).map { i in
            let client = try RawClient(port: server.port, source: source(i), timeout: 5)
            _ = try client.readLine()
            try client.send(String(repeating: line, count: requests))
            return client
        }
    }

    /// A fresh connection gets a `STAT` answered while the attack goes on.
    func assertAnotherClientIsServed(_ server: ServerProcess, file: StaticString = #filePath, line: UInt = #line) throws {
        let probe = try RawClient(port: server.port)
        _ = try probe.readLine()
        try probe.send("STAT ten.bin\n")
        XCTAssertTrue(try probe.readLine()?.hasPrefix("OK f ") ?? false, "another client was not served", file: file, line: line)
    }

    /// CPU the server uses over `seconds`, after its attackers have gone.
    func cpuAfterwards(_ pid: Int32, over seconds: Double) -> Double {
        usleep(500_000)
        let before = ProcessStats.cpuSeconds(pid)
        usleep(UInt32(seconds * 1_000_000))
        return ProcessStats.cpuSeconds(pid) - before
    }

    /// Four connections pipelining eight HASHes of 8 GiB each: a listing and a 10 MiB get from
    /// another client stay within twice their unloaded time, and once the attackers close, the
    /// server stops hashing for them.
    func testRangeHashesCannotStarveOtherClients() throws {
        let server = try serve()
        defer { server.stop() }
        let pid = server.process.processIdentifier
        _ = try innocentTimes(server)  // warm up
        let unloaded = try innocentTimes(server)
        var attackers = try attack(server, connections: 4, requests: 8, line: "HASH huge.sparse 0 \((8 << 30) - 1)\n")
        usleep(500_000)
        let cpuBefore = ProcessStats.cpuSeconds(pid)
        let loaded = try innocentTimes(server)
        let busy = ProcessStats.cpuSeconds(pid) - cpuBefore
        print("innocent client: ls \(unloaded.ls) → \(loaded.ls) s, get 10 MiB \(unloaded.get) → \(loaded.get) s; server CPU during the attack \(busy) s")
        XCTAssertGreaterThan(busy, 0.05, "the server did no hashing; the test shows nothing")
        XCTAssertLessThanOrEqual(loaded.ls, 2 * unloaded.ls, "ferry ls was starved")
        XCTAssertLessThanOrEqual(loaded.get, 2 * unloaded.get, "ferry get was starved")
        attackers.removeAll()
        let after = cpuAfterwards(pid, over: 2)
        XCTAssertLessThan(after, 0.3, "the server kept hashing for clients that had gone (\(after) s of CPU in 2 s)")
    }

    /// Six `BLOCKS huge.sparse 8192` (a million block hashes each) whose replies are never read:
    /// the maps are streamed as the client reads, so the server's memory grows by what the
    /// sockets buffer, not by the maps (165 MB each before); other clients are served meanwhile,
    /// and closing the connections ends the work.
    func testBlockMapsAreStreamedNotBuilt() throws {
        let server = try serve()
        defer { server.stop() }
        let pid = server.process.processIdentifier
        _ = try innocentTimes(server)
        let baseline = ProcessStats.residentKiB(pid)
        var attackers = try attack(server, connections: 6, requests: 1, line: "BLOCKS huge.sparse 8192\n")
        Thread.sleep(forTimeInterval: 4)
        let loaded = ProcessStats.residentKiB(pid)
        try assertAnotherClientIsServed(server)
        print("BLOCKS attack: server RSS \(baseline) KiB → \(loaded) KiB after 4 s")
        XCTAssertLessThan(loaded - baseline, 64 << 10, "six unread block maps cost \((loaded - baseline) >> 10) MiB")
        attackers.removeAll()
        let after = cpuAfterwards(pid, over: 2)
        XCTAssertLessThan(after, 0.3, "the server kept hashing for clients that had gone (\(after) s of CPU in 2 s)")
    }

    /// SIGTERM is answered within 5 s while every worker thread is busy hashing for clients.
    func testSIGTERMIsAnsweredDuringExpensiveWork() throws {
        let server = try serve()
        defer { server.stop() }
        let attackers = try attack(server, connections: 4, requests: 8, line: "HASH huge.sparse 0 \((8 << 30) - 1)\n")
        usleep(1_000_000)
        XCTAssertTrue(server.stopsOnSIGTERM(within: 5), "the server ignored SIGTERM for 5 s while hashing")
        XCTAssertEqual(attackers.count, 4)
    }

    /// 255 connections (from eight addresses; the 256th slot is the probe's) that read nothing:
    /// 215 GET a 1 GiB file, 40 ask for a million-entry block map. The server's replies queued
    /// for the sockets share a 64 MiB budget and a stream reads its next chunk only when its
    /// connection has room to queue it, so each stalled connection holds about one chunk
    /// (before: 1.6 MiB each on a quiet machine, 3.9 MiB on a busy one, where chunks were queued
    /// faster than the event loop counted them). The bound: RSS ≤ 256 MiB under any 256
    /// hostile connections. Once they close, the memory goes back to the system.
    func testStalledReadersHoldBoundedMemoryThatIsGivenBack() throws {
        let server = try serve(["--compress", "off"])
        defer { server.stop() }
        let pid = server.process.processIdentifier
        _ = try innocentTimes(server)
        let baseline = ProcessStats.residentKiB(pid)
        var attackers = try attack(server, connections: 215, requests: 1, line: "GET huge.sparse 0 *\n") { "127.0.9.\(1 + $0 / 32)" }
        attackers += try attack(server, connections: 40, requests: 1, line: "BLOCKS huge.sparse 8192\n") { "127.0.10.\(1 + $0 / 32)" }
        Thread.sleep(forTimeInterval: 4)
        let loaded = ProcessStats.residentKiB(pid)
        try assertAnotherClientIsServed(server)
        attackers.removeAll()
        let settled = ProcessStats.eventually(timeout: 10) { ProcessStats.residentKiB(pid) <= baseline + (16 << 10) }
        let after = ProcessStats.residentKiB(pid)
        print("255 stalled readers (215 GET, 40 BLOCKS): server RSS \(baseline >> 10) MiB → \(loaded >> 10) MiB, \(after >> 10) MiB after they closed")
        XCTAssertLessThanOrEqual(loaded, 256 << 10, "255 stalled readers took the server to \(loaded >> 10) MiB")
        XCTAssertLessThan(loaded - baseline, 255 << 10, "stalled readers hold more than 1 MiB each")
        XCTAssertTrue(settled, "memory was not given back: \(baseline >> 10) → \(after >> 10) MiB")
    }

    /// `MANIFEST` of 100,000 entries (200 directories of 499 empty files) read to its end: the
    /// walk goes in slices and the text is spooled to a file, so the server's peak grows by a
    /// few MiB, not by the tree (1,000,000 entries by hand: 317 → 41 MiB without hashes, 694 →
    /// 105 MiB with; docs/SECURITY.md). The hashes are those of the cache's compact entries.
    func testAManifestOfAHundredThousandEntriesIsStreamedNotBuilt() throws {
        let tree = served.appendingPathComponent("many")
        for d in 0..<200 {
            let dir = tree.appendingPathComponent(String(format: "dir-%03d", d))
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            for f in 0..<499 {
                let fd = open(dir.appendingPathComponent("a-file-with-a-longish-name-\(f).txt").path, O_CREAT | O_WRONLY, 0o644)
                XCTAssertGreaterThanOrEqual(fd, 0)
                close(fd)
            }
        }
        let server = try serve()
        defer { server.stop() }
        let pid = server.process.processIdentifier
        let baseline = ProcessStats.residentKiB(pid)
        for hashes in ["no", "yes"] {
            let client = try RawClient(port: server.port, timeout: 300)
            _ = try client.readLine()
            try client.send("MANIFEST many hashes=\(hashes)\n")
            XCTAssertEqual(try client.readLine(), "OK 100000")
            var wire = 0
            while let line = try client.readLine(), line.hasPrefix("CHUNK ") {
                let fields = line.split(separator: " ")
                let bytes = try client.readBytes(Int(fields[3]) ?? 0)
                wire += bytes.count
            }
            let peak = ProcessStats.peakResidentKiB(pid)
            print("MANIFEST of 100,000 entries, hashes=\(hashes): \(wire) bytes on the wire; server RSS \(baseline >> 10) MiB, peak \(peak >> 10) MiB")
            // Built whole, 100,000 entries took ~30 MiB more without hashes, ~65 MiB with.
            XCTAssertLessThan(peak - baseline, (hashes == "no" ? 12 : 24) << 10, "the manifest was held in memory")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: work.appendingPathComponent("state").path).filter { $0.contains("spool") }, [],
                       "the spool file has no name")
    }

    /// A block map streamed to a client that reads it is complete: the head, then exactly
    /// `count` hashes, then the next reply.
    func testAStreamedBlockMapIsComplete() throws {
        let server = try serve()
        defer { server.stop() }
        let client = try RawClient(port: server.port, timeout: 60)
        _ = try client.readLine()
        try client.send("BLOCKS ten.bin 65536\nSTAT ten.bin\n")
        let head = try XCTUnwrap(try client.readLine())
        let fields = head.split(separator: " ")
        XCTAssertEqual(fields.first, "OK")
        XCTAssertEqual(fields.last, "160", head)
        for i in 0..<160 {
            let line = try XCTUnwrap(try client.readLine(), "block \(i)")
            XCTAssertEqual(line.count, 64, "block \(i): \(line)")
        }
        XCTAssertTrue(try client.readLine()?.hasPrefix("OK f ") ?? false)
    }
}
