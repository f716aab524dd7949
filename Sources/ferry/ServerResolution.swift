#if canImport(Glibc)
import Glibc
#endif
import FerryClient
import FerryProtocol
import Logging

/// Turns what the user typed as SERVER into an endpoint: an IP address is used as is; a name
/// is looked up in DNS, and failing that (or straight away when `--to` is given) found by
/// discovery under the name the server announces.
enum ServerResolution {
    struct NotFound: Error, CustomStringConvertible {
        let description: String
    }

    static func resolve(_ address: ServerAddress, options: ClientOptions, logger: Logger) async throws -> Endpoint {
        switch address.host {
        case .ipv4(let a), .ipv6(let a):
            return Endpoint(host: a, port: address.port)
        case .name(let name):
            if options.probeTargets.isEmpty, let ip = lookup(name) {
                return Endpoint(host: ip, port: address.port)
            }
            let found = try await DiscoveryGlue.find(name: name, options: options, logger: logger)
            return Endpoint(host: found.host, port: address.portGiven ? address.port : found.port)
        }
    }

    /// A numeric address for `name` from the system resolver, or nil.
    static func lookup(_ name: String) -> String? {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &result) == 0, let first = result else { return nil }
        defer { freeaddrinfo(result) }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        guard getnameinfo(first.pointee.ai_addr, first.pointee.ai_addrlen, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 else {
            return nil
        }
        return String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
