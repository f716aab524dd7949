#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A plain POSIX UDP socket for tests that need to send raw bytes (garbage, floods) and see
/// exactly what comes back. It only ever talks to loopback addresses.
final class UDPTestSocket {
    let fd: Int32

    init(broadcast: Bool = false) throws {
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var one: Int32 = 1
        if broadcast { setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var addr = Self.address("127.0.0.1", port: 0)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { close(fd); throw POSIXError(.EADDRINUSE) }
    }

    deinit { close(fd) }

    static func address(_ host: String, port: Int) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &addr.sin_addr)
        return addr
    }

    /// Refuses anything outside 127.0.0.0/8: the tests must never send elsewhere.
    func send(_ bytes: [UInt8], to host: String, port: Int) {
        precondition(host.hasPrefix("127."), "test traffic stays on loopback")
        var addr = Self.address(host, port: port)
        _ = bytes.withUnsafeBytes { buffer in
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, buffer.baseAddress, buffer.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
    }

    /// Every datagram that arrives within `timeout` seconds (at most `limit`).
    func receive(timeout: Double, limit: Int = 1000) -> [(bytes: [UInt8], from: String)] {
        var result: [(bytes: [UInt8], from: String)] = []
        let deadline = Date().addingTimeInterval(timeout)
        while result.count < limit {
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 { break }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, Int32(max(1, remaining * 1000))) > 0 else { continue }
            var buffer = [UInt8](repeating: 0, count: 2048)
            var from = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let n = buffer.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &length) }
                }
            }
            guard n >= 0 else { break }
            var text = [CChar](repeating: 0, count: 32)
            inet_ntop(AF_INET, &from.sin_addr, &text, socklen_t(text.count))
            let host = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            result.append((Array(buffer[0..<n]), host))
        }
        return result
    }

    /// A UDP port that was free a moment ago (for tests that need every socket on one port).
    static func freePort() throws -> Int {
        let s = try UDPTestSocket()
        var addr = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s.fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}
