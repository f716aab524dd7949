#if canImport(Glibc)
import Glibc
#endif
import FerryTestSupport
import Foundation

/// A blocking TCP client on loopback for sending arbitrary bytes to a server and reading its
/// replies line by line, with a receive timeout so a test never hangs.
final class RawClient {
    let fd: Int32
    private var pending = [UInt8]()

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// `source`: a loopback address to connect from (the server sees it as the peer), so a test
    /// can be two machines without leaving this one.
    init(port: Int, host: String = "127.0.0.1", source: String? = nil, timeout: TimeInterval = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: errno \(errno)") }
        if let source {
            guard Self.call(bind, fd, source, port: 0) == 0 else {
                let e = errno
                close(fd)
                throw Failure(description: "bind to \(source): errno \(e)")
            }
        }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - floor(timeout)) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let rc = Self.call(connect, fd, host, port: port)
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw Failure(description: "connect to \(host):\(port): errno \(e)")
        }
    }

    deinit { close(fd) }

    /// Calls `bind` or `connect` on `fd` with the IPv4 address `host`:`port`.
    private static func call(_ function: (Int32, UnsafePointer<sockaddr>?, socklen_t) -> Int32,
                             _ fd: Int32, _ host: String, port: Int) -> Int32 {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &addr.sin_addr)
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { function(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }

    func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure(description: "send: errno \(errno)") }
            sent += n
        }
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Reads up to and including the next LF; nil at EOF (or when the connection was reset).
    func readLine() throws -> String? {
        while true {
            if let lf = pending.firstIndex(of: 0x0A) {
                let line = Array(pending[..<lf])
                pending.removeFirst(lf + 1)
                return String(decoding: line, as: UTF8.self)
            }
            guard try fill() else { return nil }
        }
    }

    /// Reads exactly `count` bytes (chunk payloads).
    func readBytes(_ count: Int) throws -> [UInt8] {
        while pending.count < count {
            guard try fill() else { throw Failure(description: "EOF after \(pending.count) of \(count) bytes") }
        }
        let out = Array(pending[..<count])
        pending.removeFirst(count)
        return out
    }

    /// Reads until EOF, discarding; returns the number of bytes seen.
    func drainToEOF() throws -> Int {
        var total = pending.count
        pending.removeAll()
        while try fill() { total += pending.count; pending.removeAll() }
        return total
    }

    private func fill() throws -> Bool {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n > 0 {
            pending.append(contentsOf: buffer[..<n])
            return true
        }
        if n == 0 || errno == ECONNRESET { return false }
        throw Failure(description: errno == EAGAIN || errno == EWOULDBLOCK ? "timed out waiting for the server" : "recv: errno \(errno)")
    }
}

/// Open descriptors and resident memory of a process, from /proc.
enum ProcessStats {
    static func openDescriptors(_ pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// VmRSS in KiB.
    static func residentKiB(_ pid: Int32) -> Int {
        field("VmRSS", pid)
    }

    /// VmHWM (peak resident) in KiB.
    static func peakResidentKiB(_ pid: Int32) -> Int {
        field("VmHWM", pid)
    }

    /// User plus system CPU time the process has used, in seconds (/proc/PID/stat).
    static func cpuSeconds(_ pid: Int32) -> Double {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return -1 }
        // After "pid (comm) ": state is field 3, utime 14, stime 15.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return -1 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    static func threads(_ pid: Int32) -> Int {
        field("Threads", pid)
    }

    private static func field(_ name: String, _ pid: Int32) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return -1 }
        for line in text.split(separator: "\n") where line.hasPrefix(name + ":") {
            return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") ?? -1
        }
        return -1
    }

    /// Polls until `condition` holds or `timeout` passes; returns whether it held.
    static func eventually(timeout: TimeInterval, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            usleep(50_000)
        }
        return condition()
    }
}

extension ServerProcess {
    /// Sends SIGTERM and waits up to `seconds` for the process to exit; whether it did.
    func stopsOnSIGTERM(within seconds: TimeInterval) -> Bool {
        let signalled = Date()
        kill(process.processIdentifier, SIGTERM)
        while process.isRunning && Date().timeIntervalSince(signalled) < seconds { usleep(20_000) }
        return !process.isRunning
    }
}
