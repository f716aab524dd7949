#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One address of one network interface, as `getifaddrs` reports it.
struct InterfaceAddress: Sendable, Hashable {
    var interface: String
    var index: Int
    /// Numeric address (IPv4 dotted quad or IPv6 text).
    var address: String
    var isIPv4: Bool
    /// Prefix length of the netmask, when known.
    var prefixLength: Int?
    /// The directed broadcast address (IPv4, broadcast-capable interfaces only).
    var broadcast: String?
    var isUp: Bool
    var isLoopback: Bool
    var canBroadcast: Bool
}

enum NetworkInterfaces {
    /// Every IPv4 and IPv6 address of every interface; empty if `getifaddrs` fails.
    static func addresses() -> [InterfaceAddress] {
        var head: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&head) == 0, let first = head else { return [] }
        defer { freeifaddrs(head) }
        var result: [InterfaceAddress] = []
        var cursor: UnsafeMutablePointer<ifaddrs>? = first
        while let entry = cursor {
            cursor = entry.pointee.ifa_next
            guard let addr = entry.pointee.ifa_addr, let cName = entry.pointee.ifa_name else { continue }
            let family = Int32(addr.pointee.sa_family)
            guard family == AF_INET || family == AF_INET6, let text = numericHost(addr) else { continue }
            let flags = entry.pointee.ifa_flags
            let name = String(cString: cName)
            let canBroadcast = flags & UInt32(IFF_BROADCAST) != 0
            var broadcast: String?
            if family == AF_INET && canBroadcast, let b = broadcastAddress(entry) {
                broadcast = numericHost(b)
            }
            result.append(InterfaceAddress(
                interface: name,
                index: Int(if_nametoindex(cName)),
                address: text,
                isIPv4: family == AF_INET,
                prefixLength: entry.pointee.ifa_netmask.flatMap(prefixLength),
                broadcast: broadcast,
                isUp: flags & UInt32(IFF_UP) != 0,
                isLoopback: flags & UInt32(IFF_LOOPBACK) != 0,
                canBroadcast: canBroadcast))
        }
        return result
    }

    private static func broadcastAddress(_ entry: UnsafeMutablePointer<ifaddrs>) -> UnsafeMutablePointer<sockaddr>? {
        #if os(Linux)
        return entry.pointee.ifa_ifu.ifu_broadaddr
        #else
        return entry.pointee.ifa_dstaddr
        #endif
    }

    static func numericHost(_ addr: UnsafePointer<sockaddr>) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch Int32(addr.pointee.sa_family) {
        case AF_INET:
            return addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                var a = sin.pointee.sin_addr
                guard inet_ntop(AF_INET, &a, &buffer, socklen_t(buffer.count)) != nil else { return nil }
                return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
        case AF_INET6:
            return addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                var a = sin6.pointee.sin6_addr
                guard inet_ntop(AF_INET6, &a, &buffer, socklen_t(buffer.count)) != nil else { return nil }
                return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
        default:
            return nil
        }
    }

    private static func numericHost(_ addr: UnsafeMutablePointer<sockaddr>) -> String? {
        numericHost(UnsafePointer(addr))
    }

    private static func prefixLength(_ mask: UnsafeMutablePointer<sockaddr>) -> Int? {
        switch Int32(mask.pointee.sa_family) {
        case AF_INET:
            return mask.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                UInt32(bigEndian: $0.pointee.sin_addr.s_addr).nonzeroBitCount
            }
        case AF_INET6:
            return mask.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                withUnsafeBytes(of: sin6.pointee.sin6_addr) { $0.reduce(0) { $0 + $1.nonzeroBitCount } }
            }
        default:
            return nil
        }
    }
}

/// IPv4 literals, parsed strictly with `inet_pton`.
enum IPv4 {
    /// The address as a host-order integer, or nil when `text` is not a dotted quad.
    static func parse(_ text: String) -> UInt32? {
        guard !text.isEmpty, text.utf8.count <= 15,
              text.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2E }) else { return nil }
        var addr = in_addr()
        guard inet_pton(AF_INET, text, &addr) == 1 else { return nil }
        return UInt32(bigEndian: addr.s_addr)
    }

    static func isIPv6Literal(_ text: String) -> Bool {
        var addr = in6_addr()
        return text.contains(":") && inet_pton(AF_INET6, text, &addr) == 1
    }

    /// Source addresses an answer must never be sent to: unspecified, limited broadcast,
    /// multicast and reserved ranges (a spoofed probe from one of them would turn an answer
    /// into a broadcast).
    static func isUnanswerableSource(_ value: UInt32) -> Bool {
        let first = value >> 24
        return first == 0 || first >= 224
    }
}
