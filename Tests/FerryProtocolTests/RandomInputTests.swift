import FerryProtocol
import FerryTestSupport
import NIOCore
import XCTest

/// Seeded random-input tests: a bounded number of deterministic iterations that mix valid
/// tokens with hostile ones. Every outcome must be a value that re-encodes to itself or a
/// typed error; nothing may crash, hang or allocate without bound.
final class RandomInputTests: XCTestCase {
    private static let iterations = 20_000

    private let sha = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"

    private let pathTokens = [
        ".", "a", "hello%20world.txt", "caf%c3%a9", "caf%C3%A9/x", "%FF", "a/b/c", "..", "../x", "/a", "a%2Fb", "a%2f",
        "%00", "%", "%4", "%zz", "a//b", "a/", "./a", "%2E%2E", "a%20", String(repeating: "n", count: 256), "-", "*",
    ]
    private let numberTokens = [
        "0", "1", "7", "4096", "8192", "65536", "67108864", "134217728", "4194304", "4194305", "4195328", "4195329",
        "9223372036854775807", "9223372036854775808", "12345678901234567890", "-1", "+1", "1.0", "", "*", "00", "0x10",
    ]
    private let mtimeTokens = ["1700000000.000000000", "-1.500000000", "0.000000001", "1.0", "1", "+1.000000000", ".000000000", "1.00000000x"]

    private func randomJunk(_ rng: inout SplitMix64) -> String {
        let bytes = rng.bytes(rng.below(12)).map { b -> UInt8 in
            // Bias towards the interesting region: separators, controls, '%', ASCII.
            switch b % 4 {
            case 0: return [0x20, 0x0A, 0x0D, 0x00, 0x09, 0x25, 0x2C, 0x2E, 0x2F, 0x7F][Int(b >> 4) % 10]
            case 1: return b
            default: return 0x21 + b % 0x5E
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private func validator(_ rng: inout SplitMix64) -> String {
        rng.pick(numberTokens) + (rng.chance(90) ? "," : ";") + rng.pick(mtimeTokens)
    }

    private func field(_ rng: inout SplitMix64) -> String {
        switch rng.below(6) {
        case 0: return rng.pick(pathTokens)
        case 1, 2: return rng.pick(numberTokens)
        case 3: return validator(&rng)
        case 4: return rng.pick(["hashes=no", "hashes=yes", "hashes=", String(repeating: "ab", count: 32), sha, "s", "z"])
        default: return randomJunk(&rng)
        }
    }

    /// Occasionally damages a line: one byte replaced, inserted or removed.
    private func mutate(_ text: String, _ rng: inout SplitMix64) -> String {
        guard rng.chance(25) else { return text }
        var bytes = Array(text.utf8)
        let at = bytes.isEmpty ? 0 : rng.below(bytes.count)
        switch rng.below(3) {
        case 0 where !bytes.isEmpty: bytes[at] = UInt8(truncatingIfNeeded: rng.next())
        case 1: bytes.insert(rng.pick([0x20, 0x00, 0x25, 0xFF, 0x0A, 0x2D, 0x2B]), at: at)
        default: if !bytes.isEmpty { bytes.remove(at: at) }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private func separator(_ rng: inout SplitMix64) -> String { rng.chance(95) ? " " : rng.pick(["  ", "\t", "", "\r"]) }

    func testRandomRequestLines() {
        var rng = SplitMix64(seed: 0x5EED_0001)
        let verbs = ["LIST", "STAT", "GET", "HASH", "BLOCKS", "MANIFEST", "QUIT", "AUTH", "list", "Get", "quıt", "FOO", ""]
        var accepted = 0, malformed = 0, refusedPaths = 0
        for _ in 0..<Self.iterations {
            var line = rng.pick(verbs)
            for _ in 0..<rng.below(6) { line += separator(&rng) + field(&rng) }
            line = mutate(line, &rng)
            do {
                let request = try Request.parse(Substring(line))
                accepted += 1
                let canonical = request.line
                XCTAssertFalse(canonical.utf8.contains { $0 < 0x20 || $0 == 0x7F || $0 >= 0x80 }, canonical)
                XCTAssertEqual(try Request.parse(Substring(canonical)), request, "'\(line.debugDescription)' → '\(canonical)'")
            } catch {
                switch error {
                case .malformed(let why):
                    malformed += 1
                    XCTAssertFalse(why.isEmpty)
                    XCTAssertEqual(error.reply.code, 400)
                case .badPath(let why):
                    refusedPaths += 1
                    XCTAssertEqual(error.reply.code, why == .badEncoding ? 400 : 421)
                }
                XCTAssertFalse(error.reply.line.utf8.contains { $0 < 0x20 }, "an error reply stays one line")
            }
        }
        // The generator must reach every outcome, or the test proves little.
        XCTAssertGreaterThan(accepted, Self.iterations / 50, "accepted")
        XCTAssertGreaterThan(malformed, Self.iterations / 50, "malformed")
        XCTAssertGreaterThan(refusedPaths, Self.iterations / 100, "refused paths")
    }

    func testRandomManifestLines() {
        var rng = SplitMix64(seed: 0x5EED_0002)
        var accepted = 0, refused = 0
        for _ in 0..<Self.iterations {
            let type = rng.chance(80) ? rng.pick(["f", "d", "l"]) : rng.pick(["o", "x", "F", ""])
            var fields = [type]
            fields.append(rng.chance(70) ? rng.pick(["0644", "0755", "7777", "0000"])
                                         : rng.pick(["644", "0648", "+777", "-000", "8000", "00644"]))
            fields.append(rng.chance(50) ? "0" : rng.pick(numberTokens))
            fields.append(rng.chance(70) ? "1700000000.000000000" : rng.pick(mtimeTokens))
            if rng.chance(type == "f" ? 85 : 15) { fields.append(rng.pick(["-", sha, "-", sha, sha.uppercased(), String(sha.dropLast())])) }
            fields.append(rng.chance(50) ? rng.pick(["a", "caf%c3%a9/x", "b%20c/%FF"]) : rng.pick(pathTokens))
            if rng.chance(type == "l" ? 85 : 15) { fields.append(rng.pick(["../target", "%FF", "%00", "", "t%20x", "/abs"])) }
            if rng.chance(5) { fields.append(field(&rng)) }
            var line = ""
            for (i, f) in fields.enumerated() { line += (i == 0 ? "" : separator(&rng)) + f }
            line = mutate(line, &rng)
            do {
                let entry = try Entry(manifestLine: Substring(line))
                accepted += 1
                XCTAssertNotEqual(entry.type, .other)
                XCTAssertFalse(entry.path.isRoot)
                XCTAssertLessThanOrEqual(entry.mode, 0o7777)
                XCTAssertGreaterThanOrEqual(entry.size, 0)
                XCTAssertEqual(entry.target != nil, entry.type == .symlink)
                if entry.type == .directory { XCTAssertEqual(entry.size, 0) }
                XCTAssertEqual(try Entry(manifestLine: Substring(entry.manifestLine)), entry, line)
            } catch {
                refused += 1
                XCTAssertFalse(error.description.isEmpty)
            }
        }
        XCTAssertGreaterThan(accepted, Self.iterations / 20, "accepted")
        XCTAssertGreaterThan(refused, Self.iterations / 2, "refused")
    }

    func testRandomChunkHeaders() {
        var rng = SplitMix64(seed: 0x5EED_0003)
        var accepted = 0, refused = 0
        for _ in 0..<Self.iterations {
            var fields = [rng.chance(95) ? "CHUNK" : rng.pick(["chunk", "CHUNKS", "", "END"])]
            if rng.chance(50) {
                // Coherent lengths, so that the accepting path is exercised as much as the refusing one.
                let raw = 1 + rng.below(rng.chance(10) ? FerryLimits.maxChunkRaw : 5000)
                let stored = rng.chance(50)
                fields += [String(rng.next() >> 1), String(raw), String(stored ? raw : 1 + rng.below(raw + 1024)), stored ? "s" : "z"]
            } else {
                for _ in 0..<3 { fields.append(rng.chance(40) ? String(rng.below(5000)) : rng.pick(numberTokens)) }
                fields.append(rng.pick(["s", "z", "S", "x", ""]))
            }
            fields.append(rng.chance(70) ? Hex.encode(rng.bytes(4)) : rng.pick(["0000000", "000000000", "+0000000", "0000000g", "DEADBEEF"]))
            if rng.chance(3) { fields.append("x") }
            var line = ""
            for (i, f) in fields.enumerated() { line += (i == 0 ? "" : separator(&rng)) + f }
            line = mutate(line, &rng)
            do {
                let h = try ChunkHeader.parse(Substring(line))
                accepted += 1
                XCTAssertGreaterThanOrEqual(h.offset, 0)
                XCTAssertTrue((1...FerryLimits.maxChunkRaw).contains(h.rawLength), line)
                XCTAssertTrue((1...(h.rawLength + FerryLimits.chunkWireSlack)).contains(h.wireLength), line)
                if h.codec == .stored { XCTAssertEqual(h.wireLength, h.rawLength, line) }
                XCTAssertEqual(try ChunkHeader.parse(Substring(h.line)), h, line)
            } catch {
                refused += 1
                XCTAssertFalse(error.why.isEmpty)
            }
        }
        XCTAssertGreaterThan(accepted, Self.iterations / 10, "accepted")
        XCTAssertGreaterThan(refused, Self.iterations / 2, "refused")
    }

    /// Random reply streams fed in random pieces. Half are built only from valid frames and
    /// must decode to exactly those frames; the rest mix in damage and must either decode or
    /// fail with a `ReplyFramingError`, never hold more than one line or one announced chunk.
    func testRandomReplyStreams() {
        var rng = SplitMix64(seed: 0x5EED_0004)
        var validStreams = 0, framingErrors = 0, chunksSeen = 0, linesSeen = 0
        for _ in 0..<Self.iterations {
            let valid = rng.chance(50)
            let maxLine = rng.chance(50) ? 96 : FerryLimits.maxReplyLine
            var stream: [UInt8] = []
            var expected: [(String?, ChunkHeader?, [UInt8])] = []
            for _ in 0..<(1 + rng.below(5)) {
                switch rng.below(valid ? 2 : 4) {
                case 0:
                    let text = rng.pick(["OK 1", "OK", "END \(sha)", "ERR 500 read error", "f 0644 0 1.000000000 a", "d 0755 0 1.000000000 b"])
                    stream += Array(text.utf8) + (rng.chance(50) ? [0x0D, 0x0A] : [0x0A])
                    expected.append((text, nil, []))
                case 1:
                    let raw = 1 + rng.below(64)
                    let stored = rng.chance(50)
                    let wire = stored ? raw : 1 + rng.below(raw + 16)
                    let h = ChunkHeader(offset: Int64(rng.below(1 << 20)), rawLength: raw, wireLength: wire,
                                        codec: stored ? .stored : .zlib, crc32: UInt32(truncatingIfNeeded: rng.next()))
                    let payload = rng.bytes(wire)
                    stream += Array((h.line + "\n").utf8) + payload
                    expected.append((nil, h, payload))
                case 2:
                    // A header that lies about its lengths, or one that is merely broken.
                    let raw = rng.pick([0, 1, 100, FerryLimits.maxChunkRaw, FerryLimits.maxChunkRaw + 1, Int(Int32.max)])
                    let wire = raw + rng.pick([-1, 0, 1, 1024, 1025, 1 << 30])
                    stream += Array("CHUNK \(rng.below(100)) \(raw) \(wire) \(rng.pick(["s", "z", "q"])) \(Hex.encode(rng.bytes(4)))\n".utf8)
                    stream += rng.bytes(rng.below(40))
                default:
                    stream += rng.bytes(rng.below(rng.chance(10) ? 400 : 40))
                    if rng.chance(50) { stream.append(0x0A) }
                }
            }

            var decoder = ReplyFrameDecoder(maxLine: maxLine)
            var buffer = ByteBufferAllocator().buffer(capacity: 0)
            var got: [(String?, ChunkHeader?, [UInt8])] = []
            var position = 0
            var failed = false
            feeding: while position < stream.count {
                let n = min(stream.count - position, 1 + rng.below(rng.chance(20) ? 200 : 16))
                buffer.writeBytes(stream[position..<(position + n)])
                position += n
                do {
                    while let frame = try decoder.nextFrame(&buffer) {
                        switch frame {
                        case .line(let l):
                            XCTAssertFalse(l.contains("\n"))
                            XCTAssertLessThan(l.utf8.count, maxLine)
                            got.append((l, nil, []))
                        case .chunk(let h, let payload):
                            XCTAssertEqual(payload.readableBytes, h.wireLength, "a chunk frame carries exactly its wire bytes")
                            XCTAssertTrue((1...FerryLimits.maxChunkRaw).contains(h.rawLength))
                            XCTAssertLessThanOrEqual(h.wireLength, h.rawLength + FerryLimits.chunkWireSlack)
                            got.append((nil, h, Array(payload.readableBytesView)))
                        }
                    }
                } catch {
                    XCTAssertTrue(error is ReplyFramingError, "\(error)")
                    failed = true
                    break feeding
                }
                // Bounded: at most one pending line (limit) or one announced chunk (at most 4 MiB + 1 KiB)
                // plus the piece just written.
                XCTAssertLessThanOrEqual(buffer.readableBytes, max(maxLine, FerryLimits.maxChunkRaw + FerryLimits.chunkWireSlack) + 200)
            }
            if failed { framingErrors += 1 }
            chunksSeen += got.filter { $0.1 != nil }.count
            linesSeen += got.filter { $0.0 != nil }.count
            if valid {
                validStreams += 1
                XCTAssertFalse(failed, "a valid stream must decode")
                XCTAssertEqual(buffer.readableBytes, 0)
                XCTAssertEqual(got.count, expected.count)
                for (g, e) in zip(got, expected) {
                    XCTAssertEqual(g.0, e.0)
                    XCTAssertEqual(g.1, e.1)
                    XCTAssertEqual(g.2, e.2)
                }
            }
        }
        XCTAssertGreaterThan(validStreams, Self.iterations / 3)
        XCTAssertGreaterThan(framingErrors, Self.iterations / 20, "the damaged streams must hit the error paths")
        XCTAssertGreaterThan(chunksSeen, Self.iterations / 4)
        XCTAssertGreaterThan(linesSeen, Self.iterations / 4)
    }
}
