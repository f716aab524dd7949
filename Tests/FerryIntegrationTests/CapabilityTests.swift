import FerryClient
import FerryFiles
import FerryProtocol
import FerryServer
import FerryTestSupport
import Foundation
import Logging
import NIOCore
import XCTest

/// Protocol 1.1 (PROTOCOL.md section 3.1): the greeting offers capabilities, `CAPS` enables
/// some per connection, and a client sends an option only once its capability is enabled.
final class CapabilityTests: XCTestCase {
    private var work: URL!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-caps")
        try Files.write(work.appendingPathComponent("a.txt"), "a\n")
    }

    override func tearDown() {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    private func server(token: [UInt8]? = nil) async throws -> InProcessServer {
        var logger = Logger(label: "ferry.test.caps")
        logger.logLevel = .critical
        let configuration = ServerConfiguration(root: work.path, name: "caps", bindHost: "127.0.0.1", port: 0, token: token)
        return InProcessServer(server: try await FerryServer.start(configuration, logger: logger))
    }

    func testServerNegotiatesOncePerConnection() async throws {
        let s = try await server()
        let c = try RawClient(port: s.port)
        let greeting = try c.readLine()
        XCTAssertTrue(greeting.hasSuffix(" auth=none caps=list-kinds,manifest-report,zstd,cdc,xxh128"), greeting)
        // Unknown names are ignored; the answer is in the server's order.
        try c.send("CAPS tls,manifest-report,list-kinds\n")
        XCTAssertEqual(try c.readLine(), "OK list-kinds,manifest-report")
        try c.send("CAPS list-kinds\n")
        XCTAssertEqual(try c.readLine(), "ERR 400 CAPS may be sent only once per connection")
        try c.send("LIST . colour=blue\nSTAT a.txt\n")
        XCTAssertEqual(try c.readLine(), "ERR 400 unknown option colour")
        XCTAssertTrue(try c.readLine().hasPrefix("OK f "), "the connection stays usable")

        let other = try RawClient.greeted(port: s.port)
        try other.send("CAPS tls\n")
        XCTAssertEqual(try other.readLine(), "OK", "nothing in common: a bare OK")
        try other.send("CAPS a,,b\n")
        XCTAssertEqual(try other.readLine().prefix(8), "ERR 400 ", "a malformed CAPS is refused and does not count")
        await s.stop()
    }

    /// With `xxh128` a `GET` trailer carries the XXH3-128 of exactly the bytes its chunks carry
    /// (a range's, not the file's), whether the SHA-256 was known or hashed for the reply, and
    /// for a small file sent in one write and a large one streamed; without it, one field as in 1.0.
    /// MANIFEST trailers never carry it.
    func testTheTrailerCarriesTheDigestOfTheBytesSentOnlyWhenEnabled() async throws {
        let big = (0..<1_000_003).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        try Data(big).write(to: work.appendingPathComponent("big.bin"))
        let s = try await server()
        func trailer(_ raw: RawClient, _ request: String) throws -> (Trailer, [UInt8]) {
            try raw.send(request + "\n")
            XCTAssertTrue(try raw.readLine().hasPrefix("OK "), request)
            var data: [UInt8] = []
            while true {
                let line = try raw.readLine()
                if line.hasPrefix("END ") { return (try Trailer.parse(Substring(line)), data) }
                let header = try ChunkHeader.parse(Substring(line))
                data += try ChunkDecoder.decode(header: header, wire: ByteBuffer(bytes: try raw.readBytes(header.wireLength)))
            }
        }
        let sha = SHA256Hasher.hex(big)
        for enabled in [true, false] {
            let raw = try RawClient.greeted(port: s.port)
            if enabled {
                try raw.send("CAPS xxh128\n")
                XCTAssertEqual(try raw.readLine(), "OK xxh128")
            }
            // Twice: the first hashes the file for its SHA-256, the second finds it in the cache.
            for request in ["GET big.bin 0 *", "GET big.bin 0 *", "GET big.bin 300000 400000", "GET big.bin 1000003 *", "GET a.txt 0 *",
                            "GET a.txt 1 *"] {
                let (t, data) = try trailer(raw, request)
                XCTAssertEqual(t.sha256, request.contains("a.txt") ? SHA256Hasher.hex(Array("a\n".utf8)) : sha, request)
                XCTAssertEqual(t.xxh128, enabled ? XXH128Hasher.hex(data) : nil, "\(request), enabled \(enabled)")
            }
            XCTAssertEqual(try trailer(raw, "GET big.bin 300000 400000").1, Array(big[300_000..<700_000]))
            if enabled {
                XCTAssertEqual(try trailer(raw, "GET big.bin 1000003 *").0.xxh128, "99aa06d3014798d86001c324468d497f", "no bytes")
                XCTAssertEqual(try trailer(raw, "GET big.bin 0 *").0.xxh128, "dbe0cd4f15fc27026fb4080543f32e5b", "the reference value")
            }
            let (m, _) = try trailer(raw, "MANIFEST .")
            XCTAssertNil(m.xxh128, "a MANIFEST trailer has one field")
        }
        await s.stop()
    }

    /// zstd is offered only by a server that may send it, and a zstd chunk reaches only a client
    /// that enabled it: a file fetched with and without the capability arrives whole either way.
    func testZstdIsOfferedWhenItMayBeUsedAndSentOnlyWhenEnabled() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        for (mode, offered) in [(CompressionMode.off, false), (.fixed(.zlib(6)), false), (.fixed(.zstd(3)), true), (.auto, true)] {
            let configuration = ServerConfiguration(root: work.path, name: "caps", bindHost: "127.0.0.1", port: 0, compression: mode)
            XCTAssertEqual(configuration.capabilities.contains(.zstd), offered, "\(mode)")
        }
        let text = String(repeating: "ferry moves text that compresses well. ", count: 40_000)
        try Data(text.utf8).write(to: work.appendingPathComponent("text.txt"))
        let configuration = ServerConfiguration(root: work.path, name: "caps", bindHost: "127.0.0.1", port: 0,
                                                compression: .fixed(.zstd(3)))
        let s = InProcessServer(server: try await FerryServer.start(configuration, logger: logger))
        for capabilities in [ConnectionOptions.implementedCapabilities, [.listKinds]] {
            let raw = try RawClient.greeted(port: s.port)
            if capabilities.contains(.zstd) {
                try raw.send("CAPS zstd\n")
                XCTAssertEqual(try raw.readLine(), "OK zstd")
            }
            try raw.send("GET text.txt 0 *\n")
            XCTAssertTrue(try raw.readLine().hasPrefix("OK "))
            let chunk = try ChunkHeader.parse(Substring(try raw.readLine()))
            XCTAssertEqual(chunk.codec, capabilities.contains(.zstd) ? .zstd : .zlib, "with \(capabilities)")
        }
        await s.stop()
    }

    func testCapsIsAllowedBeforeAuth() async throws {
        let s = try await server(token: Array("s3cret".utf8))
        let c = try RawClient.greeted(port: s.port)
        try c.send("CAPS list-kinds\nLIST .\n")
        XCTAssertEqual(try c.readLine(), "OK list-kinds")
        XCTAssertEqual(try c.readLine().prefix(8), "ERR 401 ")
        await s.stop()
    }

    func testClientEnablesWhatItImplementsAndSendsOptionsOnlyThen() async throws {
        let s = try await server()
        let enabled = try await FerryConnection.with(Endpoint(host: "127.0.0.1", port: s.port)) { c in
            _ = try await c.list(.root, kinds: true)
            return c.enabled
        }
        XCTAssertEqual(enabled, [.listKinds, .manifestReport, .zstd, .cdc, .xxh128])
        let none = try await FerryConnection.with(Endpoint(host: "127.0.0.1", port: s.port),
                                                  options: ConnectionOptions(capabilities: [])) { c in c.enabled }
        XCTAssertEqual(none, [])
        await s.stop()

        // What goes on the wire, seen by a scripted server that offers only list-kinds.
        let listing = Array("OK 1\nf 0644 2 1700000000.000000000 a.txt\n".utf8)
        let fake = try FakeServer(greeting: "FERRY 1 name=fake id=0123456789abcdef0123456789abcdef auth=none caps=list-kinds,tls") { line in
            line.hasPrefix("CAPS ") ? Array("OK list-kinds\n".utf8) : line.hasPrefix("LIST ") ? listing : nil
        }
        defer { fake.stop() }
        let endpoint = Endpoint(host: "127.0.0.1", port: fake.port)
        _ = try await FerryConnection.with(endpoint) { c in try await c.list(.root, kinds: true) }
        _ = try await FerryConnection.with(endpoint, options: ConnectionOptions(capabilities: [])) { c in
            try await c.list(.root, kinds: true)
        }
        XCTAssertEqual(fake.requests, ["CAPS list-kinds", "LIST . kinds=yes", "LIST ."],
                       "CAPS names only what the server offers; without list-kinds enabled no kinds= and no fallback")
    }

    func testClientRefusesACapabilityItDidNotAskFor() async throws {
        let fake = try FakeServer(greeting: "FERRY 1 name=fake id=0123456789abcdef0123456789abcdef auth=none caps=list-kinds,zstd") { _ in
            Array("OK list-kinds,zstd\n".utf8)
        }
        defer { fake.stop() }
        do {
            _ = try await FerryConnection.with(Endpoint(host: "127.0.0.1", port: fake.port),
                                               options: ConnectionOptions(capabilities: [.listKinds])) { c in c.enabled }
            XCTFail("a server enabling more than was asked was accepted")
        } catch ClientError.protocolViolation(_, let why) {
            XCTAssertTrue(why.contains("CAPS"), why)
        }
    }

    /// CRLF line ends from a server are accepted (lenient), and typed replies read the same.
    func testRepliesEndingInCRLFAreRead() async throws {
        let fake = try FakeServer(greeting: "FERRY 1 name=fake id=0123456789abcdef0123456789abcdef auth=none caps=list-kinds\r") { line in
            line.hasPrefix("CAPS ") ? Array("OK list-kinds\r\n".utf8)
                : Array("OK 1\r\no 0644 0 1700000000.000000000 pipe p\r\n".utf8)
        }
        defer { fake.stop() }
        let entries = try await FerryConnection.with(Endpoint(host: "127.0.0.1", port: fake.port)) { c in
            XCTAssertEqual(c.enabled, [.listKinds])
            return try await c.list(.root, kinds: true)
        }
        XCTAssertEqual(entries.map(\.path.wire), ["pipe"])
    }
}
