// `Request.quickGet`, the byte-level fast path for `GET` lines, against the general parser: on
// every input it either declines (nil) or returns exactly what the general parser returns.

@testable import FerryProtocol
import FerryTestSupport
import XCTest

final class QuickGetTests: XCTestCase {
    private func quick(_ line: [UInt8]) -> Request? {
        line.withUnsafeBufferPointer { Request.quickGet($0) }
    }

    private func general(_ line: [UInt8]) -> Result<Request, Request.ParseError> {
        let text = Substring(String(decoding: line, as: UTF8.self))
        do throws(Request.ParseError) { return .success(try Request.parseFields(text)) } catch { return .failure(error) }
    }

    /// The lines clients send take the fast path and mean what the general parser says.
    func testUsualLinesTakeTheFastPath() throws {
        let lines = [
            "GET a/b.txt 0 *", "GET a/b.txt 0 * 123,1700000000.000000001", "GET caf%C3%A9/x%20y 5 10",
            "GET d00/e01/f00001.dat 0 * 8454,1796204976.941849796", "GET x 9223372036854775807 0 0,0.000000000",
        ]
        for line in lines {
            let bytes = Array(line.utf8)
            let fast = try XCTUnwrap(quick(bytes), line)
            XCTAssertEqual(general(bytes), .success(fast), line)
            XCTAssertEqual(try Request.parse(Substring(line)), fast, line)
        }
    }

    /// Lines the fast path must leave to the general parser (which accepts some of them and
    /// refuses the others with its own words).
    func testUnusualLinesAreDeclined() {
        let lines = [
            "get a 0 *", "GET", "GET ", "GET a", "GET a 0", "GET  a 0 *", "GET a 0 * ", "GET a 0 *  1,0.000000000",
            "GET a -1 *", "GET a 0 x", "GET a 0 * 1,0", "GET a 0 * 1,0.000000000 extra", "GET a 0 * size=1",
            "GET ../a 0 *", "GET a%2Fb 0 *", "GET a\u{7F} 0 *", "GET a\t0 *", "GET /a 0 *", "GET a 00000000000000000000 *",
        ]
        for line in lines {
            let bytes = Array(line.utf8)
            XCTAssertNil(quick(bytes), line)
        }
    }

    /// Random mutations of GET lines: whenever the fast path answers, the general parser agrees.
    func testMutatedLinesAgree() {
        var rng = SplitMix64(seed: 0x5155_4943)
        let seeds = ["GET d00/e01/f00001.dat 0 * 8454,1796204976.941849796", "GET a/b 17 4096", "GET %C3%A9 0 * 0,0.000000000"]
        let alphabet: [[UInt8]] = [[0x20], [0x2A], [0x2C], [0x2E], [0x2F], [0x25], [0x3D], [0x30], [0x39], [0x2D], [0x00],
                                   [0x7F], [0x0A], [0x47], [0x67], [0xC3, 0xA9], [0xFF], Array("%2F".utf8), Array("..".utf8)]
        var fast = 0, declined = 0
        for _ in 0..<20_000 {
            let line = rng.mutated(Array(rng.pick(seeds).utf8), alphabet: alphabet)
            guard let answer = quick(line) else {
                declined += 1
                continue
            }
            fast += 1
            XCTAssertEqual(general(line), .success(answer), String(decoding: line, as: UTF8.self).debugDescription)
        }
        XCTAssertGreaterThan(fast, 2_000)
        XCTAssertGreaterThan(declined, 2_000)
    }

    // MARK: - GetHead.quick, the client's side

    private func headGeneral(_ detail: [UInt8]) -> GetHead? {
        // The fields path alone: a detail the fast path declines goes there.
        let text = Substring(String(decoding: detail, as: UTF8.self))
        let f = text.spaceSeparatedFields()
        guard f.count == 3, !f.contains(where: \.isEmpty), let size = parseWireNumber(f[0]), let mtime = Timestamp(f[1]) else { return nil }
        if f[2] == "-" { return GetHead(size: size, mtime: mtime, sha256: nil) }
        guard isSHA256Hex(f[2]) else { return nil }
        return GetHead(size: size, mtime: mtime, sha256: String(f[2]))
    }

    /// Mutated `GET` status details: whenever the fast path answers, the fields give the same
    /// head; and `GetHead(detail:)` agrees with the fields on every input.
    func testGetHeadFastPathAgrees() {
        var rng = SplitMix64(seed: 0x4845_4144)
        let sha = String(repeating: "0123456789abcdef", count: 4)
        let seeds = ["8454 1796204976.941849796 \(sha)", "0 0.000000000 -", "9223372036854775807 1.000000001 -"]
        let alphabet: [[UInt8]] = [[0x20], [0x2D], [0x2E], [0x30], [0x39], [0x61], [0x66], [0x67], [0x41], [0x00], [0x09],
                                   [0xC3, 0xA9], Array("  ".utf8)]
        var fast = 0, declined = 0
        for _ in 0..<20_000 {
            let detail = rng.mutated(Array(rng.pick(seeds).utf8), alphabet: alphabet)
            let expected = headGeneral(detail)
            if let quick = detail.withUnsafeBufferPointer({ GetHead.quick($0) }) {
                fast += 1
                XCTAssertEqual(quick, expected, String(decoding: detail, as: UTF8.self).debugDescription)
            } else {
                declined += 1
            }
            let parsed = try? GetHead(detail: Substring(String(decoding: detail, as: UTF8.self)))
            XCTAssertEqual(parsed, expected, String(decoding: detail, as: UTF8.self).debugDescription)
        }
        XCTAssertGreaterThan(fast, 1_000)
        XCTAssertGreaterThan(declined, 2_000)
    }
}
