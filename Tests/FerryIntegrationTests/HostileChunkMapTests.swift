import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// The built `ferry sync` against a server whose chunk maps lie (issue 15): a map that breaks
/// the protocol's rules is refused with a warning naming the file, which is then fetched
/// without it; a map whose hashes lie cannot get wrong data renamed into place.
final class HostileChunkMapTests: XCTestCase {
    var work: URL!
    let mt = FakeServer.mtime
    let greeting = "FERRY 1 name=fake id=0123456789abcdef0123456789abcdef auth=none caps=cdc"

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-hostile-cdc")
    }

    override func tearDownWithError() throws {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    private func sha(_ b: [UInt8]) -> String { SHA256Hasher.hex(b) }

    /// The true chunk map lines of `data`.
    private func mapLines(_ data: [UInt8]) -> [String] {
        var out: [String] = []
        var offset = 0
        for n in ContentChunker.lengths(of: data) {
            out.append("\(offset) \(n) \(sha(Array(data[offset..<(offset + n)])))")
            offset += n
        }
        return out
    }

    /// Serves `new.bin` (= `data`) with `chunks` as the answer to CHUNKS; DEST already holds
    /// `old.bin` (= `local`). Returns the sync's output and what landed in DEST.
    private func run(_ name: String, data: [UInt8], local: [UInt8], chunks: String) throws -> (TestSupport.ProcessResult, [UInt8]?) {
        let dest = work.appendingPathComponent(name)
        try Files.write(dest.appendingPathComponent("old.bin"), local)
        let manifest = ["f 0644 \(data.count) \(mt) - new.bin", "f 0644 \(local.count) \(mt) - old.bin"]
        let files = ["old.bin": local, "new.bin": data]
        let tree = FakeServer.treeResponder(manifest: manifest, files: files)
        let fake = try FakeServer(greeting: greeting) { line in
            if line == "CAPS cdc" { return Array("OK cdc\n".utf8) }
            if line.hasPrefix("CHUNKS new.bin") { return Array(chunks.utf8) }
            return tree(line)
        }
        defer { fake.stop() }
        try Files.setMtime(dest.appendingPathComponent("old.bin"), seconds: 1_700_000_000)
        let result = try TestSupport.ferry(["sync", fake.address, dest.path, "--retries", "0", "--json"], timeout: 60)
        XCTAssertTrue(fake.requests.contains { $0.hasPrefix("CHUNKS new.bin") }, "\(name): the client asked for the map")
        return (result, Files.read(dest.appendingPathComponent("new.bin")))
    }

    func testMapsThatBreakTheRulesAreRefusedAndTheFileIsFetchedWithoutThem() throws {
        let data = try Files.randomBytes(400_000)
        let local = Array(data[..<200_000]) + (try Files.randomBytes(100_000))
        let good = mapLines(data)
        let head = "OK \(data.count) \(mt) 16384 65536 262144\n"
        let end = "END \(sha(data))\n"
        func lines(_ l: [String]) -> String { l.map { $0 + "\n" }.joined() }
        let cases: [(String, String)] = [
            ("overlapping", head + lines([good[0], good[1].replacingOccurrences(of: "^[0-9]+ ", with: "1 ", options: .regularExpression)] + good.dropFirst(2)) + end),
            ("out of order", head + lines(Array(good.reversed())) + end),
            ("oversized", head + "0 400000 \(sha(data))\n" + end),
            ("past the end", head + lines(good + ["\(data.count) 20000 \(sha(data))"]) + end),
            ("ends short", head + lines(Array(good.dropLast())) + end),
            ("other parameters", "OK \(data.count) \(mt) 4096 8192 16384\n" + lines(good) + end),
            ("garbage line", head + lines([good[0], "this is not a chunk"] + good.dropFirst(2)) + end),
        ]
        for (name, reply) in cases {
            let (result, landed) = try run(name.replacingOccurrences(of: " ", with: "-"), data: data, local: local, chunks: reply)
            XCTAssertEqual(result.status, 0, "\(name): \(result.stderr)")
            XCTAssertEqual(landed.map(sha), sha(data), "\(name): the file is fetched without the map")
            let warnings = JSONLines.parse(result.stdout).filter { $0["event"] as? String == "warning" }.compactMap { $0["message"] as? String }
            XCTAssertTrue(warnings.contains { $0.hasPrefix("new.bin: refused the server's chunk map") }, "\(name): \(warnings)")
        }
    }

    func testAMapWhoseHashesLieCannotPutWrongDataInPlace() throws {
        let data = try Files.randomBytes(400_000)
        let local = try Files.randomBytes(400_000)
        // A well-formed map naming the chunks of the local file (which the client would reuse)
        // for a file that is something else.
        let lying = "OK \(data.count) \(mt) 16384 65536 262144\n" + mapLines(local).map { $0 + "\n" }.joined() + "END \(sha(data))\n"
        guard ContentChunker.lengths(of: local).reduce(0, +) == data.count else { return XCTFail("sizes differ") }
        let (result, landed) = try run("lying-hashes", data: data, local: local, chunks: lying)
        // Built from the lying map, the file fails its SHA-256 and is fetched again without
        // reuse (the one retry --retries 0 still allows a file of its own) — or it fails, named.
        if let landed {
            XCTAssertEqual(sha(landed), sha(data), "only the server's real data may land under the name")
        } else {
            XCTAssertTrue(result.stdout.contains("new.bin"), result.stdout)
        }
        XCTAssertNotEqual(Files.read(work.appendingPathComponent("lying-hashes/new.bin")).map(sha), sha(local))
    }
}
