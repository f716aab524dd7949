#if canImport(Glibc)
import Glibc
#endif
import Crypto
import FerryProtocol
import FerryServer
import FerryTestSupport
import Foundation
import Logging
import XCTest

/// Protocol 1.0 peers keep working with protocol 1.1 (PROTOCOL.md section 3.1), checked
/// against the bytes a real 1.0 build (commit 3ce5aa2) exchanged, recorded by
/// `scripts/record-1.0-transcripts` into `Tests/Fixtures/protocol-1.0` (its README says why
/// that is enough). Both directions:
/// - the new server answers the recorded 1.0 client requests with the recorded bytes;
/// - the new client (the `ferry` executable) works against a server that replays the recorded
///   1.0 server bytes, and asks only what the 1.0 client asked (so no `CAPS`, no new option).
final class ProtocolCompatibilityTests: XCTestCase {
    static let fixtures = TestSupport.packageRoot.appendingPathComponent("Tests/Fixtures/protocol-1.0")
    /// The token of the recorded `auth` scenario, and the wrong one of `auth-refused`.
    static let wrongToken = Array("wrong-token".utf8)

    private var work: URL!
    private var tree: URL!

    override func setUpWithError() throws {
        work = try TestSupport.makeTemporaryDirectory("ferry-compat")
        try TestSupport.run("/bin/tar", ["-xpf", Self.fixtures.appendingPathComponent("tree.tar").path, "-C", work.path])
        tree = work.appendingPathComponent("tree")
    }

    override func tearDown() {
        if let work { TestSupport.removeTemporaryDirectory(work) }
    }

    // MARK: - The recordings

    struct Connection {
        var client: [UInt8]
        var server: [UInt8]
        /// The recorder cut this connection on purpose: `server` is a prefix of the reply.
        var cut: Bool
    }

    static func scenario(_ name: String) throws -> [Connection] {
        let dir = fixtures.appendingPathComponent(name)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".client") }.sorted()
        XCTAssertFalse(names.isEmpty, "no recording for \(name)")
        return try names.map { name in
            let stem = String(name.dropLast(".client".count))
            return Connection(client: try bytes(dir.appendingPathComponent(name)),
                              server: try bytes(dir.appendingPathComponent(stem + ".server")),
                              cut: FileManager.default.fileExists(atPath: dir.appendingPathComponent(stem + ".cut").path))
        }
    }

    static func bytes(_ url: URL) throws -> [UInt8] { Array(try Data(contentsOf: url)) }

    static var token: [UInt8] {
        var t = (try? bytes(fixtures.appendingPathComponent("token"))) ?? []
        while t.last == 0x0A || t.last == 0x0D { t.removeLast() }
        return t
    }

    static func lines(_ bytes: [UInt8]) -> [String] {
        bytes.split(separator: 0x0A, omittingEmptySubsequences: false).dropLast().map { String(decoding: $0, as: UTF8.self) }
    }

    /// The greeting's fields with the random ones (`id`, `nonce`) masked and protocol 1.1's
    /// `caps` left out: what must be equal between the 1.0 server and the new one.
    static func masked(greeting: String) -> String {
        greeting.split(separator: " ").compactMap { field -> String? in
            if field.hasPrefix("caps=") { return nil }
            if field.hasPrefix("id=") { return "id=*" }
            if field.hasPrefix("nonce=") { return "nonce=*" }
            return String(field)
        }.joined(separator: " ")
    }

    // MARK: - (a) the new server and a 1.0 client

    func testNewServerAnswersRecorded10RequestsByteForByte() async throws {
        for name in ["ls", "get", "get-resume", "sync", "sync-resume", "sync-delta", "auth", "auth-refused"] {
            let connections = try Self.scenario(name)
            let token = name.hasPrefix("auth") ? Self.token : nil
            let server = try await startServer(token: token)
            for (i, recorded) in connections.enumerated() {
                let label = "\(name) connection \(i + 1)"
                let client = try RawClient(port: server.port)
                let greeting = try client.readLine()
                let recordedGreeting = Self.lines(recorded.server).first ?? ""
                XCTAssertEqual(Self.masked(greeting: greeting), Self.masked(greeting: recordedGreeting), label)
                XCTAssertTrue(greeting.contains(" caps="), "a 1.1 server offers capabilities: \(greeting)")
                // A 1.0 client's AUTH answers its own nonce: compute it for this one.
                var requests = recorded.client
                if let nonce = greeting.split(separator: " ").first(where: { $0.hasPrefix("nonce=") }).flatMap({ Hex.decode($0.dropFirst(6)) }) {
                    let key = name == "auth-refused" ? Self.wrongToken : Self.token
                    let mac = Hex.encode(Array(HMAC<SHA256>.authenticationCode(for: nonce, using: SymmetricKey(data: key))))
                    requests = Array(Self.lines(recorded.client).map { $0.hasPrefix("AUTH ") ? "AUTH \(mac)" : $0 }
                        .map { $0 + "\n" }.joined().utf8)
                }
                try client.send(bytes: requests)
                let expected = Array(recorded.server.drop(while: { $0 != 0x0A }).dropFirst())
                let got = try receive(client.fd, atLeast: expected.count)
                if recorded.cut {
                    XCTAssertEqual(Array(got.prefix(expected.count)), expected, "\(label): the reply differs before the cut")
                } else {
                    XCTAssertEqual(got.count, expected.count, "\(label): reply length")
                    XCTAssertTrue(got == expected, "\(label): replies differ at byte \(zip(got, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(got.count, expected.count))")
                }
            }
            await server.stop()
        }
    }

    /// Reads until at least `count` bytes came and then nothing for 300 ms (or the server
    /// closed), so a reply the 1.0 server finished is finished here too.
    private func receive(_ fd: Int32, atLeast count: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        let deadline = Date().addingTimeInterval(30)
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while Date() < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, out.count >= count ? 300 : 1000)
            if ready == 0 {
                if out.count >= count { return out }
                continue
            }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return out }
            out += buffer[0..<n]
        }
        throw IntegrationFailure("the server sent \(out.count) of at least \(count) bytes within 30 s")
    }

    private func startServer(token: [UInt8]?) async throws -> InProcessServer {
        var logger = Logger(label: "ferry.test.compat")
        logger.logLevel = .critical
        let configuration = ServerConfiguration(root: tree.path, name: "compat", bindHost: "127.0.0.1", port: 0,
                                                compression: .off, token: token)
        return InProcessServer(server: try await FerryServer.start(configuration, logger: logger))
    }

    // MARK: - (b) the new client and a 1.0 server

    /// A server that answers each request line with the reply the 1.0 server gave it in the
    /// recording (in recorded order when it was asked more than once; a reply the recorder cut
    /// is replayed cut, then the connection closes). It knows only the recorded requests.
    final class ReplayServer: @unchecked Sendable {
        let fake: FakeServer
        private let unknown = Locked<[String]>([])

        init(_ connections: [Connection]) throws {
            var replies: [String: [[UInt8]]] = [:]
            for c in connections {
                for (request, reply) in try Self.split(c) { replies[request, default: []].append(reply) }
            }
            let queue = Locked(replies)
            let unknown = self.unknown
            let greeting = Self.greeting(connections.first?.server ?? [])
            fake = try FakeServer(greeting: greeting) { line in
                let reply = queue.withLockedValue { q -> [UInt8]? in
                    guard var list = q[line], let first = list.first else { return nil }
                    if list.count > 1 { list.removeFirst() }
                    q[line] = list
                    return first
                }
                if reply == nil { unknown.withLockedValue { $0.append(line) } }
                return reply
            }
        }

        /// Requests the 1.0 client never sent.
        var unrecorded: [String] { unknown.withLockedValue { $0 } }

        static func greeting(_ server: [UInt8]) -> String {
            String(decoding: server.prefix(while: { $0 != 0x0A }), as: UTF8.self)
        }

        /// Splits one connection into (request line, reply bytes) pairs, reading each reply by
        /// the grammar of its request.
        static func split(_ c: Connection) throws -> [(String, [UInt8])] {
            var input = c.server.drop(while: { $0 != 0x0A }).dropFirst()
            var out: [(String, [UInt8])] = []
            func line() -> String? {
                guard let lf = input.firstIndex(of: 0x0A) else { return nil }
                defer { input = input[(lf + 1)...] }
                return String(decoding: input[..<lf], as: UTF8.self)
            }
            for request in lines(c.client) where !input.isEmpty {
                let start = input.startIndex
                let verb = request.prefix(while: { $0 != " " }).uppercased()
                guard verb != "QUIT" else { break }  // FakeServer answers QUIT itself
                var complete = false
                if let status = line() {
                    complete = true
                    var extra = 0
                    if status.hasPrefix("OK ") && (verb == "LIST" || verb == "BLOCKS") {
                        extra = Int(status.split(separator: " ").last ?? "") ?? 0
                    }
                    for _ in 0..<extra where line() == nil { complete = false }
                    if status.hasPrefix("OK") && (verb == "GET" || verb == "MANIFEST") {
                        complete = false
                        while let next = line() {
                            if next.hasPrefix("CHUNK ") {
                                let header = try ChunkHeader.parse(Substring(next))
                                guard input.count >= header.wireLength else {
                                    input = input[input.endIndex...]
                                    break
                                }
                                input = input.dropFirst(header.wireLength)
                                continue
                            }
                            complete = true
                            break
                        }
                    }
                }
                let reply = Array(c.server[start..<(complete ? input.startIndex : c.server.endIndex)])
                out.append((request, complete ? reply : reply + FakeServer.hangUp))
                if !complete { break }
            }
            return out
        }
    }

    private func ferry(_ args: [String]) throws -> TestSupport.ProcessResult {
        try TestSupport.ferry(args + ["--timeout", "10"], timeout: 120)
    }

    private func assertSame(_ a: URL, _ b: URL, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(Files.read(a), Files.read(b), what, file: file, line: line)
    }

    private func replay(_ name: String, _ body: (ReplayServer) throws -> Void) throws {
        let server = try ReplayServer(try Self.scenario(name))
        defer { server.fake.stop() }
        try body(server)
        XCTAssertEqual(server.unrecorded, [], "\(name): the new client sent requests a 1.0 client did not")
        XCTAssertFalse(server.fake.requests.contains { $0.uppercased().hasPrefix("CAPS") }, "\(name): CAPS to a 1.0 server")
    }

    func testNewClientWorksAgainstRecorded10Server() throws {
        let out = work.appendingPathComponent("out")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        try replay("ls") { s in
            let r = try ferry(["ls", s.fake.address])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.contains("big.txt") && r.stdout.contains("pipe"), r.stdout)
            XCTAssertEqual(try ferry(["ls", s.fake.address + "/docs"]).status, 0)
            let file = try ferry(["ls", s.fake.address + "/hello world.txt"])
            XCTAssertNotEqual(file.status, 0)
            XCTAssertTrue(file.stderr.contains("not a directory"), file.stderr)
        }
        try replay("get") { s in
            let r = try ferry(["get", s.fake.address + "/hello world.txt", out.appendingPathComponent("hello").path])
            XCTAssertEqual(r.status, 0, r.stderr)
            assertSame(out.appendingPathComponent("hello"), tree.appendingPathComponent("hello world.txt"), "get")
            XCTAssertEqual(try ferry(["get", s.fake.address + "/link", out.appendingPathComponent("linked").path]).status, 0)
            assertSame(out.appendingPathComponent("linked"), tree.appendingPathComponent("hello world.txt"), "get of a symlink")
        }
        try replay("get-resume") { s in
            let r = try ferry(["get", s.fake.address + "/big.txt", out.appendingPathComponent("big").path])
            XCTAssertEqual(r.status, 0, r.stderr)
            assertSame(out.appendingPathComponent("big"), tree.appendingPathComponent("big.txt"), "resumed get")
            XCTAssertTrue(s.fake.requests.contains { $0.hasPrefix("HASH big.txt 0 262144 ") }, "\(s.fake.requests)")
        }
        for name in ["sync", "sync-resume"] {
            try replay(name) { s in
                let dest = work.appendingPathComponent(name)
                let r = try ferry(["sync", s.fake.address, dest.path])
                XCTAssertEqual(r.status, 0, "\(name): \(r.stderr)")
                for f in ["big.txt", "hello world.txt", "café.txt", "docs/deep/note.txt", "empty.txt"] {
                    assertSame(dest.appendingPathComponent(f), tree.appendingPathComponent(f), "\(name): \(f)")
                }
                if name == "sync-resume" {
                    XCTAssertTrue(s.fake.requests.contains { $0.hasPrefix("HASH big.txt 0 262144 ") }, "\(s.fake.requests)")
                }
            }
        }
        try replay("sync-delta") { s in
            let dest = work.appendingPathComponent("delta")
            try TestSupport.run("/bin/cp", ["-a", tree.path, dest.path])
            let big = dest.appendingPathComponent("big.txt")
            // As scripts/record-1.0-transcripts changes its copy.
            let handle = try FileHandle(forUpdating: big)
            try handle.seek(toOffset: 150_000)
            try handle.write(contentsOf: Data(String(repeating: "CHANGED LOCALLY ", count: 8).utf8))
            try handle.close()
            try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSince1970: 1_600_000_000)], ofItemAtPath: big.path)
            let r = try ferry(["sync", s.fake.address, dest.path])
            XCTAssertEqual(r.status, 0, r.stderr)
            assertSame(big, tree.appendingPathComponent("big.txt"), "delta sync")
            XCTAssertTrue(s.fake.requests.contains { $0.hasPrefix("BLOCKS big.txt ") }, "\(s.fake.requests)")
        }
        let tokenFile = work.appendingPathComponent("token")
        try Files.write(tokenFile, Self.token + [0x0A], mode: 0o600)
        try replay("auth") { s in
            let r = try ferry(["ls", s.fake.address, "--token-file", tokenFile.path])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.contains("big.txt"), r.stdout)
        }
        let wrongFile = work.appendingPathComponent("wrong")
        try Files.write(wrongFile, Self.wrongToken + [0x0A], mode: 0o600)
        try replay("auth-refused") { s in
            let r = try ferry(["ls", s.fake.address, "--token-file", wrongFile.path])
            XCTAssertNotEqual(r.status, 0)
            XCTAssertTrue(r.stderr.contains("refused the token"), r.stderr)
        }
    }

    /// The recordings are a faithful reading of each connection: re-encoding the split replies
    /// gives the recorded bytes back (so the replay above serves exactly what 1.0 sent).
    func testRecordingsSplitIntoWholeReplies() throws {
        for name in ["ls", "get", "get-resume", "sync", "sync-resume", "sync-delta", "auth", "auth-refused"] {
            for (i, c) in try Self.scenario(name).enumerated() {
                let parts = try ReplayServer.split(c)
                var joined = Array(c.server.prefix(while: { $0 != 0x0A })) + [0x0A]
                for (_, reply) in parts {
                    joined += reply.suffix(FakeServer.hangUp.count) == FakeServer.hangUp ? Array(reply.dropLast(FakeServer.hangUp.count)) : reply
                }
                let quit = Array("OK bye\n".utf8)
                if c.server.count == joined.count + quit.count { joined += quit }
                XCTAssertEqual(joined, c.server, "\(name) connection \(i + 1)")
                XCTAssertEqual(parts.last.map { $0.1.suffix(FakeServer.hangUp.count) == FakeServer.hangUp } ?? false, c.cut,
                               "\(name) connection \(i + 1): cut")
            }
        }
    }

    // MARK: - Opt-in: a real 1.0 binary

    /// With `FERRY_V10_BINARY` set to a build of 3ce5aa2: the 1.0 client against the new server,
    /// and the new client against a 1.0 server, for ls, get, sync and auth. A 1.0 peer speaks
    /// only cleartext, so the new side is told `--plaintext` (never chosen on its own).
    func testReal10BinaryBothWays() throws {
        guard let v10 = ProcessInfo.processInfo.environment["FERRY_V10_BINARY"] else {
            throw XCTSkip("set FERRY_V10_BINARY to a ferry built from commit 3ce5aa2 to run this")
        }
        let tokenFile = work.appendingPathComponent("token")
        try Files.write(tokenFile, Self.token + [0x0A], mode: 0o600)
        let pairs: [(client: String, server: String, label: String)] = [
            (v10, TestSupport.ferryExecutable.path, "1.0 client, new server"),
            (TestSupport.ferryExecutable.path, v10, "new client, 1.0 server"),
        ]
        for (clientBinary, serverBinary, label) in pairs {
            for token in [false, true] {
                let state = work.appendingPathComponent("state-\(UUID().uuidString.prefix(6))")
                var args = [serverBinary, "serve", tree.path, "--bind", "127.0.0.1", "--port", "0", "--no-discovery",
                            "--state-dir", state.path]
                if token { args += ["--token-file", tokenFile.path] }
                if serverBinary != v10 { args.append("--plaintext") }
                let server = try ListeningProcess(args)
                defer { server.stop() }
                let auth = (token ? ["--token-file", tokenFile.path] : []) + (clientBinary != v10 ? ["--plaintext"] : [])
                func run(_ a: [String]) throws -> TestSupport.ProcessResult {
                    try TestSupport.run(clientBinary, a + auth + ["--timeout", "10"], timeout: 120, check: false)
                }
                let what = "\(label)\(token ? ", token" : "")"
                let ls = try run(["ls", server.address])
                XCTAssertEqual(ls.status, 0, "\(what): ls: \(ls.stderr)")
                XCTAssertTrue(ls.stdout.contains("big.txt"), "\(what): \(ls.stdout)")
                let got = work.appendingPathComponent("got-\(UUID().uuidString.prefix(6))")
                let get = try run(["get", server.address + "/big.txt", got.path])
                XCTAssertEqual(get.status, 0, "\(what): get: \(get.stderr)")
                assertSame(got, tree.appendingPathComponent("big.txt"), "\(what): get")
                let dest = work.appendingPathComponent("dest-\(UUID().uuidString.prefix(6))")
                let sync = try run(["sync", server.address, dest.path])
                XCTAssertEqual(sync.status, 0, "\(what): sync: \(sync.stderr)")
                for f in ["big.txt", "café.txt", "docs/deep/note.txt"] {
                    assertSame(dest.appendingPathComponent(f), tree.appendingPathComponent(f), "\(what): sync \(f)")
                }
            }
        }
    }
}

/// A server process started with `--port 0` whose `listening on HOST:PORT` line gives its address.
final class ListeningProcess {
    let process: Process
    let address: String

    init(_ arguments: [String]) throws {
        process = TestSupport.process(arguments)
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        var line = [UInt8]()
        let fd = pipe.fileHandleForReading.fileDescriptor
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 100) <= 0 { continue }
            var byte: UInt8 = 0
            if read(fd, &byte, 1) != 1 || byte == 0x0A { break }
            line.append(byte)
        }
        let text = String(decoding: line, as: UTF8.self)
        guard text.hasPrefix("listening on ") else {
            process.terminate()
            throw IntegrationFailure("\(arguments[0]) did not start: '\(text)'")
        }
        address = String(text.dropFirst("listening on ".count))
    }

    func stop() {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
    }
}
