#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import FerryServer
import FerryTestSupport
import Foundation
import Logging
import NIOCore
import XCTest

// Helpers for the integration tests: a raw line-oriented TCP client, an in-process server,
// a lying fake server, and tree snapshots for comparisons.

struct IntegrationFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A raw blocking TCP client with deadlines, for speaking the protocol byte by byte (hostile
/// lines, pipelining, half-read replies) without any client library in the way.
final class RawClient {
    let fd: Int32
    private var buffer: [UInt8] = []
    var timeout: Double

    /// Connects and reads the greeting, which must be a ferry 1 greeting.
    static func greeted(port: Int, file: StaticString = #filePath, line: UInt = #line) throws -> RawClient {
        let c = try RawClient(port: port)
        let greeting = try c.readLine()
        XCTAssertTrue(greeting.hasPrefix("FERRY 1 "), greeting, file: file, line: line)
        return c
    }

    init(host: String = "127.0.0.1", port: Int, timeout: Double = 10) throws {
        self.timeout = timeout
        let v6 = host.contains(":")
        let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw IntegrationFailure("socket: \(errno)") }
        var r: Int32
        if v6 {
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = in_port_t(UInt16(port)).bigEndian
            _ = inet_pton(AF_INET6, host, &a.sin6_addr)
            r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        } else {
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = in_port_t(UInt16(port)).bigEndian
            _ = inet_pton(AF_INET, host, &a.sin_addr)
            r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        }
        guard r == 0 else {
            let e = errno
            close(fd)
            throw IntegrationFailure("connect \(host):\(port): \(String(cString: strerror(e)))")
        }
        self.fd = fd
    }

    deinit { close(fd) }

    func send(_ text: String) throws { try send(bytes: Array(text.utf8)) }

    func send(bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw IntegrationFailure("send: \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }

    /// Reads more bytes into the buffer; false at EOF.
    private func fill(deadline: Date) throws -> Bool {
        while true {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { throw IntegrationFailure("timed out waiting for the server") }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let p = poll(&pfd, 1, Int32(min(left, 1) * 1000))
            if p < 0 && errno == EINTR { continue }
            if p <= 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 64 * 1024)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == ECONNRESET { return false }
                throw IntegrationFailure("recv: \(String(cString: strerror(errno)))")
            }
            if n == 0 { return false }
            buffer += chunk[0..<n]
            return true
        }
    }

    /// The next line without its LF (CR kept out too).
    func readLine() throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let lf = buffer.firstIndex(of: 0x0A) {
                var line = Array(buffer[..<lf])
                buffer.removeFirst(lf + 1)
                if line.last == 0x0D { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            guard try fill(deadline: deadline) else { throw IntegrationFailure("connection closed (buffered: \(buffer.count) bytes)") }
        }
    }

    func readBytes(_ count: Int) throws -> [UInt8] {
        let deadline = Date().addingTimeInterval(timeout)
        while buffer.count < count {
            guard try fill(deadline: deadline) else { throw IntegrationFailure("connection closed after \(buffer.count) of \(count) bytes") }
        }
        let out = Array(buffer[..<count])
        buffer.removeFirst(count)
        return out
    }

    /// Whether the server closed the connection (waits up to `within` seconds for EOF).
    func isClosed(within seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            do { if try !fill(deadline: deadline) { return true } } catch { return false }
        }
        return false
    }

    /// One chunk stream (after the status line): the chunks and how it ended.
    struct Stream {
        var chunks: [(ChunkHeader, [UInt8])] = []
        var end: String?
        var error: String?

        /// The raw bytes, every chunk checked and decoded.
        func decoded() throws -> [UInt8] {
            var out: [UInt8] = []
            for (h, wire) in chunks {
                var b = ByteBuffer()
                b.writeBytes(wire)
                out += try ChunkDecoder.decode(header: h, wire: b)
            }
            return out
        }
    }

    func readStream() throws -> Stream {
        var s = Stream()
        while true {
            let line = try readLine()
            if line.hasPrefix("CHUNK ") {
                let h = try ChunkHeader.parse(Substring(line))
                s.chunks.append((h, try readBytes(h.wireLength)))
            } else if line.hasPrefix("END ") {
                s.end = String(line.dropFirst(4))
                return s
            } else if line.hasPrefix("ERR ") {
                s.error = line
                return s
            } else {
                throw IntegrationFailure("unexpected line in a chunk stream: \(line.prefix(100))")
            }
        }
    }
}

/// A `FerryServer` running inside the test process on 127.0.0.1 and an ephemeral port.
final class InProcessServer: Sendable {
    let server: FerryServer
    private let task: Task<Void, Error>

    var port: Int { server.port }

    /// `compression` defaults to a fixed zlib level: these tests assert which codec each chunk
    /// uses, and `auto` decides from the link and the machine's load (on loopback it stores).
    static func start(root: URL, chunkSize: Int = FerryLimits.defaultChunkSize, maxConnections: Int = 256,
                      compression: CompressionMode = .fixed(.zlib(1))) async throws -> InProcessServer {
        var logger = Logger(label: "ferry.test.server")
        logger.logLevel = .critical
        let configuration = ServerConfiguration(root: root.path, name: "loopback", bindHost: "127.0.0.1", port: 0,
                                                compression: compression, maxConnections: maxConnections, chunkSize: chunkSize)
        let server = try await FerryServer.start(configuration, logger: logger)
        return InProcessServer(server: server)
    }

    init(server: FerryServer) {
        self.server = server
        self.task = Task { try await server.run() }
        TestServers.register("127.0.0.1:\(server.port)", ["--plaintext"])  // the library's default: cleartext
    }

    func stop() async {
        TestServers.unregister("127.0.0.1:\(server.port)")
        server.shutdown()
        _ = try? await task.value
    }
}

/// A TCP listener on 127.0.0.1 (an ephemeral port) that hands each accepted connection to
/// `handler` on a thread of its own. `stop()` shuts every connection down, waits (bounded) for
/// the handlers to return, and closes the sockets; handlers poll `stopped` to end promptly.
final class LoopbackListener: @unchecked Sendable {
    typealias Handler = @Sendable (_ fd: Int32, _ stopped: @escaping @Sendable () -> Bool) -> Void

    let port: Int
    private let listenFD: Int32
    private let handler: Handler
    private let state = Locked<(stopped: Bool, fds: [Int32], threads: Int)>((false, [], 0))

    init(backlog: Int32 = 64, handler: @escaping Handler) throws {
        self.handler = handler
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw IntegrationFailure("socket") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = 0
        _ = inet_pton(AF_INET, "127.0.0.1", &a.sin_addr)
        let b = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard b == 0, listen(fd, backlog) == 0 else { close(fd); throw IntegrationFailure("bind/listen: \(errno)") }
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        port = Int(UInt16(bigEndian: bound.sin_port))
        listenFD = fd
        state.withLockedValue { $0.threads += 1 }
        Thread { [self] in acceptLoop() }.start()
        // What listens here speaks cleartext (fake servers): a client must be told --plaintext.
        TestServers.register(address, ["--plaintext"])
    }

    var address: String { "127.0.0.1:\(port)" }

    func stop() {
        TestServers.unregister(address)
        let first = state.withLockedValue { s -> Bool in
            defer { s.stopped = true }
            for fd in s.fds { shutdown(fd, Int32(SHUT_RDWR)) }  // under the lock: no fd is closed meanwhile
            return !s.stopped
        }
        guard first else { return }
        shutdown(listenFD, Int32(SHUT_RDWR))
        let deadline = Date().addingTimeInterval(5)
        while state.withLockedValue({ $0.threads }) > 0 && Date() < deadline { usleep(5_000) }
        close(listenFD)
    }

    deinit { stop() }

    private func acceptLoop() {
        defer { state.withLockedValue { $0.threads -= 1 } }
        let stopped: @Sendable () -> Bool = { [state] in state.withLockedValue { $0.stopped } }
        while !stopped() {
            var pfd = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 100) > 0 else { continue }
            let client = accept(listenFD, nil, nil)
            guard client >= 0 else { continue }
            let registered = state.withLockedValue { s -> Bool in
                if s.stopped { return false }
                s.fds.append(client)
                s.threads += 1
                return true
            }
            guard registered else { close(client); return }
            Thread { [self] in
                handler(client, stopped)
                shutdown(client, Int32(SHUT_RDWR))
                state.withLockedValue { s in
                    s.fds.removeAll { $0 == client }
                    s.threads -= 1
                }
                close(client)
            }.start()
        }
    }
}

/// A fake "ferry server" that lies: it speaks just enough of the protocol (greeting, STAT of
/// the root, MANIFEST, GET, QUIT) to drive `ferry sync` and `ferry get`, and answers with
/// whatever the test scripted — hostile paths, corrupt chunks, wrong checksums.
final class FakeServer: @unchecked Sendable {
    /// Answers one request line; nil closes the connection, and so does a reply ending in
    /// `hangUp` (after the bytes before it are sent).
    typealias Responder = @Sendable (String) -> [UInt8]?
    static let hangUp: [UInt8] = Array("\u{0}<hang up>\u{0}".utf8)

    private let responder: Responder
    private let greeting: String
    private let listener: LoopbackListener
    private let recorded = Locked<[String]>([])

    init(greeting: String = "FERRY 1 name=fake id=0123456789abcdef0123456789abcdef auth=none",
         responder: @escaping Responder) throws {
        self.responder = responder
        self.greeting = greeting
        let recorded = self.recorded
        listener = try LoopbackListener { fd, stopped in
            Self.serve(fd, greeting: greeting, responder: responder, record: { line in recorded.withLockedValue { $0.append(line) } },
                       stopped: stopped)
        }
    }

    var port: Int { listener.port }
    var address: String { listener.address }

    /// Every request line received so far, in order.
    var requests: [String] { recorded.withLockedValue { $0 } }

    func stop() { listener.stop() }

    private static func serve(_ fd: Int32, greeting: String, responder: Responder, record: (String) -> Void,
                              stopped: () -> Bool) {
        guard write(fd, Array((greeting + "\n").utf8)) else { return }
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while !stopped() {
            if let lf = buffer.firstIndex(of: 0x0A) {
                var lineBytes = Array(buffer[..<lf])
                buffer.removeFirst(lf + 1)
                if lineBytes.last == 0x0D { lineBytes.removeLast() }
                let line = String(decoding: lineBytes, as: UTF8.self)
                record(line)
                if line.uppercased() == "QUIT" {
                    _ = write(fd, Array("OK bye\n".utf8))
                    return
                }
                guard var reply = responder(line) else { return }
                let hangUp = reply.count >= Self.hangUp.count && Array(reply.suffix(Self.hangUp.count)) == Self.hangUp
                if hangUp { reply.removeLast(Self.hangUp.count) }
                guard write(fd, reply), !hangUp else { return }
                continue
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 100) > 0 else { continue }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return }
            buffer += chunk[0..<n]
        }
    }

    private static func write(_ fd: Int32, _ bytes: [UInt8]) -> Bool { sendAll(fd, bytes) }

    // MARK: - Reply builders

    static let mtime = "1700000000.000000000"

    static func sha256Hex(_ bytes: [UInt8]) -> String {
        SHA256Hasher.hex(bytes)
    }

    enum Corruption: Sendable {
        case none
        /// Every chunk's CRC field is off by one.
        case crc
        /// The chunks are right but END names another SHA-256.
        case endSHA
        /// One byte of the first chunk's (stored) wire data is flipped, CRC left as computed.
        case flippedByte
    }

    /// A chunk stream (`CHUNK ...` frames and `END`) carrying `data`, zlib-compressed where
    /// that helps (as a real server does). `trailer`, when given, ends it in place of the
    /// `END <sha256>` line made here.
    static func chunkStream(_ data: [UInt8], offset: Int64 = 0, chunkSize: Int = 64 * 1024,
                            corruption: Corruption = .none, compress: Bool = true, trailer: Trailer? = nil) -> [UInt8] {
        var out: [UInt8] = []
        var encoder = ChunkEncoder(compress ? .compress(.zlib(9)) : .store)
        var position = Int(offset)
        while position < data.count {
            let end = min(data.count, position + chunkSize)
            var (header, wire) = data[position..<end].withUnsafeBytes {
                encoder.encode(raw: $0, offset: Int64(position), allocator: ByteBufferAllocator())
            }
            var wireBytes = wire.readBytes(length: wire.readableBytes) ?? []
            switch corruption {
            case .crc: header.crc32 &+= 1
            case .flippedByte where position == Int(offset):
                if header.codec == .stored { wireBytes[0] ^= 0xFF } else { header.crc32 ^= 0x0100_0000 }
            default: break
            }
            out += Array((header.line + "\n").utf8) + wireBytes
            position = end
        }
        let sha = corruption == .endSHA ? sha256Hex(data + [0]) : sha256Hex(data)
        out += Array(((trailer ?? Trailer(sha256: sha)).line + "\n").utf8)
        return out
    }

    /// `OK count` and a zlib-compressed manifest with `lines` (no header), sent as given.
    static func manifestReply(_ lines: [String]) -> [UInt8] {
        let text = Array((["ferry-manifest 1"] + lines).map { $0 + "\n" }.joined().utf8)
        return Array("OK \(lines.count)\n".utf8) + chunkStream(text)
    }

    /// A responder for a scripted tree: `STAT .` is a directory, `MANIFEST` sends `manifest`,
    /// `GET` and `STAT` of a name in `files` serve it (`corruption` applied to GET data).
    static func treeResponder(manifest: [String], files: [String: [UInt8]],
                              corruption: Corruption = .none) -> Responder {
        { line in
            let f = line.split(separator: " ").map(String.init)
            guard let verb = f.first?.uppercased() else { return Array("ERR 400 empty\n".utf8) }
            switch verb {
            case "STAT" where f.count == 2:
                if f[1] == "." { return Array("OK d 0755 0 \(mtime) .\n".utf8) }
                if let data = files[f[1]] { return Array("OK f 0644 \(data.count) \(mtime) \(f[1])\n".utf8) }
                return Array("ERR 404 not found: \(f[1])\n".utf8)
            case "MANIFEST":
                return manifestReply(manifest)
            case "GET" where f.count >= 4:
                guard let data = files[f[1]] else { return Array("ERR 404 not found: \(f[1])\n".utf8) }
                let offset = Int64(f[2]) ?? 0
                return Array("OK \(data.count) \(mtime) -\n".utf8) + chunkStream(data, offset: offset, corruption: corruption)
            default:
                return Array("ERR 400 not supported by this fake server\n".utf8)
            }
        }
    }
}

/// Files and directories as seen by lstat, for comparing trees and proving that nothing moved.
struct TreeSnapshot: Equatable, CustomStringConvertible {
    struct Item: Equatable {
        var type: Character  // f d l
        var mode: UInt32
        var size: Int64
        var mtimeSeconds: Int
        var mtimeNanos: Int
        var sha256: String?  // files
        var target: String?  // symlinks
    }

    var items: [String: Item] = [:]

    /// Snapshots everything below `root` (not following symlinks), skipping names in `skip`
    /// at the top level.
    static func take(_ root: URL, skip: Set<String> = []) throws -> TreeSnapshot {
        var snap = TreeSnapshot()
        try walk(root.path, prefix: "", into: &snap, skip: skip)
        return snap
    }

    private static func walk(_ dir: String, prefix: String, into snap: inout TreeSnapshot, skip: Set<String>) throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: dir)
        for name in names {
            if prefix.isEmpty && skip.contains(name) { continue }
            let full = dir + "/" + name
            let rel = prefix.isEmpty ? name : prefix + "/" + name
            var st = stat()
            guard lstat(full, &st) == 0 else { throw IntegrationFailure("lstat \(full): \(errno)") }
            let kind = st.st_mode & S_IFMT
            var item = Item(type: "f", mode: UInt32(st.st_mode & 0o7777), size: Int64(st.st_size),
                            mtimeSeconds: st.st_mtim.tv_sec, mtimeNanos: st.st_mtim.tv_nsec, sha256: nil, target: nil)
            if kind == S_IFDIR {
                item.type = "d"
                item.size = 0
                snap.items[rel] = item
                try walk(full, prefix: rel, into: &snap, skip: skip)
            } else if kind == S_IFLNK {
                item.type = "l"
                item.target = try FileManager.default.destinationOfSymbolicLink(atPath: full)
                item.mode = 0
                snap.items[rel] = item
            } else if kind == S_IFREG {
                guard let data = FileManager.default.contents(atPath: full) else { throw IntegrationFailure("read \(full)") }
                item.sha256 = FakeServer.sha256Hex(Array(data))
                snap.items[rel] = item
            }
        }
    }

    var description: String {
        items.keys.sorted().map { k in
            let i = items[k]!
            return "\(i.type) \(String(i.mode, radix: 8)) \(i.size) \(i.mtimeSeconds).\(i.mtimeNanos) \(k)\(i.target.map { " -> \($0)" } ?? "")"
        }.joined(separator: "\n")
    }

    /// Differences against `other` (which should be an exact copy), one line each.
    func differences(from other: TreeSnapshot, compareDirectoryMtimes: Bool = true,
                     compareLinkMtimes: Bool = false) -> [String] {
        var out: [String] = []
        for (path, a) in items {
            guard let b = other.items[path] else { out.append("missing in copy: \(path)"); continue }
            if a.type != b.type { out.append("\(path): type \(a.type) vs \(b.type)"); continue }
            switch a.type {
            case "f":
                if a.sha256 != b.sha256 { out.append("\(path): content differs") }
                if a.mode != b.mode { out.append("\(path): mode \(String(a.mode, radix: 8)) vs \(String(b.mode, radix: 8))") }
                if a.mtimeSeconds != b.mtimeSeconds || a.mtimeNanos != b.mtimeNanos {
                    out.append("\(path): mtime \(a.mtimeSeconds).\(a.mtimeNanos) vs \(b.mtimeSeconds).\(b.mtimeNanos)")
                }
            case "d":
                if a.mode != b.mode { out.append("\(path): mode \(String(a.mode, radix: 8)) vs \(String(b.mode, radix: 8))") }
                if compareDirectoryMtimes && a.mtimeSeconds != b.mtimeSeconds {
                    out.append("\(path): directory mtime \(a.mtimeSeconds) vs \(b.mtimeSeconds)")
                }
            default:
                if a.target != b.target { out.append("\(path): link target \(a.target ?? "") vs \(b.target ?? "")") }
                if compareLinkMtimes && a.mtimeSeconds != b.mtimeSeconds { out.append("\(path): link mtime differs") }
            }
        }
        for path in other.items.keys where items[path] == nil { out.append("extra in copy: \(path)") }
        return out.sorted()
    }
}

enum Files {
    static func write(_ url: URL, _ text: String, mode: Int? = nil) throws {
        try write(url, Array(text.utf8), mode: mode)
    }

    static func write(_ url: URL, _ bytes: [UInt8], mode: Int? = nil) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(bytes).write(to: url)
        if let mode { try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: url.path) }
    }

    static func read(_ url: URL) -> [UInt8]? {
        FileManager.default.contents(atPath: url.path).map(Array.init)
    }

    /// The file as UTF-8 text (assertion messages stay readable, unlike byte arrays).
    static func text(_ url: URL) -> String? {
        read(url).map { String(decoding: $0, as: UTF8.self) }
    }

    static func exists(_ url: URL) -> Bool {
        var st = stat()
        return lstat(url.path, &st) == 0
    }

    static func symlink(_ url: URL, to target: String) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: url.path, withDestinationPath: target)
    }

    /// Random bytes from the kernel (fast, unlike a per-byte generator in a debug build).
    static func randomBytes(_ count: Int) throws -> [UInt8] {
        guard let h = Foundation.FileHandle(forReadingAtPath: "/dev/urandom") else { throw IntegrationFailure("/dev/urandom") }
        defer { try? h.close() }
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            let d = h.readData(ofLength: count - out.count)
            if d.isEmpty { throw IntegrationFailure("short read from /dev/urandom") }
            out += d
        }
        return out
    }

    /// Sets mtime (seconds since the epoch) without following a final symlink.
    static func setMtime(_ url: URL, seconds: Int, nanos: Int = 0) throws {
        var times = [timespec(tv_sec: seconds, tv_nsec: nanos), timespec(tv_sec: seconds, tv_nsec: nanos)]
        guard utimensat(AT_FDCWD, url.path, &times, AT_SYMLINK_NOFOLLOW) == 0 else {
            throw IntegrationFailure("utimensat \(url.path): \(errno)")
        }
    }

    static func mtime(_ url: URL) -> (Int, Int) {
        var st = stat()
        _ = lstat(url.path, &st)
        return (st.st_mtim.tv_sec, st.st_mtim.tv_nsec)
    }

    /// Names directly in `dir` (empty when it does not exist).
    static func names(_ dir: URL) -> Set<String> {
        Set((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? [])
    }
}

/// JSON Lines output of the CLI.
enum JSONLines {
    static func parse(_ text: String) -> [[String: Any]] {
        text.split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        }
    }

    static func summary(_ text: String) -> [String: Any]? {
        parse(text).last { ($0["event"] as? String) == "summary" }
    }

    static func int(_ object: [String: Any]?, _ key: String) -> Int? {
        (object?[key] as? NSNumber)?.intValue
    }
}

/// Common arguments for a `ferry serve` child used by these tests: loopback only, no
/// discovery, and a state folder of its own (never the user's).
func serveArguments(stateDir: URL) -> [String] {
    ["--bind", "127.0.0.1", "--no-discovery", "--state-dir", stateDir.path]
}

/// A value behind a lock (the test target does not depend on NIOConcurrencyHelpers).
final class Locked<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func withLockedValue<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

/// Runs async code from a synchronous test method (which runs outside the cooperative pool,
/// so blocking socket calls in the test never starve the in-process server's tasks).
func blockingAwait<T: Sendable>(timeout: Double = 120, _ body: @escaping @Sendable () async throws -> T) throws -> T {
    let box = Locked<Result<T, Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        do {
            let value = try await body()
            box.withLockedValue { $0 = .success(value) }
        } catch {
            box.withLockedValue { $0 = .failure(error) }
        }
        done.signal()
    }
    guard done.wait(timeout: .now() + timeout) == .success else { throw IntegrationFailure("async work timed out after \(timeout) s") }
    guard let result = box.withLockedValue({ $0 }) else { throw IntegrationFailure("no result") }
    return try result.get()
}

/// Compares byte arrays without dumping megabytes into the log on a mismatch.
func assertSameBytes(_ actual: @autoclosure () throws -> [UInt8]?, _ expected: @autoclosure () throws -> [UInt8]?,
                     _ message: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line) {
    let a: [UInt8]?, b: [UInt8]?
    do {
        a = try actual()
        b = try expected()
    } catch {
        XCTFail("threw \(error) \(message())", file: file, line: line)
        return
    }
    guard a != b else { return }
    guard let a, let b else {
        XCTFail("\(a == nil ? "actual" : "expected") is nil \(message())", file: file, line: line)
        return
    }
    let first = (0..<min(a.count, b.count)).first { a[$0] != b[$0] } ?? min(a.count, b.count)
    XCTFail("bytes differ: \(a.count) vs \(b.count) bytes, first difference at offset \(first) \(message())", file: file, line: line)
}

/// Sends all of `bytes` on a socket (no SIGPIPE); false when the peer is gone.
func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    var done = 0
    while done < bytes.count {
        let n = bytes[done...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        done += n
    }
    return true
}
