import FerryProtocol

/// What a running server advertises: the fields of `FERRY-HERE` and `FERRY-ANNOUNCE`.
public struct ServerAdvert: Sendable, Hashable {
    /// The server's name (PROTOCOL.md section 9.4); validated by `DiscoveryResponder.start`.
    public var name: String
    /// The greeting's server id: 32 lowercase hex digits.
    public var id: String
    /// The TCP port the server accepts connections on.
    public var tcpPort: Int
    /// The ferry software version, e.g. `0.1.0`.
    public var version: String
    /// The server's fingerprint without dashes (32 base32 characters); nil without TLS.
    public var fingerprint: String?

    public init(name: String, id: String, tcpPort: Int, version: String = FerryDefaults.softwareVersion,
                fingerprint: String? = nil) {
        self.name = name
        self.id = id
        self.tcpPort = tcpPort
        self.version = version
        self.fingerprint = fingerprint
    }
}

/// A server that answered a probe or announced itself.
public struct DiscoveredServer: Sendable, Hashable, Codable, CustomStringConvertible {
    public var name: String
    public var id: String
    /// The source address of the datagram: where the server really is, whatever address
    /// it was configured to bind.
    public var host: String
    /// The server's TCP port.
    public var port: Int
    public var version: String
    /// The fingerprint the server said it has (32 base32 characters, no dashes); nil from a
    /// server without TLS. Unauthenticated: the TLS handshake is what checks the key.
    public var fingerprint: String?

    public init(name: String, id: String, host: String, port: Int, version: String, fingerprint: String? = nil) {
        self.name = name
        self.id = id
        self.host = host
        self.port = port
        self.version = version
        self.fingerprint = fingerprint
    }

    init(advert: DiscoveryAdvert, host: String) {
        self.init(name: advert.name.rawValue, id: advert.id, host: host, port: advert.port, version: advert.version,
                  fingerprint: advert.fingerprint)
    }

    /// `HOST:PORT`, the form every SERVER argument accepts.
    public var endpoint: String { "\(host):\(port)" }

    public var description: String {
        "\(name) at \(endpoint) (version \(version), " + (groupedFingerprint.map { "fingerprint \($0)" } ?? "id \(id)") + ")"
    }

    /// The fingerprint as people compare it, in groups of four: `MFRG-GZDF-…`.
    public var groupedFingerprint: String? {
        fingerprint.map { fp in
            stride(from: 0, to: fp.count, by: 4).map { i in
                String(fp.dropFirst(i).prefix(4))
            }.joined(separator: "-")
        }
    }

    /// Table order: by name, then address, then port.
    static func tableOrder(_ a: DiscoveredServer, _ b: DiscoveredServer) -> Bool {
        if a.name != b.name { return a.name < b.name }
        if a.host != b.host { return a.host < b.host }
        return a.port < b.port
    }
}

/// What `DiscoveryProber.watch` reports.
public enum DiscoveryEvent: Sendable, Hashable {
    /// The server answered the watcher's probe.
    case found(DiscoveredServer)
    /// The server broadcast `FERRY-ANNOUNCE` (at its start and then periodically).
    case announced(DiscoveredServer)
    /// The server with this id, at this source address, said `FERRY-BYE`.
    case goodbye(id: String, host: String)
}
