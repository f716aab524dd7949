#if canImport(Glibc)
import Glibc
#endif
import FerryClient
import FerryDiscovery
import FerryProtocol
import Logging

/// Turns what the user typed as SERVER into an endpoint, as `ServerAddress.lookup` decides: an
/// IP address is used as is; a name with a port, a dot or brackets is looked up by the system
/// resolver only; a bare name is looked up by the system resolver first and, only when that
/// has no address for it, found by discovery under the name a server announces (probing the
/// `--to` addresses if given).
enum ServerResolution {
    /// A SERVER that could not be turned into an address; says what was tried and what answered.
    struct Failure: Error, CustomStringConvertible {
        let description: String
        let exitCode: Int32
    }

    static func resolve(_ address: ServerAddress, options: ClientOptions, logger: Logger) async throws -> Endpoint {
        switch address.host {
        case .ipv4(let a), .ipv6(let a):
            return Endpoint(host: a, port: address.port)
        case .name(let name):
            let answer = lookup(name)
            if case .found(let ip) = answer {
                logger.debug("\(name) is \(ip) (system resolver)")
                return Endpoint(host: ip, port: address.port)
            }
            guard address.lookup == .dnsThenDiscovery else {
                throw Failure(description: "cannot find the host '\(name)': \(answer) — a name with a port, a dot or in "
                                  + "brackets is looked up only in DNS and /etc/hosts, never by discovery; check the "
                                  + "spelling, or give the server's IP address",
                              exitCode: 2)
            }
            do {
                let found = try await DiscoveryGlue.find(name: name, options: options, logger: logger)
                return Endpoint(host: found.host, port: found.port)
            } catch let error as DiscoveryError {
                switch error {
                case .invalidTarget, .invalidPort:
                    throw Failure(description: error.description, exitCode: 64)
                default:
                    throw Failure(description: "cannot find '\(name)': it is not a host name (\(answer)), and discovery "
                                      + "found no server by that name: \(error.description)",
                                  exitCode: 2)
                }
            }
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
