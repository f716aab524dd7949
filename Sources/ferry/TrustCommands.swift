#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import FerryClient
import FerryTrust
#if canImport(FoundationEssentials)
import FoundationEssentials  // not all of Foundation: that links ICU into the static binary
#else
import Foundation
#endif
import Logging

/// A trust decision that ends the run (first contact refused, a file ferry cannot use).
struct TrustFailure: Error, CustomStringConvertible {
    let description: String
    var exitStatus: Int32 = Exit.identity
}

/// What `--show-fingerprint` and `ferry id` print.
enum IdentityText {
    static func lines(_ identity: ServerIdentity) -> [String] {
        ["fingerprint \(identity.fingerprint)",
         "sha256 of the public key, first 20 bytes: \(identity.fingerprint.hex)"]
    }
}

extension ClientOptions {
    /// The known-servers file for this user.
    static var knownServersPath: String { KnownServers.defaultPath(environment: ProcessInfo.processInfo.environment) }

    static func loadKnownServers() throws -> KnownServers {
        do { return try KnownServers.load(from: knownServersPath) } catch {
            throw TrustFailure(description: "cannot use the known-servers file \(error)", exitStatus: Exit.local)
        }
    }

    /// The connection options for `endpoint` (asked for as `name` when given by name): cleartext
    /// with `--plaintext`; else TLS pinned to `--fingerprint`, or to the key the known-servers
    /// file has for the name or address; else, with a token, any key whose server proves it
    /// knows the token; else first contact: the server's fingerprint is shown and, on a
    /// terminal, the person decides; without one only `--trust-new` accepts it.
    func connectionOptions(for endpoint: Endpoint, name: String?, logger: Logger) async throws -> ConnectionOptions {
        var options = try connectionOptions()
        if plaintext {
            options.security = .plaintext
            return options
        }
        if let fingerprint {
            options.security = .tls(expect: fingerprint)
            return options
        }
        var known = try Self.loadKnownServers()
        let pins = Set(known.pinned(name: name, address: endpoint.description).map(\.fingerprint))
        if pins.count > 1 {
            throw TrustFailure(description: "the known-servers file \(known.path) trusts \(pins.count) different keys for "
                               + "\(name ?? endpoint.description) (\(pins.map(\.description).sorted().joined(separator: ", "))); "
                               + "run `ferry forget` for the wrong one, or pass --fingerprint")
        }
        if let pinned = pins.first {
            logger.debug("\(name ?? endpoint.description) is pinned to \(pinned)")
            options.security = .tls(expect: pinned)
            return options
        }
        if options.token != nil {
            // The server proves it knows the token, bound to the key it shows (PROTOCOL.md 3):
            // no trust on first use is needed, and nothing is remembered.
            logger.debug("\(name ?? endpoint.description) is not pinned; the server must prove it knows the token")
            options.security = .tls(expect: nil)
            return options
        }
        let seen = try await FerryConnection.serverFingerprint(at: endpoint, options: options)
        let who = name.map { "'\($0)' at \(endpoint)" } ?? endpoint.description
        let sameKey = known.entries.filter { $0.fingerprint == seen }
        if !sameKey.isEmpty, let hint = KnownServers.hintFor(name: name, sameKey: sameKey) {
            // The list is keyed by the key: a server already trusted, met at a new address
            // (another port, its IPv6 address) is that server. The new name or address is
            // remembered as one more hint. A key known only under another *name* is still
            // asked about below: the person asked for this name, not that server.
            known.trust(.init(fingerprint: seen, name: name, address: endpoint.description), keepingOthers: true)
            do { try known.save() } catch {
                throw TrustFailure(description: "cannot remember the server's new address: \(error)", exitStatus: Exit.local)
            }
            Output.err("\(who) presents the key of a server you trust (\(seen), \(hint)); remembered this address too")
            options.security = .tls(expect: seen)
            return options
        }
        let alsoKnown = sameKey.compactMap(\.name).first.map { " (that key is known here as '\($0)')" } ?? ""
        if !trustNew {
            guard Output.stdinIsTerminal && Output.stderrIsTerminal else {
                throw TrustFailure(description: "ferry has not met the server \(who) before; its fingerprint is \(seen)\(alsoKnown). "
                                   + "There is no terminal to ask you: compare it with the one the server printed "
                                   + "(`ferry serve DIR --show-fingerprint`), then pass --fingerprint \(seen), or "
                                   + "--trust-new to accept and remember it")
            }
            Output.err("ferry has not met the server \(who) before.")
            Output.err("Its fingerprint is \(seen)\(alsoKnown)")
            Output.err("Compare it with the one the server printed at start (`ferry serve DIR --show-fingerprint`).")
            Output.errNoNewline("Trust this server and remember it? [y/N] ")
            let answer = readLine(strippingNewline: true)?.lowercased() ?? ""
            guard answer == "y" || answer == "yes" else {
                throw TrustFailure(description: "not trusted; nothing was sent or written")
            }
        }
        known.trust(.init(fingerprint: seen, name: name, address: endpoint.description))
        do { try known.save() } catch {
            throw TrustFailure(description: "cannot remember the server: \(error)", exitStatus: Exit.local)
        }
        Output.err("remembered \(seen) for \(who) in \(known.path)")
        options.security = .tls(expect: seen)
        return options
    }
}

struct IdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "id",
        abstract: "Print this machine's server fingerprint (the identity `ferry serve` presents).",
        discussion: """
        The identity lives in the server's state folder (identity.pem); it is made on first \
        use. Same as `ferry serve DIR --show-fingerprint`.
        """)

    @Option(help: ArgumentHelp("The server's state folder (default: $XDG_STATE_HOME/ferry or ~/.local/state/ferry).", valueName: "DIR"))
    var stateDir: String?

    func run() async throws {
        do {
            let dir = stateDir.map { URL(fileURLWithPath: $0).standardizedFileURL.path } ?? ServeCommand.defaultStateDir()
            Output.out(IdentityText.lines(try ServerIdentity.loadOrCreate(in: dir)).joined(separator: "\n"))
        } catch {
            throw Output.fail(error)
        }
    }
}

struct TrustCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trust",
        abstract: "Remember a server's fingerprint, or list the servers ferry trusts.",
        discussion: """
        The list is $XDG_CONFIG_HOME/ferry/known-servers (~/.config/ferry/known-servers); \
        each line is a fingerprint with the name and address it was trusted under.

        Examples:
          ferry trust 192.168.1.20:7446 --fingerprint MFRG-GZDF-MZTW-Q2LK-NNWG-23TP-OBYX-E4ZT
          ferry trust studio --fingerprint MFRG-GZDF-MZTW-Q2LK-NNWG-23TP-OBYX-E4ZT
          ferry trust --list
        """)

    @Argument(help: ArgumentHelp("The server: HOST:PORT (or HOST for the default port), or a name.", valueName: "SERVER"))
    var server: String?

    @Option(help: ArgumentHelp("The fingerprint to trust for SERVER.", valueName: "FP"))
    var fingerprint: Fingerprint?

    @Flag(help: "List the trusted servers.")
    var list = false

    func validate() throws {
        if !list && (server == nil || fingerprint == nil) {
            throw ValidationError("give SERVER and --fingerprint FP, or --list")
        }
    }

    func run() async throws {
        do {
            var known = try ClientOptions.loadKnownServers()
            if list {
                for e in known.entries {
                    Output.out([e.fingerprint.description, e.name.map { "name=\($0)" }, e.address.map { "address=\($0)" }]
                        .compactMap { $0 }.joined(separator: " "))
                }
                return
            }
            guard let server, let fingerprint else { return }
            let address = try ServerAddress.parse(server)
            var entry = KnownServers.Entry(fingerprint: fingerprint, name: nil, address: nil)
            if case .name(let n) = address.host { entry.name = n } else { entry.address = address.endpointDescription }
            known.trust(entry)
            try known.save()
            Output.err("trusting \(fingerprint) for \(entry.name ?? entry.address ?? server)")
        } catch {
            throw Output.fail(error)
        }
    }
}

struct ForgetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forget",
        abstract: "Forget a trusted server (by fingerprint, name or HOST:PORT); ferry asks again on next contact.")

    @Argument(help: ArgumentHelp("A fingerprint, a name, or HOST:PORT as `ferry trust --list` shows it.", valueName: "WHAT"))
    var what: String

    func run() async throws {
        do {
            var known = try ClientOptions.loadKnownServers()
            let gone = known.forget(what)
            guard !gone.isEmpty else {
                throw TrustFailure(description: "no trusted server matches '\(what)' (`ferry trust --list` shows them)", exitStatus: Exit.failed)
            }
            try known.save()
            for e in gone { Output.err("forgot \(e.fingerprint)\(e.name.map { " name=\($0)" } ?? "")\(e.address.map { " address=\($0)" } ?? "")") }
        } catch {
            throw Output.fail(error)
        }
    }
}

extension Fingerprint: ExpressibleByArgument {
    public init?(argument: String) {
        self.init(argument)
    }
}

extension ServerAddress {
    /// The name the server was asked for, when it was given by name (pins are kept by it).
    var serverName: String? {
        if case .name(let n) = host { return n }
        return nil
    }
}
