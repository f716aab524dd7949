import FerryClient
import FerryFiles
import FerryProtocol
import FerryServer
import FerryTestSupport
import Foundation
import Logging
import XCTest

/// The server's side of `CHUNKS` (capability `cdc`): the map it streams is the file's
/// content-defined chunking, it is refused without `CAPS cdc`, and it is cached like whole-file
/// hashes: an unchanged file is never mapped twice.
final class ChunkMapServerTests: XCTestCase {
    private var work: URL!
    private var served: URL!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-chunks")
        served = work.appendingPathComponent("root")
        try FileManager.default.createDirectory(at: served, withIntermediateDirectories: true)
    }

    override func tearDown() {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    private func server() async throws -> InProcessServer {
        var logger = Logger(label: "ferry.test.chunks")
        logger.logLevel = .critical
        let configuration = ServerConfiguration(root: served.path, name: "chunks", bindHost: "127.0.0.1", port: 0,
                                                hashCachePath: work.appendingPathComponent("hashes.txt").path)
        return InProcessServer(server: try await FerryServer.start(configuration, logger: logger))
    }

    /// Reads a CHUNKS reply after its head: the chunk lines and the END line.
    private func readMap(_ c: RawClient) throws -> (chunks: [String], end: String) {
        var lines: [String] = []
        while true {
            let l = try c.readLine()
            if l.hasPrefix("END ") || l.hasPrefix("ERR ") { return (lines, l) }
            lines.append(l)
        }
    }

    func testTheMapIsTheFilesChunkingAndIsServedFromTheCacheOnceMade() async throws {
        let data = try Files.randomBytes(3 << 20)
        try Files.write(served.appendingPathComponent("f.bin"), data)
        let s = try await server()
        let c = try RawClient.greeted(port: s.port)
        try c.send("CHUNKS f.bin\n")
        XCTAssertEqual(try c.readLine(), "ERR 400 CHUNKS needs the cdc capability (send CAPS cdc first)")
        try c.send("CAPS cdc\n")
        XCTAssertEqual(try c.readLine(), "OK cdc")
        try c.send("CHUNKS f.bin\n")
        let head = try c.readLine()
        XCTAssertTrue(head.hasPrefix("OK \(data.count) ") && head.hasSuffix(" 16384 65536 262144"), head)
        let (lines, end) = try readMap(c)
        XCTAssertEqual(end, "END \(SHA256Hasher.hex(data))")
        var expected: [String] = []
        var offset = 0
        for n in ContentChunker.lengths(of: data) {
            expected.append("\(offset) \(n) \(SHA256Hasher.hex(Array(data[offset..<(offset + n)])))")
            offset += n
        }
        XCTAssertEqual(lines, expected)

        // The map was remembered beside the hash cache. Alter the remembered map (a valid one,
        // for the same key): the server serves it as it is, so it did not map the file again.
        let folder = work.appendingPathComponent("hashes.txt.chunks")
        let files = try FileManager.default.contentsOfDirectory(atPath: folder.path)
        XCTAssertEqual(files.count, 1)
        let cached = folder.appendingPathComponent(files[0])
        var bytes = try XCTUnwrap(Files.read(cached))
        bytes[bytes.count - 1] ^= 0xFF  // the last chunk's hash
        try Files.write(cached, bytes)
        try c.send("CHUNKS f.bin\n")
        _ = try c.readLine()
        let (again, _) = try readMap(c)
        XCTAssertEqual(again.count, lines.count)
        XCTAssertEqual(again.dropLast(), lines.dropLast())
        XCTAssertNotEqual(again.last, lines.last, "served from the cache, not mapped again")

        // A changed file is mapped again (its key changed).
        try Files.write(served.appendingPathComponent("f.bin"), Array(data.dropFirst(100)))
        try c.send("CHUNKS f.bin\n")
        XCTAssertTrue(try c.readLine().hasPrefix("OK \(data.count - 100) "))
        let (_, changedEnd) = try readMap(c)
        XCTAssertEqual(changedEnd, "END \(SHA256Hasher.hex(Array(data.dropFirst(100))))")
        await s.stop()
    }

    func testErrorsAndEdgeCases() async throws {
        try Files.write(served.appendingPathComponent("empty"), [UInt8]())
        try Files.write(served.appendingPathComponent("small"), Array("tiny".utf8))
        try FileManager.default.createDirectory(at: served.appendingPathComponent("dir"), withIntermediateDirectories: true)
        // Over the largest file a map may cover (64 GiB): sparse, so it costs no disk.
        let huge = served.appendingPathComponent("huge")
        XCTAssertTrue(FileManager.default.createFile(atPath: huge.path, contents: nil))
        XCTAssertEqual(truncate(huge.path, off_t(FerryLimits.maxChunkCount) * 16384 + 1), 0)
        let s = try await server()
        let c = try RawClient.greeted(port: s.port)
        try c.send("CAPS cdc\n")
        _ = try c.readLine()
        try c.send("CHUNKS empty\n")
        XCTAssertTrue(try c.readLine().hasPrefix("OK 0 "))
        XCTAssertEqual(try c.readLine(), "END \(SHA256Hasher.hex([]))")
        try c.send("CHUNKS small\n")
        XCTAssertTrue(try c.readLine().hasPrefix("OK 4 "))
        XCTAssertEqual(try c.readLine(), "0 4 \(SHA256Hasher.hex(Array("tiny".utf8)))")
        XCTAssertEqual(try c.readLine(), "END \(SHA256Hasher.hex(Array("tiny".utf8)))")
        try c.send("CHUNKS small 5,1700000000.000000000\n")
        XCTAssertTrue(try c.readLine().hasPrefix("ERR 409 "))
        try c.send("CHUNKS dir\n")
        XCTAssertTrue(try c.readLine().hasPrefix("ERR 422 "))
        try c.send("CHUNKS nothing\n")
        XCTAssertTrue(try c.readLine().hasPrefix("ERR 404 "))
        try c.send("CHUNKS huge\n")
        XCTAssertTrue(try c.readLine().hasPrefix("ERR 413 "))
        try c.send("STAT small\n")
        XCTAssertTrue(try c.readLine().hasPrefix("OK f "), "the connection stays usable")
        await s.stop()
    }
}
