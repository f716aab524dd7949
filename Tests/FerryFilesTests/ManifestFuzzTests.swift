// Fuzzing the manifest parser and the chunk decoder (the client's side of MANIFEST and GET).
//
// This file is compiled twice. In FerryFilesTests the XCTest cases at the end drive the
// checks with a seeded mutation fuzzer. Through the symlink Fuzz/Sources/FuzzSupport/
// FilesChecks.swift it is also part of the libFuzzer harnesses (FERRY_FUZZ_HARNESS is defined
// there and libFuzzer supplies the inputs), so both check exactly the same properties.

import CZlib
import CZstd
import FerryFiles
import FerryProtocol
import NIOCore

/// A property that did not hold.
private struct Violation: Error, CustomStringConvertible {
    let description: String
}

private func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw Violation(description: message()) }
}

private func show<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    let text = String(decoding: bytes.prefix(300), as: UTF8.self).debugDescription
    return bytes.count > 300 ? text + "…(\(bytes.count) bytes)" : text
}

// MARK: - Manifest

public enum ManifestFuzzChecks {
    /// `Manifest.parse` on any text. What it accepts must meet PROTOCOL.md section 10 (valid
    /// paths, strictly sorted, every parent a directory listed earlier, no root, no type `o`)
    /// and survive its text form, which is canonical (printable ASCII lines, a fixpoint).
    @discardableResult
    public static func checkManifest(_ text: String) throws -> Manifest? {
        let manifest: Manifest
        do {
            manifest = try Manifest.parse(text)
        } catch {
            try expect(!error.description.isEmpty && error.description.utf8.count < 1024,
                       "error text of \(error.description.utf8.count) bytes: \(error.description.prefix(200))")
            return nil
        }
        try expect(manifest.entries.count <= FerryLimits.maxManifestEntries, "too many entries")
        var directories: Set<RemotePath> = [.root]
        var previous: RemotePath?
        for e in manifest.entries {
            let p = e.path
            try expect(!p.isRoot && e.type != .other, "entry \(e) in \(show(text.utf8))")
            if let previous { try expect(previous < p, "\(previous) listed before \(p) in \(show(text.utf8))") }
            previous = p
            try expect(p.parent.map(directories.contains) == true, "the parent of \(p) is not a directory listed earlier: \(show(text.utf8))")
            try expect(p.bytes.count <= FerryLimits.maxPathBytes && !p.bytes.contains(0) && p.bytes.first != 0x2F, "path \(show(p.bytes))")
            for c in p.components {
                try expect(!c.isEmpty && !c.elementsEqual([0x2E]) && !c.elementsEqual([0x2E, 0x2E]) && c.count <= FerryLimits.maxComponentBytes,
                           "component \(show(c)) of \(show(p.bytes))")
            }
            try expect(e.size >= 0 && e.mode <= 0o7777, "entry \(e)")
            try expect((e.target != nil) == (e.type == .symlink), "target of \(e)")
            if let t = e.target { try expect(!t.isEmpty && !t.contains(0), "symlink target \(show(t))") }
            if e.type == .directory {
                try expect(e.size == 0, "directory with a size: \(e)")
                directories.insert(p)
            }
            if let sha = e.sha256 { try expect(e.type == .file && isSHA256Hex(sha), "sha256 \(sha) on \(e)") }
        }
        let canonical = manifest.text
        try expect(canonical.utf8.allSatisfy { ($0 >= 0x20 && $0 < 0x7F) || $0 == 0x0A }, "text form is not printable ASCII: \(show(canonical.utf8))")
        let again: Manifest
        do { again = try Manifest.parse(canonical) } catch {
            throw Violation(description: "the text form of an accepted manifest is refused (\(error)): \(show(canonical.utf8)) from \(show(text.utf8))")
        }
        try expect(again == manifest, "the manifest does not survive its text form: \(show(text.utf8)) → \(show(canonical.utf8))")
        try expect(again.text == canonical, "the text form is not a fixpoint: \(show(canonical.utf8))")
        return manifest
    }
}

// MARK: - Chunks

public enum ChunkFuzzChecks {
    /// The specification of a zlib chunk, from zlib's one-shot `uncompress2` rather than the
    /// decoder under test: the wire is exactly one zlib stream and inflates to exactly
    /// `rawLength` bytes.
    public static func referenceInflate(_ wire: [UInt8], rawLength: Int) -> [UInt8]? {
        guard rawLength >= 0 else { return nil }
        var out = [UInt8](repeating: 0, count: rawLength + 1)
        var outLength = uLong(out.count)
        var inLength = uLong(wire.count)
        let r = out.withUnsafeMutableBufferPointer { o in
            wire.withUnsafeBufferPointer { w in uncompress2(o.baseAddress, &outLength, w.baseAddress, &inLength) }
        }
        guard r == Z_OK, outLength == uLong(rawLength), inLength == uLong(wire.count) else { return nil }
        return Array(out.prefix(rawLength))
    }

    /// The specification of a zstd chunk, from zstd's streaming decoder rather than the one-shot
    /// call under test: the wire is exactly one zstd frame (no skippable or legacy frame), its
    /// header declares exactly `rawLength` bytes and no dictionary, and it decodes to exactly that.
    public static func referenceZstd(_ wire: [UInt8], rawLength: Int) -> [UInt8]? {
        guard rawLength >= 1, wire.starts(with: [0x28, 0xB5, 0x2F, 0xFD]),
              wire.withUnsafeBytes({ ZSTD_getFrameContentSize($0.baseAddress, $0.count) }) == UInt64(rawLength),
              wire.withUnsafeBytes({ ZSTD_getDictID_fromFrame($0.baseAddress, $0.count) }) == 0,
              let stream = ZSTD_createDStream() else { return nil }
        defer { ZSTD_freeDStream(stream) }
        // The decoder under test decodes a frame whole, whatever window it declares; the
        // streaming decoder refuses windows above 2^27 unless told otherwise. (Its buffer is
        // still bounded by the declared content size.)
        guard ZSTD_isError(ZSTD_DCtx_setParameter(stream, ZSTD_d_windowLogMax, 31)) == 0 else { return nil }
        // The declared size bounds the decoder's window buffer; one spare byte shows a frame
        // that decodes to more than it declares.
        var out = [UInt8](repeating: 0, count: rawLength + 1)
        let complete = wire.withUnsafeBytes { w in
            out.withUnsafeMutableBytes { o -> Bool in
                var input = ZSTD_inBuffer(src: w.baseAddress, size: w.count, pos: 0)
                var output = ZSTD_outBuffer(dst: o.baseAddress, size: o.count, pos: 0)
                while true {
                    let before = (input.pos, output.pos)
                    let left = ZSTD_decompressStream(stream, &output, &input)
                    if ZSTD_isError(left) != 0 { return false }
                    if left == 0 { return input.pos == input.size && output.pos == rawLength }
                    if output.pos == output.size || (input.pos, output.pos) == before { return false }
                }
            }
        }
        return complete ? Array(out.prefix(rawLength)) : nil
    }

    public static func crc32(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBufferPointer { UInt32(CZlib.crc32(0, $0.baseAddress, uInt($0.count))) }
    }

    /// What the chunk must decode to, or nil if it must be refused.
    public static func specification(_ header: ChunkHeader, _ wire: [UInt8]) -> [UInt8]? {
        guard wire.count == header.wireLength, header.rawLength >= 1 else { return nil }
        let raw: [UInt8]?
        switch header.codec {
        case .stored: raw = wire.count == header.rawLength ? wire : nil
        case .zlib: raw = referenceInflate(wire, rawLength: header.rawLength)
        case .zstd: raw = referenceZstd(wire, rawLength: header.rawLength)
        }
        guard let raw, crc32(raw) == header.crc32 else { return nil }
        return raw
    }

    /// `ChunkDecoder.decode` on a header and the wire bytes that followed it. It accepts exactly
    /// the chunks the specification accepts, returns exactly their bytes, never writes past the
    /// header's raw length (a guard zone behind the destination must stay intact), and names
    /// the chunk's offset when it refuses. Returns whether the chunk was accepted.
    @discardableResult
    public static func checkChunk(_ header: ChunkHeader, _ wire: [UInt8]) throws -> Bool {
        let expected = specification(header, wire)
        let canary: UInt8 = 0xA5
        var destination = [UInt8](repeating: canary, count: header.rawLength + 64)
        let buffer = ByteBuffer(bytes: wire)
        let result: Result<Void, ChunkError> = destination.withUnsafeMutableBytes { all in
            do throws(ChunkError) {
                try ChunkDecoder.decode(header: header, wire: buffer, into: UnsafeMutableRawBufferPointer(rebasing: all[0..<header.rawLength]))
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try expect(destination[header.rawLength...].allSatisfy { $0 == canary }, "the decoder wrote past \(header.rawLength) bytes for \(header.line)")
        switch result {
        case .success:
            try expect(expected.map { $0[...] == destination[0..<header.rawLength] } ?? false,
                       "accepted a chunk the specification refuses, or returned other bytes: \(header.line), wire \(show(wire))")
        case .failure(let error):
            try expect(expected == nil, "refused a valid chunk (\(error)): \(header.line), wire \(show(wire))")
            let offset: Int64
            switch error {
            case .checksum(let o), .decompress(let o, _), .length(let o, _, _): offset = o
            }
            try expect(offset == header.offset && !error.description.isEmpty, "error \(error) for \(header.line)")
        }
        // The convenience form agrees.
        let simple = try? ChunkDecoder.decode(header: header, wire: buffer)
        try expect(simple == expected, "decode(header:wire:) disagrees for \(header.line), wire \(show(wire))")
        return expected != nil
    }

    /// The encoder's output is a header the client accepts and a wire that decodes back to the
    /// input; after one flipped byte a stored chunk is always refused (CRC-32 catches every
    /// burst of up to 32 bits) and a zlib chunk decodes as the specification says.
    public static func checkRoundTrip(_ raw: [UInt8], decision: ChunkDecision, offset: Int64, flip: (position: Int, mask: UInt8)?) throws {
        guard !raw.isEmpty, raw.count <= FerryLimits.maxChunkRaw else { return }
        var encoder = ChunkEncoder(decision)
        let (header, buffer) = raw.withUnsafeBytes { encoder.encode(raw: $0, offset: offset, allocator: ByteBufferAllocator()) }
        var wire = Array(buffer.readableBytesView)
        try expect((try? ChunkHeader.parse(Substring(header.line))) == header, "the encoder wrote a header the client refuses: \(header.line)")
        try expect(header.rawLength == raw.count && header.offset == offset && header.wireLength == wire.count, "header \(header.line) for \(raw.count) bytes")
        try expect(specification(header, wire) == raw, "an encoded chunk does not meet the specification: \(header.line)")
        try expect(try checkChunk(header, wire), "an encoded chunk was refused: \(header.line)")
        guard let flip, flip.mask != 0, !wire.isEmpty else { return }
        wire[flip.position % wire.count] ^= flip.mask
        let accepted = try checkChunk(header, wire)
        if header.codec == .stored { try expect(!accepted, "a stored chunk with a flipped byte was accepted: \(header.line)") }
    }
}

#if !FERRY_FUZZ_HARNESS
import Foundation
import FerryTestSupport
import XCTest

/// Byte-level mutations (flips, inserts, deletes, splices, truncation, huge numbers, long
/// runs, invalid UTF-8, dictionary tokens).
private enum Mutator {
    static let interesting: [UInt8] = [0x00, 0x09, 0x0A, 0x0D, 0x20, 0x25, 0x2D, 0x2E, 0x2F, 0x7F, 0x80, 0xC0, 0xFF]
    static let numbers = ["9223372036854775807", "9223372036854775808", "99999999999999999999", "-1", "+1", "0", "00",
                          "-9223372036854775808", "-9223372036854775809", "1.0", "0.1000000000"]
    static let badUTF8: [[UInt8]] = [[0x80], [0xC0, 0xAF], [0xE2, 0x82], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xFF], [0xCC, 0x81]]

    static func mutate(_ input: [UInt8], _ rng: inout SplitMix64, corpus: [[UInt8]], dictionary: [String]) -> [UInt8] {
        var b = input
        for _ in 0..<(1 + rng.below(4)) {
            let at = rng.below(b.count + 1)
            switch rng.below(12) {
            case 0 where !b.isEmpty: b[rng.below(b.count)] ^= UInt8(1) << UInt8(rng.below(8))
            case 1 where !b.isEmpty: b[rng.below(b.count)] = rng.chance(50) ? rng.pick(interesting) : UInt8(truncatingIfNeeded: rng.next())
            case 2: b.insert(rng.pick(interesting), at: at)
            case 3 where !b.isEmpty:
                let from = rng.below(b.count)
                b.removeSubrange(from..<min(b.count, from + 1 + rng.below(rng.chance(80) ? 4 : 100)))
            case 4 where !b.isEmpty:
                let from = rng.below(b.count)
                let slice = Array(b[from..<min(b.count, from + 1 + rng.below(40))])
                var run: [UInt8] = []
                for _ in 0..<(rng.chance(95) ? 1 + rng.below(4) : 1 + rng.below(200)) { run += slice }
                b.insert(contentsOf: run, at: at)
            case 5:
                let other = rng.pick(corpus)
                let cut = rng.below(other.count + 1)
                b = Array(b.prefix(at)) + (rng.chance(50) ? Array(other[cut...]) : Array(other.prefix(cut)))
            case 6: b = Array(b.prefix(rng.below(b.count + 1)))
            case 7:
                let number = Array(rng.pick(numbers).utf8)
                if let start = b.indices.filter({ (0x30...0x39).contains(b[$0]) }).randomElement(using: &rng) {
                    var end = start
                    while end < b.count && (0x30...0x39).contains(b[end]) { end += 1 }
                    b.replaceSubrange(start..<end, with: number)
                } else {
                    b.insert(contentsOf: number, at: at)
                }
            case 8: b.insert(contentsOf: Array(rng.pick(dictionary).utf8), at: at)
            case 9: b.insert(contentsOf: rng.pick(badUTF8), at: at)
            case 10:
                let n = rng.chance(90) ? rng.pick([2, 16, 64]) : rng.pick([255, 256, 4096])
                b.insert(contentsOf: [UInt8](repeating: rng.pick([0x61, 0x2F, 0x25, 0x20]), count: n), at: at)
            default: b.insert(UInt8(truncatingIfNeeded: rng.next()), at: at)
            }
        }
        return b
    }
}

private struct Outcome {
    var inputs = 0
    var counts: [String: Int] = [:]
    mutating func count(_ what: String) { counts[what, default: 0] += 1 }
    subscript(_ what: String) -> Int { counts[what, default: 0] }
}

/// Runs `iterations` inputs, or stops after `budget` once `minimum` have run; a failure names
/// the seed and the iteration.
private func fuzz(_ name: String, seed: UInt64, iterations: Int, minimum: Int, budget: Duration = .seconds(2),
                  file: StaticString = #filePath, line: UInt = #line,
                  _ body: (inout SplitMix64, inout Outcome) throws -> Void) -> Outcome {
    var outcome = Outcome()
    var failures = 0
    let clock = ContinuousClock()
    let start = clock.now
    for i in 0..<iterations {
        if i >= minimum && clock.now - start > budget { break }
        var rng = SplitMix64(seed: seed, iteration: i)
        do { try body(&rng, &outcome) } catch {
            failures += 1
            XCTFail("\(name) seed 0x\(String(seed, radix: 16)) iteration \(i): \(error)", file: file, line: line)
            if failures >= 5 { break }
        }
        outcome.inputs += 1
    }
    print("fuzz \(name): \(outcome.inputs) inputs in \(clock.now - start), \(outcome.counts.sorted { $0.key < $1.key })")
    return outcome
}

final class ManifestFuzzTests: XCTestCase {
    private static let names: [[UInt8]] = [
        "a", "b", "docs", "hello world.txt", "café", "100%", "a-b", "a.b", "a b", "x\ny", "-", "..a", ".hidden", "A", "z",
        "tab\there", "%41", "日本",
    ].map { Array($0.utf8) } + [[0xFF], [0x66, 0xFF, 0x0A, 0x25], [UInt8](repeating: 0x6E, count: 255), [0x2E, 0x2E, 0x2E]]

    /// A random valid tree: directories, files and symlinks with awkward names, modes, sizes,
    /// mtimes and targets, in manifest order.
    private static func randomManifest(_ rng: inout SplitMix64) -> Manifest {
        var entries: [Entry] = []
        func mtime(_ rng: inout SplitMix64) -> Timestamp {
            Timestamp(seconds: rng.chance(80) ? Int64(rng.below(2_000_000_000)) : rng.pick([-1, 0, .max, .min, -86400]),
                      nanoseconds: Int32(rng.below(1_000_000_000)))
        }
        func fill(_ dir: RemotePath, depth: Int, _ rng: inout SplitMix64) {
            var used: Set<[UInt8]> = []
            for _ in 0..<rng.below(depth == 0 ? 6 : 4) {
                let name = rng.pick(names)
                guard used.insert(name).inserted, let path = try? dir.appending(name: name) else { continue }
                switch rng.below(depth < 3 ? 3 : 2) {
                case 0:
                    entries.append(Entry(type: .file, mode: UInt32(rng.below(0o10000)),
                                         size: rng.chance(90) ? Int64(rng.below(1 << 20)) : .max, mtime: mtime(&rng), path: path,
                                         sha256: rng.chance(70) ? Hex.encode(rng.bytes(32)) : nil))
                case 1:
                    let target = rng.chance(50) ? Array("../x".utf8) : rng.bytes(1 + rng.below(12)).map { $0 == 0 ? 1 : $0 }
                    entries.append(Entry(type: .symlink, mode: 0o777, size: Int64(target.count), mtime: mtime(&rng), path: path, target: target))
                default:
                    entries.append(Entry(type: .directory, mode: UInt32(rng.below(0o10000)), size: 0, mtime: mtime(&rng), path: path))
                    fill(path, depth: depth + 1, &rng)
                }
            }
        }
        fill(.root, depth: 0, &rng)
        entries.sort { $0.path < $1.path }
        return Manifest(entries: entries)
    }

    private static let dictionary = ["ferry-manifest 1\n", "\nf 0644 1 1.000000000 - ", "\nd 0755 0 1.000000000 ",
                                     "\nl 0777 1 1.000000000 ", " ../x", "..", "/", "%2F", "%00", "%2E%2E", "\r\n", "\n",
                                     "1700000000.000000000", " - ", "\no 0644 0 1.000000000 x"]

    /// Line-level damage that keeps each line valid but breaks the manifest's structure.
    private static func damageStructure(_ text: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var lines = text.split(separator: 0x0A, omittingEmptySubsequences: false).map(Array.init)
        guard lines.count > 2 else { return text }
        let i = 1 + rng.below(lines.count - 2), j = 1 + rng.below(lines.count - 2)
        switch rng.below(5) {
        case 0: lines.swapAt(i, j)
        case 1: lines.insert(lines[i], at: i)
        case 2: lines.remove(at: i)
        case 3:
            // A directory becomes a file or symlink: its children are now orphans.
            if lines[i].first == 0x64 { lines[i][0] = rng.chance(50) ? 0x66 : 0x6C }
        default: lines[0] = Array(rng.pick(["ferry-manifest 2", "ferry-manifest 1 ", "", "FERRY-MANIFEST 1"]).utf8)
        }
        return Array(lines.joined(separator: [0x0A]))
    }

    func testGeneratedManifestsRoundTrip() throws {
        let o = fuzz("manifest round trip", seed: 0xF022_0101, iterations: 5_000, minimum: 300) { rng, o in
            let m = Self.randomManifest(&rng)
            guard let parsed = try ManifestFuzzChecks.checkManifest(m.text) else {
                throw GeneratorFailure("a valid generated manifest was refused: \(m.text.prefix(500).debugDescription)")
            }
            if parsed != m { throw GeneratorFailure("parse(text) differs from the manifest") }
            o.count(m.entries.isEmpty ? "empty" : "entries")
        }
        XCTAssertGreaterThan(o["entries"], o.inputs / 2)
    }

    func testManifestParserOnMutatedAndRandomText() {
        var rng0 = SplitMix64(seed: 0xF022_0102, iteration: -1)
        let corpus = (0..<40).map { _ in Array(Self.randomManifest(&rng0).text.utf8) }
            + [Array("ferry-manifest 1\n".utf8), Array("ferry-manifest 1".utf8), []]
        let o = fuzz("manifest text", seed: 0xF022_0102, iterations: 30_000, minimum: 1_500) { rng, o in
            var input = rng.pick(corpus)
            switch rng.below(10) {
            case 0: input = Array("ferry-manifest 1\n".utf8) + rng.bytes(rng.below(200))
            case 1, 2: input = Self.damageStructure(input, &rng)
            default: input = Mutator.mutate(input, &rng, corpus: corpus, dictionary: Self.dictionary)
            }
            let accepted = try ManifestFuzzChecks.checkManifest(String(decoding: input, as: UTF8.self))
            o.count(accepted == nil ? "refused" : "accepted")
        }
        XCTAssertGreaterThan(o["accepted"], o.inputs / 20, "the mutations must keep some manifests valid")
        XCTAssertGreaterThan(o["refused"], o.inputs / 4)
    }

    /// A large manifest (20,000 entries, about 1 MB of text) parses in bounded time, and the
    /// same manifest refused on its last line costs no more.
    func testLargeManifestsParseInBoundedTime() throws {
        var text = Manifest.header + "\n"
        text.reserveCapacity(1_200_000)
        for d in 0..<20 {
            text += "d 0755 0 1700000000.000000000 dir\(d + 1000)\n"
            for f in 0..<999 {
                text += "f 0644 12 1700000000.000000000 - dir\(d + 1000)/file\(f + 1000)\n"
            }
        }
        let clock = ContinuousClock()
        let start = clock.now
        let m = try Manifest.parse(text)
        let elapsed = clock.now - start
        XCTAssertEqual(m.entries.count, 20_000)
        XCTAssertLessThan(elapsed, .seconds(20), "20,000 entries took \(elapsed)")
        print("manifest of 20,000 entries (\(text.utf8.count) bytes) parsed in \(elapsed)")
        let broken = text + "f 0644 12 1700000000.000000000 - ../escape\n"
        let again = clock.now
        XCTAssertThrowsError(try Manifest.parse(broken))
        XCTAssertLessThan(clock.now - again, elapsed * 3 + .seconds(1))
    }
}

/// A plain error with a message, for the round-trip test's own failures.
private struct GeneratorFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

final class ChunkDecoderFuzzTests: XCTestCase {
    private static func payload(_ rng: inout SplitMix64) -> [UInt8] {
        let n = rng.chance(95) ? 1 + rng.below(2000) : 1 + rng.below(70_000)
        switch rng.below(4) {
        case 0: return rng.bytes(n)
        case 1: return [UInt8](repeating: UInt8(truncatingIfNeeded: rng.next()), count: n)
        default:
            let words = ["ferry ", "chunk ", "the ", "sync ", "\n", "0123456789", "zlib "]
            var out: [UInt8] = []
            while out.count < n { out += Array(rng.pick(words).utf8) }
            return Array(out.prefix(n))
        }
    }

    private static let decisions: [ChunkDecision] = [
        .store, .sampleThenCompress(.zlib(1)), .compress(.zlib(1)), .compress(.zlib(6)), .compress(.zlib(9)),
        .sampleThenCompress(.zstd(1)), .compress(.zstd(-5)), .compress(.zstd(1)), .compress(.zstd(3)), .compress(.zstd(19)),
    ]

    func testEncodedChunksRoundTripAndFlippedBytesAreCaught() {
        let o = fuzz("chunk round trip", seed: 0xF022_0201, iterations: 10_000, minimum: 500) { rng, o in
            let raw = Self.payload(&rng)
            let flip = rng.chance(60) ? (position: rng.below(1 << 30), mask: UInt8(1 + rng.below(255))) : nil
            try ChunkFuzzChecks.checkRoundTrip(raw, decision: rng.pick(Self.decisions), offset: Int64(rng.below(1 << 40)), flip: flip)
            o.count(flip == nil ? "clean" : "flipped")
        }
        XCTAssertGreaterThan(o["flipped"], o.inputs / 3)
    }

    /// Headers and wires damaged the way a lying or broken server would: lengths off by a
    /// little or a lot, wrong CRCs, truncated, extended, spliced or random streams, stored
    /// chunks relabelled as another codec. The decoder must agree with the specification.
    func testDamagedChunksAgreeWithTheSpecification() {
        let o = fuzz("damaged chunks", seed: 0xF022_0202, iterations: 20_000, minimum: 1_000) { rng, o in
            let raw = Self.payload(&rng)
            var encoder = ChunkEncoder(rng.pick(Self.decisions))
            let (h0, buffer) = raw.withUnsafeBytes { encoder.encode(raw: $0, offset: Int64(rng.below(1 << 30)), allocator: ByteBufferAllocator()) }
            var header = h0
            var wire = Array(buffer.readableBytesView)
            for _ in 0..<(1 + rng.below(3)) {
                switch rng.below(10) {
                case 0: header.rawLength = max(1, header.rawLength + rng.pick([-1, 1, -100, 100, 1 << 20]))
                case 1: header.crc32 ^= UInt32(1) << UInt32(rng.below(32))
                case 2: wire = Array(wire.prefix(rng.below(wire.count + 1)))
                case 3: wire += rng.chance(50) ? [0] : rng.bytes(1 + rng.below(50))
                case 4 where !wire.isEmpty: wire[rng.below(wire.count)] ^= UInt8(1 + rng.below(255))
                case 5: header.codec = rng.pick(ChunkCodec.allCases)
                case 6: wire = rng.bytes(1 + rng.below(300))
                case 7 where !wire.isEmpty:
                    let cut = rng.below(wire.count)
                    wire = Array(wire[..<cut]) + Array(wire[cut...].dropFirst(rng.below(8)))
                default: break
                }
                // The client only ever decodes what its framing delivered: wireLength bytes.
                header.wireLength = rng.chance(90) ? wire.count : max(1, wire.count + rng.pick([-1, 1]))
            }
            if (try? ChunkHeader.parse(Substring(header.line))) == nil { o.count("header refused"); return }
            o.count(try ChunkFuzzChecks.checkChunk(header, wire) ? "accepted" : "refused")
        }
        XCTAssertGreaterThan(o["refused"], o.inputs / 3)
        XCTAssertGreaterThan(o["accepted"], o.inputs / 50, "some damage is harmless (a no-op) and must still decode")
    }

    /// Resets the peak resident size the kernel reports (Linux).
    private func resetPeakRSS() -> Bool {
        guard let f = fopen("/proc/self/clear_refs", "w") else { return false }
        defer { fclose(f) }
        return fputs("5", f) >= 0
    }

    /// Peak resident size in bytes since the last reset (Linux), or nil.
    private func peakRSS() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kb = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else { return nil }
        return kb * 1024
    }

    /// One zlib stream that inflates to `size` zero bytes, deflated in slices so that making
    /// it costs no more memory than the result.
    private func zeroBomb(size: Int) -> [UInt8] {
        var stream = z_stream()
        XCTAssertEqual(deflateInit_(&stream, 9, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)), Z_OK)
        defer { deflateEnd(&stream) }
        let zeros = [UInt8](repeating: 0, count: 1 << 20)
        var out: [UInt8] = []
        var slice = [UInt8](repeating: 0, count: 1 << 16)
        var fed = 0
        while true {
            let last = fed + zeros.count >= size
            let take = min(zeros.count, size - fed)
            fed += take
            var r: Int32 = Z_OK
            zeros.withUnsafeBufferPointer { z in
                stream.next_in = UnsafeMutablePointer(mutating: z.baseAddress)
                stream.avail_in = uInt(take)
                repeat {
                    slice.withUnsafeMutableBufferPointer { s in
                        stream.next_out = s.baseAddress
                        stream.avail_out = uInt(s.count)
                        r = deflate(&stream, last ? Z_FINISH : Z_NO_FLUSH)
                        out += s.prefix(s.count - Int(stream.avail_out))
                    }
                } while stream.avail_out == 0 || (last && r != Z_STREAM_END)
            }
            if last { break }
        }
        return out
    }

    /// A zlib bomb: a small wire that inflates far beyond what its header announces. The
    /// header can announce at most 4 MiB (a larger claim is refused before any payload is
    /// read); the decoder stops at the announced length and refuses the chunk, without
    /// allocating more than that length, and quickly.
    func testZlibBombsAreRefusedWithinTheAnnouncedLength() throws {
        let inflated = 256 << 20
        let bomb = zeroBomb(size: inflated)
        XCTAssertLessThan(bomb.count, inflated / 500, "the bomb's compression ratio")
        let crcOfZeros = ChunkFuzzChecks.crc32([UInt8](repeating: 0, count: FerryLimits.maxChunkRaw))

        // Announcing the truth is refused by the header parser: raw length above the limit.
        XCTAssertThrowsError(try ChunkHeader.parse(Substring("CHUNK 0 \(inflated) \(bomb.count) z 00000000")))
        // Announcing the maximum: the wire fits in the header's bounds, the stream does not fit the length.
        let header = try ChunkHeader.parse(Substring(ChunkHeader(offset: 0, rawLength: FerryLimits.maxChunkRaw, wireLength: bomb.count,
                                                                 codec: .zlib, crc32: crcOfZeros).line))
        let measured = resetPeakRSS()
        let before = peakRSS() ?? 0
        let clock = ContinuousClock()
        let start = clock.now
        XCTAssertFalse(try ChunkFuzzChecks.checkChunk(header, bomb), "a bomb was accepted")
        do {
            _ = try ChunkDecoder.decode(header: header, wire: ByteBuffer(bytes: bomb))
            XCTFail("a bomb was accepted")
        } catch {
            guard case .decompress(_, let why) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(why.contains("more than announced"), why)
        }
        let elapsed = clock.now - start
        XCTAssertLessThan(elapsed, .seconds(5), "refusing a bomb took \(elapsed)")
        if measured, let after = peakRSS() {
            // The destination (4 MiB), the reference check's copy (4 MiB + 1) and the wire: far
            // below the 256 MiB the stream would inflate to.
            XCTAssertLessThan(after - before, 64 << 20, "peak resident size grew by \((after - before) >> 20) MiB")
            print("zlib bomb: \(bomb.count) wire bytes for \(inflated >> 20) MiB, refused in \(elapsed), peak RSS +\((after - before) >> 10) KiB")
        }

        // The same stream cut to the first 4 MiB of output exactly is a valid chunk: the
        // decoder's limit is the announced length, not a heuristic on the ratio.
        let exact = zeroBomb(size: FerryLimits.maxChunkRaw)
        let exactHeader = ChunkHeader(offset: 0, rawLength: FerryLimits.maxChunkRaw, wireLength: exact.count, codec: .zlib, crc32: crcOfZeros)
        XCTAssertTrue(try ChunkFuzzChecks.checkChunk(exactHeader, exact))
    }

    /// One zstd frame of `size` zero bytes (streamed in slices, so making it costs no more memory
    /// than the result), its header declaring that size.
    private func zstdZeroFrame(size: Int) throws -> [UInt8] {
        let context = try XCTUnwrap(ZSTD_createCCtx())
        defer { ZSTD_freeCCtx(context) }
        XCTAssertEqual(ZSTD_isError(ZSTD_CCtx_setPledgedSrcSize(context, UInt64(size))), 0)
        let zeros = [UInt8](repeating: 0, count: 1 << 20)
        var out: [UInt8] = []
        var slice = [UInt8](repeating: 0, count: 1 << 16)
        var fed = 0
        while fed < size {
            let take = min(zeros.count, size - fed)
            fed += take
            let mode = fed == size ? ZSTD_e_end : ZSTD_e_continue
            zeros.withUnsafeBytes { z in
                var input = ZSTD_inBuffer(src: z.baseAddress, size: take, pos: 0)
                var left = 0
                repeat {
                    slice.withUnsafeMutableBytes { s in
                        var output = ZSTD_outBuffer(dst: s.baseAddress, size: s.count, pos: 0)
                        left = ZSTD_compressStream2(context, &output, &input, mode)
                        XCTAssertEqual(ZSTD_isError(left), 0)
                        out += s.prefix(output.pos)
                    }
                } while input.pos < input.size || (mode == ZSTD_e_end && left != 0 && ZSTD_isError(left) == 0)
            }
        }
        return out
    }

    /// `frame` with the content size in its header replaced by `size` (a lie the frame's blocks
    /// do not keep); nil when the header's size field is too narrow for it.
    private func declaring(_ frame: [UInt8], size: UInt64) -> [UInt8]? {
        let descriptor = frame[4]
        let singleSegment = descriptor & 0x20 != 0
        let field = [singleSegment ? 1 : 0, 2, 4, 8][Int(descriptor >> 6)]
        let at = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][Int(descriptor & 0x03)]
        guard field >= 4 else { return nil }
        var lying = frame
        for i in 0..<field { lying[at + i] = UInt8(truncatingIfNeeded: size >> (8 * UInt64(i))) }
        return lying
    }

    /// zstd bombs, refused as zlib's are: a small frame honestly declaring 256 MiB is refused
    /// from its header; one whose header lies that it holds the announced 4 MiB is refused when
    /// its blocks run past the destination. Neither allocates more than the announced length.
    func testZstdBombsAreRefusedWithinTheAnnouncedLength() throws {
        let inflated = 256 << 20
        let bomb = try zstdZeroFrame(size: inflated)
        XCTAssertLessThan(bomb.count, inflated / 10_000, "the bomb's compression ratio")
        XCTAssertEqual(bomb.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress, $0.count) }, UInt64(inflated))
        let lying = try XCTUnwrap(declaring(bomb, size: UInt64(FerryLimits.maxChunkRaw)))
        XCTAssertEqual(lying.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress, $0.count) }, UInt64(FerryLimits.maxChunkRaw))
        let crcOfZeros = ChunkFuzzChecks.crc32([UInt8](repeating: 0, count: FerryLimits.maxChunkRaw))

        let measured = resetPeakRSS()
        let before = peakRSS() ?? 0
        let clock = ContinuousClock()
        let start = clock.now
        for (wire, expected) in [(bomb, "more than announced"), (lying, "corrupt zstd frame")] {
            let header = try ChunkHeader.parse(Substring(ChunkHeader(offset: 0, rawLength: FerryLimits.maxChunkRaw, wireLength: wire.count,
                                                                     codec: .zstd, crc32: crcOfZeros).line))
            XCTAssertFalse(try ChunkFuzzChecks.checkChunk(header, wire), "a bomb was accepted")
            do {
                _ = try ChunkDecoder.decode(header: header, wire: ByteBuffer(bytes: wire))
                XCTFail("a bomb was accepted")
            } catch {
                guard case .decompress(_, let why) = error else { return XCTFail("\(error)") }
                XCTAssertTrue(why.contains(expected), why)
            }
        }
        let elapsed = clock.now - start
        XCTAssertLessThan(elapsed, .seconds(5), "refusing the bombs took \(elapsed)")
        if measured, let after = peakRSS() {
            XCTAssertLessThan(after - before, 64 << 20, "peak resident size grew by \((after - before) >> 20) MiB")
            print("zstd bombs: \(bomb.count) wire bytes for \(inflated >> 20) MiB, refused in \(elapsed), peak RSS +\((after - before) >> 10) KiB")
        }

        // A frame of exactly the announced length is a valid chunk.
        let exact = try zstdZeroFrame(size: FerryLimits.maxChunkRaw)
        let exactHeader = ChunkHeader(offset: 0, rawLength: FerryLimits.maxChunkRaw, wireLength: exact.count, codec: .zstd, crc32: crcOfZeros)
        XCTAssertTrue(try ChunkFuzzChecks.checkChunk(exactHeader, exact))
    }
}
#endif
