import FerryDiscovery
import FerryProtocol
import Logging

/// The executable's use of discovery: starting a server's responder and finding a server
/// by name for the client commands.
enum DiscoveryGlue {
    static func find(name: String, options: ClientOptions, logger: Logger) async throws -> DiscoveredServer {
        let targets: [ProbeTarget]
        if options.probeTargets.isEmpty {
            targets = DiscoveryTargets.defaultTargets()
        } else {
            targets = try options.probeTargets.map { t throws(DiscoveryError) in try DiscoveryTargets.parse(t) }
        }
        return try await DiscoveryProber.resolve(name: name, targets: targets, port: options.discoveryPort,
                                                 timeout: .seconds(2), logger: logger)
    }

    static func startResponder(name: String, id: String, tcpPort: Int, fingerprint: String?, bind: String, discoveryPort: Int,
                               announce: Bool, logger: Logger) async -> DiscoveryResponder? {
        let advert = ServerAdvert(name: name, id: id, tcpPort: tcpPort, version: FerryDefaults.softwareVersion,
                                  fingerprint: fingerprint)
        do {
            return try await DiscoveryResponder.start(advert: advert, bindHost: bind.contains(Character(":")) ? "0.0.0.0" : bind,
                                                      port: discoveryPort, announce: announce, logger: logger)
        } catch {
            logger.warning("discovery is off: \(error)")
            return nil
        }
    }
}
