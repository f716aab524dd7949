#if canImport(Glibc)
import Glibc
#endif
import FerryClient
import FerryDiscovery
import FerryProtocol
import Logging

/// Turns what the user typed as SERVER into an endpoint, as `ServerAddress.lookup` decides: an
/// IP address is used as is; a name with a port, a dot or brackets is looked up by the system
/// resolver only (`/etc/hosts`, DNS), never by discovery; a bare name is looked up in
/// `/etc/hosts`, then found by discovery under the name a server announces (probing the `--to`
/// addresses if given), and only then asked of DNS. Discovery comes before DNS for a bare name
/// because such a name is usually a ferry server's (its host name by default): the answer comes
/// from the LAN itself, and the name of a machine on the LAN is not sent to an outside DNS
/// server first (with `--to 127.255.255.255` nothing leaves this machine at all).
enum ServerResolution {
    /// A SERVER that could not be turned into an address; says what was tried and what answered.
    struct Failure: Error, CustomStringConvertible {
        let description: String
        let exitStatus: Int32
    }

    static func resolve(_ address: ServerAddress, options: ClientOptions, logger: Logger) async throws -> Endpoint {
        switch address.host {
        case .ipv4(let a), .ipv6(let a):
            return Endpoint(host: a, port: address.port)
        case .name(let name):
            guard address.lookup == .hostsDiscoveryDNS else {
                let answer = lookup(name)
                if case .found(let ip) = answer {
                    logger.debug("\(name) is \(ip) (system resolver)")
                    return Endpoint(host: ip, port: address.port)
                }
                throw Failure(description: "cannot find the host '\(name)': \(answer) — a name with a port, a dot or in "
                                  + "brackets is looked up only in DNS and /etc/hosts, never by discovery; check the "
                                  + "spelling, or give the server's IP address",
                              exitStatus: Exit.network)
            }
            if let ip = HostsFile.address(of: name) {
                logger.debug("\(name) is \(ip) (/etc/hosts)")
                return Endpoint(host: ip, port: address.port)
            }
            let discoveryFailure: DiscoveryError
            do {
                let found = try await DiscoveryGlue.find(name: name, options: options, logger: logger)
                return Endpoint(host: found.host, port: found.port)
            } catch let error as DiscoveryError {
                switch error {
                case .invalidTarget, .invalidPort:
                    throw Failure(description: error.description, exitStatus: Exit.usage)
                case .ambiguousName:
                    throw Failure(description: error.description, exitStatus: Exit.network)
                default:
                    discoveryFailure = error
                }
            }
            let answer = lookup(name)
            if case .found(let ip) = answer {
                logger.debug("\(name) is \(ip) (DNS, after discovery found no server by that name)")
                return Endpoint(host: ip, port: address.port)
            }
            throw Failure(description: "cannot find '\(name)': discovery found no server by that name "
                              + "(\(discoveryFailure.description)), and it is not a host name (\(answer))",
                          exitStatus: Exit.network)
        }
    }

    /// What the system resolver said about a name.
    enum Answer: CustomStringConvertible {
        /// glibc's EAI_NODATA ("No address associated with hostname"), a GNU extension Swift
        /// does not import.
        static let noData: Int32 = -5

        case found(String)
        case failed(code: Int32, message: String)

        var description: String {
            switch self {
            case .found(let ip): return "DNS says \(ip)"
            case .failed(let code, let message):
                switch code {
                case EAI_NONAME, Self.noData: return "DNS has no address for it (\(message))"
                case EAI_AGAIN: return "DNS could not be asked or did not answer (\(message)); check the network and /etc/resolv.conf"
                default: return "the DNS lookup failed (\(message))"
                }
            }
        }
    }

    /// A numeric address for `name` from the system resolver (`/etc/hosts`, DNS).
    static func lookup(_ name: String) -> Answer {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(name, nil, &hints, &result)
        guard rc == 0, let first = result else {
            let message = rc == EAI_SYSTEM ? String(cString: strerror(errno)) : String(cString: gai_strerror(rc))
            return .failed(code: rc, message: message)
        }
        defer { freeaddrinfo(result) }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let named = getnameinfo(first.pointee.ai_addr, first.pointee.ai_addrlen, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST)
        guard named == 0 else { return .failed(code: named, message: String(cString: gai_strerror(named))) }
        return .found(String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
}

/// `/etc/hosts`, read directly: a bare name listed there (`localhost`, a name the person added)
/// is an address without asking discovery or DNS.
enum HostsFile {
    static func address(of name: String, path: String = "/etc/hosts") -> String? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var text: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        // A hosts file is small; read at most 1 MiB of it.
        while text.count < 1 << 20 {
            let n = fread(&buffer, 1, buffer.count, file)
            if n <= 0 { break }
            text += buffer[0..<n]
        }
        return address(of: name, in: String(decoding: text, as: UTF8.self))
    }

    /// The first address whose line names `name` (ASCII case-insensitively), as glibc's
    /// `files` lookup does.
    static func address(of name: String, in text: String) -> String? {
        let wanted = name.lowercased()
        for rawLine in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let line = rawLine.prefix { $0 != "#" }
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2 else { continue }
            if fields.dropFirst().contains(where: { $0.lowercased() == wanted }) { return String(fields[0]) }
        }
        return nil
    }
}
