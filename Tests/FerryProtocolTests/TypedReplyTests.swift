import FerryProtocol
import XCTest

/// Every reply is a value with one encoder and one parser (PROTOCOL.md sections 3–7, protocol
/// 1.1): each round-trips, each refuses what breaks its grammar.
final class TypedReplyTests: XCTestCase {
    private let mtime = Timestamp(seconds: 1_700_000_000, nanoseconds: 250_000_000)
    private let sha = String(repeating: "0123456789abcdef", count: 4)

    private func roundTrip<Body: OKReply>(_ value: Body, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(value.line, expected, file: file, line: line)
        XCTAssertEqual(try Reply<Body>.parse(Substring(expected)), .ok(value), expected, file: file, line: line)
    }

    private func refuses<Body: OKReply>(_ body: Body.Type, _ lines: [String], file: StaticString = #filePath, line: UInt = #line) {
        for text in lines {
            XCTAssertThrowsError(try Reply<Body>.parse(Substring(text)), "\(Body.self): '\(text)'", file: file, line: line) { error in
                XCTAssertTrue(error is MalformedReply, file: file, line: line)
            }
        }
    }

    func testOKRepliesRoundTrip() throws {
        roundTrip(ListHead(count: 8), "OK 8")
        roundTrip(ListHead(count: 0), "OK 0")
        let entry = try Entry(line: "f 0644 12 1700000000.250000000 hello%20world.txt")
        roundTrip(StatReply(entry: entry), "OK f 0644 12 1700000000.250000000 hello%20world.txt")
        roundTrip(StatReply(entry: try Entry(line: "d 0755 0 1700000000.250000000 .")), "OK d 0755 0 1700000000.250000000 .")
        roundTrip(GetHead(size: 12, mtime: mtime, sha256: nil), "OK 12 1700000000.250000000 -")
        roundTrip(GetHead(size: 12, mtime: mtime, sha256: sha), "OK 12 1700000000.250000000 \(sha)")
        roundTrip(HashReply(sha256: sha), "OK \(sha)")
        roundTrip(BlocksHead(size: 303_104, mtime: mtime, blockSize: 65_536, count: 5), "OK 303104 1700000000.250000000 65536 5")
        roundTrip(BlocksHead(size: 0, mtime: mtime, blockSize: 65_536, count: 0), "OK 0 1700000000.250000000 65536 0")
        roundTrip(ManifestHead(count: 10), "OK 10")
        roundTrip(AuthOK(), "OK auth")
        roundTrip(QuitOK(), "OK bye")
        roundTrip(CapsReply(enabled: [.listKinds, .manifestReport]), "OK list-kinds,manifest-report")
        roundTrip(CapsReply(enabled: []), "OK")
    }

    /// `OK auth PROOF` after a channel-bound `AUTH`, and the greeting that asks for one.
    func testChannelBoundAuthReplies() throws {
        roundTrip(AuthOK(), "OK auth")
        roundTrip(AuthOK(proofHex: sha), "OK auth \(sha)")
        refuses(AuthOK.self, ["OK auth x", "OK auth \(sha) \(sha)", "OK auth \(sha.uppercased())", "OK auth ", "OK bye"])
        let id = String(repeating: "ab", count: 16), nonce = [UInt8](repeating: 7, count: 32)
        let bound = Greeting(name: "s", id: id, nonce: nonce, channelBound: true, capabilities: [])
        XCTAssertTrue(bound.line.contains(" auth=hmac-sha256-tls nonce="), bound.line)
        XCTAssertEqual(try Greeting.parse(Substring(bound.line)), bound)
        XCTAssertFalse(Greeting(name: "s", id: id, channelBound: true).channelBound, "no nonce, nothing to bind")
        XCTAssertThrowsError(try Greeting.parse(Substring("FERRY 1 name=s id=\(id) auth=hmac-sha256-tls")))
    }

    func testErrRepliesParseForEveryBody() throws {
        let now = Validator(size: 5, mtime: mtime)
        XCTAssertEqual(try Reply<GetHead>.parse("ERR 409 changed 5,1700000000.250000000"), .err(.changed(now)))
        XCTAssertEqual(try Reply<HashReply>.parse("ERR 404 not found: a"), .err(ErrorReply(.notFound, "not found: a")))
        XCTAssertEqual(try Reply<CapsReply>.parse("ERR 400 CAPS may be sent only once per connection"),
                       .err(ErrorReply(.malformed, "CAPS may be sent only once per connection")))
    }

    func testRepliesRefuseEmptyFieldsAndWrongShapes() {
        refuses(ListHead.self, ["OK", "OK ", "OK  8", "OK 8 ", "OK 8 9", "OK -1", "OK x", "OK 1000001", "ok 8", "OK\t8"])
        refuses(StatReply.self, ["OK", "OK ", "OK f 0644 12 1700000000.250000000 ", "OK f 0644  12 1700000000.250000000 a"])
        refuses(GetHead.self, ["OK", "OK 12 1700000000.250000000", "OK 12 1700000000.250000000 - ", "OK  12 1700000000.250000000 -",
                               "OK 12 1700000000.250000000 \(sha.uppercased())", "OK 12 1700000000.25 -", "OK 12 x -",
                               "OK 12 1700000000.250000000 \(sha) extra"])
        refuses(HashReply.self, ["OK", "OK \(sha.dropLast())", "OK \(sha) ", "OK  \(sha)"])
        refuses(BlocksHead.self, ["OK 303104 1700000000.250000000 65536 4", "OK 303104 1700000000.250000000 65536 6",
                                  "OK 303104 1700000000.250000000 1024 297", "OK 303104 1700000000.250000000 65536",
                                  "OK 303104 1700000000.250000000  65536 5", "OK 1 1700000000.250000000 65536 1048577"])
        refuses(ManifestHead.self, ["OK", "OK ", "OK 10000001"])
        refuses(AuthOK.self, ["OK", "OK bye", "OK auth ", "OK AUTH"])
        refuses(QuitOK.self, ["OK", "OK auth", "OK bye "])
        refuses(CapsReply.self, ["OK ", "OK list-kinds,", "OK ,zstd", "OK list-kinds zstd", "OK List-Kinds", "OK list_kinds"])
        // The status word itself, and an ERR without a reason (its reason field may not be empty).
        refuses(GetHead.self, ["", "HELLO", " OK 12 1700000000.250000000 -", "ERR 404", "ERR 404 ", "ERR 404  x", "ERR 40 x"])
    }

    func testTrailerAndStreamLines() throws {
        XCTAssertEqual(Trailer(sha256: sha).line, "END \(sha)")
        XCTAssertEqual(try Trailer.parse(Substring("END \(sha)")), Trailer(sha256: sha))
        XCTAssertEqual(try StreamLine.parse(Substring("END \(sha)")), .end(Trailer(sha256: sha)))
        XCTAssertEqual(try StreamLine.parse("ERR 409 changed during transfer"), .err(.changedDuringTransfer))
        XCTAssertNil(ErrorReply.changedDuringTransfer.current)
        for bad in ["END", "END ", "END -", "END  \(sha)", "END \(sha) ", "end \(sha)", "OK 1", "CHUNK 0 1 1 s 00000000"] {
            XCTAssertThrowsError(try StreamLine.parse(Substring(bad)), bad)
        }
    }

    /// `END <sha256> <xxh128>` (capability `xxh128`): one encoder, one parser, and every
    /// malformed second field refused.
    func testTrailerWithATransferDigest() throws {
        let xxh = "99aa06d3014798d86001c324468d497f"
        let t = Trailer(sha256: sha, xxh128: xxh)
        XCTAssertEqual(t.line, "END \(sha) \(xxh)")
        XCTAssertEqual(try Trailer.parse(Substring(t.line)), t)
        XCTAssertEqual(try StreamLine.parse(Substring(t.line)), .end(t))
        XCTAssertNil(try Trailer.parse(Substring("END \(sha)")).xxh128)
        for bad in ["END \(sha) \(xxh.uppercased())", "END \(sha) \(xxh.dropLast())", "END \(sha) \(xxh)0", "END \(sha)  \(xxh)",
                    "END \(sha) \(xxh) ", "END \(sha) \(xxh) \(xxh)", "END \(xxh) \(sha)", "END - \(xxh)", "END \(sha) -",
                    "END \(sha) \(String(xxh.dropLast()))g"] {
            XCTAssertThrowsError(try Trailer.parse(Substring(bad)), bad)
        }
        XCTAssertEqual(Capability(name: "xxh128"), .xxh128)
    }

    func testBlockHashLines() throws {
        XCTAssertEqual(try BlocksHead.parseHashLine(Substring(BlocksHead.hashLine(sha))), sha)
        for bad in ["", sha + " ", " " + sha, sha.uppercased(), String(sha.dropLast())] {
            XCTAssertThrowsError(try BlocksHead.parseHashLine(Substring(bad)), bad)
        }
    }

    /// 409 carries the current identity as fields a client reads, in the form a 1.0 client
    /// already understood (the validator is the reason's last word).
    func testChangedCarriesTheCurrentIdentity() throws {
        let now = Validator(size: 1_073_745_920, mtime: Timestamp(seconds: -101, nanoseconds: 750_000_000))
        let line = ErrorReply.changed(now).line
        XCTAssertEqual(line, "ERR 409 changed 1073745920,-101.750000000")
        let parsed = try ErrorReply.parse(Substring(line))
        XCTAssertEqual(parsed.current, now)
        XCTAssertEqual(parsed, .changed(now))
        XCTAssertEqual(Validator(Substring(parsed.reason.split(separator: " ").last ?? "")), now, "what a 1.0 client reads")
        XCTAssertNil(try ErrorReply.parse("ERR 409 changed during transfer").current)
        XCTAssertNil(try ErrorReply.parse("ERR 404 changed 1,1.000000000").current, "only 409 has the field")
        XCTAssertNil(try ErrorReply.parse("ERR 409 changed 1,1.0").current, "a malformed identity is not one")
    }

    func testEveryErrorCodeRoundTrips() throws {
        for code in ErrorCode.allCases {
            let reply = ErrorReply(code, "why \(code.rawValue)")
            XCTAssertEqual(try ErrorReply.parse(Substring(reply.line)), reply)
        }
    }

    // MARK: Capabilities

    func testCapabilityNames() {
        for c in Capability.known {
            XCTAssertEqual(Capability(name: Substring(c.name)), c)
            XCTAssertTrue(Capability.isValidName(Substring(c.name)))
        }
        XCTAssertEqual(Capability.known.map(\.name), ["list-kinds", "manifest-report", "zstd", "cdc", "xxh128"])
        XCTAssertEqual(Capability(name: "tls"), .unknown("tls"))
        for bad in ["", "Zstd", "a_b", "a b", "é", String(repeating: "a", count: 33)] {
            XCTAssertFalse(Capability.isValidName(Substring(bad)), bad)
        }
        XCTAssertEqual(Capability.parseList("zstd,tls,zstd"), [.zstd, .unknown("tls")])
        XCTAssertNil(Capability.parseList(""))
        XCTAssertNil(Capability.parseList("zstd,"))
    }

    func testNegotiationIsTheIntersectionInTheServersOrder() {
        let server: [Capability] = [.listKinds, .manifestReport, .zstd]
        XCTAssertEqual(Capability.negotiate(server: server, requested: [.zstd, .listKinds]), [.listKinds, .zstd])
        XCTAssertEqual(Capability.negotiate(server: server, requested: [.unknown("tls"), .manifestReport]), [.manifestReport])
        XCTAssertEqual(Capability.negotiate(server: [.listKinds], requested: [.zstd]), [])
        XCTAssertEqual(Capability.negotiate(server: [], requested: [.zstd]), [])
    }

    func testGreetingCarriesCapabilities() throws {
        let id = "5d41402abc4b2a76b9719d911017c592"
        let g = Greeting(name: "studio", id: id, capabilities: [.listKinds, .manifestReport])
        XCTAssertEqual(g.line, "FERRY 1 name=studio id=\(id) auth=none caps=list-kinds,manifest-report")
        XCTAssertEqual(try Greeting.parse(Substring(g.line)), g)
        let withNonce = Greeting(name: "s", id: id, nonce: [UInt8](repeating: 1, count: 32), capabilities: [])
        XCTAssertEqual(try Greeting.parse(Substring(withNonce.line)), withNonce)
        XCTAssertTrue(withNonce.line.hasSuffix(" caps="), "an empty list still says the server speaks CAPS")
        XCTAssertNil(try Greeting.parse(Substring("FERRY 1 name=s id=\(id) auth=none")).capabilities, "a 1.0 server")
        // Lenient, like the rest of the greeting: unknown names are kept, malformed ones skipped.
        XCTAssertEqual(try Greeting.parse(Substring("FERRY 1 name=s id=\(id) auth=none caps=zstd,,TLS,tls")).capabilities,
                       [.zstd, .unknown("tls")])
        // A refusal in place of the greeting is told apart from a stranger.
        XCTAssertThrowsError(try Greeting.parse("ERR 429 too many connections (limit 1); try again later")) { error in
            XCTAssertEqual(error as? Greeting.ParseError, .refused(ErrorReply(.tooMany, "too many connections (limit 1); try again later")))
        }
    }

    // MARK: CAPS and options (requests)

    private func reply(_ line: String) -> ErrorReply? {
        do {
            _ = try Request.parse(Substring(line))
            return nil
        } catch {
            return error.reply
        }
    }

    func testCapsRequest() throws {
        XCTAssertEqual(try Request.parse("CAPS list-kinds,zstd,tls"), .caps([.listKinds, .zstd, .unknown("tls")]))
        XCTAssertEqual(try Request.parse("caps zstd"), .caps([.zstd]))
        XCTAssertEqual(Request.caps([.listKinds, .manifestReport]).line, "CAPS list-kinds,manifest-report")
        for bad in ["CAPS", "CAPS ", "CAPS a,,b", "CAPS a,", "CAPS A", "CAPS a b", "CAPS a=b", "CAPS zstd x=y"] {
            XCTAssertEqual(reply(bad)?.code, 400, bad)
        }
    }

    func testUnknownOptionsAreNamedInTheRefusal() {
        XCTAssertEqual(reply("LIST . colour=blue"), ErrorReply(.malformed, "unknown option colour"))
        XCTAssertEqual(reply("MANIFEST . report=yes codec=zstd"), ErrorReply(.malformed, "unknown option codec"))
        XCTAssertEqual(reply("GET f 0 * x=y"), ErrorReply(.malformed, "unknown option x"))
        XCTAssertEqual(reply("LIST . kinds=maybe")?.reason, "bad value for option kinds: 'maybe'")
        XCTAssertEqual(reply("MANIFEST . hashes=no hashes=yes")?.reason, "option hashes given twice")
        XCTAssertEqual(reply("LIST . =yes")?.code, 400)
        XCTAssertEqual(reply("MANIFEST . report=yes x")?.code, 400, "positional fields come before the options")
    }

    func testOptionsComeAfterThePositionalFields() throws {
        // A path may contain `=`: the required positional fields are never options.
        XCTAssertEqual(try Request.parse("LIST a=b kinds=yes"), .list(try RemotePath(validating: "a=b"), kinds: true))
        XCTAssertEqual(try Request.parse("STAT k=v"), .stat(try RemotePath(validating: "k=v")))
        XCTAssertEqual(try Request.parse("MANIFEST . report=yes hashes=no"), .manifest(.root, hashes: false, report: true))
    }
}
