#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryTestSupport
import Foundation
import XCTest

/// The sizes the resume tests reason about.
enum Wire {
    /// The server's chunk size (docs/PROTOCOL.md section 7).
    static let chunk = 256 * 1024
    /// Slack for the protocol's text (greeting, status lines, chunk headers, END) in a
    /// transfer of a few dozen MiB: about 60 bytes per 256 KiB chunk plus a few lines.
    static let overhead = 16 * 1024
}

/// A served directory, a `ferry serve` on loopback, and a fault proxy in front of it.
final class ResumeHarness {
    let work: URL
    let served: URL
    let local: URL
    let server: ServerProcess
    let proxy: FaultProxy

    /// `serverArguments` are added to `ferry serve`'s (e.g. a fixed `--compress`: `auto` stores
    /// for a client on this machine, which every client of these tests is).
    init(_ label: String, serverArguments: [String] = []) throws {
        work = try TestSupport.makeTemporaryDirectory(label)
        served = work.appendingPathComponent("served")
        local = work.appendingPathComponent("local")
        let state = work.appendingPathComponent("state")
        for d in [served, local, state] { try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true) }
        // Cleartext: these tests count and corrupt the bytes between client and server, which
        // TLS would both pad and refuse to pass on (its own tests are TLSTests).
        server = try ServerProcess(serving: served, tls: false,
                                   arguments: ["--bind", "127.0.0.1", "--no-discovery", "--state-dir", state.path] + serverArguments)
        proxy = try FaultProxy(upstreamPort: server.port)
        TestServers.register(proxy.address, server.clientArguments)
    }

    func close() {
        TestServers.unregister(proxy.address)
        proxy.stop()
        server.stop()
        TestSupport.removeTemporaryDirectory(work)
    }

    func servedFile(_ name: String) -> URL { served.appendingPathComponent(name) }
    func localFile(_ name: String) -> URL { local.appendingPathComponent(name) }

    /// `ferry get PROXY/NAME LOCAL/NAME --json ARGS...`
    func get(_ name: String, _ arguments: [String] = [], timeout: TimeInterval = 120) throws -> FerryRun {
        FerryRun(try TestSupport.ferry(["get", "\(proxy.address)/\(name)", localFile(name).path, "--json"] + arguments,
                                       timeout: timeout))
    }

    /// `ferry sync PROXY DEST --json ARGS...`
    func sync(into dest: URL, _ arguments: [String] = [], timeout: TimeInterval = 180) throws -> FerryRun {
        FerryRun(try TestSupport.ferry(["sync", proxy.address, dest.path, "--json"] + arguments, timeout: timeout))
    }

    /// Server→client bytes of the connections accepted from index `from` on.
    func bytesSince(_ from: Int) -> Int {
        proxy.connections.dropFirst(from).reduce(0) { $0 + $1.serverToClient }
    }
}

/// A finished `ferry ... --json` run: exit status, JSON Lines, stderr.
struct FerryRun: CustomStringConvertible {
    let status: Int32
    let events: [[String: Any]]
    let stderr: String

    init(_ result: TestSupport.ProcessResult) {
        status = result.status
        stderr = result.stderr
        events = result.stdout.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }
    }

    var summary: [String: Any]? { events.last { $0["event"] as? String == "summary" } }
    func int(_ key: String) -> Int? { (summary?[key] as? NSNumber)?.intValue }
    func string(_ key: String) -> String? { summary?[key] as? String }
    func events(_ name: String) -> [[String: Any]] { events.filter { $0["event"] as? String == name } }

    var description: String { "status \(status), stderr: \(stderr.suffix(2000))" }
}

/// The sidecar of a partial file (`<data>.meta`), as key=value pairs.
struct PartialMeta {
    let fields: [String: String]

    init?(dataPath: String) {
        guard let text = try? String(contentsOfFile: dataPath + ".meta", encoding: .utf8) else { return nil }
        var f: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            f[String(line[..<eq])] = String(line[line.index(after: eq)...]).trimmingCharacters(in: .whitespaces)
        }
        fields = f
    }

    var verified: Int? { fields["verified"].flatMap { Int($0) } }
    var size: Int? { fields["size"].flatMap { Int($0) } }
}

struct FileError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

enum Files {
    /// Writes `size` bytes of incompressible random data.
    static func writeRandom(_ url: URL, size: Int) throws {
        _ = FileManager.default.createFile(atPath: url.path, contents: nil)
        let handle = try FileHandle(forWritingTo: url)
        defer { try? handle.close() }
        var generator = SystemRandomNumberGenerator()
        var left = size
        while left > 0 {
            let n = min(left, 1 << 20)
            var block = [UInt8](repeating: 0, count: n)
            block.withUnsafeMutableBytes { p in
                var i = 0
                while i + 8 <= n {
                    p.storeBytes(of: generator.next() as UInt64, toByteOffset: i, as: UInt64.self)
                    i += 8
                }
                while i < n {
                    p[i] = UInt8.random(in: 0...255, using: &generator)
                    i += 1
                }
            }
            try handle.write(contentsOf: block)
            left -= n
        }
    }

    static func sha256(_ url: URL) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        var hasher = SHA256Hasher()
        while let data = try handle.read(upToCount: 1 << 20), !data.isEmpty {
            hasher.update([UInt8](data))
        }
        return hasher.finalizeHex()
    }

    static func size(_ url: URL) -> Int? {
        (try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? NSNumber)?.intValue
    }

    static func exists(_ url: URL) -> Bool { FileManager.default.fileExists(atPath: url.path) }

    /// Overwrites `bytes.count` bytes at `offset` in place (same inode).
    static func patch(_ url: URL, at offset: Int, with bytes: [UInt8]) throws {
        let handle = try FileHandle(forUpdating: url)
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        try handle.write(contentsOf: bytes)
    }

    /// The modification time with nanoseconds, and a way to put it back exactly.
    static func mtime(_ url: URL) throws -> timespec {
        var st = stat()
        guard stat(url.path, &st) == 0 else { throw FileError( "stat \(url.path): errno \(errno)") }
        return st.st_mtim
    }

    static func setMtime(_ url: URL, _ time: timespec) throws {
        var times = [time, time]
        guard utimensat(AT_FDCWD, url.path, &times, 0) == 0 else {
            throw FileError( "utimensat \(url.path): errno \(errno)")
        }
    }

    static func mode(_ url: URL) -> Int? {
        (try? FileManager.default.attributesOfItem(atPath: url.path)[.posixPermissions] as? NSNumber)?.intValue
    }

    /// Every regular file under `root` (relative path → SHA-256), plus directories ("/" suffix)
    /// with their permission bits, for comparing two trees.
    static func tree(_ root: URL, skipping skip: Set<String> = []) throws -> [String: String] {
        var out: [String: String] = [:]
        guard let walker = FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil,
                                                          options: [], errorHandler: nil) else { return out }
        let prefix = root.resolvingSymlinksInPath().path + "/"
        for case let url as URL in walker {
            let path = url.resolvingSymlinksInPath().path
            let relative = path.hasPrefix(prefix) ? String(path.dropFirst(prefix.count)) : path
            if skip.contains(where: { relative == $0 || relative.hasPrefix($0 + "/") }) { continue }
            var isDir: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir)
            let bits = String(mode(url) ?? -1, radix: 8)
            out[relative + (isDir.boolValue ? "/" : "")] = isDir.boolValue ? bits : "\(bits) \(try sha256(url))"
        }
        return out
    }
}
