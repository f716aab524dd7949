#if canImport(Glibc)
import Glibc
#endif
import FerryClient
import FerryTestSupport
import FerryTrust
import Foundation
import XCTest

/// TLS by default, the server's identity, pinning and first contact, and the cleartext/TLS
/// mismatch in both directions, through the real binaries.
final class TLSTests: XCTestCase {
    private var work: URL!
    private var sample: URL!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-tls")
        sample = try TestSupport.materializeFixtures(in: work)
    }

    override func tearDownWithError() throws {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    /// A server whose clients here say themselves how they trust it (not `TestServers`).
    private func serve(tls: Bool = true, state: String = "state", _ extra: [String] = []) throws -> ServerProcess {
        let server = try ServerProcess(serving: sample, tls: tls, arguments: ["--bind", "127.0.0.1", "--no-discovery",
                                                                              "--state-dir", work.appendingPathComponent(state).path] + extra)
        TestServers.unregister(server.address)
        return server
    }

    /// A client environment with its own known-servers file.
    private var config: [String: String] { ["XDG_CONFIG_HOME": work.appendingPathComponent("config").path] }
    private var knownServers: URL { work.appendingPathComponent("config/ferry/known-servers") }

    private func ferry(_ arguments: [String], environment: [String: String]? = nil) throws -> TestSupport.ProcessResult {
        try TestSupport.run(TestSupport.ferryExecutable.path, arguments, timeout: 60, environment: environment ?? config, check: false)
    }

    // MARK: - Part 1: encrypted by default, a stable identity

    /// Bytes captured between client and server hold neither a file's content nor its name;
    /// the same capture of a --plaintext server holds both (so the check can fail).
    func testNothingReadableCrossesTheWire() throws {
        let secretName = "secret-name-7f3a9c.txt"
        let secretText = "SECRET-CONTENT-\(UUID().uuidString)"
        try Files.write(sample.appendingPathComponent(secretName), String(repeating: secretText + "\n", count: 50))
        for tls in [true, false] {
            let server = try serve(tls: tls)
            defer { server.stop() }
            let capture = work.appendingPathComponent("capture-\(tls)")
            let relay = try RecordingRelay(to: server.port, capture: capture)
            defer { relay.stop() }
            let dest = work.appendingPathComponent("copy-\(tls)")
            let r = try ferry(["sync", "127.0.0.1:\(relay.port)/", dest.path] + server.clientArguments)
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(try String(contentsOf: dest.appendingPathComponent(secretName), encoding: .utf8),
                           String(repeating: secretText + "\n", count: 50))
            let wire = try Data(contentsOf: capture)
            let sawName = wire.range(of: Data(secretName.utf8)) != nil
            let sawText = wire.range(of: Data(secretText.utf8)) != nil
            XCTAssertEqual(sawName, !tls, "file name on the wire (tls: \(tls))")
            XCTAssertEqual(sawText, !tls, "file content on the wire (tls: \(tls))")
            if tls { XCTAssertEqual(wire.first, 0x16, "the first byte on the wire is a TLS handshake record") }
        }
    }

    func testIdentityIsKeptAcrossRestartsAndShownOnRequest() throws {
        let first = try serve()
        let fingerprint = try XCTUnwrap(first.fingerprint)
        first.stop()
        XCTAssertTrue(fingerprint.range(of: #"^([A-Z2-7]{4}-){7}[A-Z2-7]{4}$"#, options: .regularExpression) != nil, fingerprint)
        let identity = work.appendingPathComponent("state/identity.pem")
        var st = stat()
        XCTAssertEqual(stat(identity.path, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        let second = try serve()
        defer { second.stop() }
        XCTAssertEqual(second.fingerprint, fingerprint, "same key after a restart")
        let shown = try ferry(["serve", sample.path, "--state-dir", work.appendingPathComponent("state").path, "--show-fingerprint"])
        XCTAssertEqual(shown.status, 0, shown.stderr)
        XCTAssertTrue(shown.stdout.hasPrefix("fingerprint \(fingerprint)\n"), shown.stdout)
        let id = try ferry(["id", "--state-dir", work.appendingPathComponent("state").path])
        XCTAssertTrue(id.stdout.hasPrefix("fingerprint \(fingerprint)\n"), id.stdout)
        let other = try serve(state: "other-state")
        defer { other.stop() }
        XCTAssertNotEqual(other.fingerprint, fingerprint, "another state folder, another key")
    }

    func testAKeyOthersCanReadIsRefused() throws {
        try serve().stop()
        let identity = work.appendingPathComponent("state/identity.pem")
        XCTAssertEqual(chmod(identity.path, 0o644), 0)
        let r = try ferry(["serve", sample.path, "--bind", "127.0.0.1", "--port", "0", "--no-discovery",
                           "--state-dir", work.appendingPathComponent("state").path])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("readable or writable by others"), r.stderr)
        XCTAssertTrue(r.stderr.contains("chmod 600"), r.stderr)
    }

    func testADamagedIdentityIsRefusedNotReplaced() throws {
        try serve().stop()
        let identity = work.appendingPathComponent("state/identity.pem")
        try Files.write(identity, "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n", mode: 0o600)
        let r = try ferry(["serve", sample.path, "--bind", "127.0.0.1", "--port", "0", "--no-discovery",
                           "--state-dir", work.appendingPathComponent("state").path])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("missing or damaged"), r.stderr)
        XCTAssertTrue(try String(contentsOf: identity, encoding: .utf8).contains("garbage"), "left as it was")
    }

    // MARK: - Part 5: no downgrade, clear errors both ways

    /// A cleartext (1.0-style) client waits for the greeting; the TLS server tells it, in
    /// cleartext, that it needs TLS.
    func testACleartextClientIsToldTheServerNeedsTLS() throws {
        let server = try serve()
        defer { server.stop() }
        let start = Date()
        let raw = try RawClient(port: server.port, timeout: 10)
        let line = try raw.readLine()
        XCTAssertTrue(line.hasPrefix("ERR 426 "), line)
        XCTAssertTrue(line.contains("TLS"), line)
        XCTAssertLessThan(Date().timeIntervalSince(start), 6)
        // A client that speaks first in cleartext is answered at once.
        let eager = try RawClient(port: server.port, timeout: 10)
        try eager.send("LIST .\n")
        XCTAssertTrue(try eager.readLine().hasPrefix("ERR 426 "))

        let r = try ferry(["ls", server.address, "--plaintext"])
        XCTAssertEqual(r.status, 3, r.stderr)
        XCTAssertTrue(r.stderr.contains("drop --plaintext"), r.stderr)
    }

    /// A TLS client meeting a cleartext server says so instead of a TLS alert, and sends nothing.
    func testATLSClientRefusesACleartextServer() throws {
        let server = try serve(tls: false)
        defer { server.stop() }
        let r = try ferry(["ls", server.address, "--trust-new"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("the server speaks cleartext"), r.stderr)
        XCTAssertTrue(r.stderr.contains("--plaintext"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: knownServers.path), "nothing remembered")
        let plain = try ferry(["ls", server.address, "--plaintext"])
        XCTAssertEqual(plain.status, 0, "cleartext when both ask for it: \(plain.stderr)")
    }

    /// A handshake that stalls is cut off at --request-timeout; another client is served meanwhile.
    func testAStalledHandshakeIsCutOff() throws {
        let server = try serve(["--request-timeout", "1"])
        defer { server.stop() }
        let stalled = try RawClient(port: server.port, timeout: 10)
        // The start of a TLS handshake record, then nothing.
        try stalled.send(bytes: [0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        let other = try ferry(["ls", server.address] + server.clientArguments)
        XCTAssertEqual(other.status, 0, other.stderr)
        let start = Date()
        XCTAssertThrowsError(try stalled.readLine(), "closed without a reply")
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
    }

    // MARK: - Part 6: bad input

    /// 200 clients handshake at once: every one is served, and the server still answers after.
    func testTwoHundredHandshakesAtOnce() throws {
        let server = try serve(["--max-connections", "512", "--max-per-address", "512"])
        defer { server.stop() }
        let fingerprint = try XCTUnwrap(server.fingerprint.flatMap { Fingerprint($0) })
        let endpoint = Endpoint(host: server.host, port: server.port)
        let start = Date()
        let served = try blockingAwait(timeout: 120) {
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<200 {
                    group.addTask {
                        let options = ConnectionOptions(readTimeout: .seconds(60), security: .tls(expect: fingerprint))
                        return try await FerryConnection.with(endpoint, options: options) { try await $0.list(.root).count }
                    }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
        }
        XCTAssertEqual(served.count, 200)
        XCTAssertTrue(served.allSatisfy { $0 == served.first && $0 > 0 }, "\(Set(served))")
        print("200 TLS handshakes and listings at once: \(String(format: "%.2f", Date().timeIntervalSince(start))) s")
        XCTAssertEqual(try ferry(["ls", server.address] + server.clientArguments).status, 0)
    }

    /// A server whose handshake is garbage, or whose certificate has expired: a clear error each.
    func testGarbageAndExpiredCertificatesAreClearErrors() throws {
        let garbage = try LoopbackListener { fd, _ in
            var buffer = [UInt8](repeating: 0, count: 4096)
            _ = recv(fd, &buffer, buffer.count, 0)
            // A handshake record header, then nonsense.
            let reply: [UInt8] = [0x16, 0x03, 0x03, 0x00, 0x20] + [UInt8](repeating: 0x5A, count: 32)
            _ = reply.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            usleep(200_000)
        }
        defer { garbage.stop() }
        let r = try ferry(["ls", garbage.address, "--trust-new"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("TLS handshake failed"), r.stderr)
        XCTAssertFalse(r.stderr.contains("Fatal error"), r.stderr)

        // An identity made eleven years ago: its certificate ran out a year ago.
        let old = work.appendingPathComponent("old-state")
        let identity = try ServerIdentity.loadOrCreate(in: old.path, now: Date().addingTimeInterval(-11 * 365 * 86_400))
        let expired = try RecordingRelay.tlsServer(identity: old.appendingPathComponent(ServerIdentity.fileName))
        defer { expired.stop() }
        let e = try ferry(["ls", "127.0.0.1:\(expired.port)", "--fingerprint", identity.fingerprint.description])
        XCTAssertEqual(e.status, 6, e.stderr)
        XCTAssertTrue(e.stderr.contains("expired"), e.stderr)
    }

    // MARK: - Part 2: pinned identities

    func testAWrongFingerprintIsRefused() throws {
        let server = try serve()
        defer { server.stop() }
        let wrong = "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA"
        let r = try ferry(["ls", server.address, "--fingerprint", wrong])
        XCTAssertEqual(r.status, 6, r.stderr)
        XCTAssertTrue(r.stderr.contains(wrong) && r.stderr.contains(server.fingerprint ?? "?"), r.stderr)
        let right = try ferry(["ls", server.address, "--fingerprint", (server.fingerprint ?? "").lowercased()])
        XCTAssertEqual(right.status, 0, "any case, with dashes: \(right.stderr)")
    }

    /// First contact without a terminal is refused unless --trust-new; --trust-new remembers the
    /// key; a server with another key at the same address is then refused loudly until forgotten.
    func testFirstContactPinningAndAChangedKey() throws {
        let first = try serve()
        let port = first.port
        let old = try XCTUnwrap(first.fingerprint)

        let refused = try ferry(["ls", first.address])
        XCTAssertEqual(refused.status, 6, refused.stderr)
        XCTAssertTrue(refused.stderr.contains(old), "shows the fingerprint: \(refused.stderr)")
        XCTAssertTrue(refused.stderr.contains("--trust-new"), refused.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: knownServers.path))

        let accepted = try ferry(["ls", first.address, "--trust-new"])
        XCTAssertEqual(accepted.status, 0, accepted.stderr)
        XCTAssertTrue(try String(contentsOf: knownServers, encoding: .utf8).contains("\(old) address=\(first.address)"))
        var st = stat()
        XCTAssertEqual(stat(knownServers.path, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        XCTAssertEqual(try ferry(["ls", first.address]).status, 0, "pinned now: no flag needed")
        first.stop()

        let impostor = try serve(state: "impostor", ["--port", String(port)])
        defer { impostor.stop() }
        let new = try XCTUnwrap(impostor.fingerprint)
        let changed = try ferry(["get", "\(impostor.address)/empty.txt", work.appendingPathComponent("x").path, "--trust-new"])
        XCTAssertEqual(changed.status, 6, changed.stderr)
        XCTAssertTrue(changed.stderr.contains("WARNING"), changed.stderr)
        XCTAssertTrue(changed.stderr.contains(old) && changed.stderr.contains(new), changed.stderr)
        XCTAssertTrue(changed.stderr.contains("ferry forget"), changed.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: work.appendingPathComponent("x").path))

        let forgot = try ferry(["forget", impostor.address])
        XCTAssertEqual(forgot.status, 0, forgot.stderr)
        XCTAssertEqual(try ferry(["ls", impostor.address, "--trust-new"]).status, 0)
        let list = try ferry(["trust", "--list"])
        XCTAssertTrue(list.stdout.contains(new) && !list.stdout.contains(old), list.stdout)
    }

    /// The known-servers list is keyed by the key: the same server (same state folder, so the
    /// same key) met again on another port is accepted without asking and the new address is
    /// added as a hint; a server with another key at a new address still goes through first
    /// contact.
    func testATrustedKeyAtANewAddressIsTheSameServer() throws {
        let first = try serve()
        let key = try XCTUnwrap(first.fingerprint)
        XCTAssertEqual(try ferry(["ls", first.address, "--trust-new"]).status, 0)
        let oldAddress = first.address
        first.stop()

        let moved = try serve()  // the same state folder: the same identity, a new port
        defer { moved.stop() }
        XCTAssertEqual(moved.fingerprint, key)
        XCTAssertNotEqual(moved.address, oldAddress)
        let again = try ferry(["ls", moved.address])
        XCTAssertEqual(again.status, 0, "no --trust-new needed for a key already trusted: \(again.stderr)")
        XCTAssertTrue(again.stderr.contains("remembered this address"), again.stderr)
        let text = try String(contentsOf: knownServers, encoding: .utf8)
        XCTAssertTrue(text.contains("\(key) address=\(oldAddress)") && text.contains("\(key) address=\(moved.address)"), text)

        let other = try serve(state: "other")
        defer { other.stop() }
        let refused = try ferry(["ls", other.address])
        XCTAssertEqual(refused.status, 6, "another key at a new address is a first contact: \(refused.stderr)")
    }

    func testTrustRecordsAFingerprintGivenByHand() throws {
        let server = try serve()
        defer { server.stop() }
        let fp = try XCTUnwrap(server.fingerprint)
        XCTAssertEqual(try ferry(["trust", server.address, "--fingerprint", fp]).status, 0)
        let r = try ferry(["ls", server.address])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try ferry(["trust", server.address, "--fingerprint", "not-a-fingerprint"]).status, 64)
    }

    // MARK: - Part 3: names that cannot be spoofed

    /// Discovery shows each server's fingerprint; a name pinned on first contact connects only
    /// to that key; two servers answering to one name are both shown and ferry refuses to
    /// guess; the other one alone under the pinned name is refused as a changed key. Probes go
    /// to 127.255.255.255 only, and no server announces.
    func testNamesResolveOnlyToThePinnedKey() throws {
        let name = "twin-\(UUID().uuidString.prefix(6).lowercased())"
        let port = String(Int.random(in: 20_000...40_000))
        let discovery = ["--to", "127.255.255.255", "--discovery-port", port]
        func serveNamed(_ state: String) throws -> ServerProcess {
            let server = try ServerProcess(serving: sample, arguments: ["--bind", "127.0.0.1", "--name", name, "--discovery-port", port,
                                                                         "--state-dir", work.appendingPathComponent(state).path])
            for key in [server.address, name] { TestServers.unregister(key) }
            return server
        }
        let first = try serveNamed("first")
        let firstKey = try XCTUnwrap(first.fingerprint)
        let shown = try ferry(["discover", "--json", "--timeout", "1"] + discovery)
        XCTAssertEqual(shown.status, 0, shown.stderr)
        XCTAssertTrue(shown.stdout.contains("\"fingerprint\":\"\(firstKey)\""), shown.stdout)
        let table = try ferry(["discover", "--timeout", "1"] + discovery)
        XCTAssertTrue(table.stdout.contains("FINGERPRINT") && table.stdout.contains(firstKey), table.stdout)

        XCTAssertEqual(try ferry(["ls", name, "--trust-new"] + discovery).status, 0)
        XCTAssertTrue(try String(contentsOf: knownServers, encoding: .utf8).contains("\(firstKey) name=\(name)"))
        let pinned = try ferry(["ls", name] + discovery)
        XCTAssertEqual(pinned.status, 0, pinned.stderr)

        let second = try serveNamed("second")
        defer { second.stop() }
        let secondKey = try XCTUnwrap(second.fingerprint)
        let ambiguous = try ferry(["ls", name] + discovery)
        XCTAssertEqual(ambiguous.status, 2, ambiguous.stderr)
        XCTAssertTrue(ambiguous.stderr.contains(firstKey) && ambiguous.stderr.contains(secondKey), ambiguous.stderr)
        XCTAssertTrue(ambiguous.stderr.contains("will not guess"), ambiguous.stderr)

        first.stop()
        let impostor = try ferry(["ls", name, "--trust-new"] + discovery)
        XCTAssertEqual(impostor.status, 6, impostor.stderr)
        XCTAssertTrue(impostor.stderr.contains(firstKey) && impostor.stderr.contains(secondKey), impostor.stderr)
    }

    // MARK: - Part 4: the token binds the channel, both ways

    private func tokenFile() throws -> URL {
        let token = work.appendingPathComponent("token")
        try Files.write(token, "s3cret-\(UUID().uuidString)\n", mode: 0o600)
        return token
    }

    /// With a token, the server proves it knows it: first contact needs no trust on first use,
    /// and nothing is remembered.
    func testATokenNeedsNoTrustOnFirstUse() throws {
        let token = try tokenFile()
        let server = try serve(["--token-file", token.path])
        defer { server.stop() }
        let r = try ferry(["ls", server.address, "--token-file", token.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("hello world.txt"), r.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: knownServers.path), "nothing remembered")
        let wrong = work.appendingPathComponent("wrong-token")
        try Files.write(wrong, "not it\n", mode: 0o600)
        let refused = try ferry(["ls", server.address, "--token-file", wrong.path])
        XCTAssertEqual(refused.status, 3, refused.stderr)
    }

    /// A man in the middle with another key relays a token answer to the real server: the
    /// answer covers the key the client saw, so the server refuses it; and the relay cannot
    /// prove the token to the client either. With the real key pinned, the handshake fails.
    func testAManInTheMiddleCannotReuseTheTokenAnswer() throws {
        let token = try tokenFile()
        let server = try serve(["--token-file", token.path])
        defer { server.stop() }
        let impostor = try serve(state: "impostor")
        impostor.stop()
        let capture = work.appendingPathComponent("mitm-capture")
        let mitm = try RecordingRelay(to: server.port, capture: capture,
                                      impersonating: work.appendingPathComponent("impostor/identity.pem"))
        defer { mitm.stop() }
        let dest = work.appendingPathComponent("mitm-copy")
        let r = try ferry(["sync", "127.0.0.1:\(mitm.port)", dest.path, "--token-file", token.path])
        XCTAssertNotEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("refused the token"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dest.appendingPathComponent("hello world.txt").path))
        let relayed = String(decoding: try Data(contentsOf: capture), as: UTF8.self)
        XCTAssertTrue(relayed.contains("auth=hmac-sha256-tls"), "the relay saw the greeting: \(relayed.prefix(300))")
        XCTAssertTrue(relayed.contains("ERR 403"), "the real server refused the relayed answer: \(relayed.prefix(500))")
        XCTAssertFalse(relayed.contains("hello%20world.txt"), "no listing passed the relay")

        let pinned = try ferry(["ls", "127.0.0.1:\(mitm.port)", "--token-file", token.path] + server.clientArguments)
        XCTAssertEqual(pinned.status, 6, pinned.stderr)
    }

    func testACorruptKnownServersFileIsAClearError() throws {
        let server = try serve()
        defer { server.stop() }
        try Files.write(knownServers, "# mine\nthis is not a fingerprint address=1.2.3.4:5\n", mode: 0o600)
        let r = try ferry(["ls", server.address, "--trust-new"])
        XCTAssertEqual(r.status, 5, r.stderr)
        XCTAssertTrue(r.stderr.contains(knownServers.path) && r.stderr.contains("line 2"), r.stderr)
        XCTAssertEqual(try String(contentsOf: knownServers, encoding: .utf8),
                       "# mine\nthis is not a fingerprint address=1.2.3.4:5\n", "left as it was")
    }
}

/// A TCP relay on loopback that appends every byte it passes, both ways, to `capture`
/// (a small Python program, stopped by PID). With `impersonating`, an identity.pem of another
/// server, it is a man in the middle instead: it ends the client's TLS with that key, opens its
/// own TLS connection to the target, and relays the cleartext between them.
final class RecordingRelay {
    let port: Int
    private let process: Process

    convenience init(to target: Int, capture: URL, impersonating identity: URL? = nil) throws {
        try self.init(script: Self.relay,
                      arguments: [String(target), capture.path] + (identity.map { [$0.path] } ?? []))
    }

    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// A TLS server (Python's ssl module) with `identity` that greets like a ferry server.
    static func tlsServer(identity: URL) throws -> RecordingRelay {
        try RecordingRelay(script: tlsGreeter, arguments: [identity.path])
    }

    private init(script: String, arguments: [String]) throws {
        let process = TestSupport.process(["/usr/bin/env", "python3", "-c", script] + arguments)
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        self.process = process
        let line = String(decoding: pipe.fileHandleForReading.availableDataLine(), as: UTF8.self)
        guard let listening = Int(line.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            process.terminate()
            throw IntegrationFailure("the helper did not start: '\(line)'")
        }
        port = listening
    }

    static let tlsGreeter = """
        import socket, ssl, sys
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); context.load_cert_chain(sys.argv[1])
        ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(16)
        print(ls.getsockname()[1], flush=True)
        while True:
            c, _ = ls.accept()
            try:
                c = context.wrap_socket(c, server_side=True)
                c.sendall(b"FERRY 1 name=old id=0123456789abcdef0123456789abcdef auth=none\\n")
            except (OSError, ssl.SSLError):
                pass
            c.close()
        """

    /// argv: target port, capture file, and for a man in the middle the identity.pem it shows.
    static let relay = """
        import socket, ssl, sys, threading
        mitm = len(sys.argv) > 3
        if mitm:
            server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); server_side.load_cert_chain(sys.argv[3])
            client_side = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client_side.check_hostname = False; client_side.verify_mode = ssl.CERT_NONE
        ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0)); ls.listen(64)
        print(ls.getsockname()[1], flush=True)
        lock = threading.Lock(); out = open(sys.argv[2], "ab")
        def pump(a, b):
            try:
                while True:
                    d = a.recv(65536)
                    if not d: break
                    with lock: out.write(d); out.flush()
                    b.sendall(d)
            except (OSError, ssl.SSLError): pass
            finally:
                try: b.shutdown(socket.SHUT_WR)
                except (OSError, ssl.SSLError): pass
        while True:
            c, _ = ls.accept()
            try:
                s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
                if mitm:
                    c = server_side.wrap_socket(c, server_side=True)
                    s = client_side.wrap_socket(s)
            except (OSError, ssl.SSLError):
                continue
            threading.Thread(target=pump, args=(c, s), daemon=True).start()
            threading.Thread(target=pump, args=(s, c), daemon=True).start()
        """
}

extension FileHandle {
    /// Bytes up to the first newline (read one at a time, within 10 s).
    func availableDataLine() -> [UInt8] {
        var line: [UInt8] = []
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            var pfd = pollfd(fd: fileDescriptor, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 100) <= 0 { continue }
            var byte: UInt8 = 0
            if Glibc.read(fileDescriptor, &byte, 1) != 1 { break }
            if byte == 0x0A { break }
            line.append(byte)
        }
        return line
    }
}
