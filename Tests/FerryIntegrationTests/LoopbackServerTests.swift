#if canImport(Glibc)
import Glibc
#endif
import FerryClient
import FerryFiles
import FerryProtocol
import FerryServer
import FerryTestSupport
import Foundation
import Logging
import NIOCore
import XCTest

/// A real `FerryServer` and a real client (raw sockets or `FerryClient`) in one process, on
/// 127.0.0.1. The served tree is the fixture sample plus hostile symlinks and a sibling
/// directory whose name shares the served directory's prefix (`data` vs `data2`).
final class LoopbackServerTests: XCTestCase {
    var work: URL!
    var data: URL!
    var server: InProcessServer!
    var randomBytes: [UInt8] = []
    var textBytes: [UInt8] = []
    let secret = "TOP-SECRET-\(UUID().uuidString)"

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-loopback")
        let sample = try TestSupport.materializeFixtures(in: work)
        data = work.appendingPathComponent("data")
        try FileManager.default.moveItem(at: sample, to: data)
        // The string-prefix trap: a sibling whose path starts with the served path.
        try Files.write(work.appendingPathComponent("data2/secret.txt"), secret)
        try Files.write(work.appendingPathComponent("outside.txt"), secret)
        try Files.symlink(data.appendingPathComponent("escape-abs"), to: "/etc")
        try Files.symlink(data.appendingPathComponent("escape-sibling"), to: "../data2")
        try Files.symlink(data.appendingPathComponent("escape-file"), to: "../data2/secret.txt")
        try Files.symlink(data.appendingPathComponent("docs/escape-up"), to: "../../outside.txt")
        try Files.symlink(data.appendingPathComponent("escape-abs-sibling"), to: work.appendingPathComponent("data2").path)
        try Files.symlink(data.appendingPathComponent("inside-dir"), to: "docs/guides")
        randomBytes = try Files.randomBytes(1_000_000 + 123)
        try Files.write(data.appendingPathComponent("big.bin"), randomBytes)
        var text: [UInt8] = []
        var i = 0
        while text.count < 700_000 {
            text += Array("line \(i) of a compressible log: GET /photos/2024 200 OK ferry sync\n".utf8)
            i += 1
        }
        textBytes = text
        try Files.write(data.appendingPathComponent("big.txt"), textBytes)
        let root = data!
        server = try blockingAwait { try await InProcessServer.start(root: root) }
    }

    override func tearDownWithError() throws {
        if let server { try blockingAwait { await server.stop() } }
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    private func connect() throws -> RawClient {
        try RawClient.greeted(port: server.port)
    }

    /// Asserts the next reply is an error with `code` and returns its line.
    @discardableResult
    private func expectError(_ c: RawClient, _ code: Int, _ context: String,
                             file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let reply = try c.readLine()
        XCTAssertTrue(reply.hasPrefix("ERR \(code) "), "\(context): expected ERR \(code), got '\(reply.prefix(200))'", file: file, line: line)
        return reply
    }

    /// The connection still answers a normal request correctly.
    private func assertUsable(_ c: RawClient, _ context: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try c.send("STAT hello%20world.txt\n")
        let reply = try c.readLine()
        XCTAssertTrue(reply.hasPrefix("OK f 0644 12 ") && reply.hasSuffix(" hello%20world.txt"),
                      "after \(context): connection not usable, got '\(reply.prefix(200))'", file: file, line: line)
    }

    // MARK: - Greeting, LIST, STAT, GET

    func testGreetingNamesVersionNameIdAndAuth() throws {
        let c = try RawClient(port: server.port)
        let greeting = try c.readLine()
        let fields = greeting.split(separator: " ")
        XCTAssertEqual(fields.first, "FERRY")
        XCTAssertEqual(fields.dropFirst().first, "1")
        XCTAssertTrue(fields.contains("name=loopback"), greeting)
        XCTAssertTrue(fields.contains("auth=none"), greeting)
        let id = fields.first { $0.hasPrefix("id=") }.map { $0.dropFirst(3) }
        XCTAssertEqual(id?.count, 32, greeting)
        XCTAssertTrue(id.map { $0.allSatisfy { "0123456789abcdef".contains($0) } } ?? false, greeting)
        XCTAssertEqual(String(id ?? ""), server.server.id)
        // A second connection gets the same instance id.
        let d = try RawClient(port: server.port)
        XCTAssertEqual(try d.readLine(), greeting)
        try c.send("QUIT\n")
        XCTAssertEqual(try c.readLine(), "OK bye")
        XCTAssertTrue(c.isClosed(within: 5), "QUIT must close the connection")
    }

    func testListStatAndGetRoundTrip() throws {
        let c = try connect()
        try c.send("LIST .\n")
        let head = try c.readLine()
        XCTAssertTrue(head.hasPrefix("OK "), head)
        let count = Int(head.dropFirst(3)) ?? -1
        var lines: [String] = []
        for _ in 0..<max(0, count) { lines.append(try c.readLine()) }
        let names = lines.map { $0.split(separator: " ")[4] }
        let expected = Set(try FileManager.default.contentsOfDirectory(atPath: data.path).map { PercentEncoding.encode($0) })
        XCTAssertEqual(Set(names.map(String.init)), expected)
        let raw = names.map { PercentEncoding.decode($0) ?? [] }
        XCTAssertEqual(raw, raw.sorted { $0.lexicographicallyPrecedes($1) }, "LIST must be sorted by name bytes")
        XCTAssertTrue(lines.contains { $0.hasPrefix("f 0644 12 ") && $0.hasSuffix(" hello%20world.txt") }, lines.joined(separator: "\n"))
        XCTAssertTrue(lines.contains { $0.hasPrefix("f 0644 0 ") && $0.hasSuffix(" empty.txt") })
        XCTAssertTrue(lines.contains { $0.hasPrefix("d ") && $0.hasSuffix(" empty-dir") })
        XCTAssertTrue(lines.contains { $0.hasSuffix(" caf%C3%A9.txt") })
        XCTAssertTrue(lines.contains { $0.hasPrefix("l ") && $0.hasSuffix(" escape-abs /etc") }, "symlinks are listed, not followed")

        try c.send("STAT docs/build.sh\n")
        let stat = try c.readLine()
        XCTAssertTrue(stat.hasPrefix("OK f 0755 23 "), stat)
        XCTAssertTrue(stat.hasSuffix(" docs/build.sh"), stat)
        let entry = try Entry(line: Substring(stat).dropFirst(3))
        XCTAssertEqual(Int(entry.mtime.seconds), Files.mtime(data.appendingPathComponent("docs/build.sh")).0)
        XCTAssertEqual(Int(entry.mtime.nanoseconds), Files.mtime(data.appendingPathComponent("docs/build.sh")).1)

        // Incompressible data: every chunk stored, checksums right, whole-file SHA-256 at the end.
        try c.send("GET big.bin 0 *\n")
        let ok = try c.readLine()
        XCTAssertTrue(ok.hasPrefix("OK \(randomBytes.count) "), ok)
        let stream = try c.readStream()
        XCTAssertNil(stream.error)
        XCTAssertEqual(stream.end, SHA256Hasher.hex(randomBytes))
        assertSameBytes(try stream.decoded(), randomBytes)
        XCTAssertGreaterThan(stream.chunks.count, 1)
        var next: Int64 = 0
        for (h, wire) in stream.chunks {
            XCTAssertEqual(h.offset, next, "chunks must be contiguous")
            XCTAssertEqual(h.codec, .stored, "random data must travel stored")
            XCTAssertLessThanOrEqual(h.rawLength, FerryLimits.defaultChunkSize)
            XCTAssertEqual(wire.count, h.rawLength)
            XCTAssertEqual(CRC32.checksum(Array(randomBytes[Int(h.offset)..<Int(h.offset) + h.rawLength])), h.crc32)
            next += Int64(h.rawLength)
        }

        // Compressible data: zlib chunks that really shrink, each independently decodable.
        try c.send("GET big.txt 0 *\n")
        XCTAssertTrue(try c.readLine().hasPrefix("OK \(textBytes.count) "))
        let text = try c.readStream()
        XCTAssertEqual(text.end, SHA256Hasher.hex(textBytes))
        assertSameBytes(try text.decoded(), textBytes)
        for (h, wire) in text.chunks {
            XCTAssertEqual(h.codec, .zlib)
            XCTAssertLessThan(wire.count, h.rawLength / 2, "text must compress")
            var b = ByteBuffer()
            b.writeBytes(wire)
            XCTAssertEqual(try ChunkDecoder.decode(header: h, wire: b),
                           Array(textBytes[Int(h.offset)..<Int(h.offset) + h.rawLength]), "chunk at \(h.offset) decodes alone")
        }

        // A range: only those bytes, but END still carries the whole file's SHA-256.
        try c.send("GET big.bin 300000 100000\n")
        XCTAssertTrue(try c.readLine().hasPrefix("OK "))
        let range = try c.readStream()
        XCTAssertEqual(range.chunks.first?.0.offset, 300_000)
        assertSameBytes(try range.decoded(), Array(randomBytes[300_000..<400_000]))
        XCTAssertEqual(range.end, SHA256Hasher.hex(randomBytes))

        // A range reaching past the end is cut; offset == size is just the trailer.
        try c.send("GET big.bin \(randomBytes.count - 10) 1000\n")
        XCTAssertTrue(try c.readLine().hasPrefix("OK "))
        assertSameBytes(try c.readStream().decoded(), Array(randomBytes.suffix(10)))
        try c.send("GET big.bin \(randomBytes.count) *\n")
        XCTAssertTrue(try c.readLine().hasPrefix("OK "))
        let tail = try c.readStream()
        XCTAssertTrue(tail.chunks.isEmpty)
        XCTAssertEqual(tail.end, SHA256Hasher.hex(randomBytes))
        try c.send("GET big.bin \(randomBytes.count + 1) *\n")
        try expectError(c, 416, "offset past the end")

        // Validators: the current identity is accepted, another one gets 409 with the identity.
        let info = try POSIX.lstat(data.appendingPathComponent("big.bin").path)
        try c.send("GET big.bin 0 10 \(info.size),\(info.mtime)\n")
        XCTAssertTrue(try c.readLine().hasPrefix("OK "))
        assertSameBytes(try c.readStream().decoded(), Array(randomBytes.prefix(10)))
        try c.send("GET big.bin 0 * \(info.size + 1),\(info.mtime)\n")
        let changed = try expectError(c, 409, "stale validator")
        XCTAssertTrue(changed.hasSuffix("\(info.size),\(info.mtime)"), changed)

        // HASH and BLOCKS agree with the data.
        try c.send("HASH big.bin 1000 5000\n")
        XCTAssertEqual(try c.readLine(), "OK " + SHA256Hasher.hex(Array(randomBytes[1000..<6000])))
        try c.send("BLOCKS big.bin\n")
        let blocks = try c.readLine().split(separator: " ")
        XCTAssertEqual(blocks.count, 5)
        XCTAssertEqual(blocks.dropFirst(3).first, "65536", "64 KiB blocks for a 1 MB file (PROTOCOL.md 8.2)")
        let n = Int(blocks.last ?? "") ?? 0
        XCTAssertEqual(n, (randomBytes.count + 65535) / 65536)
        for i in 0..<n {
            let slice = Array(randomBytes[(i * 65536)..<min(randomBytes.count, (i + 1) * 65536)])
            XCTAssertEqual(try c.readLine(), SHA256Hasher.hex(slice), "block \(i)")
        }

        // Wrong types.
        try c.send("GET docs 0 *\n")
        try expectError(c, 422, "GET of a directory")
        try c.send("LIST empty.txt\n")
        try expectError(c, 422, "LIST of a file")
        try assertUsable(c, "the round trip")
    }

    func testClientLibraryListsStatsAndDownloadsWithVerification() throws {
        let port = server.port
        let out = work.appendingPathComponent("downloaded.txt")
        let (names, entry, manifest, result) = try blockingAwait {
            let endpoint = Endpoint(host: "127.0.0.1", port: port)
            let (names, entry, manifest) = try await FerryConnection.with(endpoint) { c in
                let names = try await c.list(.root).map(\.path.description)
                let entry = try await c.stat(try RemotePath(validating: "café.txt"))
                let manifest = try await c.manifest(.root)
                await c.quit()
                return (names, entry, manifest)
            }
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let result = try await Downloader(endpoint: endpoint, options: .init(), logger: logger)
                .get(try RemotePath(validating: "big.txt"), to: out.path)
            return (names, entry, manifest, result)
        }
        XCTAssertTrue(names.contains("café.txt"))
        XCTAssertEqual(entry.type, .file)
        XCTAssertEqual(entry.size, 14)
        assertSameBytes(Files.read(out), textBytes)
        XCTAssertEqual(result.sha256, SHA256Hasher.hex(textBytes))
        XCTAssertLessThan(result.wireBytes, Int64(textBytes.count / 2), "text must travel compressed")
        XCTAssertFalse(Files.exists(work.appendingPathComponent(".downloaded.txt.ferry-partial")), "no partial left behind")

        // The manifest: sorted, hashed, symlinks as symlinks, nothing from outside the root.
        let paths = manifest.entries.map(\.path.description)
        XCTAssertEqual(manifest.entries.map(\.path), manifest.entries.map(\.path).sorted())
        XCTAssertTrue(paths.contains("docs/guides/README.md"))
        XCTAssertTrue(paths.contains("empty-dir"))
        XCTAssertFalse(paths.contains { $0.contains("secret") }, "\(paths)")
        let link = manifest.entries.first { $0.path.description == "escape-sibling" }
        XCTAssertEqual(link?.type, .symlink)
        XCTAssertEqual(link?.target, Array("../data2".utf8))
        let big = manifest.entries.first { $0.path.description == "big.bin" }
        XCTAssertEqual(big?.sha256, SHA256Hasher.hex(randomBytes))
        // `ferry manifest DIR` prints exactly what the server sends.
        let local = try TestSupport.ferry(["manifest", data.path], check: true)
        XCTAssertEqual(local.stdout, manifest.text)
    }

    // MARK: - Hostile paths

    func testHostilePathsAreRefusedAndTheConnectionStaysUsable() throws {
        let c = try connect()
        // (request line, expected code). 421 = path refused, 400 = malformed.
        let cases: [(String, Int)] = [
            ("LIST ..", 421),
            ("STAT ../data2/secret.txt", 421),
            ("GET ../data2/secret.txt 0 *", 421),
            ("GET a/../../x 0 *", 421),
            ("GET docs/../../outside.txt 0 *", 421),
            ("GET /etc/passwd 0 *", 421),
            ("STAT /", 421),
            ("LIST %2E%2E", 421),
            ("GET %2E%2E/data2/secret.txt 0 *", 421),
            ("GET docs%00/x 0 *", 421),
            ("STAT empty.txt%00", 421),
            ("GET ..%2Fdata2%2Fsecret.txt 0 *", 400),
            ("STAT docs//build.sh", 421),
            ("STAT docs/./build.sh", 421),
            // Symlinks that leave the root: absolute, into the sibling `data2`, up and out.
            ("LIST escape-abs", 421),
            ("GET escape-abs/passwd 0 *", 421),
            ("LIST escape-sibling", 421),
            ("GET escape-sibling/secret.txt 0 *", 421),
            ("GET escape-file 0 *", 421),
            ("GET docs/escape-up 0 *", 421),
            ("GET escape-abs-sibling/secret.txt 0 *", 421),
            ("HASH escape-file 0 1", 421),
            ("BLOCKS escape-file", 421),
            ("MANIFEST escape-sibling", 421),
            ("MANIFEST escape-abs", 421),
            ("GET " + String(repeating: "n", count: 256) + " 0 *", 421),
        ]
        for (request, code) in cases {
            try c.send(request + "\n")
            let reply = try expectError(c, code, request)
            XCTAssertFalse(reply.contains(secret))
            try assertUsable(c, request)
        }
        // Raw control bytes (a NUL, a lone CR) in the line itself.
        for raw: [UInt8] in [Array("STAT docs".utf8) + [0] + Array("x\n".utf8), Array("STAT a\rb\n".utf8)] {
            try c.send(bytes: raw)
            try expectError(c, 400, "control byte in \(raw)")
            try assertUsable(c, "a control byte")
        }
        // Over-long lines: 413 once the LF arrives, even when sent in pieces.
        let limit = FerryLimits.maxRequestLine
        try c.send("STAT " + String(repeating: "x", count: limit + 1000) + "\n")
        try expectError(c, 413, "over-long line")
        try assertUsable(c, "an over-long line")
        let piece = limit / 2 + 100
        try c.send(String(repeating: "y", count: piece))
        try c.send(String(repeating: "y", count: piece))
        try c.send(String(repeating: "y", count: piece) + "\n")
        try expectError(c, 413, "over-long line in pieces")
        try assertUsable(c, "an over-long line sent in pieces")
        // An in-tree symlink is followed.
        try c.send("GET inside-dir/README.md 0 *\n")
        XCTAssertTrue(try c.readLine().hasPrefix("OK 61 "))
        assertSameBytes(try c.readStream().decoded(), Files.read(data.appendingPathComponent("docs/guides/README.md")))
        try c.send("STAT docs/hello-link\n")
        XCTAssertTrue(try c.readLine().hasSuffix(" docs/hello-link ../hello%20world.txt"))
        try c.send("GET docs/hello-link 0 *\n")
        XCTAssertTrue(try c.readLine().hasPrefix("OK 12 "))
        assertSameBytes(try c.readStream().decoded(), Files.read(data.appendingPathComponent("hello world.txt")))
    }

    func testRequestLineLimitIsExact() throws {
        let c = try connect()
        // "STAT " + path + LF = the limit exactly: accepted (and simply not found).
        let limit = FerryLimits.maxRequestLine
        func path(_ length: Int) -> String {
            var parts: [String] = []
            var left = length
            while left > 0 {
                let n = min(200, left)
                parts.append(String(repeating: "p", count: n))
                left -= n + 1
            }
            return String(parts.joined(separator: "/").prefix(length))
        }
        // A 4096-byte path in 200-byte components percent-encodes to three times its size
        // ("%70" per "p"): still within the limit, the longest a client ever needs to send.
        let longest = path(4096).replacingOccurrences(of: "p", with: "%70")
        XCTAssertLessThan(("GET " + longest + " 18446744073709551615 * 18446744073709551615,9999999999.999999999\n").utf8.count, limit)
        try c.send("STAT " + longest + "\n")
        try expectError(c, 404, "a maximal percent-encoded path")
        let exact = path(limit - 6)
        XCTAssertEqual(("STAT " + exact + "\n").utf8.count, limit)
        try c.send("STAT " + exact + "\n")
        // Accepted as a line; the path itself is over the 4096-byte limit, which is its own error.
        let atLimit = try c.readLine()
        XCTAssertTrue(atLimit.hasPrefix("ERR 4") && !atLimit.hasPrefix("ERR 413"), "a line of exactly the limit: \(atLimit.prefix(120))")
        let over = path(limit - 5)
        try c.send("STAT " + over + "\n")
        try expectError(c, 413, "a line one byte over the limit")
        try assertUsable(c, "the limit checks")
    }

    func testMissingFileIsAnErrorDistinctFromAnEmptyFile() throws {
        let c = try connect()
        try c.send("STAT no-such-file\n")
        try expectError(c, 404, "STAT missing")
        try c.send("GET no-such-file 0 *\n")
        try expectError(c, 404, "GET missing")
        try c.send("GET docs/no/such 0 *\n")
        try expectError(c, 404, "GET missing below a directory")
        try c.send("GET empty.txt/x 0 *\n")
        try expectError(c, 404, "GET below a file")
        try c.send("STAT empty.txt\n")
        XCTAssertTrue(try c.readLine().hasPrefix("OK f 0644 0 "))
        try c.send("GET empty.txt 0 *\n")
        let ok = try c.readLine()
        XCTAssertTrue(ok.hasPrefix("OK 0 "), ok)
        let stream = try c.readStream()
        XCTAssertTrue(stream.chunks.isEmpty)
        XCTAssertNil(stream.error)
        XCTAssertEqual(stream.end, SHA256Hasher.hex([]))
        try assertUsable(c, "missing and empty files")
    }

    // MARK: - Pipelining, garbage, concurrency

    func testPipelinedRequestsAreAnsweredInOrder() throws {
        let c = try connect()
        enum Expect { case stat(String), missing, get([UInt8]), list(Int), malformed }
        let small = ["hello%20world.txt": "hello world.txt", "caf%C3%A9.txt": "café.txt", "docs/build.sh": "docs/build.sh",
                     "empty.txt": "empty.txt", "docs/guides/README.md": "docs/guides/README.md"]
        var requests: [String] = []
        var expects: [Expect] = []
        var rng = SystemRandomNumberGenerator()
        for i in 0..<60 {
            switch Int.random(in: 0..<6, using: &rng) {
            case 0:
                let (wire, _) = small.randomElement(using: &rng)!
                requests.append("STAT \(wire)"); expects.append(.stat(wire))
            case 1:
                requests.append("STAT missing-\(i)"); expects.append(.missing)
            case 2:
                let (wire, local) = small.randomElement(using: &rng)!
                requests.append("GET \(wire) 0 *"); expects.append(.get(Files.read(data.appendingPathComponent(local)) ?? []))
            case 3:
                requests.append("GET big.bin 0 *"); expects.append(.get(randomBytes))
            case 4:
                requests.append("LIST docs"); expects.append(.list(Files.names(data.appendingPathComponent("docs")).count))
            default:
                requests.append("BOGUS \(i)"); expects.append(.malformed)
            }
        }
        // All in one write.
        try c.send(requests.map { $0 + "\n" }.joined())
        for (request, expect) in zip(requests, expects) {
            switch expect {
            case .stat(let wire):
                let line = try c.readLine()
                XCTAssertTrue(line.hasPrefix("OK f ") && line.hasSuffix(" " + wire), "\(request): \(line.prefix(100))")
            case .missing:
                try expectError(c, 404, request)
            case .get(let bytes):
                let line = try c.readLine()
                XCTAssertTrue(line.hasPrefix("OK \(bytes.count) "), "\(request): \(line.prefix(100))")
                let s = try c.readStream()
                assertSameBytes(try s.decoded(), bytes, request)
                XCTAssertEqual(s.end, SHA256Hasher.hex(bytes), request)
            case .list(let n):
                XCTAssertEqual(try c.readLine(), "OK \(n)", request)
                for _ in 0..<n { _ = try c.readLine() }
            case .malformed:
                try expectError(c, 400, request)
            }
        }
        try assertUsable(c, "60 pipelined requests")
    }

    func testGarbageLinesGetErrorsAndTheConnectionStaysUsable() throws {
        let c = try connect()
        let garbage: [[UInt8]] = [
            Array("\n".utf8),
            Array("   \n".utf8),
            Array("LIST\n".utf8),
            Array("LIST  .\n".utf8),
            Array("LIST . extra\n".utf8),
            Array("GET hello%20world.txt\n".utf8),
            Array("GET hello%20world.txt 0 abc\n".utf8),
            Array("GET hello%20world.txt -1 *\n".utf8),
            Array("GET hello%20world.txt +1 *\n".utf8),
            Array("GET hello%20world.txt 99999999999999999999 *\n".utf8),
            Array("GET hello%20world.txt 0 * 12,notatime\n".utf8),
            Array("HASH hello%20world.txt 0\n".utf8),
            Array("BLOCKS hello%20world.txt 1000\n".utf8),
            Array("MANIFEST . hashes=maybe\n".utf8),
            Array("AUTH xyz\n".utf8),
            Array("STAT caf%C3%A9.txt%\n".utf8),
            Array("STAT caf%ZZ.txt\n".utf8),
            Array("HELO ferry\n".utf8),
            Array("GET / HTTP/1.1\n".utf8),
            [0xFF, 0xFE, 0x00, 0x01, 0x0A],
            Array("STAT caf".utf8) + [0xC3, 0x28] + Array(".txt\n".utf8),
            (0..<200).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }.filter { $0 != 0x0A } + [0x0A],
        ]
        for line in garbage {
            try c.send(bytes: line)
            let reply = try c.readLine()
            XCTAssertTrue(reply.hasPrefix("ERR 4"), "garbage \(line.prefix(40)): \(reply.prefix(120))")
            try assertUsable(c, "garbage \(line.prefix(40))")
        }
        // Verbs are case-insensitive and CRLF is accepted.
        try c.send("list docs/guides\r\n")
        XCTAssertEqual(try c.readLine(), "OK 1")
        XCTAssertTrue(try c.readLine().hasSuffix(" README.md"))
        try c.send("sTaT empty.txt\r\n")
        XCTAssertTrue(try c.readLine().hasPrefix("OK f 0644 0 "))
    }

    func testManyClientsAtOnce() throws {
        let port = server.port
        let expected = randomBytes
        let text = textBytes
        let failures = Locked<[String]>([])
        let clients = 24
        let group = DispatchGroup()
        for i in 0..<clients {
            group.enter()
            Thread {
                defer { group.leave() }
                do {
                    let c = try RawClient(port: port, timeout: 60)
                    guard try c.readLine().hasPrefix("FERRY 1 ") else { throw IntegrationFailure("no greeting") }
                    // Two pipelined fetches and a listing per client.
                    try c.send("GET big.bin 0 *\nLIST .\nGET big.txt 0 *\n")
                    guard try c.readLine().hasPrefix("OK ") else { throw IntegrationFailure("GET big.bin refused") }
                    let s = try c.readStream()
                    guard try s.decoded() == expected, s.end == SHA256Hasher.hex(expected) else { throw IntegrationFailure("big.bin differs") }
                    let head = try c.readLine()
                    for _ in 0..<(Int(head.dropFirst(3)) ?? 0) { _ = try c.readLine() }
                    guard try c.readLine().hasPrefix("OK ") else { throw IntegrationFailure("GET big.txt refused") }
                    guard try c.readStream().decoded() == text else { throw IntegrationFailure("big.txt differs") }
                } catch {
                    failures.withLockedValue { $0.append("client \(i): \(error)") }
                }
            }.start()
        }
        // Meanwhile the client library fetches too.
        let out = work.appendingPathComponent("lib")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let shas = try blockingAwait {
            try await withThrowingTaskGroup(of: String.self) { tasks in
                for i in 0..<6 {
                    tasks.addTask {
                        var logger = Logger(label: "test")
                        logger.logLevel = .critical
                        return try await Downloader(endpoint: Endpoint(host: "127.0.0.1", port: port), options: .init(), logger: logger)
                            .get(try RemotePath(validating: "big.bin"), to: out.appendingPathComponent("copy-\(i)").path).sha256
                    }
                }
                var all: [String] = []
                for try await sha in tasks { all.append(sha) }
                return all
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 120), .success, "clients did not finish")
        XCTAssertEqual(failures.withLockedValue { $0 }, [])
        XCTAssertEqual(shas, Array(repeating: SHA256Hasher.hex(expected), count: 6))
        for i in 0..<6 { assertSameBytes(Files.read(out.appendingPathComponent("copy-\(i)")), expected) }
        // The server is still fine afterwards.
        try assertUsable(try connect(), "many clients")
    }

    func testConnectionLimitAnswers429AndAdmitsAgainLater() throws {
        let root = data!
        let limited = try blockingAwait { try await InProcessServer.start(root: root, maxConnections: 2) }
        defer { _ = try? blockingAwait { await limited.stop() } }
        let a = try RawClient(port: limited.port)
        let b = try RawClient(port: limited.port)
        XCTAssertTrue(try a.readLine().hasPrefix("FERRY 1 "))
        XCTAssertTrue(try b.readLine().hasPrefix("FERRY 1 "))
        let c = try RawClient(port: limited.port)
        let refused = try c.readLine()
        XCTAssertTrue(refused.hasPrefix("ERR 429 "), refused)
        XCTAssertTrue(c.isClosed(within: 5), "a refused connection is closed")
        try a.send("QUIT\n")
        XCTAssertEqual(try a.readLine(), "OK bye")
        XCTAssertTrue(a.isClosed(within: 5))
        // A slot is free again (the server notices the close asynchronously).
        var admitted = false
        for _ in 0..<50 where !admitted {
            let d = try RawClient(port: limited.port)
            if try d.readLine().hasPrefix("FERRY 1 ") { admitted = true } else { usleep(50_000) }
        }
        XCTAssertTrue(admitted, "a connection must be admitted once another closed")
    }
}
