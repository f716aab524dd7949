import FerryProtocol
import XCTest

final class RequestTests: XCTestCase {
    private let hex64 = String(repeating: "0123456789abcdef", count: 4)

    private func path(_ s: String) throws -> RemotePath { try RemotePath(validating: s) }

    private func parse(_ line: String) throws(Request.ParseError) -> Request { try Request.parse(Substring(line)) }

    /// The error for a line that must be refused (fails the test if it is accepted).
    private func refusal(_ line: String, file: StaticString = #filePath, line number: UInt = #line) -> Request.ParseError? {
        do {
            let r = try parse(line)
            XCTFail("'\(line.debugDescription)' was accepted as \(r)", file: file, line: number)
            return nil
        } catch {
            return error
        }
    }

    private func assertMalformed(_ line: String, file: StaticString = #filePath, line number: UInt = #line) {
        guard let error = refusal(line, file: file, line: number) else { return }
        guard case .malformed = error else {
            return XCTFail("'\(line.debugDescription)': expected .malformed, got \(error)", file: file, line: number)
        }
        XCTAssertEqual(error.reply.code, 400, file: file, line: number)
    }

    private let mtime = Timestamp(seconds: 1_700_000_000, nanoseconds: 120_000_000)

    func testEveryRequestRoundTrips() throws {
        let v = Validator(size: 11, mtime: mtime)
        let old = Validator(size: 0, mtime: Timestamp(seconds: -86_400, nanoseconds: 1))
        let paths: [RemotePath] = [
            .root, try path("hello world.txt"), try path("dir/100% sure"), try path("line\nfeed"),
            try path("café/crème.txt"), try RemotePath(validating: [0x66, 0xFF, 0x2F, 0x80]),
        ]
        var requests: [Request] = [.auth(hmacHex: hex64), .quit]
        for p in paths {
            requests += [
                .list(p), .stat(p),
                .get(p, offset: 0, length: nil, validator: nil),
                .get(p, offset: 5, length: 10, validator: v),
                .get(p, offset: Int64.max, length: Int64.max, validator: old),
                .get(p, offset: 524_288, length: 0, validator: nil),
                .hash(p, offset: 0, length: 524_288, validator: nil),
                .hash(p, offset: 7, length: 9, validator: v),
                .blocks(p, validator: nil, blockSize: nil),
                .blocks(p, validator: v, blockSize: nil),
                .blocks(p, validator: nil, blockSize: 65_536),
                .blocks(p, validator: v, blockSize: 4096),
                .blocks(p, validator: old, blockSize: 64 << 20),
                .manifest(p, hashes: true),
                .manifest(p, hashes: false),
            ]
        }
        for r in requests {
            let line = r.line
            XCTAssertFalse(line.utf8.contains { $0 < 0x20 || $0 == 0x7F }, "\(line.debugDescription) has a control byte")
            XCTAssertFalse(line.contains("  "))
            XCTAssertTrue(line.hasPrefix(r.verb + " ") || line == r.verb)
            XCTAssertLessThanOrEqual(line.utf8.count + 1, FerryLimits.maxRequestLine)
            XCTAssertEqual(try parse(line), r, line)
        }
    }

    func testLinesLookLikeTheSpec() throws {
        XCTAssertEqual(Request.list(.root).line, "LIST .")
        XCTAssertEqual(Request.stat(try path("hello world.txt")).line, "STAT hello%20world.txt")
        XCTAssertEqual(Request.get(try path("hello world.txt"), offset: 0, length: nil, validator: nil).line,
                       "GET hello%20world.txt 0 *")
        XCTAssertEqual(Request.get(try path("big.iso"), offset: 524_288, length: nil,
                                   validator: Validator(size: 1_073_741_824, mtime: Timestamp(seconds: 1_700_000_000, nanoseconds: 0))).line,
                       "GET big.iso 524288 * 1073741824,1700000000.000000000")
        XCTAssertEqual(Request.hash(try path("big.iso"), offset: 0, length: 524_288, validator: nil).line, "HASH big.iso 0 524288")
        XCTAssertEqual(Request.blocks(try path("a"), validator: nil, blockSize: 4096).line, "BLOCKS a 4096")
        XCTAssertEqual(Request.manifest(.root, hashes: false).line, "MANIFEST . hashes=no")
        XCTAssertEqual(Request.manifest(.root, hashes: true).line, "MANIFEST .")
        XCTAssertEqual(Request.quit.line, "QUIT")
        XCTAssertEqual(Request.auth(hmacHex: hex64).line, "AUTH " + hex64)
    }

    func testSpecTranscriptRequestsParse() throws {
        XCTAssertEqual(try parse("LIST ."), .list(.root))
        XCTAssertEqual(try parse("STAT hello%20world.txt"), .stat(try path("hello world.txt")))
        XCTAssertEqual(try parse("GET hello%20world.txt 0 *"), .get(try path("hello world.txt"), offset: 0, length: nil, validator: nil))
        let v = Validator(size: 1_073_741_824, mtime: Timestamp(seconds: 1_700_000_000, nanoseconds: 0))
        XCTAssertEqual(try parse("HASH big.iso 0 524288 1073741824,1700000000.000000000"),
                       .hash(try path("big.iso"), offset: 0, length: 524_288, validator: v))
        XCTAssertEqual(try parse("GET big.iso 524288 * 1073741824,1700000000.000000000"),
                       .get(try path("big.iso"), offset: 524_288, length: nil, validator: v))
        XCTAssertEqual(try parse("QUIT"), .quit)
        XCTAssertEqual(try parse("MANIFEST docs hashes=no"), .manifest(try path("docs"), hashes: false))
        XCTAssertEqual(try parse("MANIFEST docs hashes=yes"), .manifest(try path("docs"), hashes: true))
        XCTAssertEqual(try parse("MANIFEST docs"), .manifest(try path("docs"), hashes: true))
        XCTAssertEqual(try parse("STAT caf%c3%a9.txt"), .stat(try path("café.txt")), "lowercase hex is accepted")
    }

    func testVerbsAreCaseInsensitiveASCII() throws {
        XCTAssertEqual(try parse("list ."), .list(.root))
        XCTAssertEqual(try parse("LiSt ."), .list(.root))
        XCTAssertEqual(try parse("quit"), .quit)
        XCTAssertEqual(try parse("get a 0 *"), .get(try path("a"), offset: 0, length: nil, validator: nil))
        XCTAssertEqual(try parse("Manifest . hashes=no"), .manifest(.root, hashes: false))
        XCTAssertEqual(try parse("blocks a 4096"), .blocks(try path("a"), validator: nil, blockSize: 4096))
        XCTAssertEqual(try parse("auth " + hex64), .auth(hmacHex: hex64))
        XCTAssertEqual(try parse("stat a").verb, "STAT")
        // Unicode case mappings must not manufacture verbs ("ı" and "ſ" uppercase to ASCII).
        assertMalformed("lıst .")
        assertMalformed("ſtat a")
        assertMalformed("qUİT")
        assertMalformed("ＬＩＳＴ .")
    }

    /// `AUTH HMAC CLIENT-NONCE`, the channel-bound answer of a TLS connection (PROTOCOL.md 3).
    func testChannelBoundAuthRoundTrips() throws {
        let nonce = String(repeating: "fedcba9876543210", count: 4)
        let bound = Request.boundAuth(hmacHex: hex64, clientNonceHex: nonce)
        XCTAssertEqual(bound.line, "AUTH \(hex64) \(nonce)")
        XCTAssertEqual(try Request.parse(Substring(bound.line)), bound)
        XCTAssertEqual(bound.verb, "AUTH")
        XCTAssertThrowsError(try Request.parse("AUTH \(hex64) \(nonce.uppercased())"))
        XCTAssertThrowsError(try Request.parse("AUTH \(hex64) \(nonce.dropLast())"))
    }

    func testWrongArityForEveryVerb() {
        let v = "1,1.000000000"
        for line in [
            "AUTH", "AUTH \(hex64) x", "AUTH \(hex64) \(hex64) \(hex64)",
            "LIST", "LIST a b",
            "STAT", "STAT a b",
            "GET", "GET a", "GET a 0", "GET a 0 * \(v) x",
            "HASH", "HASH a", "HASH a 0", "HASH a 0 1 \(v) x",
            "BLOCKS", "BLOCKS a \(v) 4096 x",
            "MANIFEST", "MANIFEST a hashes=no x",
            "QUIT x", "QUIT .",
        ] {
            assertMalformed(line)
        }
    }

    func testBadNumbers() throws {
        let bad = ["-1", "+1", "1.0", "1e3", "0x10", "abc", " ", "١", "１", "1_000", "12345678901234567890",
                   "00000000000000000001", "9223372036854775808", "99999999999999999999", "18446744073709551615", "-0", "*1", "**"]
        for n in bad where !n.contains(" ") {
            assertMalformed("GET a \(n) *")
            assertMalformed("GET a 0 \(n)")
            assertMalformed("HASH a \(n) 1")
            assertMalformed("HASH a 0 \(n)")
            assertMalformed("BLOCKS a \(n)")
        }
        assertMalformed("HASH a 0 *")  // only GET takes '*'
        // The largest accepted numbers: 19 digits that fit in Int64.
        XCTAssertEqual(try parse("GET a 9223372036854775807 9223372036854775807"),
                       .get(try path("a"), offset: .max, length: .max, validator: nil))
        XCTAssertEqual(try parse("GET a 0000000000000000007 *"), .get(try path("a"), offset: 7, length: nil, validator: nil))
    }

    func testBadValidators() throws {
        for v in ["1", "1,", ",1.000000000", "1,1.00000000", "1,1.0000000000", "-1,1.000000000", "+1,1.000000000",
                  "1,+1.000000000", "1,1.000000000,2", "1;1.000000000", "1,1700000000", "1,1.00000000a", "x,1.000000000",
                  "12345678901234567890,1.000000000", "1,12345678901234567890.000000000", "1,1.-00000000"] {
            assertMalformed("GET a 0 * \(v)")
            assertMalformed("HASH a 0 1 \(v)")
        }
        // Times before 1970 carry a '-' on the seconds.
        XCTAssertEqual(try parse("GET a 0 * 5,-5.000000001"),
                       .get(try path("a"), offset: 0, length: nil,
                            validator: Validator(size: 5, mtime: Timestamp(seconds: -5, nanoseconds: 1))))
    }

    func testFieldSeparators() {
        for line in ["", " ", "LIST  a", " LIST a", "LIST a ", "GET a  0 *", "GET a 0 * ", "QUIT ", " QUIT", "LIST\ta", "LIST\u{A0}a"] {
            // "LIST\u{A0}a" is one unknown verb token; all of these are 400s.
            assertMalformed(line)
        }
    }

    func testControlCharactersRefused() {
        for value in Array(0x00...0x1F) + [0x7F] {
            let c = String(UnicodeScalar(UInt8(value)))
            assertMalformed("LIST a\(c)b")
            assertMalformed("LIST a\(c)")
            assertMalformed("\(c)LIST a")
            assertMalformed("QUIT\(c)")
        }
    }

    func testPathErrorsMapToTheirCodes() {
        let cases: [(String, RemotePath.Invalid, Int)] = [
            ("LIST ../etc", .dotDot, 421),
            ("STAT a/../../etc/passwd", .dotDot, 421),
            ("LIST %2E%2E", .dotDot, 421),
            ("LIST /etc", .absolute, 421),
            ("GET a%2Fb 0 *", .badEncoding, 400),
            ("GET a%2fb 0 *", .badEncoding, 400),
            ("STAT a%00", .nul, 421),
            ("LIST a//b", .emptyComponent, 421),
            ("LIST a/", .emptyComponent, 421),
            ("LIST ./a", .dot, 421),
            ("LIST a%G0", .badEncoding, 400),
            ("LIST a%4", .badEncoding, 400),
            ("HASH \(String(repeating: "n", count: 256)) 0 1", .componentTooLong, 421),
            ("MANIFEST .. hashes=no", .dotDot, 421),
            ("BLOCKS /x 4096", .absolute, 421),
        ]
        for (line, why, code) in cases {
            guard let error = refusal(line) else { continue }
            XCTAssertEqual(error, .badPath(why), line)
            XCTAssertEqual(error.reply.code, code, line)
            XCTAssertFalse(error.reply.reason.isEmpty)
        }
        XCTAssertEqual(refusal("LIST ../etc")?.reply.line, "ERR 421 path refused: '..' is not allowed", "as in the spec transcript")
    }

    func testAuth() throws {
        XCTAssertEqual(try parse("AUTH \(hex64)"), .auth(hmacHex: hex64))
        assertMalformed("AUTH \(hex64.uppercased())")
        assertMalformed("AUTH \(hex64.dropLast())")
        assertMalformed("AUTH \(hex64)0")
        assertMalformed("AUTH \(hex64.dropLast())g")
        assertMalformed("AUTH secret-token")
    }

    func testBlocksOptions() throws {
        let a = try path("a")
        let v = Validator(size: 1, mtime: Timestamp(seconds: 1, nanoseconds: 0))
        for size in [4096, 8192, 65_536, 1 << 20, 64 << 20] {
            XCTAssertEqual(try parse("BLOCKS a \(size)"), .blocks(a, validator: nil, blockSize: size))
        }
        for size in ["0", "1", "2048", "4095", "4097", "65537", "12288", "134217728", "9223372036854775807"] {
            assertMalformed("BLOCKS a \(size)")
        }
        XCTAssertEqual(try parse("BLOCKS a 1,1.000000000"), .blocks(a, validator: v, blockSize: nil))
        XCTAssertEqual(try parse("BLOCKS a 1,1.000000000 8192"), .blocks(a, validator: v, blockSize: 8192))
        XCTAssertEqual(try parse("BLOCKS a 8192 1,1.000000000"), .blocks(a, validator: v, blockSize: 8192))
        assertMalformed("BLOCKS a 1,1.000000000 2,2.000000000")
        assertMalformed("BLOCKS a 4096 8192")
        assertMalformed("BLOCKS a 1,1.0")
    }

    func testManifestOptions() {
        for option in ["hashes=No", "hashes=", "hashes", "HASHES=no", "hashes=true", "x"] {
            assertMalformed("MANIFEST . \(option)")
        }
    }

    func testUnknownVerbs() {
        for line in ["FETCH a", "LISTX a", "L", "PUT a", "DELETE a", "GETT a 0 *", "-", "*", "ERR 400 x", "OK"] {
            assertMalformed(line)
        }
        if case .malformed(let why)? = refusal("FETCH a") {
            XCTAssertTrue(why.contains("LIST"), "the reason tells the person which verbs exist: \(why)")
        } else {
            XCTFail("FETCH must be malformed")
        }
    }

    func testParseErrorReplies() {
        XCTAssertEqual(Request.ParseError.malformed("x").reply, ErrorReply(.malformed, "x"))
        XCTAssertEqual(Request.ParseError.badPath(.badEncoding).reply.code, 400)
        XCTAssertEqual(Request.ParseError.badPath(.tooLong).reply.code, 421)
        XCTAssertEqual(Request.ParseError.badPath(.nul).reply.code, 421)
    }
}
