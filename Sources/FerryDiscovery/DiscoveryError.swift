/// Everything that can go wrong in discovery, worded for the person at the terminal: what
/// happened and what to try next.
public enum DiscoveryError: Error, Sendable, CustomStringConvertible {
    /// The advert a server tried to publish is not valid (bad name, id, port or version).
    case invalidAdvert(String)
    /// `bindHost` is neither an IP address of this machine nor a resolvable host name.
    case invalidBindAddress(String, why: String)
    /// The discovery UDP port could not be opened.
    case bindFailed(host: String, port: Int, reason: String)
    /// A `--to` argument that is not an IPv4 address.
    case invalidTarget(String)
    /// A discovery port outside 1–65535 (0 is allowed only where a responder picks one).
    case invalidPort(Int)
    /// Nothing to probe (an empty target list).
    case noTargets
    /// Not a single probe could be sent; each target with the reason.
    case probeFailed([TargetFailure])
    /// Probes went out but no server answered.
    case noAnswer(targets: [ProbeTarget], port: Int, timeout: Duration, failures: [TargetFailure])
    /// Servers answered, but none with this name.
    case nameNotFound(name: String, answered: [DiscoveredServer], targets: [ProbeTarget], port: Int)
    /// Several servers answered with this name.
    case ambiguousName(name: String, matches: [DiscoveredServer])

    public struct TargetFailure: Sendable, Hashable, CustomStringConvertible {
        public var target: ProbeTarget
        public var reason: String
        public init(target: ProbeTarget, reason: String) {
            self.target = target
            self.reason = reason
        }
        public var description: String { "\(target.address): \(reason)" }
    }

    public var description: String {
        switch self {
        case .invalidAdvert(let why):
            return "cannot advertise this server for discovery: \(why)"
        case .invalidBindAddress(let host, let why):
            return "cannot answer discovery probes on '\(host)': \(why) (use --bind with an address of this machine, or --no-discovery)"
        case .bindFailed(let host, let port, let reason):
            return "cannot open UDP \(host):\(port) for discovery: \(reason) — if another program holds UDP port \(port), "
                + "choose another with --discovery-port N (clients must use the same), or turn discovery off with --no-discovery"
        case .invalidTarget(let text):
            return "'\(text)' is not an IPv4 address to probe; --to takes a broadcast or unicast IPv4 address such as "
                + "192.168.1.255, or 127.255.255.255 for servers on this machine"
        case .invalidPort(let port):
            return "discovery port \(port) is not between 1 and 65535"
        case .noTargets:
            return "there is nothing to probe: no IPv4 interface is up — connect to a network or name an address with --to ADDR"
        case .probeFailed(let failures):
            return "could not send a discovery probe to any address ("
                + failures.map(\.description).joined(separator: "; ")
                + ") — check that a network interface is up and has a route, or name an address with --to ADDR"
        case .noAnswer(let targets, let port, let timeout, let failures):
            var text = "no ferry server answered a probe to \(Self.list(targets, port: port)) within \(Self.seconds(timeout)) — "
                + "check that a server is running (ferry serve, without --no-discovery and with the same --discovery-port), "
                + "that UDP \(port) is not blocked by a firewall, that Wi‑Fi client isolation is off, "
                + "and that you are not inside a container bridge (try --to with the server's broadcast or unicast address)"
            if !failures.isEmpty {
                text += "; could not send to " + failures.map(\.description).joined(separator: "; ")
            }
            return text
        case .nameNotFound(let name, let answered, let targets, let port):
            return "no ferry server named '\(name)' answered a probe to \(Self.list(targets, port: port)); servers that answered: "
                + answered.map { "\($0.name) (\($0.endpoint))" }.joined(separator: ", ")
                + " — check the name with `ferry discover`, or give the address as HOST:PORT"
        case .ambiguousName(let name, let matches):
            return "\(matches.count) ferry servers are named '\(name)': "
                + matches.map { "\($0.endpoint) (" + ($0.groupedFingerprint.map { "fingerprint \($0)" } ?? "id \($0.id)") + ")" }
                    .joined(separator: ", ")
                + " — ferry will not guess: give the address as HOST:PORT (with --fingerprint, after comparing it with the server), "
                + "or start the servers with different --name values"
        }
    }

    /// `127.255.255.255:7447`, or `255.255.255.255:7447, 10.0.0.255:7447`.
    static func list(_ targets: [ProbeTarget], port: Int) -> String {
        targets.isEmpty ? "no address" : targets.map { "\($0.address):\(port)" }.joined(separator: ", ")
    }

    /// `2 s`, `0.5 s`, `1.25 s`.
    static func seconds(_ duration: Duration) -> String {
        let parts = duration.components
        let millis = parts.seconds * 1000 + parts.attoseconds / 1_000_000_000_000_000
        let fraction = millis % 1000
        if fraction == 0 { return "\(millis / 1000) s" }
        var digits = String(fraction)
        while digits.count < 3 { digits = "0" + digits }
        while digits.hasSuffix("0") { digits.removeLast() }
        return "\(millis / 1000).\(digits) s"
    }
}
