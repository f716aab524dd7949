#if canImport(Glibc)
import Glibc
#endif
import FerryClient
import FerryFiles
import FerryProtocol
@testable import FerryServer
import FerryTestSupport
import Foundation
import XCTest

/// What docs/PROTOCOL.md now says where it was silent or wrong (issue 13, part 5), checked on
/// the wire: a raw client against an in-process server, the reference client against a fake
/// server, and the token file through the real binary.
final class ProtocolContractTests: XCTestCase {
    var work: URL!
    var data: URL!
    var server: InProcessServer!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-contract")
        let sample = try TestSupport.materializeFixtures(in: work)
        data = work.appendingPathComponent("data")
        try FileManager.default.moveItem(at: sample, to: data)
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

    private func ask(_ c: RawClient, _ request: String) throws -> String {
        try c.send(request + "\n")
        return try c.readLine()
    }

    private func assertCode(_ c: RawClient, _ request: String, _ code: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let reply = try ask(c, request)
        XCTAssertTrue(reply.hasPrefix("ERR \(code) "), "\(request.prefix(60)): expected ERR \(code), got '\(reply.prefix(120))'",
                      file: file, line: line)
    }

    private static let emptySHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    func testBlockSizeAndCountErrors() throws {
        // Sparse: one block more than the count limit at 4 KiB blocks; nothing is hashed.
        let sparse = data.appendingPathComponent("sparse.bin")
        XCTAssertTrue(FileManager.default.createFile(atPath: sparse.path, contents: nil))
        XCTAssertEqual(truncate(sparse.path, off_t(4096 * FerryLimits.maxBlockCount + 1)), 0)
        let c = try connect()
        try assertCode(c, "BLOCKS hello%20world.txt 5000", 400)
        try assertCode(c, "BLOCKS hello%20world.txt 2048", 400)
        try assertCode(c, "BLOCKS hello%20world.txt 134217728", 400)
        try assertCode(c, "BLOCKS sparse.bin 4096", 413)
        let ok = try ask(c, "BLOCKS hello%20world.txt 4096")
        XCTAssertTrue(ok.hasPrefix("OK 12 ") && ok.hasSuffix(" 4096 1"), ok)
        XCTAssertEqual(try c.readLine().count, 64)
    }

    func testEmptyFileRangesStatOfTheRootAndBlocksOfAnEmptyFile() throws {
        let c = try connect()
        let root = try ask(c, "STAT .")
        XCTAssertTrue(root.hasPrefix("OK d ") && root.hasSuffix(" ."), root)
        let entry = try Entry(line: Substring(root).dropFirst(3))
        XCTAssertTrue(entry.path.isRoot)
        XCTAssertEqual(entry.size, 0)

        XCTAssertEqual(try ask(c, "HASH hello%20world.txt 12 0"), "OK \(Self.emptySHA)", "an empty range at the end")
        XCTAssertEqual(try ask(c, "HASH empty.txt 0 0"), "OK \(Self.emptySHA)")
        try assertCode(c, "HASH hello%20world.txt 13 0", 416)
        try assertCode(c, "HASH hello%20world.txt 0 13", 416)

        // Pipelined: the empty BLOCKS reply has no hash lines, so STAT's reply follows at once.
        try c.send("BLOCKS empty.txt\nBLOCKS empty.txt 4096\nSTAT empty.txt\n")
        let blocks = try c.readLine()
        XCTAssertTrue(blocks.hasPrefix("OK 0 ") && blocks.hasSuffix(" 65536 0"), blocks)
        let explicit = try c.readLine()
        XCTAssertTrue(explicit.hasPrefix("OK 0 ") && explicit.hasSuffix(" 4096 0"), explicit)
        XCTAssertTrue(try c.readLine().hasPrefix("OK f 0644 0 "))
    }

    func testPathErrorCodesLeadingZerosAndUnknownOptions() throws {
        let c = try connect()
        try assertCode(c, "STAT docs%2Fguides", 400)
        try assertCode(c, "STAT docs%00", 421)
        try assertCode(c, "STAT docs//guides", 421)
        try assertCode(c, "STAT docs/", 421)
        try assertCode(c, "STAT docs/.", 421)
        try assertCode(c, "STAT ./docs", 421)
        try assertCode(c, "STAT " + String(repeating: "n", count: 256), 421)
        try assertCode(c, "STAT " + Array(repeating: String(repeating: "n", count: 255), count: 17).joined(separator: "/"), 421)
        try assertCode(c, "STAT " + String(repeating: "n", count: 255), 404)

        XCTAssertEqual(try ask(c, "HASH hello%20world.txt 0006 05"), try ask(c, "HASH hello%20world.txt 6 5"))

        try assertCode(c, "LIST . colour=blue", 400)
        try assertCode(c, "MANIFEST . hashes=no future=1", 400)
        try assertCode(c, "GET hello%20world.txt 0 * 12,1.000000000 extra", 400)
        let usable = try ask(c, "STAT hello%20world.txt")
        XCTAssertTrue(usable.hasPrefix("OK f 0644 12 "), "the connection stays usable: \(usable)")
    }

    func testAbsoluteSymlinkIntoTheRootIsRefused() throws {
        try Files.symlink(data.appendingPathComponent("abs-inside"), to: data.appendingPathComponent("docs").path)
        try Files.symlink(data.appendingPathComponent("rel-inside"), to: "docs")
        let c = try connect()
        try assertCode(c, "LIST abs-inside", 421)
        try assertCode(c, "STAT abs-inside/build.sh", 421)
        let link = try ask(c, "STAT abs-inside")
        XCTAssertTrue(link.hasPrefix("OK l 0777 ") && link.hasSuffix(" abs-inside " + PercentEncoding.encode(data.appendingPathComponent("docs").path)),
                      "a final symlink is described, not followed: \(link)")
        XCTAssertTrue(try ask(c, "LIST rel-inside").hasPrefix("OK "), "the same place named relatively is served")
    }

    func testUnencodedUTF8AndCRLFRequestsGetEncodedLFReplies() throws {
        let c = try connect()
        try c.send(bytes: Array("STAT caf".utf8) + [0xC3, 0x0A])
        XCTAssertTrue(try c.readLine().hasPrefix("ERR 400 "), "a request that is not UTF-8")
        try c.send(bytes: Array("STAT café.txt\r\nSTAT caf%c3%a9.txt\r\nQUIT\r\n".utf8))
        var raw: [UInt8] = []
        while raw.count < 4096, let byte = try? c.readBytes(1) { raw += byte }  // to the server's close
        XCTAssertFalse(raw.contains(0x0D), "replies end in LF alone")
        let lines = String(decoding: raw, as: UTF8.self).split(separator: "\n")
        XCTAssertEqual(lines.count, 3, "\(lines)")
        for line in lines.prefix(2) { XCTAssertTrue(line.hasPrefix("OK f ") && line.hasSuffix(" caf%C3%A9.txt"), String(line)) }
        XCTAssertEqual(lines.last, "OK bye")
    }

    func testPreEpochMtimeIsSentAsATimespec() throws {
        let old = data.appendingPathComponent("old.txt")
        try Files.write(old, "1970")
        try Files.setMtime(old, seconds: -101, nanos: 750_000_000)  // 100.25 s before the epoch
        let c = try connect()
        let reply = try ask(c, "STAT old.txt")
        XCTAssertEqual(reply, "OK f 0644 4 -101.750000000 old.txt")
        let entry = try Entry(line: Substring(reply).dropFirst(3))
        XCTAssertEqual(entry.mtime.timeInterval, -100.25)
        XCTAssertTrue(try ask(c, "HASH old.txt 0 4 4,-101.750000000").hasPrefix("OK "), "the validator matches")
        try assertCode(c, "HASH old.txt 0 4 4,-100.250000000", 409)
    }

    func testSymlinkSizeIsTheLengthOfTheTargetSent() throws {
        try Files.symlink(data.appendingPathComponent("link"), to: "docs/build.sh")
        let dir = open(data.path, O_RDONLY | O_DIRECTORY)
        XCTAssertGreaterThanOrEqual(dir, 0)
        defer { close(dir) }
        let info = try XCTUnwrap(POSIX.statAt(dir, Array("link".utf8)).0)
        let path = try RemotePath(validating: "link")
        let read = Entry(info: info, path: path, target: POSIX.readlinkAt(dir, Array("link".utf8)))
        XCTAssertEqual(read.size, 13)
        XCTAssertEqual(read.target, Array("docs/build.sh".utf8))
        // A target that could not be read is sent as `?`, with the size of `?`.
        let unread = Entry(info: info, path: path, target: nil)
        XCTAssertEqual(unread.target, [0x3F])
        XCTAssertEqual(unread.size, 1)
        XCTAssertTrue(unread.line.hasPrefix("l 0777 1 "), unread.line)
        let c = try connect()
        XCTAssertTrue(try ask(c, "STAT link").hasPrefix("OK l 0777 13 "))
    }

    func testShutdownClosesConnectionsWithoutA503() throws {
        let c = try connect()
        XCTAssertTrue(try ask(c, "STAT .").hasPrefix("OK d "))
        let stopping = server!
        server = nil
        try blockingAwait { await stopping.stop() }
        XCTAssertTrue(c.isClosed(within: 5), "an open connection is closed at once")
        XCTAssertThrowsError(try c.readLine(), "and nothing, no ERR 503, was sent first")
        XCTAssertThrowsError(try RawClient(port: stopping.port), "nothing listens any more")
        // A connection accepted just before the listener closed is turned away with 503.
        XCTAssertEqual(FerryServer.refusal(shuttingDown: true, open: 0, limit: 10)?.code, 503)
        XCTAssertEqual(FerryServer.refusal(shuttingDown: false, open: 10, limit: 10)?.code, 429)
        XCTAssertNil(FerryServer.refusal(shuttingDown: false, open: 9, limit: 10))
        XCTAssertEqual(FerryServer.refusal(shuttingDown: false, open: 5, limit: 10, fromAddress: 3, perAddressLimit: 3)?.reason,
                       "too many connections from your address (limit 3); close some and try again")
        XCTAssertNil(FerryServer.refusal(shuttingDown: false, open: 5, limit: 10, fromAddress: 2, perAddressLimit: 3))
    }

    // MARK: The reference client reading replies

    private func withFake<R: Sendable>(greeting: String = "FERRY 1 name=fake id=0123456789abcdef0123456789abcdef auth=none",
                                       _ reply: [UInt8],
                                       _ body: @escaping @Sendable (FerryConnection) async throws -> R) throws -> R {
        let fake = try FakeServer(greeting: greeting) { _ in reply }
        defer { fake.stop() }
        let endpoint = Endpoint(host: "127.0.0.1", port: fake.port)
        return try blockingAwait(timeout: 30) {
            try await FerryConnection.with(endpoint, options: ConnectionOptions(readTimeout: .seconds(5)), body)
        }
    }

    func testClientIsStrictAboutEmptyFieldsAndLenientAboutCRLFShortIdsAndUTF8() throws {
        let entries = try withFake(greeting: "FERRY 1 name=fake id=ab auth=none\r",
                                   Array("OK 2\r\nf 0644 1 1700000000.000000000 café\r\nl 0777 99 1700000000.000000000 link target\r\n".utf8)) {
            try await $0.list(.root)
        }
        XCTAssertEqual(entries.map(\.path.description), ["café", "link"])
        XCTAssertEqual(entries.last?.target, Array("target".utf8))

        XCTAssertThrowsError(try withFake(Array("OK 1\nf 0644 1 1700000000.000000000 \n".utf8)) { try await $0.list(.root) }) {
            guard case .protocolViolation? = $0 as? ClientError else { return XCTFail("expected a protocol violation, got \($0)") }
        }
        XCTAssertThrowsError(try withFake(Array("OK  1\n".utf8)) { try await $0.list(.root) }) {
            guard case .protocolViolation? = $0 as? ClientError else { return XCTFail("expected a protocol violation, got \($0)") }
        }
        XCTAssertThrowsError(try withFake(Array("OK f 0644 1 1700000000.000000000 \n".utf8)) { try await $0.stat(.root) }) {
            guard case .protocolViolation? = $0 as? ClientError else { return XCTFail("expected a protocol violation, got \($0)") }
        }
    }

    // MARK: Section 3: the token's bytes

    func testTokenIsTheFileWithTrailingCRAndLFRemoved() throws {
        let state = try TestSupport.makeTemporaryDirectory("ferry-contract-state")
        defer { TestSupport.removeTemporaryDirectory(state) }
        let tokenFile = work.appendingPathComponent("token")
        // A trailing space and a leading tab are part of the key; the CR/LF run at the end is not.
        try Files.write(tokenFile, Array("\ts3cret ".utf8) + [0x0D, 0x0A, 0x0A, 0x0D, 0x0A], mode: 0o600)
        let serve = try ServerProcess(serving: data, arguments: serveArguments(stateDir: state.appendingPathComponent("s"))
                                                      + ["--token-file", tokenFile.path])
        defer { serve.stop() }
        let endpoint = Endpoint(host: serve.host, port: serve.port)
        func works(_ token: [UInt8]) -> Bool {
            (try? blockingAwait(timeout: 30) {
                // TLS without a pinned key: the server's proof of the token is what identifies it.
                try await FerryConnection.with(endpoint, options: ConnectionOptions(token: token, security: .tls(expect: nil))) {
                    try await $0.stat(.root)
                }
            }) != nil
        }
        XCTAssertTrue(works(Array("\ts3cret ".utf8)))
        XCTAssertFalse(works(Array("\ts3cret".utf8)), "the trailing space is part of the key")
        XCTAssertFalse(works(Array("\ts3cret \r\n".utf8)), "the line end is not")

        // The client reads its token file by the same rule.
        let clientToken = work.appendingPathComponent("client-token")
        try Files.write(clientToken, Array("\ts3cret \n".utf8), mode: 0o600)
        let ls = try TestSupport.ferry(["ls", serve.address, "--token-file", clientToken.path], timeout: 60)
        XCTAssertEqual(ls.status, 0, ls.stderr)
        XCTAssertTrue(ls.stdout.contains("hello world.txt"), ls.stdout)
    }
}
