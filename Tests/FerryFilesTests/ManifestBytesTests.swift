// The byte-level manifest parser and producer against the String-based ones they replaced.
//
// `Legacy` below is the previous implementation, copied verbatim in substance (String and
// Character parsing, `split`, `Set<RemotePath>` for parents, per-entry interpolation), kept
// here only as the reference: for every input that can be a String (valid UTF-8) the new
// parser must return the same manifest or the same error, and the new producer the same text.

import FerryFiles
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

// MARK: - The previous implementation (reference)

private enum Legacy {
    static func validate(_ raw: [UInt8]) throws(RemotePath.Invalid) -> [UInt8] {
        if raw.isEmpty || raw == [0x2E] { return [] }
        if raw.count > FerryLimits.maxPathBytes { throw .tooLong }
        if raw.first == 0x2F { throw .absolute }
        if raw.contains(0) { throw .nul }
        for component in raw.split(separator: 0x2F, omittingEmptySubsequences: false) {
            if component.isEmpty { throw .emptyComponent }
            if component.elementsEqual([0x2E, 0x2E]) { throw .dotDot }
            if component.elementsEqual([0x2E]) { throw .dot }
            if component.count > FerryLimits.maxComponentBytes { throw .componentTooLong }
        }
        return raw
    }

    static func decode(_ text: Substring) -> [UInt8]? {
        var out: [UInt8] = []
        var it = text.utf8.makeIterator()
        func hexValue(_ b: UInt8) -> UInt8? {
            switch b {
            case 0x30...0x39: return b - 0x30
            case 0x41...0x46: return b - 0x41 + 10
            case 0x61...0x66: return b - 0x61 + 10
            default: return nil
            }
        }
        while let b = it.next() {
            if b == 0x25 {
                guard let h = it.next().flatMap(hexValue), let l = it.next().flatMap(hexValue) else { return nil }
                out.append(h << 4 | l)
            } else if b <= 0x20 || b == 0x7F {
                return nil
            } else {
                out.append(b)
            }
        }
        return out
    }

    static func containsEncodedSlash(_ text: Substring) -> Bool {
        let u = Array(text.utf8)
        var i = 0
        while i + 2 < u.count {
            if u[i] == 0x25 && u[i + 1] == 0x32 && (u[i + 2] == 0x46 || u[i + 2] == 0x66) { return true }
            i += 1
        }
        return false
    }

    static func path(wire: Substring) throws(RemotePath.Invalid) -> RemotePath {
        guard let raw = decode(wire) else { throw .badEncoding }
        if containsEncodedSlash(wire) { throw .badEncoding }
        let valid = try validate(raw)
        return try RemotePath(validating: valid)
    }

    static func timestamp(_ text: Substring) -> Timestamp? {
        guard let dot = text.firstIndex(of: ".") else { return nil }
        let secText = text[..<dot]
        let nsText = text[text.index(after: dot)...]
        guard nsText.count == 9, nsText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let ns = Int32(nsText) else { return nil }
        var digits = secText
        if digits.first == "-" { digits = digits.dropFirst() }
        guard !digits.isEmpty, digits.count <= 19, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
              let s = Int64(secText) else { return nil }
        return Timestamp(seconds: s, nanoseconds: ns)
    }

    static func number(_ text: Substring) -> Int64? {
        guard !text.isEmpty, text.utf8.count <= 19 else { return nil }
        var value: Int64 = 0
        for b in text.utf8 {
            guard b >= 0x30, b <= 0x39 else { return nil }
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int64(b - 0x30))
            if o1 || o2 { return nil }
            value = a
        }
        return value
    }

    static func entry(_ line: Substring, manifest: Bool) throws(Entry.ParseError) -> Entry {
        let f = line.split(separator: " ", omittingEmptySubsequences: false)
        guard f.count >= 5, let type = EntryType(rawValue: String(f[0])) else {
            throw .malformed("expected 'type mode size mtime path'")
        }
        if manifest && type == .other { throw .malformed("type 'o' is not allowed in a manifest") }
        guard f[1].utf8.count == 4, f[1].utf8.allSatisfy({ (0x30...0x37).contains($0) }),
              let mode = UInt32(f[1], radix: 8), mode <= 0o7777 else {
            throw .malformed("bad mode '\(f[1].prefix(16))'")
        }
        guard let size = number(f[2]) else { throw .malformed("bad size '\(f[2].prefix(24))'") }
        guard let mtime = timestamp(f[3]) else { throw .malformed("bad mtime '\(f[3].prefix(32))'") }
        var rest = f[4...]
        var sha: String?
        if manifest && type == .file {
            guard let h = rest.popFirst(), h == "-" || isSHA256Hex(h) else { throw .malformed("bad sha256") }
            sha = h == "-" ? nil : String(h)
        }
        guard let pathField = rest.popFirst() else { throw .malformed("missing path") }
        let path: RemotePath
        do { path = try Legacy.path(wire: pathField) } catch { throw .badPath(error) }
        if manifest && path.isRoot { throw .malformed("the root is not listed in a manifest") }
        var target: [UInt8]?
        if type == .symlink {
            guard let t = rest.popFirst(), let raw = decode(t), !raw.isEmpty, !raw.contains(0) else {
                throw .malformed("symlink without a valid target")
            }
            target = raw
        }
        guard rest.isEmpty else { throw .malformed("unexpected extra fields") }
        if type != .file && type != .symlink && size != 0 { throw .malformed("non-file with a size") }
        return Entry(type: type, mode: mode, size: size, mtime: mtime, path: path, target: target, sha256: sha)
    }

    static func parse(_ text: String) throws(Manifest.ParseError) -> Manifest {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        if lines.last == "" { lines.removeLast() }
        guard let first = lines.first, first == Manifest.header else { throw .badHeader }
        guard lines.count - 1 <= FerryLimits.maxManifestEntries else { throw .tooManyEntries }
        var entries: [Entry] = []
        var directories: Set<RemotePath> = [.root]
        for (i, line) in lines.dropFirst().enumerated() {
            let number = i + 2
            let entry: Entry
            do { entry = try Legacy.entry(line, manifest: true) } catch { throw .badLine(number: number, error) }
            if let last = entries.last, !(last.path < entry.path) { throw .unsorted(number: number) }
            guard let parent = entry.path.parent, directories.contains(parent) else { throw .orphan(number: number) }
            if entry.type == .directory { directories.insert(entry.path) }
            entries.append(entry)
        }
        return Manifest(entries: entries)
    }

    static func encode(_ bytes: [UInt8]) -> String {
        var out = ""
        for b in bytes {
            if b <= 0x20 || b >= 0x7F || b == 0x25 {
                out += "%" + String(b, radix: 16, uppercase: true).leftPadded(2)
            } else {
                out += String(UnicodeScalar(b))
            }
        }
        return out
    }

    static func line(_ e: Entry, manifest: Bool) -> String {
        let mode = String(e.mode & 0o7777, radix: 8).leftPadded(4)
        let mtime = "\(e.mtime.seconds)." + String(e.mtime.nanoseconds).leftPadded(9)
        let path = e.path.isRoot ? "." : encode(e.path.bytes)
        var s = "\(e.type.rawValue) \(mode) \(e.size) \(mtime) "
        if manifest && e.type == .file { s += (e.sha256 ?? "-") + " " }
        s += path
        if let t = e.target { s += " " + encode(t) }
        return s
    }

    static func text(_ m: Manifest) -> String {
        var s = Manifest.header + "\n"
        for e in m.entries { s += line(e, manifest: true) + "\n" }
        return s
    }
}

private extension String {
    func leftPadded(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}

private func result(_ body: () throws(Manifest.ParseError) -> Manifest) -> Result<Manifest, Manifest.ParseError> {
    do throws(Manifest.ParseError) { return .success(try body()) } catch { return .failure(error) }
}

// MARK: - Generated trees

private struct TreeGenerator {
    var rng: SplitMix64
    let sha = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"

    mutating func name() -> [UInt8] {
        switch rng.below(10) {
        case 0: return Array("café \(rng.below(100))".utf8)
        case 1: return [0x66, 0xFF, 0x0A, 0x25, UInt8(0x30 + rng.below(10))]  // not UTF-8, LF, %
        case 2: return Array("a-b.\(rng.below(1000))".utf8)
        case 3: return Array("x\(rng.below(10))".utf8) + [0x20, 0x7F, 0x01]
        case 4: return [UInt8](repeating: 0x61, count: 1 + rng.below(255))
        case 5: return Array("%2F%00..\(rng.below(10))".utf8)
        default: return Array("n\(rng.below(100_000))".utf8)
        }
    }

    mutating func mtime() -> Timestamp {
        switch rng.below(6) {
        case 0: return Timestamp(seconds: -Int64(rng.below(1_000_000_000)), nanoseconds: Int32(rng.below(1_000_000_000)))
        case 1: return Timestamp(seconds: .max, nanoseconds: 999_999_999)
        case 2: return Timestamp(seconds: .min, nanoseconds: 0)
        default: return Timestamp(seconds: 1_700_000_000 + Int64(rng.below(100_000)), nanoseconds: Int32(rng.below(1_000_000_000)))
        }
    }

    /// A sorted manifest of a random tree, as a server would produce it.
    mutating func manifest(entries count: Int) -> Manifest {
        var out: [Entry] = []
        func fill(_ prefix: RemotePath, depth: Int, budget: inout Int, into out: inout [Entry], _ g: inout TreeGenerator) {
            var names = Set<[UInt8]>()
            let n = 1 + g.rng.below(8)
            for _ in 0..<n { names.insert(g.name()) }
            var children: [(RemotePath, Int)] = []
            for name in names.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
                guard let p = try? prefix.appending(name: name) else { continue }
                children.append((p, g.rng.below(10)))
            }
            children.sort { $0.0 < $1.0 }
            for (p, kind) in children where budget > 0 {
                budget -= 1
                switch kind {
                case 0...4:
                    let size = g.rng.chance(10) ? Int64.max : Int64(g.rng.below(1 << 20))
                    out.append(Entry(type: .file, mode: UInt32(g.rng.below(0o10000)), size: size, mtime: g.mtime(), path: p,
                                     sha256: g.rng.chance(50) ? g.sha : nil))
                case 5, 6:
                    let target: [UInt8] = g.rng.chance(50) ? Array("../x y".utf8) : [0xFF, 0x0A, 0x25, 0x2F]
                    out.append(Entry(type: .symlink, mode: 0o777, size: Int64(target.count), mtime: g.mtime(), path: p, target: target))
                default:
                    out.append(Entry(type: .directory, mode: UInt32(g.rng.below(0o10000)), size: 0, mtime: g.mtime(), path: p))
                    if depth < 5 { fill(p, depth: depth + 1, budget: &budget, into: &out, &g) }
                }
            }
        }
        var budget = count
        var g = self
        fill(.root, depth: 0, budget: &budget, into: &out, &g)
        self = g
        return Manifest(entries: out)
    }
}

// MARK: - Tests

final class ManifestBytesTests: XCTestCase {
    private let sha = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"

    private func parseBytes(_ text: String) -> Result<Manifest, Manifest.ParseError> {
        result { () throws(Manifest.ParseError) in try Manifest.parse(bytes: Array(text.utf8)) }
    }

    private func parseBytes(_ bytes: [UInt8]) -> Result<Manifest, Manifest.ParseError> {
        result { () throws(Manifest.ParseError) in try Manifest.parse(bytes: bytes) }
    }

    private func legacy(_ text: String) -> Result<Manifest, Manifest.ParseError> {
        result { () throws(Manifest.ParseError) in try Legacy.parse(text) }
    }

    private func error(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> Manifest.ParseError? {
        switch parseBytes(text) {
        case .success(let m):
            XCTFail("accepted \(text.debugDescription) as \(m.entries.count) entries", file: file, line: line)
            return nil
        case .failure(let e):
            XCTAssertEqual(legacy(text), .failure(e), "the String parser disagrees on \(text.debugDescription)", file: file, line: line)
            XCTAssertEqual(result { () throws(Manifest.ParseError) in try Manifest.parse(text) }, .failure(e), file: file, line: line)
            return e
        }
    }

    /// The fixture tree's manifest: same text as the old producer, same parse as the old parser.
    func testFixtureManifest() throws {
        let scratch = try TestSupport.makeTemporaryDirectory("ferry-manifest-bytes")
        defer { TestSupport.removeTemporaryDirectory(scratch) }
        let sample = try TestSupport.materializeFixtures(in: scratch)
        let root = try LocalTree(path: sample.path, create: false)
        let entries = try TreeWalker.walk(directory: root.root.fd) { dirFD, name, entry, info in
            entry.sha256 = TreeWalker.hashFile(dirFD: dirFD, name: name, info: info, cache: nil, cachePath: entry.path)
        }
        XCTAssertGreaterThan(entries.count, 5)
        let manifest = Manifest(entries: entries)
        let text = manifest.text
        XCTAssertEqual(text, Legacy.text(manifest))
        XCTAssertEqual(manifest.bytes, Array(text.utf8))
        XCTAssertEqual(parseBytes(manifest.bytes), .success(manifest))
        XCTAssertEqual(legacy(text), .success(manifest))
        XCTAssertEqual(try Manifest.parse(text), manifest)
        // The walk's order is manifest order and every parent is listed.
        XCTAssertEqual(entries.map(\.path), entries.map(\.path).sorted())
    }

    /// Random trees: produce → parse gives the entries back, and both agree with the old code.
    func testRandomManifestsRoundTrip() throws {
        var g = TreeGenerator(rng: SplitMix64(seed: 0x4D41_4E49))
        for round in 0..<60 {
            let manifest = g.manifest(entries: 1 + round * 7)
            let bytes = manifest.bytes
            let text = Legacy.text(manifest)
            XCTAssertEqual(bytes, Array(text.utf8), "round \(round)")
            XCTAssertEqual(manifest.text, text)
            XCTAssertEqual(parseBytes(bytes), .success(manifest), "round \(round)")
            XCTAssertEqual(legacy(text), .success(manifest), "round \(round)")
            for e in manifest.entries {
                XCTAssertEqual(e.manifestLine, Legacy.line(e, manifest: true))
                XCTAssertEqual(e.line, Legacy.line(e, manifest: false))
            }
        }
    }

    /// Mutated manifests: the byte parser and the old String parser return the same manifest
    /// or the same error for every valid UTF-8 input; on other input the byte parser is at
    /// least as strict and never accepts something the old parser did not.
    func testMutatedManifestsAgreeWithStringParser() throws {
        var g = TreeGenerator(rng: SplitMix64(seed: 0x4D55_5441))
        let alphabet: [[UInt8]] = [[0x20], [0x0A], [0x0D], [0x25], [0x2F], [0x2E], [0x2D], [0x30], [0x37], [0x38], [0x39],
                                   [0x66], [0x64], [0x6C], [0x6F], [0x00], [0xFF], [0xC3, 0xA9], [0xC3], [0xED, 0xA0, 0x80],
                                   [0xC0, 0xAF], Array("%2F".utf8), Array("%00".utf8), Array("%zz".utf8), Array("..".utf8),
                                   [0x09], Array("99999999999999999999".utf8), [0x20, 0xCC, 0x81]]
        var exact = 0, stricter = 0, accepted = 0
        for _ in 0..<1500 {
            var bytes = g.manifest(entries: 1 + g.rng.below(12)).bytes
            for _ in 0..<(1 + g.rng.below(3)) {
                let at = g.rng.below(bytes.count + 1)
                switch g.rng.below(4) {
                case 0 where at < bytes.count: bytes.remove(at: at)
                case 1 where at < bytes.count: bytes.replaceSubrange(at..<(at + 1), with: g.rng.pick(alphabet))
                case 2 where at < bytes.count:
                    // Swap two lines' worth: move a byte range elsewhere (reorders entries).
                    let end = min(bytes.count, at + g.rng.below(60))
                    let cut = Array(bytes[at..<end])
                    bytes.removeSubrange(at..<end)
                    bytes.insert(contentsOf: cut, at: g.rng.below(bytes.count + 1))
                default: bytes.insert(contentsOf: g.rng.pick(alphabet), at: at)
                }
            }
            let new = parseBytes(bytes)
            if case .success = new { accepted += 1 }
            // The old parser split on Characters: "\r\n" was one (no line break), and so was a
            // space with a combining mark after it or a prepended mark before it (no field
            // break). Those inputs are compared for agreement only when both accept.
            let graphemeJoin = bytes.contains(0x0D) || bytes.indices.contains { i in
                bytes[i] == 0x20 && ((i > 0 && bytes[i - 1] >= 0x80) || (i + 1 < bytes.count && bytes[i + 1] >= 0x80))
            }
            if let text = String(validating: bytes, as: UTF8.self) {
                XCTAssertEqual(result { () throws(Manifest.ParseError) in try Manifest.parse(text) }, new)
                if !graphemeJoin {
                    XCTAssertEqual(new, legacy(text), "\(text.debugDescription)")
                    exact += 1
                } else if case .success(let m) = new, case .success(let old) = legacy(text) {
                    XCTAssertEqual(m, old)
                }
            } else {
                if case .success(let m) = new {
                    XCTAssertEqual(legacy(String(decoding: bytes, as: UTF8.self)), .success(m))
                }
                stricter += 1
            }
        }
        XCTAssertGreaterThan(exact, 300)
        XCTAssertGreaterThan(stricter, 100)
        XCTAssertGreaterThan(accepted, 50)
    }

    /// A manifest of 9,000 entries, whole and broken anywhere (once in two places): the same
    /// manifest, and for a broken one the same error (the first by line number), as the old
    /// String parser gives.
    func testLargeManifestsAgree() throws {
        var g = TreeGenerator(rng: SplitMix64(seed: 0x4841_4C46))
        // 30 directories of 300 entries each, with the generator's names, modes, sizes and times.
        var entries: [Entry] = []
        for d in 0..<30 {
            let dir = try RemotePath(validating: Array("d\(d)".utf8))
            entries.append(Entry(type: .directory, mode: 0o755, size: 0, mtime: g.mtime(), path: dir))
            var names = Set<[UInt8]>()
            while names.count < 300 { names.insert(g.name()) }
            for name in names {
                guard let path = try? dir.appending(name: name) else { continue }
                entries.append(Entry(type: .file, mode: UInt32(g.rng.below(0o10000)), size: Int64(g.rng.below(1 << 30)),
                                     mtime: g.mtime(), path: path, sha256: g.rng.chance(50) ? g.sha : nil))
            }
        }
        entries.sort { $0.path < $1.path }
        let manifest = Manifest(entries: entries)
        let bytes = manifest.bytes
        XCTAssertGreaterThan(entries.count, 8_000)
        XCTAssertEqual(parseBytes(bytes), .success(manifest))
        let alphabet: [UInt8] = [0x20, 0x0A, 0x25, 0x2F, 0x2E, 0x2D, 0x30, 0x39, 0x66, 0x64, 0x6C, 0x09]
        var failures = Set<String>()
        for round in 0..<24 {
            // One to three changes anywhere in the text.
            let mutated = g.rng.mutated(bytes, alphabet: alphabet.map { [$0] })
            let text = String(decoding: mutated, as: UTF8.self)
            let new = parseBytes(mutated)
            XCTAssertEqual(new, legacy(text), "round \(round)")
            if case .failure(let e) = new { failures.insert("\(e)") }
        }
        XCTAssertGreaterThan(failures.count, 6)
        // Two broken lines far apart: the earlier one is reported.
        var lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false).map(Array.init)
        lines[7_000] = Array("x".utf8)
        lines[100] = Array("y".utf8)
        let twoBroken = Array(lines.joined(separator: [0x0A]))
        guard case .failure(.badLine(let number, _)) = parseBytes(twoBroken) else { return XCTFail("accepted") }
        XCTAssertEqual(number, 101)
        XCTAssertEqual(legacy(String(decoding: twoBroken, as: UTF8.self)), parseBytes(twoBroken))
    }

    func testRejections() {
        let h = Manifest.header + "\n"
        let f = "f 0644 1 1.000000000 \(sha) "
        // Header.
        XCTAssertEqual(error(""), .badHeader)
        XCTAssertEqual(error("\n"), .badHeader)
        XCTAssertEqual(error("ferry-manifest 2\n"), .badHeader)
        XCTAssertEqual(error("ferry-manifest 1 \n"), .badHeader)
        XCTAssertEqual(error("ferry-manifest 1\r\nd 0755 0 1.000000000 a\r\n"), .badHeader)
        XCTAssertEqual(error(" ferry-manifest 1\n"), .badHeader)
        // Numbers.
        let malformed: [(String, String)] = [
            ("f 0644 -1 1.000000000 - a", "bad size '-1'"),
            ("f 0644 +1 1.000000000 - a", "bad size '+1'"),
            ("f 0644 1k 1.000000000 - a", "bad size '1k'"),
            ("f 0644 9223372036854775808 1.000000000 - a", "bad size '9223372036854775808'"),
            ("f 0644 99999999999999999999 1.000000000 - a", "bad size '99999999999999999999'"),
            ("f 0644 ١ 1.000000000 - a", "bad size '١'"),
            ("f 0648 1 1.000000000 - a", "bad mode '0648'"),
            ("f 644 1 1.000000000 - a", "bad mode '644'"),
            ("f 00644 1 1.000000000 - a", "bad mode '00644'"),
            ("f 06٤4 1 1.000000000 - a", "bad mode '06٤4'"),
            ("f 0644 1 1.00000000 - a", "bad mtime '1.00000000'"),
            ("f 0644 1 1.0000000000 - a", "bad mtime '1.0000000000'"),
            ("f 0644 1 1 - a", "bad mtime '1'"),
            ("f 0644 1 +1.000000000 - a", "bad mtime '+1.000000000'"),
            ("f 0644 1 --1.000000000 - a", "bad mtime '--1.000000000'"),
            ("f 0644 1 -.000000000 - a", "bad mtime '-.000000000'"),
            ("f 0644 1 1.000000000.0 - a", "bad mtime '1.000000000.0'"),
            ("f 0644 1 99999999999999999999.000000000 - a", "bad mtime '99999999999999999999.000000000'"),
            ("f 0644 1 -9223372036854775809.000000000 - a", "bad mtime '-9223372036854775809.000000000'"),
            ("f 0644 1 1.000000000 \(sha.uppercased()) a", "bad sha256"),
            ("f 0644 1 1.000000000 \(sha.dropLast()) a", "bad sha256"),
            ("f 0644 1 1.000000000 -- a", "bad sha256"),
            ("f 0644 1 1.000000000 - ", "the root is not listed in a manifest"),  // empty path field
            ("d 0755 0 1.000000000 .", "the root is not listed in a manifest"),
            ("f 0644 1 1.000000000 \(sha)", "missing path"),
            ("f  0644 1 1.000000000 - a", "bad mode ''"),  // empty field
            ("f 0644 1 1.000000000 - a ", "unexpected extra fields"),  // trailing space
            ("d 0755 0 1.000000000 a b", "unexpected extra fields"),
            ("d 0755 1 1.000000000 a", "non-file with a size"),
            ("o 0644 0 1.000000000 a", "type 'o' is not allowed in a manifest"),
            ("x 0644 0 1.000000000 a", "expected 'type mode size mtime path'"),
            ("f 0644 0 1.000000000", "expected 'type mode size mtime path'"),
            ("l 0777 1 1.000000000 a", "symlink without a valid target"),
            ("l 0777 1 1.000000000 a %00", "symlink without a valid target"),
            ("l 0777 1 1.000000000 a %G0", "symlink without a valid target"),
            ("l 0777 1 1.000000000 a %4", "symlink without a valid target"),
            ("l 0777 1 1.000000000 a b\r", "symlink without a valid target"),
        ]
        for (line, why) in malformed {
            XCTAssertEqual(error(h + line + "\n"), .badLine(number: 2, .malformed(why)), line)
        }
        // Bad paths: encoding, CR, traversal.
        let paths: [(String, RemotePath.Invalid)] = [
            ("a%2Fb", .badEncoding), ("a%2fb", .badEncoding), ("a%zz", .badEncoding), ("a%4", .badEncoding), ("a%", .badEncoding),
            ("a\r", .badEncoding), ("a\u{7F}", .badEncoding), ("a\tb", .badEncoding), ("a%00", .nul), ("..", .dotDot),
            ("/a", .absolute), ("a//b", .emptyComponent), ("./a", .dot), ("a/", .emptyComponent),
            (String(repeating: "a", count: 256), .componentTooLong), (String(repeating: "a/", count: 2048) + "a", .tooLong),
            ("a%2F..", .badEncoding), ("a/..", .dotDot),
        ]
        for (path, why) in paths {
            XCTAssertEqual(error(h + "d 0755 0 1.000000000 " + path + "\n"), .badLine(number: 2, .badPath(why)), path.debugDescription)
        }
        // Order, duplicates, parents.
        XCTAssertEqual(error(h + "d 0755 0 1.000000000 b\nd 0755 0 1.000000000 a\n"), .unsorted(number: 3))
        XCTAssertEqual(error(h + "d 0755 0 1.000000000 a\nd 0755 0 1.000000000 a\n"), .unsorted(number: 3))
        XCTAssertEqual(error(h + "d 0755 0 1.000000000 a-b\nd 0755 0 1.000000000 a/x\n"), .unsorted(number: 3))  // '/' sorts first
        XCTAssertEqual(error(h + "d 0755 0 1.000000000 a\n" + f + "a-b\n" + f + "a-b/x\n"), .orphan(number: 4))
        let nested = h + "d 0755 0 1.000000000 a\nd 0755 0 1.000000000 a/b\nd 0755 0 1.000000000 a-b\n" + f + "a-b/x\n"
        XCTAssertEqual(parseBytes(nested).map(\.entries.count), .success(4))
        XCTAssertEqual(error(h + "d 0755 0 1.000000000 a/x\n"), .orphan(number: 2))
        XCTAssertEqual(error(h + f + "a\n" + f + "a/x\n"), .orphan(number: 3))  // beneath a file
        XCTAssertEqual(error(h + "l 0777 1 1.000000000 a b\n" + f + "a/x\n"), .orphan(number: 3))  // beneath a symlink
        XCTAssertEqual(error(h + "d 0755 0 1.000000000 a\n" + f + "a/b/c\n"), .orphan(number: 3))  // grandparent only
        XCTAssertEqual(error(h + "d 0755 0 1.000000000 a\nd 0755 0 1.000000000 a/b\n" + f + "a/c\n" + f + "a/c/d\n"), .orphan(number: 5))
        XCTAssertEqual(error(h + "d 0755 0 1.000000000 a\nd 0755 0 1.000000000 b\n" + f + "b/x\n" + f + "c\n"
                             + "d 0755 0 1.000000000 c/d\n"), .orphan(number: 6))
        // Blank and CRLF lines.
        XCTAssertEqual(error(h + "\n"), .badLine(number: 2, .malformed("expected 'type mode size mtime path'")))
        XCTAssertEqual(error(h + "d 0755 0 1.000000000 a\n\n"), .badLine(number: 3, .malformed("expected 'type mode size mtime path'")))
        XCTAssertEqual(error(h + "d 0755 0 1.000000000 a\r\n"), .badLine(number: 2, .badPath(.badEncoding)))
        // Accepted neighbours of the rejections: the last line may lack its LF, a directory's
        // contents come back to a shallower level, lowercase escapes and raw UTF-8 are read.
        let ok = h + "d 0755 0 1.000000000 a\nd 0755 0 1.000000000 a/b\n" + f + "a/b/c\n" + f + "a/c\n"
            + "d 0755 0 1.000000000 a-b\n" + f + "caf%c3%a9\n" + f + "café2\n" + "l 0777 1 -5.000000001 z %2F"
        XCTAssertEqual(parseBytes(ok), legacy(ok))
        guard case .success(let m) = parseBytes(ok) else { return XCTFail("refused \(ok)") }
        XCTAssertEqual(m.entries.count, 8)
        XCTAssertEqual(m.entries[5].path.bytes, Array("café".utf8))
        XCTAssertEqual(m.entries[7].target, [0x2F])
        XCTAssertEqual(m.entries[7].mtime, Timestamp(seconds: -5, nanoseconds: 1))
    }

    /// Bytes that are not UTF-8 are refused wherever they could otherwise pass.
    func testNonUTF8Refused() {
        let h = Array((Manifest.header + "\n").utf8)
        let d = Array("d 0755 0 1.000000000 ".utf8)
        for bad: [UInt8] in [[0xFF], [0xC3], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0x80]] {
            XCTAssertEqual(parseBytes(h + d + [0x61] + bad + [0x0A]), .failure(.badLine(number: 2, .badPath(.badEncoding))), "\(bad)")
            XCTAssertEqual(parseBytes(h + Array("l 0777 1 1.000000000 a ".utf8) + bad + [0x0A]),
                           .failure(.badLine(number: 2, .malformed("symlink without a valid target"))), "\(bad)")
            guard case .failure(.badLine(2, .malformed(let why))) = parseBytes(h + Array("d 07".utf8) + bad + Array("5 0 1.000000000 a\n".utf8)),
                  why.hasPrefix("bad mode '07\u{FFFD}") else { return XCTFail("\(bad)") }
        }
        XCTAssertEqual(parseBytes([0xEF, 0xBB, 0xBF] + h), .failure(.badHeader))  // a BOM is not the header
        // Valid raw UTF-8 (4 bytes too) is read as before.
        guard case .success(let m) = parseBytes(h + d + Array("𝄞é".utf8) + [0x0A]) else { return XCTFail() }
        XCTAssertEqual(m.entries[0].path.bytes, Array("𝄞é".utf8))
    }

    func testTooManyEntriesBeforeAnyLine() {
        // Counted before parsing: one more line than the limit, each malformed, is refused as too many.
        var bytes = Array((Manifest.header + "\n").utf8)
        bytes += [UInt8](repeating: 0x0A, count: FerryLimits.maxManifestEntries + 1)
        XCTAssertEqual(parseBytes(bytes), .failure(.tooManyEntries))
        bytes.removeLast()
        XCTAssertEqual(parseBytes(bytes), .failure(.badLine(number: 2, .malformed("expected 'type mode size mtime path'"))))
    }

    /// The byte helpers agree with the String ones on many tokens.
    func testFieldParsersAgree() {
        var rng = SplitMix64(seed: 0x4649_454C)
        let pieces = ["0", "1", "9", "-", "+", ".", "00", "922337203685477580", "7", "8", "a", " ", "é", "١", "000000000", "999999999"]
        for _ in 0..<20_000 {
            var s = ""
            for _ in 0..<rng.below(6) { s += rng.pick(pieces) }
            let sub = Substring(s)
            let bytes = Array(s.utf8)
            bytes.withUnsafeBufferPointer { b in
                XCTAssertEqual(Timestamp(wireBytes: b), Legacy.timestamp(sub), s)
                XCTAssertEqual(Timestamp(wireBytes: b), Timestamp(sub), s)
                XCTAssertEqual(parseWireNumber(bytes: b), Legacy.number(sub), s)
            }
        }
        for t in [Timestamp(seconds: .min, nanoseconds: 0), Timestamp(seconds: .max, nanoseconds: 999_999_999),
                  Timestamp(seconds: -1, nanoseconds: 5), Timestamp(seconds: 0, nanoseconds: 0)] {
            var out: [UInt8] = []
            t.appendWire(to: &out)
            XCTAssertEqual(String(decoding: out, as: UTF8.self), t.description)
        }
    }

    /// `RemotePath` validation (rewritten as one scan) and `appending(name:)` agree with the old
    /// code, error for error.
    func testPathValidationAgrees() {
        var rng = SplitMix64(seed: 0x5041_5448)
        let pieces: [[UInt8]] = [[0x2F], [0x2E], [0x2E, 0x2E], [0x00], [0x61], [0xFF], [0x25], [0x32, 0x46],
                                 [UInt8](repeating: 0x62, count: 200), [UInt8](repeating: 0x63, count: 1000)]
        func outcome(_ body: () throws(RemotePath.Invalid) -> [UInt8]) -> Result<[UInt8], RemotePath.Invalid> {
            do throws(RemotePath.Invalid) { return .success(try body()) } catch { return .failure(error) }
        }
        for _ in 0..<20_000 {
            var raw: [UInt8] = []
            for _ in 0..<rng.below(8) { raw += rng.pick(pieces) }
            XCTAssertEqual(outcome { () throws(RemotePath.Invalid) in try RemotePath(validating: raw).bytes },
                           outcome { () throws(RemotePath.Invalid) in try Legacy.validate(raw) }, "\(raw.prefix(40))")
            let wire = Substring(String(decoding: raw, as: UTF8.self))
            let wireBytes = Array(wire.utf8)
            let viaBytes = wireBytes.withUnsafeBufferPointer { b in
                outcome { () throws(RemotePath.Invalid) in try RemotePath(wireBytes: b).bytes }
            }
            XCTAssertEqual(viaBytes, outcome { () throws(RemotePath.Invalid) in try Legacy.path(wire: wire).bytes })
            if let prefix = try? RemotePath(validating: raw), rng.chance(70) {
                let name = rng.pick(pieces) + (rng.chance(50) ? rng.pick(pieces) : [])
                let expected = outcome { () throws(RemotePath.Invalid) in
                    if name.isEmpty || name.contains(0x2F) { throw .emptyComponent }
                    if name == [0x2E] { throw .dot }
                    return try Legacy.validate(prefix.isRoot ? name : prefix.bytes + [0x2F] + name)
                }
                XCTAssertEqual(outcome { () throws(RemotePath.Invalid) in try prefix.appending(name: name).bytes }, expected)
            }
        }
    }

    /// `name` and `components` without splitting more than needed give what splitting gave.
    func testNameAndComponents() throws {
        for text in ["a", "a/b", "a/b c/d", "x/yy/zzz/w", "é/f"] {
            let p = try RemotePath(validating: text)
            let split = p.bytes.split(separator: 0x2F, omittingEmptySubsequences: false).map { Array($0) }
            XCTAssertEqual(p.components.map { Array($0) }, split, text)
            XCTAssertEqual(p.name, split.last, text)
        }
        XCTAssertEqual(RemotePath.root.name, [])
        XCTAssertTrue(RemotePath.root.components.isEmpty)
    }

    /// Hashing a path as one block keeps `Hashable` consistent with `==`.
    func testPathHashing() throws {
        let a = try RemotePath(validating: "x/y")
        let b = try RemotePath(validating: Array("x/y".utf8))
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.hashValue, b.hashValue)
        XCTAssertEqual(Set([a, b, try RemotePath(validating: "x")]).count, 2)
    }
}
