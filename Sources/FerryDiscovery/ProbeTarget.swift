/// An IPv4 address a probe (or an announcement) is sent to, usually a broadcast address.
public struct ProbeTarget: Sendable, Hashable, CustomStringConvertible {
    /// Dotted-quad IPv4 address.
    public var address: String
    /// Where the address came from, for `--verbose` (e.g. `eth0 10.0.0.7/24`).
    public var label: String

    public init(address: String, label: String) {
        self.address = address
        self.label = label
    }

    public var description: String { label.isEmpty ? address : "\(address) (\(label))" }

    public static let limitedBroadcast = ProbeTarget(address: "255.255.255.255", label: "limited broadcast")
    /// The loopback broadcast address: reaches every responder on this host and nothing else.
    public static let loopbackBroadcast = ProbeTarget(address: "127.255.255.255", label: "loopback broadcast")
}

public enum DiscoveryTargets {
    /// 255.255.255.255 plus the directed broadcast address of every up, broadcast-capable IPv4
    /// interface (from `getifaddrs`), without duplicates. These addresses reach the real
    /// network: send to them only where that is intended.
    public static func defaultTargets() -> [ProbeTarget] {
        broadcastTargets(of: NetworkInterfaces.addresses())
    }

    static func broadcastTargets(of addresses: [InterfaceAddress], onlyInterfaces: Set<Int>? = nil) -> [ProbeTarget] {
        var targets = [ProbeTarget.limitedBroadcast]
        var seen: Set<String> = [ProbeTarget.limitedBroadcast.address]
        for a in addresses where a.isIPv4 && a.isUp && a.canBroadcast && !a.isLoopback {
            if let only = onlyInterfaces, !only.contains(a.index) { continue }
            guard let broadcast = a.broadcast, IPv4.parse(broadcast) != nil, !seen.contains(broadcast) else { continue }
            seen.insert(broadcast)
            let prefix = a.prefixLength.map { "/\($0)" } ?? ""
            targets.append(ProbeTarget(address: broadcast, label: "\(a.interface) \(a.address)\(prefix)"))
        }
        return targets
    }

    /// Parses a `--to` argument: an IPv4 address (broadcast or unicast). Probes sent by
    /// unicast reach only one of several servers sharing a host's discovery port, so
    /// prefer a broadcast address (`127.255.255.255` for this host).
    public static func parse(_ addr: String) throws(DiscoveryError) -> ProbeTarget {
        let text = addr.trimmingASCIISpaces()
        guard let value = IPv4.parse(text) else { throw .invalidTarget(addr) }
        guard value != 0 else { throw .invalidTarget(addr) }
        let label: String
        if value == 0xFFFF_FFFF {
            label = "limited broadcast"
        } else if value >> 24 == 127 {
            label = value & 0x00FF_FFFF == 0x00FF_FFFF ? "loopback broadcast" : "loopback"
        } else {
            label = "--to"
        }
        return ProbeTarget(address: text, label: label)
    }
}

extension String {
    func trimmingASCIISpaces() -> String {
        let bytes = Array(utf8)
        guard let start = bytes.firstIndex(where: { $0 != 0x20 && $0 != 0x09 }),
              let end = bytes.lastIndex(where: { $0 != 0x20 && $0 != 0x09 }) else { return "" }
        return String(decoding: bytes[start...end], as: UTF8.self)
    }
}
