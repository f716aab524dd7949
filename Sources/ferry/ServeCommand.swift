#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Dispatch
import FerryFiles
import FerryProtocol
import FerryServer
import FerryTrust
#if canImport(FoundationEssentials)
import FoundationEssentials  // not all of Foundation: that links ICU into the static binary
#else
import Foundation
#endif
import Logging
import NIOCore
import ServiceLifecycle

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a directory, read-only, to ferry clients on the network.",
        discussion: """
        Prints `listening on HOST:PORT` and `fingerprint FP` when ready, then serves until \
        Ctrl-C or SIGTERM (exit status 0). Connections are encrypted with TLS 1.3; the \
        server's identity is a key kept in the state folder (identity.pem, mode 600), and FP, \
        a hash of it, is what clients compare on first contact. Anyone who can reach the port \
        can read DIR unless --token-file is given. --plaintext serves cleartext instead (for \
        debugging with nc; clients must pass --plaintext too).

        Discovery: the server answers `ferry discover` probes on UDP --discovery-port \
        (7447); with --announce it also broadcasts its presence. --no-discovery turns this off.

        Examples:
          ferry serve ~/photos
          ferry serve ~/photos --name studio --port 7446
          ferry serve . --bind 127.0.0.1 --port 0
          ferry serve ~/logs --compress zstd:6
        """
    )

    @Argument(help: "The directory to serve.")
    var directory: String

    @Option(help: ArgumentHelp("Address to listen on (0.0.0.0 = all IPv4 interfaces, :: = all).", valueName: "ADDR"))
    var bind: String = "0.0.0.0"

    @Option(help: ArgumentHelp("TCP port; 0 picks a free one.", valueName: "N"))
    var port: Int = FerryDefaults.tcpPort

    @Option(help: ArgumentHelp("Name clients can use instead of the address (letters, digits, - _ .; 1-63 characters). Default: the host name.", valueName: "NAME"))
    var name: String?

    @Option(help: ArgumentHelp("""
        Chunk compression: auto (codec and level chosen from the link and the CPU; stored for a client on this machine), off, \
        zlib:N (1-9), zstd:N (-7 to 19; negative levels are the fast ones), or a bare zlib \
        level 1-9. zstd goes only to clients that enable it; others get zlib (zstd:N as \
        zlib 1 up to level 3, 6 up to 9, 9 above).
        """, valueName: "MODE"))
    var compress: CompressionMode = .auto

    @Option(help: ArgumentHelp("Folder for the hash cache (default: $XDG_STATE_HOME/ferry or ~/.local/state/ferry).", valueName: "DIR"))
    var stateDir: String?

    @Option(help: ArgumentHelp("Require clients to prove they know the token in this file (mode 600).", valueName: "PATH"))
    var tokenFile: String?

    @Option(help: ArgumentHelp("Maximum simultaneous connections.", valueName: "N"))
    var maxConnections: Int = 256

    @Option(help: ArgumentHelp("Maximum simultaneous connections from one address.", valueName: "N"))
    var maxPerAddress: Int = 32

    @Option(help: ArgumentHelp("Close a connection that sends no request, or does not read its reply, for this long.", valueName: "SECONDS"))
    var idleTimeout: Double = 300

    @Option(help: ArgumentHelp("Close a connection whose request line, or TLS handshake, is not complete this long after it began.", valueName: "SECONDS"))
    var requestTimeout: Double = 30

    @Option(help: ArgumentHelp("UDP port for discovery.", valueName: "N"))
    var discoveryPort: Int = FerryDefaults.discoveryPort

    @Flag(help: "Do not answer discovery probes.")
    var noDiscovery = false

    @Flag(help: "Broadcast an announcement at start and every 30 s, and a goodbye at exit.")
    var announce = false

    @Flag(help: "Log each connection and request to stderr.")
    var verbose = false

    @Flag(help: "Serve cleartext, without TLS (clients must pass --plaintext too). For debugging on a trusted network only.")
    var plaintext = false

    @Flag(help: "Print the server's fingerprint (made on first use) and exit.")
    var showFingerprint = false

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0-65535") }
        guard (1...65535).contains(discoveryPort) else { throw ValidationError("--discovery-port must be 1-65535") }
        guard maxConnections >= 1 else { throw ValidationError("--max-connections must be at least 1") }
        guard maxPerAddress >= 1 else { throw ValidationError("--max-per-address must be at least 1") }
        guard idleTimeout >= 0.1, idleTimeout <= 86_400 else { throw ValidationError("--idle-timeout must be 0.1-86400 seconds") }
        guard requestTimeout >= 0.1, requestTimeout <= 86_400 else { throw ValidationError("--request-timeout must be 0.1-86400 seconds") }
        if let name {
            do { _ = try ServerName(validating: name) } catch { throw ValidationError("--name: \(error)") }
        }
    }

    static func defaultStateDir() -> String {
        let env = ProcessInfo.processInfo.environment
        if let xdg = env["XDG_STATE_HOME"], !xdg.isEmpty { return xdg + "/ferry" }
        return (env["HOME"] ?? "/tmp") + "/.local/state/ferry"
    }

    func run() async throws {
        Output.bootstrapLogging(verbose: verbose, defaultLevel: .info)
        let logger = Logger(label: "ferry.serve")
        do {
            try await serve(logger: logger)
        } catch {
            throw Output.fail(error)
        }
    }

    private func serve(logger: Logger) async throws {
        let root = URL(fileURLWithPath: directory).standardizedFileURL.path
        let serverName = try name.map { try ServerName(validating: $0) }
            ?? ServerName.defaultName(hostname: ProcessInfo.processInfo.hostName)
        let token = try TokenFile.load(path: tokenFile)
        let state = try stateFolder(root: root)
        if showFingerprint {
            Output.out(IdentityText.lines(try ServerIdentity.loadOrCreate(in: state)).joined(separator: "\n"))
            return
        }
        let identity = plaintext ? nil : try ServerIdentity.loadOrCreate(in: state)
        let cachePath = hashCachePath(root: root, state: state, logger: logger)
        var configuration = ServerConfiguration(
            root: root, name: serverName.rawValue, bindHost: bind, port: port,
            compression: compress, hashCachePath: cachePath, token: token,
            maxConnections: maxConnections, maxConnectionsPerAddress: maxPerAddress,
            requestLineTimeout: .milliseconds(Int64(requestTimeout * 1000)),
            idleTimeout: .milliseconds(Int64(idleTimeout * 1000)), identity: identity)
        // A TLS handshake is held to the same bound as a request line.
        configuration.tlsHandshakeLimit = configuration.requestLineTimeout
        let server = try await FerryServer.start(configuration, logger: logger)

        var shown = bind
        if shown.contains(Character(":")) { shown = "[\(shown)]" }
        Output.out("listening on \(shown):\(server.port)")
        if let identity {
            Output.out("fingerprint \(identity.fingerprint)")
            if identity.origin == .created { logger.info("made a new server identity in \(state)/\(ServerIdentity.fileName)") }
            if identity.origin == .certificateRenewed { logger.info("renewed the server's certificate (same key, same fingerprint)") }
        } else {
            logger.warning("serving cleartext (--plaintext): anyone on the path can read and change what is sent")
        }
        if token == nil {
            logger.info("serving \(root) to anyone who can reach port \(server.port) (no --token-file)")
        }

        let responder = noDiscovery ? nil : await DiscoveryGlue.startResponder(
            name: serverName.rawValue, id: server.id, tcpPort: server.port, fingerprint: identity?.fingerprint.compact, bind: bind,
            discoveryPort: discoveryPort, announce: announce, logger: logger)

        // SIGINT and SIGTERM shut the group down gracefully, in reverse order: the deadline is
        // set, the server stops (listener and connections closed at once), then the responder
        // (its goodbye when announcing). Whatever is still running after the graceful period
        // is cancelled, and the deadline ends the process if even that does not finish.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let responder { services.append(.init(service: responder, serviceName: "discovery responder")) }
        services.append(.init(service: server, successTerminationBehavior: .gracefullyShutdownGroup, serviceName: "server"))
        services.append(.init(service: ShutdownDeadline(limit: Self.shutdownLimit, logger: logger),
                              successTerminationBehavior: .ignore, serviceName: "shutdown deadline"))
        var group = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint],
                                              logger: logger)
        group.maximumGracefulShutdownDuration = Self.gracefulPeriod
        try await ServiceGroup(configuration: group).run()
        logger.info("stopped")
    }

    /// How long the server and the responder get to stop before they are cancelled.
    static let gracefulPeriod: Duration = .seconds(2)
    /// When the process ends after SIGINT/SIGTERM at the latest, stopped or not.
    static let shutdownLimit: Duration = .seconds(4)

    static func isInside(_ path: String, _ root: String) -> Bool {
        path == root || path.hasPrefix(root.hasSuffix("/") ? root : root + "/")
    }

    /// `path` with the symlinks of its longest existing prefix resolved and the rest (which
    /// does not exist yet) appended as written, so a state folder reached through a link into
    /// DIR is recognised as inside it.
    static func resolvingSymlinks(_ path: String) -> String {
        var existing = URL(fileURLWithPath: path).standardizedFileURL
        var rest: [String] = []
        while true {
            if let real = realpath(existing.path, nil) {
                defer { free(real) }
                var url = URL(fileURLWithPath: String(cString: real))
                for component in rest.reversed() { url.appendPathComponent(component) }
                return url.standardizedFileURL.path
            }
            if existing.path == "/" { return path }
            rest.append(existing.lastPathComponent)
            existing.deleteLastPathComponent()
        }
    }

    /// The state folder (`--state-dir` or the default), refused inside the served directory.
    private func stateFolder(root: String) throws -> String {
        let dir = stateDir.map { URL(fileURLWithPath: $0).standardizedFileURL.path } ?? Self.defaultStateDir()
        if Self.isInside(dir, root) || Self.isInside(Self.resolvingSymlinks(dir), Self.resolvingSymlinks(root)) {
            throw ValidationError("--state-dir \(dir) is inside the served directory; choose a folder outside it")
        }
        return dir
    }

    private func hashCachePath(root: String, state dir: String, logger: Logger) -> String? {
        if let problem = PrivateFile.makeDirectories(dir) {
            logger.warning("cannot create the state folder \(dir) (\(problem)); the hash cache stays in memory")
            return nil
        }
        var hasher = SHA256Hasher()
        hasher.update(Array(root.utf8))
        return dir + "/hashes-" + hasher.finalizeHex().prefix(16) + ".txt"
    }
}

/// Ends `ferry serve` at most `limit` after a shutdown begins, whatever its threads are doing
/// (a connection hashing a huge file on a thread cannot be interrupted): the hash cache is then
/// not saved, and the exit status is still 0, as for every stop by SIGINT/SIGTERM.
struct ShutdownDeadline: Service {
    let limit: Duration
    let logger: Logger

    func run() async {
        // Returns when the group shuts down gracefully; throws when it is cancelled. Either way
        // the server is stopping.
        try? await gracefulShutdown()
        logger.info("stopping")
        let (logger, limit) = (self.logger, self.limit)
        let seconds = Double(limit.components.seconds) + Double(limit.components.attoseconds) / 1e18
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds) {
            logger.warning("connections still busy \(limit) after the signal; stopping without them (the hash cache was not saved)")
            exit(0)
        }
    }
}

/// `--compress MODE`: `auto`, `off`, `zlib:N`, `zstd:N` or a bare zlib level.
extension CompressionMode: ExpressibleByArgument {
    public init?(argument: String) {
        guard let mode = try? CompressionMode(parsing: argument) else { return nil }
        self = mode
    }
}
