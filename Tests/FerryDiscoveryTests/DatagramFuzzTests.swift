// Fuzzing the discovery datagram parser, which reads unauthenticated UDP from anyone on the LAN.
//
// This file is compiled twice. In FerryDiscoveryTests the XCTest cases at the end drive the
// checks with a seeded mutation fuzzer. Through the symlink Fuzz/Sources/FuzzSupport/
// DatagramChecks.swift it is also part of the libFuzzer harnesses (FERRY_FUZZ_HARNESS is
// defined there and libFuzzer supplies the inputs), so both check exactly the same properties.

import FerryProtocol

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

public enum DatagramFuzzChecks {
    /// PROTOCOL.md section 9, written out again independently of `DiscoveryDatagram.parse`:
    /// the datagram the rules accept, as its canonical text, or nil.
    public static func model(_ input: [UInt8]) -> String? {
        guard input.count <= 512 else { return nil }
        var bytes = input[...]
        if bytes.last == 0x0A {
            bytes = bytes.dropLast()
            if bytes.last == 0x0D { bytes = bytes.dropLast() }
        }
        guard bytes.allSatisfy({ $0 >= 0x20 && $0 <= 0x7E }) else { return nil }
        let words = bytes.split(separator: 0x20, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        guard words.count >= 2, !words.contains(where: \.isEmpty), words[1] == "1" else { return nil }
        let required: [String]
        var optional: [String] = []
        switch words[0] {
        case "FERRY-PROBE": required = ["nonce"]
        case "FERRY-HERE": (required, optional) = (["nonce", "name", "id", "port", "version"], ["fp"])
        case "FERRY-ANNOUNCE": (required, optional) = (["name", "id", "port", "version"], ["fp"])
        case "FERRY-BYE": required = ["id"]
        default: return nil
        }
        var values: [String: String] = [:]
        for word in words.dropFirst(2) {
            guard let eq = word.firstIndex(of: "=") else { return nil }
            let key = String(word[..<eq]), value = String(word[word.index(after: eq)...])
            guard !key.isEmpty, !value.isEmpty, key.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" }) else { return nil }
            if required.contains(key) || optional.contains(key) {
                if values[key] != nil { return nil }
                values[key] = value
            }
        }
        for key in required where values[key] == nil { return nil }
        func hex(_ key: String, _ count: Int) -> String? {
            guard let v = values[key], v.count == count, v.allSatisfy({ ("0"..."9").contains($0) || ("a"..."f").contains($0) }) else { return nil }
            return v
        }
        func decoded(_ key: String) -> [UInt8]? {
            guard let v = values[key] else { return nil }
            var out: [UInt8] = []
            var u = Array(v.utf8)[...]
            while let b = u.popFirst() {
                if b == 0x25 {
                    guard u.count >= 2, u.prefix(2).allSatisfy({ Character(Unicode.Scalar($0)).isHexDigit }),
                          let h = UInt8(String(decoding: u.prefix(2), as: UTF8.self), radix: 16) else { return nil }
                    out.append(h)
                    u = u.dropFirst(2)
                } else {
                    out.append(b)
                }
            }
            return out
        }
        func text(_ bytes: [UInt8], max: Int, extra: UInt8?) -> String? {
            guard (1...max).contains(bytes.count), bytes.allSatisfy({ b in
                (0x41...0x5A).contains(b) || (0x61...0x7A).contains(b) || (0x30...0x39).contains(b) || b == 0x2D || b == 0x5F || b == 0x2E || b == extra
            }) else { return nil }
            return String(decoding: bytes, as: UTF8.self)
        }
        func advert() -> String? {
            guard let nameBytes = decoded("name"), let name = text(nameBytes, max: 63, extra: nil),
                  let id = hex("id", 32), let port = values["port"], port.count <= 5, port.first != "0",
                  port.allSatisfy({ ("0"..."9").contains($0) }), let p = Int(port), (1...65535).contains(p),
                  let versionBytes = decoded("version"), let version = text(versionBytes, max: 24, extra: 0x2B) else { return nil }
            // The fingerprint, when there is one: 32 characters from A–Z 2–7.
            if let fp = values["fp"] {
                guard fp.count == 32, fp.allSatisfy({ ("A"..."Z").contains($0) || ("2"..."7").contains($0) }) else { return nil }
                return "name=\(name) id=\(id) port=\(p) version=\(version) fp=\(fp)"
            }
            return "name=\(name) id=\(id) port=\(p) version=\(version)"
        }
        switch words[0] {
        case "FERRY-PROBE":
            // Probes are sent padded to 220 bytes (section 9.1).
            return hex("nonce", 16).map { "FERRY-PROBE 1 nonce=\($0) pad=" + String(repeating: "0", count: 220 - 41) }
        case "FERRY-HERE":
            guard let nonce = hex("nonce", 16), let a = advert() else { return nil }
            return "FERRY-HERE 1 nonce=\(nonce) \(a)"
        case "FERRY-ANNOUNCE": return advert().map { "FERRY-ANNOUNCE 1 \($0)" }
        default: return hex("id", 32).map { "FERRY-BYE 1 id=\($0)" }
        }
    }

    /// `DiscoveryDatagram.parse` on any bytes. It accepts exactly what the model accepts, never
    /// more than 512 bytes; what it accepts encodes to the model's canonical text (printable
    /// ASCII; a padded probe of 220 bytes, or an answer no larger) and survives it, with or
    /// without a trailing LF or CR LF.
    /// Returns whether the datagram was accepted.
    @discardableResult
    public static func checkDatagram(_ input: [UInt8]) throws -> Bool {
        let expected = model(input)
        let datagram: DiscoveryDatagram
        do {
            datagram = try DiscoveryDatagram.parse(input)
        } catch {
            try expect(expected == nil, "refused (\(error)) a datagram the rules accept: \(show(input))")
            if input.count > FerryLimits.maxDatagram { try expect(error == .tooLarge(input.count), "\(input.count) bytes refused as \(error)") }
            try expect(!error.description.isEmpty && error.description.utf8.count < 300, "error text \(error.description.prefix(400))")
            return false
        }
        try expect(input.count <= FerryLimits.maxDatagram, "accepted \(input.count) bytes")
        let encoded = datagram.encoded
        try expect(expected.map { Array($0.utf8) == encoded } ?? false,
                   "accepted \(show(input)) as \(show(encoded)); the rules say \(expected ?? "refuse")")
        try expect(encoded.count <= DiscoveryDatagram.paddedProbeBytes && encoded.allSatisfy { $0 >= 0x20 && $0 < 0x7F },
                   "encoding \(show(encoded))")
        if case .probe = datagram { try expect(encoded.count == DiscoveryDatagram.paddedProbeBytes, "probe of \(encoded.count) bytes") }
        if case .answer = datagram { try expect(encoded.count <= DiscoveryDatagram.maxAnswerBytes, "answer of \(encoded.count) bytes") }
        for suffix: [UInt8] in [[], [0x0A], [0x0D, 0x0A]] {
            try expect((try? DiscoveryDatagram.parse(encoded + suffix)) == datagram, "\(show(encoded + suffix)) does not read back")
        }
        switch datagram {
        case .answer(_, let a), .announce(let a):
            try expect((try? DiscoveryAdvert(name: a.name.rawValue, id: a.id, port: a.port, version: a.version,
                                             fingerprint: a.fingerprint)) == a, "advert \(a)")
        case .probe, .bye:
            break
        }
        return true
    }

    /// `ServerName(validating:)`: what it accepts is 1–63 characters of the name alphabet.
    public static func checkServerName(_ input: [UInt8]) throws {
        let text = String(decoding: input, as: UTF8.self)
        guard let name = try? ServerName(validating: text) else { return }
        try expect(name.rawValue == text && (1...63).contains(text.utf8.count) && text.utf8.allSatisfy(ServerName.isAllowed),
                   "accepted server name \(show(input))")
    }
}

#if !FERRY_FUZZ_HARNESS
import FerryTestSupport
import XCTest

final class DatagramFuzzTests: XCTestCase {
    private static let nameChars = Array("ABCXYZabcxyz0189-_.")

    private static func datagram(_ rng: inout SplitMix64) -> [UInt8] {
        func name() -> String { String((0..<(1 + rng.below(rng.chance(10) ? 63 : 12))).map { _ in rng.pick(nameChars) }) }
        func advert() -> String {
            var fields = ["name=\(name())", "id=\(rng.hex(32))", "port=\(1 + rng.below(65535))",
                          "version=\(rng.pick(["0.1.0", "1", "2.0.0-beta+7", "x_y", String(repeating: "9", count: 24)]))"]
            if rng.chance(30) { fields.shuffle(using: &rng) }
            return fields.joined(separator: " ")
        }
        var text: String
        switch rng.below(4) {
        case 0: text = "FERRY-PROBE 1 nonce=\(rng.hex(16))"
        case 1: text = "FERRY-HERE 1 nonce=\(rng.hex(16)) \(advert())"
        case 2: text = "FERRY-ANNOUNCE 1 \(advert())"
        default: text = "FERRY-BYE 1 id=\(rng.hex(32))"
        }
        if rng.chance(30) { text += " pad=" + String(repeating: "0", count: 1 + rng.below(200)) }
        if rng.chance(10) { text += rng.pick(["\n", "\r\n", " x-y=1", " name=a"]) }
        return Array(text.utf8)
    }

    private static let dictionary = ["FERRY-PROBE", "FERRY-HERE", "FERRY-ANNOUNCE", "FERRY-BYE", " 1 ", " nonce=", " name=",
                                     " id=", " port=", " version=", " pad=", "=", "%2", "%41", "%C3%A9", "%", "65535", "65536",
                                     "0", "00", "\n", "\r\n", "  ", "+"]

    private static func mutate(_ input: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var b = input
        for _ in 0..<(1 + rng.below(4)) {
            let at = rng.below(b.count + 1)
            switch rng.below(9) {
            case 0 where !b.isEmpty: b[rng.below(b.count)] ^= UInt8(1) << UInt8(rng.below(8))
            case 1 where !b.isEmpty: b[rng.below(b.count)] = rng.pick([0x00, 0x20, 0x25, 0x3D, 0x7F, 0x80, 0xFF, 0x0A, 0x0D, 0x41, 0x30])
            case 2: b.insert(contentsOf: Array(rng.pick(dictionary).utf8), at: at)
            case 3 where !b.isEmpty:
                let from = rng.below(b.count)
                b.removeSubrange(from..<min(b.count, from + 1 + rng.below(6)))
            case 4: b = Array(b.prefix(rng.below(b.count + 1)))
            case 5:
                // Pad towards and across the 512-byte limit.
                let target = rng.pick([510, 511, 512, 513, 514, 600, 4096])
                if b.count + 3 < target { b += Array(" z=".utf8) + [UInt8](repeating: 0x30, count: target - b.count - 3) }
            case 6:
                let other = datagram(&rng)
                b = Array(b.prefix(at)) + Array(other[rng.below(other.count + 1)...])
            case 7 where b.count > 2: b.swapAt(rng.below(b.count), rng.below(b.count))
            default: b.insert(UInt8(truncatingIfNeeded: rng.next()), at: at)
            }
        }
        return b
    }

    func testDatagramParserAgreesWithTheRules() {
        let seed: UInt64 = 0xF022_0301
        let clock = ContinuousClock()
        let start = clock.now
        var inputs = 0, accepted = 0, oversized = 0, failures = 0
        for i in 0..<60_000 {
            if i >= 3_000 && clock.now - start > .seconds(2) { break }
            var rng = SplitMix64(seed: seed, iteration: i)
            let input: [UInt8]
            switch rng.below(20) {
            case 0: input = rng.bytes(rng.below(rng.chance(10) ? 1000 : 80))
            case 1, 2, 3: input = Self.datagram(&rng)
            default: input = Self.mutate(Self.datagram(&rng), &rng)
            }
            do {
                if try DatagramFuzzChecks.checkDatagram(input) { accepted += 1 }
                try DatagramFuzzChecks.checkServerName(Array(input.prefix(70)))
            } catch {
                failures += 1
                XCTFail("datagrams seed 0x\(String(seed, radix: 16)) iteration \(i): \(error)")
                if failures >= 5 { break }
            }
            if input.count > FerryLimits.maxDatagram { oversized += 1 }
            inputs += 1
        }
        print("fuzz datagrams: \(inputs) inputs in \(clock.now - start), \(accepted) accepted, \(oversized) over 512 bytes")
        XCTAssertGreaterThan(accepted, inputs / 5)
        XCTAssertLessThan(accepted, inputs * 3 / 4)
        XCTAssertGreaterThan(oversized, inputs / 100)
    }

    /// The 512-byte limit is exact: a valid datagram padded with an unknown field to 512
    /// bytes is accepted, one byte more is refused as too large, whatever it says.
    func testTheSizeLimitIsExact() throws {
        let probe = Array("FERRY-PROBE 1 nonce=0123456789abcdef pad=".utf8)
        for size in [511, 512] {
            let d = probe + [UInt8](repeating: 0x30, count: size - probe.count)
            XCTAssertTrue(try DatagramFuzzChecks.checkDatagram(d), "\(size) bytes")
        }
        for size in [513, 514, 65_507] {
            let d = probe + [UInt8](repeating: 0x30, count: size - probe.count)
            XCTAssertFalse(try DatagramFuzzChecks.checkDatagram(d))
            XCTAssertThrowsError(try DiscoveryDatagram.parse(d)) { XCTAssertEqual($0 as? DiscoveryDatagram.Invalid, .tooLarge(size)) }
        }
        // 512 bytes plus a trailing LF is 513 bytes on the wire: too large.
        let full = probe + [UInt8](repeating: 0x30, count: 512 - probe.count)
        XCTAssertThrowsError(try DiscoveryDatagram.parse(full + [0x0A]))
    }
}
#endif
