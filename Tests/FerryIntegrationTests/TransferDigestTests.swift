import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// The capability `xxh128` (PROTOCOL.md section 7): with it a `GET` trailer carries the XXH3-128
/// of the reply's chunks, and the client checks that instead of computing the file's SHA-256.
/// A server that lies with it — a wrong digest, none, one where it was not enabled, a SHA-256
/// that is not the manifest's — never gets its data renamed into place.
final class TransferDigestTests: XCTestCase {
    var work: URL!
    let mt = FakeServer.mtime

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-xxh")
    }

    override func tearDownWithError() throws {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    static let greeting11 = "FERRY 1 name=fake id=0123456789abcdef0123456789abcdef auth=none caps=xxh128"

    /// How a fake 1.1 server's `GET` reply departs from the truth.
    enum Lie: String, CaseIterable {
        /// Nothing: the right data, CRCs, SHA-256 and XXH3-128.
        case none
        /// The right data and SHA-256, another XXH3-128.
        case wrongDigest
        /// One byte changed, its chunk's CRC-32 computed over the changed bytes (so only the
        /// transfer digest, of the server's real bytes, can tell).
        case alteredByteWithItsCRC
        /// The trailer has no XXH3-128 although the connection enabled `xxh128`.
        case missingDigest
        /// The XXH3-128 is right, the SHA-256 is not the manifest's.
        case otherSHA
    }

    /// Stored chunks carrying `data[offset...]` (`FakeServer.chunkStream`, whose CRC-32s are of
    /// the bytes sent, changed or not), then the trailer `lie` asks for.
    static func reply(_ data: [UInt8], offset: Int, lie: Lie) -> [UInt8] {
        let digest = XXH128Hasher.hex(Array(data[offset...]))
        var served = data
        if lie == .alteredByteWithItsCRC, offset < data.count { served[offset + (data.count - offset) / 2] ^= 0x5A }
        let sha = lie == .otherSHA ? SHA256Hasher.hex(data + [1]) : SHA256Hasher.hex(data)
        let trailer: Trailer = switch lie {
        case .none, .alteredByteWithItsCRC, .otherSHA: Trailer(sha256: sha, xxh128: digest)
        case .wrongDigest: Trailer(sha256: sha, xxh128: XXH128Hasher.hex(Array(data[offset...]) + [0]))
        case .missingDigest: Trailer(sha256: sha)
        }
        return Array("OK \(data.count) \(FakeServer.mtime) -\n".utf8)
            + FakeServer.chunkStream(served, offset: Int64(offset), compress: false, trailer: trailer)
    }

    /// A 1.1 fake server that speaks `xxh128` and serves `files` with `lie` in every `GET`.
    func fake(_ files: [String: [UInt8]], lie: Lie, manifestSHA: Bool = true) throws -> FakeServer {
        let manifest = files.keys.sorted().map { name in
            "f 0644 \(files[name]!.count) \(mt) \(manifestSHA ? SHA256Hasher.hex(files[name]!) : "-") \(name)"
        }
        let base = FakeServer.treeResponder(manifest: manifest, files: files)
        return try FakeServer(greeting: Self.greeting11) { line in
            if line.hasPrefix("CAPS ") {
                return Array((line.contains("xxh128") ? "OK xxh128\n" : "OK\n").utf8)
            }
            let f = line.split(separator: " ").map(String.init)
            if f.first == "GET", f.count >= 4, let data = files[f[1]] {
                return Self.reply(data, offset: Int(f[2]) ?? 0, lie: lie)
            }
            return base(line)
        }
    }

    func testEachLieFailsTheFileAloneAndTheTruthArrives() throws {
        let random = try Files.randomBytes(300_000)  // several chunks
        let small = Array("a small file\n".utf8)  // one chunk
        for lie in Lie.allCases {
            let server = try fake(["big.bin": random, "small.txt": small], lie: lie)
            defer { server.stop() }
            let dest = work.appendingPathComponent("dest-\(lie)")
            let r = try TestSupport.ferry(["sync", server.address, dest.path, "--retries", "0", "--timeout", "5"], timeout: 60)
            XCTAssertTrue(server.requests.contains("CAPS list-kinds,manifest-report,zstd,cdc,xxh128")
                          || server.requests.contains { $0.hasPrefix("CAPS ") && $0.contains("xxh128") },
                          "the client asks for xxh128: \(server.requests)")
            if lie == .none {
                XCTAssertEqual(r.status, 0, r.stderr)
                assertSameBytes(Files.read(dest.appendingPathComponent("big.bin")), random, "big.bin")
                assertSameBytes(Files.read(dest.appendingPathComponent("small.txt")), small, "small.txt")
                continue
            }
            XCTAssertNotEqual(r.status, 0, "\(lie): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("big.bin") && r.stderr.contains("small.txt"), "\(lie): each file is named: \(r.stderr)")
            XCTAssertFalse(Files.exists(dest.appendingPathComponent("big.bin")), "\(lie): unverified data renamed into place")
            XCTAssertFalse(Files.exists(dest.appendingPathComponent("small.txt")), "\(lie): unverified data renamed into place")
            switch lie {
            case .wrongDigest, .alteredByteWithItsCRC: XCTAssertTrue(r.stderr.contains("XXH3-128 mismatch"), "\(lie): \(r.stderr)")
            case .missingDigest: XCTAssertTrue(r.stderr.contains("without the XXH3-128"), r.stderr)
            case .otherSHA: XCTAssertTrue(r.stderr.contains("not the one its manifest gave"), r.stderr)
            case .none: break
            }
        }
    }

    func testGetChecksTheDigestAndExitsWithTheIntegrityStatus() throws {
        let random = try Files.randomBytes(200_000)
        for lie in [Lie.none, .wrongDigest, .alteredByteWithItsCRC] {
            let server = try fake(["r.bin": random], lie: lie)
            defer { server.stop() }
            let out = work.appendingPathComponent("get-\(lie)")
            let g = try TestSupport.ferry(["get", "\(server.address)/r.bin", out.path, "--retries", "0"], timeout: 60)
            if lie == .none {
                XCTAssertEqual(g.status, 0, g.stderr)
                assertSameBytes(Files.read(out), random, "get")
                XCTAssertTrue((g.stdout + g.stderr).contains(SHA256Hasher.hex(random)), "get shows the SHA-256: \(g.stdout) \(g.stderr)")
                let json = try TestSupport.ferry(["get", "\(server.address)/r.bin", out.path + ".j", "--retries", "0", "--json"], timeout: 60)
                XCTAssertEqual(json.status, 0, json.stderr)
                XCTAssertTrue(json.stdout.contains("\"checkedWith\":\"xxh3-128\""), json.stdout)
            } else {
                XCTAssertEqual(g.status, 4, "\(lie): integrity failures exit 4: \(g.stderr)")
                XCTAssertFalse(Files.exists(out), "\(lie): ferry get renamed unverified data into place")
            }
        }
    }

    /// A 1.0 server's trailer with a second field: the client never enabled `xxh128` there.
    func testADigestOnAConnectionThatDidNotEnableItIsRefused() throws {
        let data = Array("ten bytes!".utf8)
        let base = FakeServer.treeResponder(manifest: ["f 0644 10 \(mt) - f.txt"], files: ["f.txt": data])
        let server = try FakeServer { line in
            line.hasPrefix("GET ") ? Self.reply(data, offset: 0, lie: .none) : base(line)
        }
        defer { server.stop() }
        let out = work.appendingPathComponent("f.txt")
        let g = try TestSupport.ferry(["get", "\(server.address)/f.txt", out.path, "--retries", "0", "--timeout", "3"], timeout: 60)
        XCTAssertNotEqual(g.status, 0, g.stderr)
        XCTAssertTrue(g.stderr.contains("did not enable xxh128"), g.stderr)
        XCTAssertFalse(Files.exists(out))
        XCTAssertFalse(server.requests.contains { $0.hasPrefix("CAPS") })

        // The same server telling the truth as 1.0 does: the client computes the SHA-256 and says so.
        let honest = try FakeServer { line in
            line.hasPrefix("GET ") ? Array("OK 10 \(FakeServer.mtime) -\n".utf8) + FakeServer.chunkStream(data) : base(line)
        }
        defer { honest.stop() }
        // (Another name: the refused run above kept its CRC-checked chunk for a resume.)
        let out2 = work.appendingPathComponent("f2.txt")
        let j = try TestSupport.ferry(["get", "\(honest.address)/f.txt", out2.path, "--retries", "0", "--json"], timeout: 60)
        XCTAssertEqual(j.status, 0, j.stderr)
        XCTAssertTrue(j.stdout.contains("\"checkedWith\":\"sha-256\""), j.stdout)
        assertSameBytes(Files.read(out2), data, "f.txt")
    }

    /// A partial of `data` as an interrupted `get` leaves it at `out`: a fake 1.1 server hangs up
    /// after about `kept` bytes of the reply.
    private func interruptedGet(_ data: [UInt8], kept: Int, to out: URL) throws {
        // A partial and its sidecar as an interrupted run leaves them: first a run that is cut
        // off after the first chunks (the fake server hangs up mid-stream).
        let cut = try FakeServer(greeting: Self.greeting11) { line in
            if line.hasPrefix("CAPS ") { return Array("OK xxh128\n".utf8) }
            if line.hasPrefix("STAT ") { return Array("OK f 0644 \(data.count) \(FakeServer.mtime) r.bin\n".utf8) }
            if line.hasPrefix("GET ") {
                let whole = Self.reply(data, offset: 0, lie: .none)
                // Headers and payloads up to `kept` bytes of data, then hang up.
                return Array(whole.prefix(kept + 200)) + FakeServer.hangUp
            }
            return Array("ERR 400 no\n".utf8)
        }
        let first = try TestSupport.ferry(["get", "\(cut.address)/r.bin", out.path, "--retries", "0", "--timeout", "3"], timeout: 60)
        cut.stop()
        XCTAssertNotEqual(first.status, 0, "the first run was cut off")
        XCTAssertFalse(Files.exists(out))
    }

    /// A fake 1.1 server that answers `HASH` from `hashed` and `GET` from `served` (the same
    /// size and mtime: a file rewritten in place with its old mtime put back in between).
    private func resumeServer(hashed: [UInt8], served: [UInt8]) throws -> FakeServer {
        try FakeServer(greeting: Self.greeting11) { line in
            let f = line.split(separator: " ").map(String.init)
            switch f.first {
            case "CAPS": return Array("OK xxh128\n".utf8)
            case "STAT": return Array("OK f 0644 \(served.count) \(FakeServer.mtime) r.bin\n".utf8)
            case "HASH" where f.count >= 4:
                guard let o = Int(f[2]), let n = Int(f[3]), o + n <= hashed.count else { return Array("ERR 416 range\n".utf8) }
                return Array("OK \(SHA256Hasher.hex(Array(hashed[o..<(o + n)])))\n".utf8)
            case "GET" where f.count >= 4: return Self.reply(served, offset: Int(f[2]) ?? 0, lie: .none)
            default: return Array("ERR 400 no\n".utf8)
            }
        }
    }

    /// An interrupted download resumes on a server with `xxh128`: the kept prefix is checked
    /// with `HASH`, the rest arrives from there, and the whole file's SHA-256 is computed (a
    /// kept prefix and the rest arrive at different times; only it shows they are one version).
    func testAResumedFileIsCheckedWhole() throws {
        let data = try Files.randomBytes(400_000)
        let out = work.appendingPathComponent("r.bin")
        try interruptedGet(data, kept: 150_000, to: out)
        let server = try resumeServer(hashed: data, served: data)
        defer { server.stop() }
        let second = try TestSupport.ferry(["get", "\(server.address)/r.bin", out.path, "--retries", "0", "--json"], timeout: 60)
        XCTAssertEqual(second.status, 0, second.stderr)
        assertSameBytes(Files.read(out), data, "resumed file")
        XCTAssertTrue(server.requests.contains { $0.hasPrefix("HASH r.bin 0 ") }, "the kept prefix is checked: \(server.requests)")
        let get = server.requests.first { $0.hasPrefix("GET ") } ?? ""
        XCTAssertFalse(get.hasPrefix("GET r.bin 0 "), "the rest is fetched from the kept prefix on: \(get)")
        XCTAssertTrue(second.stdout.contains("\"checkedWith\":\"sha-256\""), second.stdout)
    }

    /// The file is rewritten in place between the `HASH`es of the kept prefix and the `GET` of
    /// the rest, with its size and mtime put back, so the validator cannot tell. Every reply
    /// is honest about the bytes it carries (the digest of the rest matches), but the result
    /// would be a splice of two versions: the whole file's SHA-256 refuses it, the partial is
    /// discarded, and the next attempt fetches the new version whole.
    func testAFileRewrittenBetweenTheHashesAndTheGetIsNeverSpliced() throws {
        let old = try Files.randomBytes(400_000)
        var new = old
        new[100] ^= 0xFF
        new[300_000] ^= 0xFF
        let out = work.appendingPathComponent("r.bin")
        try interruptedGet(old, kept: 150_000, to: out)
        let server = try resumeServer(hashed: old, served: new)
        defer { server.stop() }
        let second = try TestSupport.ferry(["get", "\(server.address)/r.bin", out.path, "--retries", "0"], timeout: 60)
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stderr.contains("SHA-256 mismatch"), "the splice is refused: \(second.stderr)")
        XCTAssertTrue(Files.read(out) == new, "what lands under the name is the new version, never old bytes spliced to new ones")
        let gets = server.requests.filter { $0.hasPrefix("GET ") }
        XCTAssertEqual(gets.count, 2, "the rest, then the whole file again: \(gets)")
        XCTAssertTrue(gets.last?.hasPrefix("GET r.bin 0 ") == true, "\(gets)")
    }
}
