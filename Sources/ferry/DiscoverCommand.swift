import ArgumentParser
import FerryDiscovery
import FerryProtocol
import Logging

struct DiscoverCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discover",
        abstract: "Find the ferry servers on the local network.",
        discussion: """
        Broadcasts a probe on UDP --discovery-port (7447) and lists every server that \
        answers: its name, the address the answer came from, its TCP port, its version and \
        its fingerprint (what `ferry serve` printed; the TLS handshake checks it). \
        By default the probe goes to 255.255.255.255 and to the broadcast address of every \
        up IPv4 interface; --to sends it only to the addresses given (use a broadcast \
        address: a unicast probe reaches only one of several servers sharing a host). Any \
        SERVER argument of the other commands accepts the NAME shown here.

        With --watch, ferry keeps listening and prints servers as they answer, announce \
        themselves (ferry serve --announce) and say goodbye, until interrupted.

        Exit status: 0 when at least one server answered, 1 when none did (the reason is \
        printed on stderr; --json prints nothing on stdout), 2 when no probe could be sent \
        or the discovery port could not be opened, 64 for invalid options.

        Examples:
          ferry discover
          ferry discover --timeout 5 --verbose
          ferry discover --to 127.255.255.255       (servers on this machine only)
          ferry discover --to 192.168.1.255 --json
          ferry discover --watch
        """
    )

    @Option(help: ArgumentHelp("Seconds to wait for answers (0.1 to 60).", valueName: "SECONDS"))
    var timeout: Double = 2

    @Option(help: ArgumentHelp("UDP port servers answer on.", valueName: "N"))
    var discoveryPort: Int = FerryDefaults.discoveryPort

    @Option(name: .customLong("to"),
            help: ArgumentHelp("Probe only this IPv4 address, e.g. a subnet's broadcast address (repeatable).", valueName: "ADDR"))
    var addresses: [String] = []

    @Flag(help: "Print one JSON object per server (with --watch, per event).")
    var json = false

    @Flag(help: "List each interface and address probed, and log details, on stderr.")
    var verbose = false

    @Flag(help: "Keep listening for answers, announcements and goodbyes until interrupted.")
    var watch = false

    func validate() throws {
        guard timeout.isFinite, (0.1...60).contains(timeout) else {
            throw ValidationError("--timeout must be between 0.1 and 60 seconds")
        }
        guard (1...65535).contains(discoveryPort) else {
            throw ValidationError("--discovery-port must be between 1 and 65535")
        }
        for address in addresses {
            do { _ = try DiscoveryTargets.parse(address) } catch { throw ValidationError(error.description) }
        }
    }

    func run() async throws {
        Output.bootstrapLogging(verbose: verbose)
        let logger = Logger(label: "ferry.discover")
        let targets: [ProbeTarget]
        do {
            targets = addresses.isEmpty ? DiscoveryTargets.defaultTargets()
                : try addresses.map { a throws(DiscoveryError) in try DiscoveryTargets.parse(a) }
        } catch {
            Output.err("ferry: \(error.description)")
            throw ExitCode(Exit.usage)
        }
        if verbose {
            for target in targets {
                Output.err("probing \(target.address):\(discoveryPort) (\(target.label))")
            }
        }
        if watch {
            try await runWatch(targets: targets, logger: logger)
        } else {
            try await runOnce(targets: targets, logger: logger)
        }
    }

    private var timeoutDuration: Duration { .milliseconds(Int64((timeout * 1000).rounded())) }

    private func runOnce(targets: [ProbeTarget], logger: Logger) async throws {
        let outcome: DiscoveryProber.ProbeOutcome
        do {
            outcome = try await DiscoveryProber.probeReporting(targets: targets, port: discoveryPort,
                                                                timeout: timeoutDuration, logger: logger)
        } catch {
            Output.err("ferry: \(error.description)")
            throw ExitCode(Exit.network)
        }
        if verbose {
            for failure in outcome.failures {
                Output.err("could not probe \(failure.target.address) (\(failure.target.label)): \(failure.reason)")
            }
            Output.err("\(outcome.servers.count) server\(outcome.servers.count == 1 ? "" : "s") answered")
        }
        if outcome.servers.isEmpty {
            let error = DiscoveryError.noAnswer(targets: targets, port: discoveryPort, timeout: timeoutDuration,
                                                failures: outcome.failures)
            Output.err("ferry: \(error.description)")
            throw ExitCode(Exit.failed)
        }
        if json {
            for server in outcome.servers { Output.json(Self.object(server)) }
        } else {
            Output.out(Self.table(outcome.servers))
        }
    }

    private func runWatch(targets: [ProbeTarget], logger: Logger) async throws {
        var names: [String: String] = [:]
        do {
            for try await event in DiscoveryProber.watch(targets: targets, port: discoveryPort,
                                                         probeWindow: timeoutDuration, logger: logger) {
                switch event {
                case .found(let server), .announced(let server):
                    names[server.id] = server.name
                case .goodbye:
                    break
                }
                if json {
                    Output.json(Self.object(event, names: names))
                } else {
                    Output.out(Self.line(event, names: names))
                }
            }
        } catch {
            Output.err("ferry: \(error)")
            throw ExitCode(Exit.network)
        }
    }

    // MARK: Rendering

    static func object(_ server: DiscoveredServer) -> [String: Any] {
        var o: [String: Any] = ["name": server.name, "id": server.id, "host": server.host, "port": server.port,
                                "version": server.version]
        if let fp = server.groupedFingerprint { o["fingerprint"] = fp }
        return o
    }

    static func object(_ event: DiscoveryEvent, names: [String: String]) -> [String: Any] {
        switch event {
        case .found(let server):
            return object(server).merging(["event": "found"]) { $1 }
        case .announced(let server):
            return object(server).merging(["event": "announced"]) { $1 }
        case .goodbye(let id, let host):
            var o: [String: Any] = ["event": "goodbye", "id": id, "host": host]
            if let name = names[id] { o["name"] = name }
            return o
        }
    }

    /// Name, version, id, host and fingerprint are validated ASCII, so they print safely as
    /// they are. A server without TLS has `-` for its fingerprint.
    static func table(_ servers: [DiscoveredServer]) -> String {
        let rows = [["NAME", "ADDRESS", "PORT", "VERSION", "FINGERPRINT"]]
            + servers.map { [$0.name, $0.host, String($0.port), $0.version, $0.groupedFingerprint ?? "-"] }
        let widths = (0..<5).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { column, cell in
                column == 4 ? cell : cell + String(repeating: " ", count: widths[column] - cell.count)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }

    /// `  fingerprint FP`, or nothing for a server without TLS.
    static func shown(_ server: DiscoveredServer) -> String {
        server.groupedFingerprint.map { "  fingerprint \($0)" } ?? ""
    }

    static func line(_ event: DiscoveryEvent, names: [String: String]) -> String {
        switch event {
        case .found(let server):
            return "found      \(server.name)  \(server.endpoint)  version \(server.version)" + Self.shown(server)
        case .announced(let server):
            return "announced  \(server.name)  \(server.endpoint)  version \(server.version)" + Self.shown(server)
        case .goodbye(let id, let host):
            return "goodbye    \(names[id] ?? "id \(id)")  \(host)"
        }
    }
}
