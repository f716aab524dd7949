import FerryProtocol
import NIOCore
import XCTest

/// Pins the places where docs/PROTOCOL.md once was silent or disagreed with the code (issue 13,
/// part 5): each test names the section that now says what it checks.
final class ContractTests: XCTestCase {
    private func code(_ line: String) -> Int? {
        do { _ = try Request.parse(Substring(line)); return nil } catch { return error.reply.code }
    }

    // MARK: Section 6, BLOCKS: a bad block size is malformed (400), too many blocks is 413

    func testBlockSizeOutsideItsDomainIs400() throws {
        for bad in ["5000", "2048", "0", "134217728", "4097"] {
            XCTAssertEqual(code("BLOCKS f \(bad)"), 400, "BLOCKS f \(bad)")
        }
        XCTAssertEqual(try Request.parse("BLOCKS f 4096"), .blocks(try RemotePath(validating: "f"), validator: nil, blockSize: 4096))
        XCTAssertEqual(try Request.parse("BLOCKS f 67108864"), .blocks(try RemotePath(validating: "f"), validator: nil, blockSize: 64 << 20))
    }

    // MARK: Section 2: mtimes are a timespec (seconds rounded down, nanoseconds added)

    func testPreEpochMtimeWithAFractionIsATimespec() throws {
        let t = try XCTUnwrap(Timestamp("-101.750000000"))
        XCTAssertEqual(t.seconds, -101)
        XCTAssertEqual(t.nanoseconds, 750_000_000)
        XCTAssertEqual(t.timeInterval, -100.25, "the fraction is added to the (negative) seconds")
        XCTAssertEqual(Timestamp(seconds: -101, nanoseconds: 750_000_000).description, "-101.750000000")
        var wire: [UInt8] = []
        Timestamp(seconds: -101, nanoseconds: 750_000_000).appendWire(to: &wire)
        XCTAssertEqual(String(decoding: wire, as: UTF8.self), "-101.750000000")
        XCTAssertEqual(try XCTUnwrap(Timestamp("-1.500000000")).timeInterval, -0.5)
        XCTAssertLessThan(try XCTUnwrap(Timestamp("-101.750000000")), try XCTUnwrap(Timestamp("-100.250000000")))
    }

    func testNegativeZeroSecondsAreRefused() {
        // `-0.5…` would read as +0.5 s; -0.5 s is `-1.500000000`.
        for bad in ["-0.500000000", "-0.000000000", "-000.250000000"] {
            XCTAssertNil(Timestamp(bad), bad)
        }
        XCTAssertNotNil(Timestamp("0.500000000"))
        XCTAssertEqual(code("GET f 0 * 1,-0.500000000"), 400)
        XCTAssertThrowsError(try Entry(line: "f 0644 1 -0.500000000 f"))
    }

    // MARK: Section 2.1 and 4: the codes for paths that break the rules

    func testPathErrorCodes() {
        let long255 = String(repeating: "n", count: 255)
        let cases: [(String, Int?)] = [
            ("STAT a%2Fb", 400), ("STAT a%2fb", 400), ("STAT a%2", 400), ("STAT a%zz", 400),
            ("STAT a%00b", 421), ("STAT /a", 421), ("STAT a/../b", 421), ("STAT ..", 421),
            ("STAT a//b", 421), ("STAT a/", 421), ("STAT a/./b", 421), ("STAT ./a", 421), ("STAT a/.", 421),
            ("STAT " + String(repeating: "n", count: 256), 421),
            ("STAT " + Array(repeating: long255, count: 17).joined(separator: "/"), 421),  // 4351 bytes
            ("STAT " + Array(repeating: long255, count: 16).joined(separator: "/"), nil),  // 4095 bytes
            ("STAT " + long255, nil), ("STAT .", nil),
        ]
        for (line, expected) in cases {
            XCTAssertEqual(code(line), expected, String(line.prefix(40)))
        }
    }

    // MARK: Section 2: numbers with leading zeros are read as decimal

    func testLeadingZerosAreDecimal() throws {
        let f = try RemotePath(validating: "f")
        XCTAssertEqual(try Request.parse("GET f 0010 007"), .get(f, offset: 10, length: 7, validator: nil))
        XCTAssertEqual(try Request.parse("GET f 0000000000000000010 *"), .get(f, offset: 10, length: nil, validator: nil))
        XCTAssertEqual(code("GET f 00000000000000000010 *"), 400, "20 digits, even if they are zeros")
        XCTAssertEqual(try Request.parse("HASH f 0 1 012,0001700000000.000000000"),
                       .hash(f, offset: 0, length: 1, validator: Validator(size: 12, mtime: Timestamp(seconds: 1_700_000_000, nanoseconds: 0))))
        XCTAssertEqual(try Entry(line: "f 0644 012 1700000000.000000000 f").size, 12)
        XCTAssertEqual(code("GET f +1 *"), 400)
    }

    // MARK: Section 6: unknown options and extra fields are 400

    func testUnknownOptionsAreMalformed() {
        for line in ["LIST . colour=blue", "LIST . KINDS=yes", "LIST . kinds=maybe", "MANIFEST . x=y",
                     "MANIFEST . hashes=no hashes=no", "STAT . kinds=yes", "GET f 0 * 1,1.000000000 x=y",
                     "HASH f 0 1 1,1.000000000 x", "QUIT now"] {
            XCTAssertEqual(code(line), 400, line)
        }
        XCTAssertNil(code("list . kinds=yes"), "verbs are case-insensitive, options are not")
    }

    // MARK: Section 2: empty fields (strict on both sides)

    func testEmptyFieldsAreRefusedInRequestsAndEntries() {
        for line in ["STAT  a", "STAT a ", " STAT a", "GET f  0 *", "LIST"] {
            XCTAssertEqual(code(line), 400, "'\(line)'")
        }
        // An empty path field is not the root (that is `.`): a 1.0 server never sends one.
        XCTAssertThrowsError(try Entry(line: "f 0644 1 1700000000.000000000 "))
        XCTAssertThrowsError(try Entry(line: "d 0755 0 1700000000.000000000 "))
        XCTAssertThrowsError(try Entry(line: "f 0644  1 1700000000.000000000 a"))
        XCTAssertThrowsError(try Entry(line: "l 0777 1 1700000000.000000000 a "))
        XCTAssertThrowsError(try Entry(manifestLine: "f 0644 1 1700000000.000000000  a"))
        XCTAssertNoThrow(try Entry(line: "d 0755 0 1700000000.000000000 ."), "STAT . names the root `.`")
    }

    // MARK: Section 5: a symlink's size is informational (lenient reader)

    func testSymlinkSizeOtherThanTargetLengthIsAccepted() throws {
        let e = try Entry(line: "l 0777 99 1700000000.000000000 link target")
        XCTAssertEqual(e.size, 99)
        XCTAssertEqual(e.target, Array("target".utf8), "the target field is what counts")
        let m = try Entry(manifestLine: "l 0777 0 1700000000.000000000 link target")
        XCTAssertEqual(m.target, Array("target".utf8))
    }

    // MARK: Section 3 and 9: the greeting's id is opaque; a discovery id is exact

    func testGreetingIdIsOpaqueButDiscoveryIdIsStrict() throws {
        let g = try Greeting.parse("FERRY 1 name=a id=ab auth=none")
        XCTAssertEqual(g.id, "ab")
        XCTAssertEqual(try Greeting.parse("FERRY 1 name=a id=ab auth=none future=1 flag").name, "a", "unknown fields are ignored")
        XCTAssertThrowsError(try Greeting.parse("FERRY 1 name=a auth=none"), "an id is still required")
        XCTAssertThrowsError(try DiscoveryDatagram.parse(Array("FERRY-BYE 1 id=ab".utf8)))
        XCTAssertNoThrow(try DiscoveryDatagram.parse(Array("FERRY-BYE 1 id=0123456789abcdef0123456789abcdef".utf8)))
    }

    // MARK: Section 2.1: unencoded UTF-8 is accepted (lenient reader, encoding writer)

    func testUnencodedUTF8NamesAreAcceptedAndWrittenEncoded() throws {
        let cafe = try RemotePath(validating: "café")
        XCTAssertEqual(try Request.parse("STAT café"), .stat(cafe))
        XCTAssertEqual(Request.stat(cafe).line, "STAT caf%C3%A9")
        let e = try Entry(line: "f 0644 1 1700000000.000000000 café")
        XCTAssertEqual(e.path, cafe)
        XCTAssertEqual(e.line, "f 0644 1 1700000000.000000000 caf%C3%A9")

        var decoder = RequestLineDecoder()
        var buffer = ByteBuffer(bytes: Array("STAT caf".utf8) + [0xC3, 0xA9, 0x0A] + Array("STAT a".utf8) + [0xFF, 0x0A])
        XCTAssertEqual(decoder.nextFrame(&buffer), .line("STAT café"))
        XCTAssertEqual(decoder.nextFrame(&buffer), .notUTF8, "a line must be valid UTF-8 (ERR 400)")
    }

    // MARK: Section 1: CR LF is accepted in both directions; only LF is sent

    func testCRLFIsAcceptedInRequestsAndReplies() throws {
        var requests = RequestLineDecoder()
        var r = ByteBuffer(string: "STAT .\r\nLIST .\n")
        XCTAssertEqual(requests.nextFrame(&r), .line("STAT ."))
        XCTAssertEqual(requests.nextFrame(&r), .line("LIST ."))
        XCTAssertEqual(code("STAT a\rb"), 400, "a CR elsewhere is a control character")

        var replies = ReplyFrameDecoder()
        var b = ByteBuffer(string: "OK 1\r\nCHUNK 0 3 3 s 352441c2\r\nabcEND x\r\n")
        guard case .line(let status)? = try replies.nextFrame(&b) else { return XCTFail("no status line") }
        XCTAssertEqual(status, "OK 1")
        guard case .chunk(let header, let payload)? = try replies.nextFrame(&b) else { return XCTFail("no chunk") }
        XCTAssertEqual(header.rawLength, 3)
        XCTAssertEqual(payload.readableBytes, 3)
        guard case .line(let end)? = try replies.nextFrame(&b) else { return XCTFail("no END line") }
        XCTAssertEqual(end, "END x")
    }
}
