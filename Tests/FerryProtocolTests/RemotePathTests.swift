import FerryProtocol
import XCTest

final class RemotePathTests: XCTestCase {
    private func invalid(wire: String) -> RemotePath.Invalid? {
        do {
            let p = try RemotePath(wire: Substring(wire))
            XCTFail("'\(wire)' was accepted as \(p.bytes)")
            return nil
        } catch {
            return error
        }
    }

    private func invalid(raw: [UInt8]) -> RemotePath.Invalid? {
        do {
            let p = try RemotePath(validating: raw)
            XCTFail("\(raw) was accepted as \(p.bytes)")
            return nil
        } catch {
            return error
        }
    }

    /// A raw path of exactly `count` bytes made of components of at most 255 bytes.
    private func rawPath(length count: Int) -> [UInt8] {
        let components = (count + 1 + 255) / 256
        let sum = count - (components - 1)
        var out: [UInt8] = []
        for i in 0..<components {
            if i > 0 { out.append(0x2F) }
            let length = sum / components + (i < sum % components ? 1 : 0)
            out += [UInt8](repeating: 0x61, count: length)
        }
        return out
    }

    func testRootForms() throws {
        XCTAssertTrue(try RemotePath(wire: ".").isRoot)
        XCTAssertTrue(try RemotePath(validating: "").isRoot)
        XCTAssertTrue(try RemotePath(validating: ".").isRoot)
        XCTAssertEqual(RemotePath.root.wire, ".")
        XCTAssertEqual(RemotePath.root.description, ".")
        XCTAssertEqual(RemotePath.root.bytes, [])
        XCTAssertNil(RemotePath.root.parent)
        XCTAssertTrue(RemotePath.root.components.isEmpty)
        XCTAssertEqual(RemotePath.root.name, [])
    }

    func testEncodingExamplesFromSpec() {
        XCTAssertEqual(PercentEncoding.encode("hello world.txt"), "hello%20world.txt")
        XCTAssertEqual(PercentEncoding.encode("a\nb"), "a%0Ab")
        XCTAssertEqual(PercentEncoding.encode("café"), "caf%C3%A9")
        XCTAssertEqual(PercentEncoding.encode("100%"), "100%25")
        XCTAssertEqual(PercentEncoding.encode([0x66, 0xFF]), "f%FF")
        XCTAssertEqual(PercentEncoding.encode([0x7F, 0x7E, 0x21, 0x20, 0x00]), "%7F~!%20%00")
        XCTAssertEqual(PercentEncoding.encode("plain/path-1_2.txt"), "plain/path-1_2.txt")
    }

    func testEveryByteEncodesCanonicallyAndRoundTrips() throws {
        for value in 0...255 {
            let b = UInt8(value)
            let encoded = PercentEncoding.encode([b])
            let printable = (0x21...0x7E).contains(b) && b != 0x25
            if printable {
                XCTAssertEqual(Array(encoded.utf8), [b], "byte \(b) must travel as itself")
            } else {
                let hex = String(b, radix: 16, uppercase: true)
                XCTAssertEqual(encoded, "%" + String(repeating: "0", count: 2 - hex.count) + hex)
            }
            XCTAssertTrue(encoded.utf8.allSatisfy { (0x21...0x7E).contains($0) }, "encoded byte \(b) is not printable ASCII")
            XCTAssertEqual(PercentEncoding.decode(Substring(encoded)), [b])
            if !printable {
                XCTAssertEqual(PercentEncoding.decode(Substring(encoded.lowercased())), [b], "lowercase hex digits are accepted")
            }
        }
    }

    func testPathRoundTrips() throws {
        let raws: [[UInt8]] = [
            Array("hello world.txt".utf8),
            Array("100% sure/50%25".utf8),
            Array("line\nfeed/and\rreturn\ttab".utf8),
            Array("café/crème brûlée.txt".utf8),
            Array("docs/guides/README.md".utf8),
            Array("😀/日本語".utf8),
            [0x66, 0xFF, 0xFE, 0x2F, 0x80, 0xC3],  // not UTF-8 at all
            Array("...".utf8), Array(".hidden/..x/x..".utf8),
            Array("~!\"#$&'()*+,-;<=>?@[\\]^_`{|}".utf8),
            [0x7F, 0x01, 0x1F],
        ]
        for raw in raws {
            let p = try RemotePath(validating: raw)
            XCTAssertEqual(p.bytes, raw)
            let wire = p.wire
            XCTAssertTrue(wire.utf8.allSatisfy { (0x21...0x7E).contains($0) }, "wire form '\(wire)' must be printable ASCII")
            XCTAssertEqual(try RemotePath(wire: Substring(wire)), p)
            XCTAssertEqual(PercentEncoding.decode(Substring(wire)), raw)
        }
    }

    func testLowercaseHexAccepted() throws {
        let p = try RemotePath(wire: "caf%c3%a9.txt")
        XCTAssertEqual(p.bytes, Array("café.txt".utf8))
        XCTAssertEqual(p.wire, "caf%C3%A9.txt", "encoders always write uppercase")
    }

    func testMalformedEscapesAreBadEncoding() {
        for wire in ["%", "a%", "a%4", "%G0", "%0G", "%%", "%-1", "%+1", "a b", "a\tb", "a\nb", "\u{7F}", "a\u{1}b", "a\0b"] {
            XCTAssertEqual(invalid(wire: wire), .badEncoding, "wire '\(wire.debugDescription)'")
        }
    }

    func testEncodedSlashAndNULRefused() {
        XCTAssertEqual(invalid(wire: "a%2Fb"), .badEncoding)
        XCTAssertEqual(invalid(wire: "a%2fb"), .badEncoding)
        XCTAssertEqual(invalid(wire: "%2F"), .badEncoding)
        XCTAssertEqual(invalid(wire: "%2Fetc%2Fpasswd"), .badEncoding)
        XCTAssertEqual(invalid(wire: "..%2F..%2Fetc"), .badEncoding)
        XCTAssertEqual(invalid(wire: "%00"), .nul)
        XCTAssertEqual(invalid(wire: "a%00b"), .nul)
        XCTAssertEqual(invalid(wire: "dir/x%00.txt"), .nul)
        XCTAssertEqual(invalid(raw: [0x61, 0x00]), .nul)
        // "%252F" is an encoded '%' followed by "2F": a legal name, not a smuggled slash.
        XCTAssertEqual(try RemotePath(wire: "%252F").bytes, Array("%2F".utf8))
    }

    func testStructuralRules() {
        XCTAssertEqual(invalid(wire: "/etc"), .absolute)
        XCTAssertEqual(invalid(wire: "/"), .absolute)
        XCTAssertEqual(invalid(wire: "//a"), .absolute)
        for wire in ["..", "../etc", "a/..", "a/../b", "a/b/..", "%2E%2E", "%2e%2e/x", "a/%2E."] {
            XCTAssertEqual(invalid(wire: wire), .dotDot, wire)
        }
        for wire in ["./a", "a/.", "a/./b", "a/%2E"] {
            XCTAssertEqual(invalid(wire: wire), .dot, wire)
        }
        for wire in ["a//b", "a/", "a/b/", "a///"] {
            XCTAssertEqual(invalid(wire: wire), .emptyComponent, wire)
        }
        // Names that merely contain dots are fine.
        XCTAssertNoThrow(try RemotePath(wire: "...")); XCTAssertNoThrow(try RemotePath(wire: "..a/a..")); XCTAssertNoThrow(try RemotePath(wire: ".git"))
    }

    func testLengthLimits() throws {
        let component255 = [UInt8](repeating: 0x61, count: FerryLimits.maxComponentBytes)
        XCTAssertEqual(try RemotePath(validating: component255).bytes.count, 255)
        XCTAssertEqual(invalid(raw: component255 + [0x61]), .componentTooLong)
        XCTAssertEqual(invalid(raw: Array("ok/".utf8) + component255 + [0x61]), .componentTooLong)

        let max = rawPath(length: FerryLimits.maxPathBytes)
        XCTAssertEqual(max.count, 4096)
        XCTAssertEqual(try RemotePath(validating: max).bytes.count, 4096)
        let over = rawPath(length: FerryLimits.maxPathBytes + 1)
        XCTAssertEqual(over.count, 4097)
        XCTAssertEqual(invalid(raw: over), .tooLong)
        // Encoded, a 4096-byte name needs more wire bytes: the limit is on the decoded form.
        XCTAssertEqual(try RemotePath(wire: Substring(PercentEncoding.encode(max))).bytes, max)
    }

    func testComponentsNameAndParent() throws {
        let p = try RemotePath(validating: "a/b c/d")
        XCTAssertEqual(p.components.map { Array($0) }, [Array("a".utf8), Array("b c".utf8), Array("d".utf8)])
        XCTAssertEqual(p.name, Array("d".utf8))
        XCTAssertEqual(p.parent, try RemotePath(validating: "a/b c"))
        XCTAssertEqual(p.parent?.parent, try RemotePath(validating: "a"))
        XCTAssertEqual(p.parent?.parent?.parent, .root)
        XCTAssertNil(p.parent?.parent?.parent?.parent)
        XCTAssertEqual(p.description, "a/b c/d")
        XCTAssertEqual(try RemotePath(validating: [0x66, 0xFF]).description, "f\u{FFFD}")
    }

    func testAppendingName() throws {
        let a = try RemotePath.root.appending(name: Array("a".utf8))
        XCTAssertEqual(a.bytes, Array("a".utf8))
        XCTAssertEqual(try a.appending(name: Array("b c".utf8)).bytes, Array("a/b c".utf8))
        for bad: [UInt8] in [[], [0x2E], [0x2E, 0x2E], [0x61, 0x2F, 0x62], [0x2F], [0x00]] {
            XCTAssertThrowsError(try RemotePath.root.appending(name: bad), "root + \(bad)")
            XCTAssertThrowsError(try a.appending(name: bad), "a + \(bad)")
        }
        XCTAssertThrowsError(try a.appending(name: [UInt8](repeating: 0x62, count: 256)))
    }

    func testAppendingPath() throws {
        let a = try RemotePath(validating: "a/b")
        let c = try RemotePath(validating: "c/d")
        XCTAssertEqual(a.appending(c).bytes, Array("a/b/c/d".utf8))
        XCTAssertEqual(a.appending(.root), a)
        XCTAssertEqual(RemotePath.root.appending(c), c)
    }

    func testHasPrefixIsComponentWise() throws {
        let data = try RemotePath(validating: "srv/data")
        XCTAssertTrue(try RemotePath(validating: "srv/data").hasPrefix(data))
        XCTAssertTrue(try RemotePath(validating: "srv/data/x").hasPrefix(data))
        XCTAssertFalse(try RemotePath(validating: "srv/data2").hasPrefix(data), "/srv/data must not admit /srv/data2")
        XCTAssertFalse(try RemotePath(validating: "srv/dat").hasPrefix(data))
        XCTAssertFalse(try RemotePath(validating: "srv").hasPrefix(data))
        XCTAssertTrue(data.hasPrefix(.root))
        XCTAssertTrue(RemotePath.root.hasPrefix(.root))
        XCTAssertFalse(RemotePath.root.hasPrefix(data))
    }

    func testManifestOrderPutsSlashFirst() throws {
        let names = ["b", "a-b", "a/x/y", "ab", "a", "a/x", "a/x-1", "A", "a.txt", "a/x/z"]
        let sorted = try names.map { try RemotePath(validating: $0) }.sorted().map(\.description)
        XCTAssertEqual(sorted, ["A", "a", "a/x", "a/x/y", "a/x/z", "a/x-1", "a-b", "a.txt", "ab", "b"])
        // Raw-byte order otherwise: 0xFF after ASCII, UTF-8 after ASCII.
        let hi = try RemotePath(validating: [0x61, 0xFF])
        let lo = try RemotePath(validating: [0x61, 0x7E])
        XCTAssertLessThan(lo, hi)
        XCTAssertFalse(hi < lo)
        XCTAssertFalse(hi < hi)
        XCTAssertLessThan(RemotePath.root, lo)
    }

    func testInvalidDescriptionsAreHelpful() {
        XCTAssertEqual(RemotePath.Invalid.dotDot.description, "'..' is not allowed")
        XCTAssertTrue(RemotePath.Invalid.tooLong.description.contains("4096"))
        XCTAssertTrue(RemotePath.Invalid.componentTooLong.description.contains("255"))
    }
}
