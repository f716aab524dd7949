import FerryProtocol
import XCTest

final class ReplyTests: XCTestCase {
    private func status(_ line: String) throws(MalformedReply) -> StatusLine { try StatusLine.parse(Substring(line)) }

    func testErrorCodesMatchTheSpecTable() {
        let table: [ErrorCode: Int] = [
            .malformed: 400, .authRequired: 401, .authFailed: 403, .notFound: 404, .timeout: 408, .changed: 409, .tooLarge: 413,
            .badRange: 416, .pathRefused: 421, .wrongType: 422, .permissionDenied: 423, .tlsRequired: 426, .tooMany: 429, .serverError: 500,
            .shuttingDown: 503, .readError: 520,
        ]
        XCTAssertEqual(ErrorCode.allCases.count, table.count)
        for code in ErrorCode.allCases {
            XCTAssertEqual(code.rawValue, table[code], "\(code)")
        }
    }

    func testOKLines() throws {
        XCTAssertEqual(try status("OK"), .ok(fields: []))
        XCTAssertEqual(try status("OK 5"), .ok(fields: ["5"]))
        XCTAssertEqual(try status("OK auth"), .ok(fields: ["auth"]))
        XCTAssertEqual(try status("OK bye"), .ok(fields: ["bye"]))
        XCTAssertEqual(try status("OK 11 1700000000.000000000 -"), .ok(fields: ["11", "1700000000.000000000", "-"]))
        guard case .ok(let fields) = try status("OK f 0644 11 1700000000.000000000 hello%20world.txt") else {
            return XCTFail("not OK")
        }
        XCTAssertEqual(fields.count, 5)
        XCTAssertEqual(try Entry(line: Substring(fields.joined(separator: " "))).size, 11)
    }

    func testErrLines() throws {
        for bad in ["ERR 004 x", "ERR 099 x", "ERR 600 x", "ERR 999 x"] {
            XCTAssertThrowsError(try status(bad), bad)  // codes are 100-599
        }
        XCTAssertEqual(try status("ERR 404 not found: nothing-here"), .err(ErrorReply(.notFound, "not found: nothing-here")))
        let now = Validator(size: 1_073_745_920, mtime: Timestamp(seconds: 1_700_000_500, nanoseconds: 0))
        XCTAssertEqual(try status("ERR 409 changed 1073745920,1700000500.000000000"), .err(.changed(now)))
        XCTAssertEqual(try status("ERR 421 path refused: '..' is not allowed"),
                       .err(ErrorReply(.pathRefused, "path refused: '..' is not allowed")))
        guard case .err(let unknown) = try status("ERR 599 something new") else { return XCTFail("not ERR") }
        XCTAssertEqual(unknown.code, 599)
        XCTAssertNil(unknown.knownCode, "unknown codes are kept, not mapped")
        XCTAssertEqual(unknown.reason, "something new")
        guard case .err(let known) = try status("ERR 503 shutting down") else { return XCTFail("not ERR") }
        XCTAssertEqual(known.knownCode, .shuttingDown)
    }

    func testMalformedStatusLines() {
        for line in ["", "ok", "Ok 5", "OKAY", "OK\t5", "ERR", "ERR ", "ERR 40 x", "ERR 4040 x", "ERR abc x", "ERR +12 x",
                     "ERR -12 x", "ERR 4O4 x", "ERR ٤٠٤ x", "err 404 x", "HELLO", "FERRY 1 name=x", " OK", "CHUNK 0 1 1 s 00000000"] {
            XCTAssertThrowsError(try status(line), line.debugDescription) { error in
                XCTAssertTrue(error is MalformedReply)
            }
        }
    }

    func testErrorReplyLine() {
        XCTAssertEqual(ErrorReply(.notFound, "not found: a").line, "ERR 404 not found: a")
        XCTAssertEqual(ErrorReply(.serverError, "read failed\nsecond\rline\u{7F}\u{0}x").line, "ERR 500 read failed second line  x")
        XCTAssertEqual(ErrorReply(.serverError, "").line, "ERR 500 error", "the reason field is never empty")
        XCTAssertEqual(ErrorReply(code: 404, reason: "x").description, "404 x")
    }

    func testErrorReplyRoundTripsThroughStatusLine() throws {
        for code in ErrorCode.allCases {
            let reply = ErrorReply(code, "reason for \(code) with spaces, ünïcödé and 100%")
            let line = reply.line
            XCTAssertFalse(line.utf8.contains { $0 < 0x20 })
            XCTAssertEqual(try status(line), .err(reply), line)
        }
    }

    // MARK: Greeting

    private let id = "5d41402abc4b2a76b9719d911017c592"

    func testGreetingLines() {
        XCTAssertEqual(Greeting(name: "studio", id: id).line, "FERRY 1 name=studio id=\(id) auth=none")
        let nonce = [UInt8](0..<32)
        XCTAssertEqual(Greeting(name: "studio", id: id, nonce: nonce).line,
                       "FERRY 1 name=studio id=\(id) auth=hmac-sha256 nonce=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
    }

    func testGreetingParse() throws {
        let g = try Greeting.parse(Substring("FERRY 1 name=studio id=\(id) auth=none"))
        XCTAssertEqual(g, Greeting(version: 1, name: "studio", id: id, nonce: nil))
        let withNonce = Greeting(name: "my box", id: id, nonce: [UInt8](repeating: 0xAB, count: 32))
        XCTAssertEqual(try Greeting.parse(Substring(withNonce.line)), withNonce)
        XCTAssertTrue(withNonce.line.contains("name=my%20box"))
        // Unknown key=value fields (and bare words) are ignored.
        XCTAssertEqual(try Greeting.parse(Substring("FERRY 1 name=studio id=\(id) auth=none color=blue future")), g)
        XCTAssertEqual(try Greeting.parse(Substring("FERRY 1 color=blue auth=none id=\(id) name=studio")), g)
        // A later version still parses so the client can name it to the user.
        XCTAssertEqual(try Greeting.parse(Substring("FERRY 2 name=studio id=\(id) auth=none")).version, 2)
        // auth=none ignores a stray nonce.
        XCTAssertNil(try Greeting.parse(Substring("FERRY 1 name=a id=\(id) auth=none nonce=00")).nonce)
    }

    func testGreetingRejects() {
        let nonce31 = String(repeating: "ab", count: 31)
        let cases: [(String, Bool)] = [  // (line, isNotFerry)
            ("", true), ("HTTP/1.1 200 OK", true), ("FERRY", true), ("ferry 1 name=a id=b auth=none", true),
            ("FERRY x name=a id=b auth=none", false), ("FERRY +1 name=a id=b auth=none", false),
            ("FERRY -1 name=a id=b auth=none", false),
            ("FERRY 1 id=b auth=none", false), ("FERRY 1 name=a auth=none", false), ("FERRY 1 name=a id=b", false),
            ("FERRY 1 name=a id=b auth=kerberos", false), ("FERRY 1 name=a id=b auth=hmac-sha256", false),
            ("FERRY 1 name=a id=b auth=hmac-sha256 nonce=\(nonce31)", false),
            ("FERRY 1 name=a id=b auth=hmac-sha256 nonce=\(nonce31)abc", false),
            ("FERRY 1 name=a id=b auth=hmac-sha256 nonce=\(nonce31)zz", false),
            ("FERRY 1 name=a%G0 id=b auth=none", false),
        ]
        for (line, notFerry) in cases {
            do {
                let g = try Greeting.parse(Substring(line))
                XCTFail("'\(line)' was accepted as \(g)")
            } catch {
                switch error {
                case .notFerry: XCTAssertTrue(notFerry, "\(line): \(error)")
                case .malformed: XCTAssertFalse(notFerry, "\(line): \(error)")
                case .refused(let reply): XCTFail("\(line): refused \(reply)")
                }
            }
        }
    }

    func testHex() {
        XCTAssertEqual(Hex.encode([0x00, 0x0F, 0xF0, 0xFF]), "000ff0ff")
        XCTAssertEqual(Hex.decode("000ff0ff"), [0x00, 0x0F, 0xF0, 0xFF])
        XCTAssertEqual(Hex.decode("000FF0FF"), [0x00, 0x0F, 0xF0, 0xFF])
        XCTAssertEqual(Hex.decode(""), [])
        XCTAssertNil(Hex.decode("0"))
        XCTAssertNil(Hex.decode("0g"))
        XCTAssertNil(Hex.decode("+1"))
        let all = (0...255).map(UInt8.init)
        XCTAssertEqual(Hex.decode(Hex.encode(all)), all)
        XCTAssertTrue(isSHA256Hex(Hex.encode([UInt8](repeating: 0xEE, count: 32))))
        XCTAssertFalse(isSHA256Hex(Hex.encode([UInt8](repeating: 0xEE, count: 32)).uppercased()))
        XCTAssertEqual(Hex.encode([UInt8]()), "")
        var words: [UInt8] = [0x3D]
        Hex.append(0x0123_4567_89AB_CDEF, to: &words)
        Hex.append(0, to: &words)
        XCTAssertEqual(String(decoding: words, as: UTF8.self), "=0123456789abcdef0000000000000000", "appended after what was there")
    }
}
