#if canImport(Glibc)
import Glibc
#endif
import FerryProtocol

/// Where a server is, as the user wrote it: `HOST[:PORT][/PATH]`, `[V6]:PORT[/PATH]` or
/// `ferry://HOST[:PORT]/PATH`. Parsing is strict and happens before anything is sent.
public struct ServerAddress: Hashable, Sendable, CustomStringConvertible {
    public enum Host: Hashable, Sendable {
        case ipv4(String)
        case ipv6(String)
        /// A DNS name, or a ferry server name to be found by discovery.
        case name(String)
    }

    public var host: Host
    public var port: Int
    /// Whether the port was written explicitly (a bare name without a port may be a
    /// discovered server's name).
    public var portGiven: Bool
    /// Whether the host was written in brackets (`[::1]`, `[myhost]`).
    public var bracketed: Bool
    public var path: RemotePath

    public init(host: Host, port: Int = FerryDefaults.tcpPort, portGiven: Bool = false, bracketed: Bool = false,
                path: RemotePath = .root) {
        self.host = host
        self.port = port
        self.portGiven = portGiven
        self.bracketed = bracketed
        self.path = path
    }

    /// How the host becomes an address to connect to, decided by how it was written alone.
    public enum Lookup: Hashable, Sendable {
        /// An IP address: used as written; nothing is looked up.
        case none
        /// A host name with a port, a dot, or in brackets: looked up in the system resolver
        /// (`/etc/hosts`, DNS) only. It is never a server name, so nothing is broadcast.
        case dnsOnly
        /// A bare name (no port, no dot, no brackets): `/etc/hosts`, then discovery of a server
        /// announcing this name, then DNS.
        case hostsDiscoveryDNS
    }

    public var lookup: Lookup {
        switch host {
        case .ipv4, .ipv6: return .none
        case .name(let name): return portGiven || bracketed || name.contains(Character(".")) ? .dnsOnly : .hostsDiscoveryDNS
        }
    }

    public var hostString: String {
        switch host {
        case .ipv4(let s), .ipv6(let s), .name(let s): return s
        }
    }

    /// `HOST:PORT` with IPv6 in brackets.
    public var endpointDescription: String {
        if case .ipv6(let a) = host { return "[\(a)]:\(port)" }
        return "\(hostString):\(port)"
    }

    public var description: String {
        path.isRoot ? endpointDescription : endpointDescription + "/" + path.description
    }

    public struct Invalid: Error, Hashable, Sendable, CustomStringConvertible {
        public let input: String
        public let why: String
        public var description: String {
            "invalid server address '\(input)': \(why) (expected HOST[:PORT][/PATH], [IPv6]:PORT[/PATH] or ferry://HOST[:PORT]/PATH)"
        }
    }

    /// Parses the user's text. The path part is a plain local-style path (`photos/2024`),
    /// not percent-encoded; it is validated with the protocol's path rules.
    public static func parse(_ input: String) throws(Invalid) -> ServerAddress {
        func fail(_ why: String) -> Invalid { Invalid(input: input, why: why) }
        var rest = Substring(input)
        if rest.hasPrefix("ferry://") {
            rest = rest.dropFirst("ferry://".count)
        } else if let colon = rest.firstIndex(of: ":"), rest[colon...].hasPrefix("://") {
            throw fail("unknown scheme '\(rest[..<colon])://' (only ferry:// is accepted)")
        }
        guard !rest.isEmpty else { throw fail("no host") }
        let host: Host
        var portText: Substring?
        var pathText: Substring = ""
        let bracketed = rest.first == "["
        if bracketed {
            guard let close = rest.firstIndex(of: "]") else { throw fail("missing ']' after an IPv6 address") }
            let inner = rest[rest.index(after: rest.startIndex)..<close]
            if isIPv6(inner) {
                host = .ipv6(String(inner))
            } else if inner.contains(Character(":")) || inner.isEmpty {
                throw fail("'\(inner)' is not an IPv6 address")
            } else if inner.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) {
                try validateIPv4(inner, fail)
                host = .ipv4(String(inner))
            } else {
                try validateHostName(inner, fail)
                host = .name(String(inner))
            }
            rest = rest[rest.index(after: close)...]
            if rest.first == ":" {
                let afterColon = rest.dropFirst()
                let end = afterColon.firstIndex(of: "/") ?? afterColon.endIndex
                portText = afterColon[..<end]
                rest = afterColon[end...]
            }
            if rest.first == "/" { pathText = rest.dropFirst() } else if !rest.isEmpty { throw fail("unexpected text after ']'") }
        } else {
            let slash = rest.firstIndex(of: "/") ?? rest.endIndex
            var hostPort = rest[..<slash]
            if slash < rest.endIndex { pathText = rest[rest.index(after: slash)...] }
            let colons = hostPort.filter { $0 == ":" }.count
            if colons > 1 { throw fail("an IPv6 address must be written in brackets, e.g. [::1]:7446") }
            if let colon = hostPort.firstIndex(of: ":") {
                portText = hostPort[hostPort.index(after: colon)...]
                hostPort = hostPort[..<colon]
            }
            guard !hostPort.isEmpty else { throw fail("no host") }
            if hostPort.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) {
                try validateIPv4(hostPort, fail)
                host = .ipv4(String(hostPort))
            } else {
                try validateHostName(hostPort, fail)
                host = .name(String(hostPort))
            }
        }
        var port = FerryDefaults.tcpPort
        if let portText {
            guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let p = Int(portText), (1...65535).contains(p) else {
                throw fail("port '\(portText)' is not a number from 1 to 65535")
            }
            port = p
        }
        while pathText.hasSuffix("/") { pathText = pathText.dropLast() }
        let path: RemotePath
        do { path = try RemotePath(validating: String(pathText)) } catch { throw fail("path: \(error)") }
        return ServerAddress(host: host, port: port, portGiven: portText != nil, bracketed: bracketed, path: path)
    }

    static func validateIPv4(_ text: Substring, _ fail: (String) -> Invalid) throws(Invalid) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else {
            throw fail("'\(text)' is not an IPv4 address (it needs four numbers from 0 to 255, like 192.168.1.20)")
        }
        for part in parts {
            guard !part.isEmpty, part.count <= 3, let n = Int(part), n <= 255 else {
                throw fail("'\(part)' in '\(text)' is not a number from 0 to 255")
            }
        }
    }

    static func validateHostName(_ text: Substring, _ fail: (String) -> Invalid) throws(Invalid) {
        guard text.utf8.count <= 253 else { throw fail("host name longer than 253 characters") }
        for label in text.split(separator: ".", omittingEmptySubsequences: false) {
            guard !label.isEmpty, label.utf8.count <= 63 else { throw fail("'\(text)' is not a valid host name") }
            for c in label.unicodeScalars {
                let ok = (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c == "-" || c == "_"
                guard ok else { throw fail("'\(c)' is not allowed in a host name") }
            }
        }
    }

    static func isIPv6(_ text: Substring) -> Bool {
        guard !text.isEmpty, text.count <= 45 else { return false }
        var addr = in6_addr()
        return String(text).withCString { inet_pton(AF_INET6, $0, &addr) } == 1
    }
}
