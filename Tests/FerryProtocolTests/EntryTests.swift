import FerryProtocol
import XCTest

final class EntryTests: XCTestCase {
    private let t0 = Timestamp(seconds: 1_700_000_000, nanoseconds: 0)
    private let sha = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"

    private func path(_ s: String) throws -> RemotePath { try RemotePath(validating: s) }

    private func listError(_ line: String, file: StaticString = #filePath, line n: UInt = #line) -> Entry.ParseError? {
        do {
            let e = try Entry(line: Substring(line))
            XCTFail("LIST line '\(line.debugDescription)' was accepted as \(e)", file: file, line: n)
            return nil
        } catch {
            return error
        }
    }

    private func manifestError(_ line: String, file: StaticString = #filePath, line n: UInt = #line) -> Entry.ParseError? {
        do {
            let e = try Entry(manifestLine: Substring(line))
            XCTFail("manifest line '\(line.debugDescription)' was accepted as \(e)", file: file, line: n)
            return nil
        } catch {
            return error
        }
    }

    private func sampleEntries() throws -> [Entry] {
        [
            Entry(type: .file, mode: 0o644, size: 11, mtime: Timestamp(seconds: 1_700_000_000, nanoseconds: 120_000_000),
                  path: try path("hello world.txt")),
            Entry(type: .file, mode: 0o644, size: 11, mtime: t0, path: try path("docs/hello world.txt"), sha256: sha),
            Entry(type: .file, mode: 0o4755, size: .max, mtime: Timestamp(seconds: -1, nanoseconds: 500_000_000),
                  path: try RemotePath(validating: [0x66, 0xFF, 0x0A, 0x25])),
            Entry(type: .file, mode: 0, size: 0, mtime: Timestamp(seconds: 0, nanoseconds: 1), path: try path("100% café")),
            Entry(type: .directory, mode: 0o755, size: 0, mtime: t0, path: try path("docs")),
            Entry(type: .directory, mode: 0o1777, size: 0, mtime: t0, path: try path("tmp dir/sub")),
            Entry(type: .symlink, mode: 0o777, size: 18, mtime: t0, path: try path("docs/hello-link"),
                  target: Array("../hello world.txt".utf8)),
            Entry(type: .symlink, mode: 0o777, size: 3, mtime: t0, path: try path("weird"), target: [0xFF, 0x0A, 0x25]),
            Entry(type: .symlink, mode: 0o777, size: 11, mtime: t0, path: try path("abs"), target: Array("/etc/passwd".utf8)),
        ]
    }

    func testLineFormat() throws {
        let entries = try sampleEntries()
        XCTAssertEqual(entries[0].line, "f 0644 11 1700000000.120000000 hello%20world.txt")
        XCTAssertEqual(entries[1].line, "f 0644 11 1700000000.000000000 docs/hello%20world.txt", "LIST/STAT lines carry no hash")
        XCTAssertEqual(entries[1].manifestLine, "f 0644 11 1700000000.000000000 \(sha) docs/hello%20world.txt")
        XCTAssertEqual(entries[0].manifestLine, "f 0644 11 1700000000.120000000 - hello%20world.txt")
        XCTAssertEqual(entries[2].line, "f 4755 9223372036854775807 -1.500000000 f%FF%0A%25")
        XCTAssertEqual(entries[3].line, "f 0000 0 0.000000001 100%25%20caf%C3%A9")
        XCTAssertEqual(entries[4].line, "d 0755 0 1700000000.000000000 docs")
        XCTAssertEqual(entries[4].manifestLine, entries[4].line)
        XCTAssertEqual(entries[5].line, "d 1777 0 1700000000.000000000 tmp%20dir/sub")
        XCTAssertEqual(entries[6].line, "l 0777 18 1700000000.000000000 docs/hello-link ../hello%20world.txt")
        XCTAssertEqual(entries[6].manifestLine, entries[6].line)
        XCTAssertEqual(entries[7].line, "l 0777 3 1700000000.000000000 weird %FF%0A%25")
        XCTAssertEqual(Entry(type: .other, mode: 0o600, size: 0, mtime: t0, path: try path("fifo")).line,
                       "o 0600 0 1700000000.000000000 fifo")
        // Mode bits beyond 07777 (the file type) never reach the wire.
        XCTAssertEqual(Entry(type: .file, mode: 0o100644, size: 0, mtime: t0, path: try path("x")).line,
                       "f 0644 0 1700000000.000000000 x")
    }

    func testListLinesRoundTrip() throws {
        var entries = try sampleEntries()
        entries.append(Entry(type: .other, mode: 0o644, size: 0, mtime: t0, path: try path("sock")))
        for e in entries {
            let parsed = try Entry(line: Substring(e.line))
            var expected = e
            expected.sha256 = nil  // not part of a LIST line
            XCTAssertEqual(parsed, expected, e.line)
        }
    }

    func testManifestLinesRoundTrip() throws {
        for e in try sampleEntries() {
            XCTAssertEqual(try Entry(manifestLine: Substring(e.manifestLine)), e, e.manifestLine)
        }
    }

    func testSpecExampleLines() throws {
        let f = try Entry(line: "f 0644 11 1700000000.000000000 hello%20world.txt")
        XCTAssertEqual(f.type, .file)
        XCTAssertEqual(f.mode, 0o644)
        XCTAssertEqual(f.size, 11)
        XCTAssertEqual(f.mtime, t0)
        XCTAssertEqual(f.path, try path("hello world.txt"))
        XCTAssertNil(f.target)
        XCTAssertNil(f.sha256)
        XCTAssertEqual(f.validator.description, "11,1700000000.000000000")

        let c = try Entry(line: "f 0644 6 1700000000.000000000 caf%C3%A9.txt")
        XCTAssertEqual(c.path.bytes, Array("café.txt".utf8))

        let m = try Entry(manifestLine: Substring("f 0644 11 1700000000.000000000 \(sha) hello%20world.txt"))
        XCTAssertEqual(m.sha256, sha)
        let unhashed = try Entry(manifestLine: "f 0644 0 1700000000.000000000 - empty.txt")
        XCTAssertNil(unhashed.sha256)
        let d = try Entry(manifestLine: "d 0755 0 1700000000.000000000 empty-dir")
        XCTAssertEqual(d.type, .directory)
        let l = try Entry(manifestLine: "l 0777 18 1700000000.000000000 docs/hello-link ../hello%20world.txt")
        XCTAssertEqual(l.target, Array("../hello world.txt".utf8))
        XCTAssertEqual(l.path, try path("docs/hello-link"))
    }

    func testMalformedInBothForms() {
        let bad = [
            "", "f", "f 0644 11 1700000000.000000000",  // too few fields
            "x 0644 0 1.000000000 a", "F 0644 0 1.000000000 a", "ff 0644 0 1.000000000 a",  // type
            "f 644 0 1.000000000 a", "f 00644 0 1.000000000 a", "f 0648 0 1.000000000 a", "f +777 0 1.000000000 a",
            "f -000 0 1.000000000 a", "f 0x12 0 1.000000000 a", "f 07 7 0 1.000000000 a", "f ٠٦٤٤ 0 1.000000000 a",  // mode
            "f 0644 -1 1.000000000 a", "f 0644 +1 1.000000000 a", "f 0644 12345678901234567890 1.000000000 a",
            "f 0644 9223372036854775808 1.000000000 a", "f 0644 1k 1.000000000 a",  // size
            "f 0644 0 1700000000 a", "f 0644 0 1.0 a", "f 0644 0 1.1234567890 a", "f 0644 0 +1.000000000 a",
            "f 0644 0 1.+00000000 a", "f 0644 0 a.000000000 a", "f 0644 0 .000000000 a", "f 0644 0 -.000000000 a",
            "f 0644 0 1,000000000 a",  // mtime
            "f  0644 0 1.000000000 a", "f 0644 0 1.000000000 a ", " f 0644 0 1.000000000 a",  // separators
            "d 0755 4096 1.000000000 a", "o 0644 1 1.000000000 a",  // size on a non-file
            "l 0777 1 1.000000000 a", "l 0777 1 1.000000000 a %00", "l 0777 1 1.000000000 a %G0",
            "l 0777 1 1.000000000 a b c", "l 0777 1 1.000000000 a b ", "l 0777 1 1.000000000 a  b",  // targets
            "d 0755 0 1.000000000 a extra",
        ]
        for line in bad {
            if let e = listError(line) { XCTAssertFalse(e.description.isEmpty) }
            _ = manifestError(line)
        }
    }

    func testRefusedPaths() {
        let cases: [(String, RemotePath.Invalid)] = [
            ("d 0755 0 1.000000000 ..", .dotDot), ("d 0755 0 1.000000000 ../etc", .dotDot),
            ("d 0755 0 1.000000000 /etc", .absolute), ("d 0755 0 1.000000000 a%2Fb", .badEncoding),
            ("d 0755 0 1.000000000 a%00", .nul), ("d 0755 0 1.000000000 a//b", .emptyComponent),
            ("l 0777 1 1.000000000 ../x y", .dotDot),
        ]
        for (line, why) in cases {
            XCTAssertEqual(listError(line), .badPath(why), line)
            XCTAssertEqual(manifestError(line), .badPath(why), line)
            XCTAssertTrue(listError(line)?.description.hasPrefix("refused path") ?? false)
        }
        XCTAssertEqual(listError("d 0755 0 1.000000000 a b"), .malformed("unexpected extra fields"))
    }

    func testManifestSpecificRules() throws {
        // FIFOs, sockets and devices are never in a manifest, but LIST shows them.
        XCTAssertNotNil(manifestError("o 0644 0 1.000000000 fifo"))
        XCTAssertEqual(try Entry(line: "o 0644 0 1.000000000 fifo").type, .other)
        // A file in a manifest always carries the hash field.
        XCTAssertNotNil(manifestError("f 0644 1 1.000000000 a"))
        XCTAssertNotNil(manifestError("f 0644 1 1.000000000 \(sha.uppercased()) a"))
        XCTAssertNotNil(manifestError("f 0644 1 1.000000000 \(sha.dropLast()) a"))
        XCTAssertNotNil(manifestError("f 0644 1 1.000000000 \(sha)0 a"))
        XCTAssertNotNil(manifestError("f 0644 1 1.000000000 -- a"))
        XCTAssertNotNil(manifestError("f 0644 1 1.000000000 \(sha)"))
        // A LIST line has no hash field: one there is an extra field.
        XCTAssertNotNil(listError("f 0644 1 1.000000000 \(sha) a"))
        // The root itself is not listed in a manifest.
        XCTAssertNotNil(manifestError("d 0755 0 1.000000000 ."))
        // Directories and symlinks carry no hash.
        XCTAssertNotNil(manifestError("d 0755 0 1.000000000 - a"))
        XCTAssertNotNil(manifestError("l 0777 1 1.000000000 - a b"))
    }

    func testModeLimits() throws {
        XCTAssertEqual(try Entry(line: "f 7777 0 1.000000000 a").mode, 0o7777)
        XCTAssertEqual(try Entry(line: "f 0000 0 1.000000000 a").mode, 0)
        XCTAssertNotNil(listError("f 8000 0 1.000000000 a"))
    }

    // MARK: Timestamp, Validator, numbers

    func testTimestampFormatting() {
        XCTAssertEqual(Timestamp(seconds: 1_700_000_000, nanoseconds: 120_000_000).description, "1700000000.120000000")
        XCTAssertEqual(Timestamp(seconds: 0, nanoseconds: 5).description, "0.000000005")
        XCTAssertEqual(Timestamp(seconds: 0, nanoseconds: 999_999_999).description, "0.999999999")
        XCTAssertEqual(Timestamp(seconds: -1, nanoseconds: 0).description, "-1.000000000")
        XCTAssertEqual(Timestamp(seconds: .min, nanoseconds: 0).description, "-9223372036854775808.000000000")
    }

    func testTimestampRoundTripAndOrder() throws {
        let values = [
            Timestamp(seconds: .min, nanoseconds: 0), Timestamp(seconds: -86_400, nanoseconds: 999_999_999),
            Timestamp(seconds: -1, nanoseconds: 500_000_000), Timestamp(seconds: 0, nanoseconds: 0),
            Timestamp(seconds: 0, nanoseconds: 1), Timestamp(seconds: 1, nanoseconds: 999_999_999),
            Timestamp(seconds: 2, nanoseconds: 0), Timestamp(seconds: 1_700_000_000, nanoseconds: 120_000_000),
            Timestamp(seconds: .max, nanoseconds: 999_999_999),
        ]
        for t in values {
            XCTAssertEqual(Timestamp(t.description), t, t.description)
        }
        XCTAssertEqual(values.shuffled().sorted(), values)
        XCTAssertEqual(Timestamp(seconds: 1_700_000_000, nanoseconds: 500_000_000).timeInterval, 1_700_000_000.5, accuracy: 1e-6)
    }

    func testTimestampRejects() {
        for text in ["", ".", "1.", ".000000000", "-.000000000", "--1.000000000", "1.00000000a", "1.+00000000",
                     "1.-00000000", "1.00000000", "1.0000000000", "12345678901234567890.000000000",
                     "9223372036854775808.000000000", "-9223372036854775809.000000000", "1.000000000.000000000",
                     "1,000000000", " 1.000000000", "1.000000000 ", "+1.000000000", "١.000000000", "1.٠٠٠٠٠٠٠٠٠",
                     "1e3.000000000", "0x1.000000000"] {
            XCTAssertNil(Timestamp(text), text)
        }
    }

    func testValidator() throws {
        let v = Validator(size: 1_073_745_920, mtime: Timestamp(seconds: 1_700_000_500, nanoseconds: 0))
        XCTAssertEqual(v.description, "1073745920,1700000500.000000000")
        XCTAssertEqual(Validator(Substring(v.description)), v)
        XCTAssertEqual(Validator("0,-1.500000000"), Validator(size: 0, mtime: Timestamp(seconds: -1, nanoseconds: 500_000_000)))
        for bad in ["", ",", "1", "1,", ",1.000000000", "1,1.000000000,", "a,1.000000000", "-1,1.000000000", "1 ,1.000000000"] {
            XCTAssertNil(Validator(Substring(bad)), bad)
        }
    }

    func testParseWireNumber() {
        XCTAssertEqual(parseWireNumber("0"), 0)
        XCTAssertEqual(parseWireNumber("007"), 7)
        XCTAssertEqual(parseWireNumber("4096"), 4096)
        XCTAssertEqual(parseWireNumber("9223372036854775807"), .max)
        XCTAssertEqual(parseWireNumber("0000000000000000001"), 1, "19 digits are allowed")
        for bad in ["", "-1", "+1", " 1", "1 ", "1_000", "١", "１", "0x1", "1.5", "9223372036854775808",
                    "9999999999999999999", "99999999999999999999", "00000000000000000000", "18446744073709551616", "-0"] {
            XCTAssertNil(parseWireNumber(Substring(bad)), bad)
        }
    }
}
