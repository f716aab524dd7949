import FerryTestSupport
import FerryTrust
import Foundation
import XCTest

/// Fingerprints, the known-servers list and the token binding as values.
final class TrustValuesTests: XCTestCase {
    func testFingerprintRoundTripsThroughEveryWrittenForm() throws {
        let fp = Fingerprint(publicKeyDER: Array("a public key".utf8))
        XCTAssertEqual(fp.bytes.count, 20)
        let text = fp.description
        XCTAssertEqual(text.count, 39)
        XCTAssertEqual(text.split(separator: "-").count, 8)
        XCTAssertEqual(Fingerprint(text), fp)
        XCTAssertEqual(Fingerprint(text.lowercased()), fp)
        XCTAssertEqual(Fingerprint(text.replacingOccurrences(of: "-", with: " ")), fp)
        XCTAssertEqual(Fingerprint(text.replacingOccurrences(of: "-", with: "")), fp)
        XCTAssertEqual(Fingerprint(fp.hex), fp)
        XCTAssertEqual(Fingerprint(fp.hex.uppercased()), fp)
        XCTAssertNil(Fingerprint(String(text.dropLast())))
        XCTAssertNil(Fingerprint(text.replacingOccurrences(of: "A", with: "1")).flatMap { $0 == fp ? $0 : nil })
        XCTAssertNil(Fingerprint(""))
        XCTAssertNotEqual(Fingerprint(publicKeyDER: Array("another key".utf8)), fp)
    }

    /// A key already trusted is the same server at a new address, or under the name it was
    /// trusted by (or when its line has no name); under another name it is not (`hintFor`).
    func testAKnownKeyIsTheSameServerExceptUnderAnotherName() {
        let fp = Fingerprint(publicKeyDER: Array("studio's key".utf8))
        let named = KnownServers.Entry(fingerprint: fp, name: "studio", address: "10.0.0.2:7446")
        let unnamed = KnownServers.Entry(fingerprint: fp, name: nil, address: "10.0.0.2:7446")
        XCTAssertEqual(KnownServers.hintFor(name: nil, sameKey: [named]), "known as 'studio'", "asked for by address")
        XCTAssertEqual(KnownServers.hintFor(name: "STUDIO", sameKey: [named]), "known as 'studio'", "names are case-blind")
        XCTAssertNil(KnownServers.hintFor(name: "laptop", sameKey: [named]), "another name: first contact")
        XCTAssertEqual(KnownServers.hintFor(name: "laptop", sameKey: [unnamed]), "known at 10.0.0.2:7446")
        XCTAssertNil(KnownServers.hintFor(name: nil, sameKey: []))
    }

    func testKnownServersKeepCommentsReplaceByNameOrAddressAndForget() throws {
        let dir = try TestSupport.makeTemporaryDirectory("ferry-known")
        defer { TestSupport.removeTemporaryDirectory(dir) }
        let path = dir.appendingPathComponent("ferry/known-servers").path
        let a = Fingerprint(publicKeyDER: [1]), b = Fingerprint(publicKeyDER: [2]), c = Fingerprint(publicKeyDER: [3])
        var known = try KnownServers.load(from: path)
        XCTAssertTrue(known.entries.isEmpty, "a missing file is an empty list")
        known.trust(.init(fingerprint: a, name: "studio", address: "10.0.0.1:7446"))
        known.trust(.init(fingerprint: b, name: nil, address: "10.0.0.2:7446"))
        try known.save()
        var text = try String(contentsOfFile: path, encoding: .utf8)
        try (text + "# a note of mine\n").write(toFile: path, atomically: false, encoding: .utf8)
        known = try KnownServers.load(from: path)
        XCTAssertEqual(known.pinned(name: "Studio", address: "10.9.9.9:1").map(\.fingerprint), [a], "by name, any case")
        XCTAssertEqual(known.pinned(name: nil, address: "10.0.0.2:7446").map(\.fingerprint), [b])
        XCTAssertEqual(known.pinned(name: "other", address: "10.0.0.1:7446").map(\.fingerprint), [a], "else by address")
        known.trust(.init(fingerprint: c, name: "studio", address: nil))
        XCTAssertEqual(known.pinned(name: "studio", address: "x").map(\.fingerprint), [c], "trusted anew under its name")
        XCTAssertEqual(known.forget(b.description).map(\.fingerprint), [b])
        try known.save()
        text = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertTrue(text.contains("# a note of mine"), text)
        XCTAssertFalse(text.contains(b.description), text)
        XCTAssertEqual(try KnownServers.load(from: path).entries.map(\.fingerprint), [c])
        var st = stat()
        XCTAssertEqual(stat(path, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)

        try "\(a) colour=blue\n".write(toFile: path, atomically: false, encoding: .utf8)
        XCTAssertThrowsError(try KnownServers.load(from: path)) { error in
            XCTAssertTrue("\(error)".contains("line 1 has an unknown field"), "\(error)")
        }
    }

    func testTheTokenBindingCoversEveryInputAndTellsTheSidesApart() {
        let token = Array("s3cret".utf8), sn = [UInt8](repeating: 1, count: 32), cn = [UInt8](repeating: 2, count: 32)
        let key = Fingerprint.keyHash(publicKeyDER: [9]), other = Fingerprint.keyHash(publicKeyDER: [8])
        let client = TokenBinding.clientProof(token: token, serverNonce: sn, clientNonce: cn, serverKeyHash: key)
        XCTAssertEqual(client.count, 32)
        XCTAssertNotEqual(client, TokenBinding.serverProof(token: token, serverNonce: sn, clientNonce: cn, serverKeyHash: key))
        XCTAssertNotEqual(client, TokenBinding.clientProof(token: token, serverNonce: sn, clientNonce: cn, serverKeyHash: other))
        XCTAssertNotEqual(client, TokenBinding.clientProof(token: token, serverNonce: cn, clientNonce: sn, serverKeyHash: key))
        XCTAssertNotEqual(client, TokenBinding.clientProof(token: Array("other".utf8), serverNonce: sn, clientNonce: cn, serverKeyHash: key))
        XCTAssertTrue(TokenBinding.matches(client, client))
        XCTAssertFalse(TokenBinding.matches(client, Array(client.dropLast())))
        XCTAssertNotEqual(TokenBinding.makeNonce(), TokenBinding.makeNonce())
    }
}
