import FerryProtocol
import XCTest

/// The `CHUNKS` reply (capability `cdc`): its head, its lines, and the reader that refuses
/// every map the protocol does not allow.
final class ChunkMapTests: XCTestCase {
    private let sha = String(repeating: "ab", count: 32)
    private let other = String(repeating: "cd", count: 32)

    func testRequestAndHeadRoundTrip() throws {
        let p = try RemotePath(validating: "dir/a file")
        for r in [Request.chunks(p, validator: nil), .chunks(p, validator: Validator(size: 5, mtime: Timestamp(seconds: 1, nanoseconds: 2)))] {
            XCTAssertEqual(try Request.parse(Substring(r.line)), r)
        }
        XCTAssertEqual(Request.chunks(p, validator: nil).line, "CHUNKS dir/a%20file")
        XCTAssertThrowsError(try Request.parse("CHUNKS"))
        XCTAssertThrowsError(try Request.parse("CHUNKS f 5,1.0 x"))
        XCTAssertThrowsError(try Request.parse("CHUNKS f notavalidator"))
        let head = ChunksHead(size: 100_000, mtime: Timestamp(seconds: 1_700_000_000, nanoseconds: 5))
        XCTAssertEqual(head.line, "OK 100000 1700000000.000000005 16384 65536 262144")
        XCTAssertEqual(try Reply<ChunksHead>.parse(Substring(head.line)), .ok(head))
        for bad in ["OK 1 1.0 16384 65536", "OK 1 1.0 0 65536 262144", "OK 1 1.0 65536 16384 262144",
                    "OK 1 1.0 16384 65536 8388608", "OK -1 1.0 16384 65536 262144", "OK 1 1.0 16384  65536 262144"] {
            XCTAssertThrowsError(try Reply<ChunksHead>.parse(Substring(bad)), bad)
        }
        XCTAssertEqual(Capability(name: "cdc"), .cdc)
        XCTAssertEqual(Capability.cdc.name, "cdc")
    }

    private func reader(size: Int64) -> ChunkMapReader {
        ChunkMapReader(head: ChunksHead(size: size, mtime: Timestamp(seconds: 1, nanoseconds: 0)))
    }

    /// Feeds lines; returns the items, or the error of the first refused line.
    private func run(_ size: Int64, _ lines: [String]) -> Result<[ChunkMapReader.Item], MalformedReply> {
        var r = reader(size: size)
        var items: [ChunkMapReader.Item] = []
        for l in lines {
            do throws(MalformedReply) { items.append(try r.read(Substring(l))) } catch { return .failure(error) }
        }
        return .success(items)
    }

    func testAGoodMapIsRead() throws {
        let lines = ["0 20000 \(sha)", "20000 70000 \(other)", "90000 10 \(sha)", "END \(other)"]
        guard case .success(let items) = run(90010, lines) else { return XCTFail("refused a good map") }
        XCTAssertEqual(items.count, 4)
        XCTAssertEqual(items.last, .end(sha256: other))
        guard case .chunk(let c) = items[1] else { return XCTFail() }
        XCTAssertEqual(c.offset, 20000)
        XCTAssertEqual(c.length, 70000)
        XCTAssertEqual(c.digest.hex, other)
        XCTAssertEqual(ChunksHead.chunkLine(c), lines[1])
        // An empty file: no chunks, just the end.
        guard case .success(let empty) = run(0, ["END \(sha)"]) else { return XCTFail("refused an empty map") }
        XCTAssertEqual(empty, [.end(sha256: sha)])
        // An ERR line ends a reply whose file could not be read.
        guard case .success(let err) = run(90010, ["0 20000 \(sha)", "ERR 520 read f failed on the server: I/O error"]),
              case .error(let reply)? = err.last else { return XCTFail("ERR not passed on") }
        XCTAssertEqual(reply.code, 520)
    }

    func testHostileMapsAreRefused() {
        let cases: [(String, Int64, [String])] = [
            ("overlapping", 100_000, ["0 20000 \(sha)", "19999 20000 \(sha)"]),
            ("a gap", 100_000, ["0 20000 \(sha)", "20001 20000 \(sha)"]),
            ("out of order", 100_000, ["20000 20000 \(sha)", "0 20000 \(sha)"]),
            ("oversized chunk", 1_000_000, ["0 262145 \(sha)"]),
            ("absurd length", 1_000_000, ["0 99999999999 \(sha)"]),
            ("undersized, not last", 100_000, ["0 100 \(sha)"]),
            ("zero length", 100_000, ["0 0 \(sha)"]),
            ("past the end", 30_000, ["0 20000 \(sha)", "20000 20000 \(sha)"]),
            ("ends early", 100_000, ["0 20000 \(sha)", "END \(sha)"]),
            ("ends late", 10, ["0 10 \(sha)", "10 10 \(sha)"]),
            ("bad hash", 100_000, ["0 20000 \(sha.uppercased())"]),
            ("short hash", 100_000, ["0 20000 abcd"]),
            ("negative offset", 100_000, ["-1 20000 \(sha)"]),
            ("extra field", 100_000, ["0 20000 \(sha) x"]),
            ("two spaces", 100_000, ["0  20000 \(sha)"]),
            ("not a line of a map", 100_000, ["CHUNK 0 20000"]),
            ("bad END", 20000, ["0 20000 \(sha)", "END xyz"]),
        ]
        for (name, size, lines) in cases {
            if case .success = run(size, lines) { XCTFail("accepted a map with \(name)") }
        }
    }

    /// Every cut of a good map's text, its last piece taken as a whole line, is either a prefix
    /// the reader still waits on or a line it refuses: never a map it takes for complete (only
    /// the whole END line, short of its LF, is).
    func testEveryCutOfAMapIsRefusedOrIncomplete() {
        let text = "0 20000 \(sha)\n20000 70000 \(other)\n90000 10 \(sha)\nEND \(other)\n"
        let bytes = Array(text.utf8)
        for cut in 0..<(bytes.count - 1) {
            let prefix = String(decoding: bytes[..<cut], as: UTF8.self)
            var lines = prefix.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            lines = lines.filter { !$0.isEmpty }
            switch run(90010, lines) {
            case .success(let items): XCTAssertNotEqual(items.last, .end(sha256: other), "cut at \(cut) read as complete")
            case .failure: continue
            }
        }
    }

    func testTheCountIsBounded() {
        var r = ChunkMapReader(head: ChunksHead(size: 10 * 20_000 + 20_000, mtime: Timestamp(seconds: 1, nanoseconds: 0)), maxCount: 10)
        var refusedAt: Int?
        for i in 0...10 {
            do throws(MalformedReply) { _ = try r.read(Substring("\(i * 20_000) 20000 \(sha)")) } catch {
                refusedAt = i
                break
            }
        }
        XCTAssertEqual(refusedAt, 10, "the chunk after maxCount is refused")
        XCTAssertEqual(ChunkMapReader(head: ChunksHead(size: 1, mtime: Timestamp(seconds: 1, nanoseconds: 0))).maxCount,
                       FerryLimits.maxChunkCount)
    }
}
