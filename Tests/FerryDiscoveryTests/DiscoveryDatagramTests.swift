import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

final class DiscoveryDatagramTests: XCTestCase {
    let nonce = "0123456789abcdef"
    let id = "00112233445566778899aabbccddeeff"

    private func advert(name: String = "studio", port: Int = 7446, version: String = "0.1.0") throws -> DiscoveryAdvert {
        try DiscoveryAdvert(name: name, id: id, port: port, version: version)
    }

    private func parse(_ text: String) throws -> DiscoveryDatagram {
        try DiscoveryDatagram.parse(Array(text.utf8))
    }

    private func refused(_ text: String, file: StaticString = #filePath, line: UInt = #line) {
        refused(Array(text.utf8), file: file, line: line)
    }

    private func refused(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) {
        do {
            let d = try DiscoveryDatagram.parse(bytes)
            XCTFail("\(String(decoding: bytes, as: UTF8.self).debugDescription) was accepted as \(d)", file: file, line: line)
        } catch {
            XCTAssertFalse(error.description.isEmpty, file: file, line: line)
        }
    }

    // MARK: Valid datagrams

    func testEncodingMatchesTheProtocolDocument() throws {
        let probe = DiscoveryDatagram.probe(nonce: nonce).text
        XCTAssertTrue(probe.hasPrefix("FERRY-PROBE 1 nonce=0123456789abcdef pad=000"), probe)
        XCTAssertEqual(probe.utf8.count, DiscoveryDatagram.paddedProbeBytes)
        XCTAssertEqual(DiscoveryDatagram.answer(nonce: nonce, server: try advert()).text,
                       "FERRY-HERE 1 nonce=0123456789abcdef name=studio id=\(id) port=7446 version=0.1.0")
        XCTAssertEqual(DiscoveryDatagram.announce(try advert(port: 40000)).text,
                       "FERRY-ANNOUNCE 1 name=studio id=\(id) port=40000 version=0.1.0")
        XCTAssertEqual(DiscoveryDatagram.bye(id: id).text, "FERRY-BYE 1 id=\(id)")
    }

    func testRoundTrip() throws {
        let all: [DiscoveryDatagram] = [
            .probe(nonce: nonce),
            .answer(nonce: nonce, server: try advert(name: "a", port: 1, version: "1")),
            .answer(nonce: nonce, server: try advert(name: String(repeating: "n", count: 63), port: 65535,
                                                      version: String(repeating: "9", count: 24))),
            .announce(try advert(name: "nas-2.photos_B", version: "1.2.3-beta.1+abc")),
            .bye(id: id),
        ]
        for d in all {
            XCTAssertEqual(try DiscoveryDatagram.parse(d.encoded), d)
            XCTAssertLessThanOrEqual(d.encoded.count, FerryLimits.maxDatagram)
        }
    }

    func testAnswersStaySmallNextToTheProbe() throws {
        let probe = DiscoveryDatagram.probe(nonce: nonce).encoded
        XCTAssertEqual(probe.count, DiscoveryDatagram.paddedProbeBytes)
        XCTAssertEqual(Array("FERRY-PROBE 1 nonce=\(nonce)".utf8).count, DiscoveryDatagram.minProbeBytes)
        let largest = try DiscoveryAdvert(name: String(repeating: "x", count: 63), id: String(repeating: "a", count: 32),
                                          port: 65535, version: String(repeating: "v", count: 24),
                                          fingerprint: String(repeating: "A", count: DiscoveryDatagram.fingerprintLength))
        let biggest = DiscoveryDatagram.answer(nonce: nonce, server: largest).encoded
        XCTAssertEqual(biggest.count, DiscoveryDatagram.maxAnswerBytes)
        // Without the fingerprint it fits the 200-byte probes of clients from before it.
        XCTAssertLessThanOrEqual(DiscoveryDatagram.answer(nonce: nonce, server: largest.withoutFingerprint).encoded.count, 200)
        // Even the largest possible answer is smaller than the padded probe that asks for it.
        XCTAssertLessThanOrEqual(biggest.count, probe.count)
    }

    func testTheFingerprintIsOptionalAndChecked() throws {
        let id = String(repeating: "a", count: 32), fp = "MFRGGZDFMZTWQ2LKNNWG23TPOBYXE4ZT"
        let with = "FERRY-ANNOUNCE 1 name=studio id=\(id) port=7446 version=0.1.0 fp=\(fp)"
        guard case .announce(let advert) = try DiscoveryDatagram.parse(Array(with.utf8)) else { return XCTFail("not an announcement") }
        XCTAssertEqual(advert.fingerprint, fp)
        XCTAssertEqual(DiscoveryDatagram.announce(advert).text, with)
        guard case .announce(let bare) = try DiscoveryDatagram.parse(Array(with.dropLast(fp.count + 4).utf8)) else { return XCTFail() }
        XCTAssertNil(bare.fingerprint)
        for bad in [fp.lowercased(), String(fp.dropLast()), fp + "A", String(fp.dropLast()) + "1"] {
            XCTAssertThrowsError(try DiscoveryDatagram.parse(Array(with.replacingOccurrences(of: fp, with: bad).utf8)), bad)
        }
        XCTAssertThrowsError(try DiscoveryDatagram.parse(Array((with + " fp=\(fp)").utf8)), "twice")
    }

    func testAcceptsTrailingNewlineAnyFieldOrderAndUnknownFields() throws {
        XCTAssertEqual(try parse("FERRY-PROBE 1 nonce=\(nonce)\n"), .probe(nonce: nonce))
        XCTAssertEqual(try parse("FERRY-PROBE 1 nonce=\(nonce)\r\n"), .probe(nonce: nonce))
        XCTAssertEqual(try parse("FERRY-ANNOUNCE 1 version=0.1.0 port=7446 id=\(id) name=studio"),
                       .announce(try advert()))
        XCTAssertEqual(try parse("FERRY-BYE 1 id=\(id) reason=shutdown"), .bye(id: id))
        // Percent-encoding is decoded before the name is checked (lowercase hex accepted).
        XCTAssertEqual(try parse("FERRY-ANNOUNCE 1 name=%73tudio id=\(id) port=7446 version=0.1.0"),
                       .announce(try advert()))
    }

    // MARK: Refused datagrams

    func testRefusesMalformedDatagrams() {
        let good = "FERRY-HERE 1 nonce=\(nonce) name=studio id=\(id) port=7446 version=0.1.0"
        XCTAssertNoThrow(try parse(good))
        refused("")
        refused("\n")
        refused("FERRY-PROBE")
        refused("FERRY-PROBE 1")
        refused("FERRY-PROBE 2 nonce=\(nonce)")
        refused("FERRY-PROBE 01 nonce=\(nonce)")
        refused("ferry-probe 1 nonce=\(nonce)")
        refused("FERRY-PROBE 1 nonce=\(nonce) ")
        refused(" FERRY-PROBE 1 nonce=\(nonce)")
        refused("FERRY-PROBE  1 nonce=\(nonce)")
        refused("FERRY-PROBE 1 nonce=\(nonce)\n\n")
        refused("FERRY-PROBE 1 nonce=\(nonce)\r")
        refused("FERRY-PROBE 1 nonce=\(nonce)\tx=1")
        refused("FERRY-PROBE 1 nonce=0123456789ABCDEF")
        refused("FERRY-PROBE 1 nonce=0123456789abcde")
        refused("FERRY-PROBE 1 nonce=0123456789abcdef0")
        refused("FERRY-PROBE 1 nonce=0123456789abcdeg")
        refused("FERRY-PROBE 1 nonce=\(nonce) nonce=\(nonce)")
        refused("FERRY-PROBE 1 nonce")
        refused("FERRY-PROBE 1 nonce=")
        refused("FERRY-PROBE 1 =x nonce=\(nonce)")
        refused("FERRY-PROBE 1 Nonce=\(nonce)")
        refused("FERRY-PING 1 nonce=\(nonce)")
        refused("FERRY-BYE 1 id=\(id.uppercased())")
        refused("FERRY-BYE 1")
        for field in ["nonce", "name", "id", "port", "version"] {
            let without = good.split(separator: " ").filter { !$0.hasPrefix(field + "=") }.joined(separator: " ")
            refused(without)
        }
        refused(good.replacingOccurrences(of: "port=7446", with: "port=0"))
        refused(good.replacingOccurrences(of: "port=7446", with: "port=65536"))
        refused(good.replacingOccurrences(of: "port=7446", with: "port=07446"))
        refused(good.replacingOccurrences(of: "port=7446", with: "port=+7446"))
        refused(good.replacingOccurrences(of: "port=7446", with: "port=99999999999999999999999"))
        refused(good.replacingOccurrences(of: "name=studio", with: "name=my%20studio"))
        refused(good.replacingOccurrences(of: "name=studio", with: "name=caf%C3%A9"))
        refused(good.replacingOccurrences(of: "name=studio", with: "name=stu%2"))
        refused(good.replacingOccurrences(of: "name=studio", with: "name=a/b"))
        refused(good.replacingOccurrences(of: "name=studio", with: "name=" + String(repeating: "a", count: 64)))
        refused(good.replacingOccurrences(of: "version=0.1.0", with: "version=" + String(repeating: "1", count: 25)))
        refused(good.replacingOccurrences(of: "version=0.1.0", with: "version=0.1%200"))
        refused(good + " name=other")
    }

    func testRefusesOversizedAndForeignDatagrams() {
        let padded = "FERRY-PROBE 1 nonce=\(nonce) pad=" + String(repeating: "x", count: 600)
        refused(padded)
        if case .tooLarge(let n)? = parseError(padded) {
            XCTAssertEqual(n, padded.utf8.count)
        } else {
            XCTFail("an oversized datagram was not refused as too large")
        }
        // Exactly at the limit is still parsed (unknown fields are ignored).
        let atLimit = "FERRY-PROBE 1 nonce=\(nonce) pad="
        let filled = atLimit + String(repeating: "x", count: FerryLimits.maxDatagram - atLimit.utf8.count)
        XCTAssertEqual(filled.utf8.count, FerryLimits.maxDatagram)
        XCTAssertEqual(try parse(filled), .probe(nonce: nonce))
        refused(filled + "x")

        refused("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n\r\n")
        refused("FERRY 1 name=studio id=\(id) auth=none")
        refused([0x00, 0x01, 0x02, 0xFF])
        refused(Array("FERRY-PROBE 1 nonce=\(nonce)".utf8) + [0x00])
        refused(Array("FERRY-PROBE 1 nonce=\(nonce) x=\u{e9}".utf8))
        XCTAssertNotNil(tooLarge(String(repeating: "A", count: 513)))
        if case .foreign? = parseError("hello") {} else { XCTFail("'hello' is not reported as foreign") }
        if case .unsupportedVersion? = parseError("FERRY-PROBE 2 nonce=\(nonce)") {} else {
            XCTFail("version 2 is not reported as unsupported")
        }
    }

    private func parseError(_ text: String) -> DiscoveryDatagram.Invalid? {
        do {
            _ = try DiscoveryDatagram.parse(Array(text.utf8))
            return nil
        } catch {
            return error
        }
    }

    private func tooLarge(_ text: String) -> DiscoveryDatagram.Invalid? {
        guard let error = parseError(text), case .tooLarge = error else { return nil }
        return error
    }

    // MARK: Random input

    /// Thousands of random and mutated datagrams: the parser never crashes, never accepts
    /// anything over 512 bytes, and whatever it accepts encodes back to a datagram that
    /// parses to the same value.
    func testRandomAndMutatedInputNeverCrashesAndAcceptedInputRoundTrips() throws {
        var rng = SplitMix64(seed: 0xFE44_7447)
        let seeds: [[UInt8]] = [
            DiscoveryDatagram.probe(nonce: nonce).encoded,
            DiscoveryDatagram.answer(nonce: nonce, server: try advert()).encoded,
            DiscoveryDatagram.announce(try advert()).encoded,
            DiscoveryDatagram.bye(id: id).encoded,
        ]
        let alphabet = Array("FERY-POBHNACDU 1=0123456789abcdefxz%\n\r.".utf8) + [0x00, 0x7F, 0xC3, 0xFF]
        var accepted = 0
        for round in 0..<20_000 {
            var bytes: [UInt8]
            switch round % 3 {
            case 0:
                let length = Int.random(in: 0...700, using: &rng)
                bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            case 1:
                let length = Int.random(in: 0...200, using: &rng)
                bytes = (0..<length).map { _ in alphabet.randomElement(using: &rng) ?? 0 }
            default:
                bytes = seeds[Int.random(in: 0..<seeds.count, using: &rng)]
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    let position = Int.random(in: 0..<bytes.count, using: &rng)
                    switch Int.random(in: 0..<3, using: &rng) {
                    case 0: bytes[position] = alphabet.randomElement(using: &rng) ?? 0
                    case 1: bytes.remove(at: position)
                    default: bytes.insert(alphabet.randomElement(using: &rng) ?? 0, at: position)
                    }
                    if bytes.isEmpty { break }
                }
            }
            guard let parsed = try? DiscoveryDatagram.parse(bytes) else { continue }
            accepted += 1
            XCTAssertLessThanOrEqual(bytes.count, FerryLimits.maxDatagram)
            XCTAssertEqual(try DiscoveryDatagram.parse(parsed.encoded), parsed)
        }
        // Mutations of valid datagrams are sometimes still valid (e.g. a changed hex digit).
        XCTAssertGreaterThan(accepted, 0)
    }

    func testNoncesAreFreshLowercaseHex() {
        var rng = SplitMix64(seed: 1)
        var seen = Set<String>()
        for _ in 0..<100 {
            let n = DiscoveryDatagram.makeNonce(using: &rng)
            XCTAssertTrue(DiscoveryDatagram.isLowercaseHex(n, length: 16), n)
            seen.insert(n)
        }
        XCTAssertEqual(seen.count, 100)
        XCTAssertTrue(DiscoveryDatagram.isLowercaseHex(DiscoveryDatagram.makeNonce(), length: 16))
    }
}

final class ServerNameTests: XCTestCase {
    func testValidNames() throws {
        for name in ["a", "studio", "nas-2.photos_B", String(repeating: "z", count: 63), "0", "..", "-"] {
            XCTAssertEqual(try ServerName(validating: name).rawValue, name)
        }
    }

    func testInvalidNamesSayWhatIsWrong() {
        func message(_ name: String) -> String {
            do {
                _ = try ServerName(validating: name)
                return "accepted"
            } catch {
                return error.description
            }
        }
        XCTAssertTrue(message("").contains("empty"))
        XCTAssertTrue(message(String(repeating: "a", count: 64)).contains("64 characters"))
        XCTAssertTrue(message("my studio").contains("a space at position 3"), message("my studio"))
        XCTAssertTrue(message("a/b").contains("'/' at position 2"))
        XCTAssertTrue(message("café").contains("'é' at position 4"))
        XCTAssertTrue(message("tab\there").contains("U+9"))
        for name in ["", "my studio", "a/b", "x:y", "a%20b", "caf\u{e9}", String(repeating: "a", count: 64), "a\nb"] {
            XCTAssertTrue(message(name).contains("1–63 characters from A–Z a–z 0–9 - _ ."), name)
        }
    }

    func testDefaultNameFromHostName() {
        XCTAssertEqual(ServerName.defaultName(hostname: "studio").rawValue, "studio")
        XCTAssertEqual(ServerName.defaultName(hostname: "Jane's MacBook Pro.local").rawValue, "JanesMacBookPro.local")
        XCTAssertEqual(ServerName.defaultName(hostname: "").rawValue, "ferry")
        XCTAssertEqual(ServerName.defaultName(hostname: "ÿÿ ").rawValue, "ferry")
        XCTAssertEqual(ServerName.defaultName(hostname: String(repeating: "h", count: 100)).rawValue.count, 63)
        XCTAssertNoThrow(try ServerName(validating: ServerName.defaultName(hostname: "ünïcødé-høst").rawValue))
    }
}
