#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import FerryClient
import FerryProtocol
#if canImport(FoundationEssentials)
import FoundationEssentials  // not all of Foundation: that links ICU into the static binary
#else
import Foundation
#endif
import Logging

struct GetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Fetch one file from a server, verified and resumable.",
        discussion: """
        Every chunk's CRC-32 and the whole file are checked (by the reply's XXH3-128 when the \
        file comes whole from a server that offers xxh128, else by its SHA-256); the file is written to \
        `.NAME.ferry-partial` beside LOCAL and renamed into place only when everything matches. \
        If the transfer is interrupted (Ctrl-C, a dropped connection, a crash), running the same \
        command again continues where it stopped, after checking the kept data against the \
        server. If the file changed on the server meanwhile, it is fetched whole.

        LOCAL defaults to the file's name in the current directory; an existing directory \
        receives the file under its own name.

        Examples:
          ferry get 192.168.1.20/docs/report.pdf
          ferry get studio/video.mkv ~/Movies/ --retries 10
          ferry get ferry://[::1]:7446/big.iso /tmp/big.iso --no-resume
        """
    )

    @Argument(help: ArgumentHelp("The server and the file's path.", valueName: "SERVER/PATH"))
    var source: String

    @Argument(help: ArgumentHelp("Where to write the file.", valueName: "LOCAL"))
    var local: String?

    @Flag(help: "Print JSON Lines (progress events and a final summary) instead of a progress bar.")
    var json = false

    @Flag(help: "Print only errors.")
    var quiet = false

    @Flag(help: "Discard any partial data from an earlier run and start over.")
    var noResume = false

    @Option(help: ArgumentHelp("How many times to reconnect after a dropped connection.", valueName: "N"))
    var retries: Int = 5

    @OptionGroup var client: ClientOptions

    func run() async throws {
        Output.bootstrapLogging(verbose: client.verbose)
        Output.jsonMode = json
        let logger = Logger(label: "ferry.get")
        do {
            try await fetch(logger: logger)
        } catch {
            throw Output.fail(error)
        }
    }

    private func fetch(logger: Logger) async throws {
        let address = try ServerAddress.parse(source)
        guard !address.path.isRoot else {
            Output.err("ferry: name a file after the server, e.g. \(address.endpointDescription)/file.txt (use `ferry sync` for a whole directory)")
            throw ExitCode(Exit.usage)
        }
        let localPath = Self.localPath(for: address.path, local: local)
        let endpoint = try await ServerResolution.resolve(address, options: client, logger: logger)
        let connection = try await client.connectionOptions(for: endpoint, name: address.serverName, logger: logger)
        let downloader = Downloader(endpoint: endpoint,
                                    options: .init(connection: connection,
                                                   retry: RetryPolicy(retries: max(0, retries)),
                                                   resume: !noResume),
                                    logger: logger)
        let progress = ProgressDisplay(mode: json ? .json : quiet ? .quiet : (Output.stderrIsTerminal ? .terminal : .quiet))
        progress.current(address.path)
        await Interrupt.install(progress: progress, resumable: true)
        let start = ContinuousClock.now
        let result: Downloader.Result
        do {
            result = try await getting(downloader, address, localPath, progress)
        } catch let error as ClientError where FileFailure(error, serverAnsweredThisRun: false) == .connection {
            progress.clear()
            let n = downloader.options.retry.retries
            Output.fatal(error.description + " — gave up after \(n) \(n == 1 ? "retry" : "retries"); run the same command "
                         + "again to continue where it stopped (verified data is kept), or raise --retries",
                         status: error.exitStatus)
            throw ExitCode(error.exitStatus)
        } catch let error as ClientError where FileFailure(error).isTransient {
            progress.clear()
            Output.fatal(error.description + " — gave up after \(downloader.options.retry.fileAttempts) attempts",
                         status: error.exitStatus)
            throw ExitCode(error.exitStatus)
        } catch {
            progress.clear()
            throw error
        }
        progress.finish()
        let seconds = (ContinuousClock.now - start).seconds
        if json {
            Output.json(["event": "summary", "path": result.path.description, "local": result.localPath,
                         "size": result.size, "sha256": result.sha256, "bytesWritten": result.bytesWritten,
                         "wireBytes": result.wireBytes, "resumedFrom": result.resumedFrom,
                         "retries": result.retries, "seconds": seconds, "filesFetched": 1, "checkedWith": result.checkedWith])
        } else if !quiet {
            Output.err("fetched \(Output.shown(result.path)) → \(result.localPath): \(Output.bytes(result.size)) in "
                       + Output.fixed(seconds, decimals: 2) + " s, \(Output.bytes(result.wireBytes)) on the wire, sha256 \(result.sha256)")
        }
    }

    private func getting(_ downloader: Downloader, _ address: ServerAddress, _ localPath: String,
                         _ progress: ProgressDisplay) async throws -> Downloader.Result {
        try await downloader.get(address.path, to: localPath) { event in
            switch event {
            case .verifying(let kept):
                if !quiet && !json {
                    progress.note("verifying kept data of \(Output.shown(address.path)) (\(Output.bytes(kept))) with the server")
                }
            case .verified(let done, let of):
                if !quiet && !json {
                    progress.status("verifying kept data: \(Output.bytes(done)) of \(Output.bytes(of))")
                }
                if json { Output.json(["event": "verifying", "path": address.path.description, "bytesDone": done, "bytesTotal": of]) }
            case .started(let size, let resumed):
                if resumed > 0 && !quiet && !json {
                    progress.note("resuming \(Output.shown(address.path)) at \(Output.bytes(resumed)) of \(Output.bytes(size))")
                }
                progress.begin(files: 1, bytes: size, alreadyDone: resumed)
                if json { Output.json(["event": "start", "path": address.path.description, "size": size, "resumedFrom": resumed]) }
            case .bytes(let n):
                progress.add(bytes: n)
            case .retrying(let attempt, let of, let reason, let delay):
                progress.clear()
                if json {
                    Output.json(["event": "retry", "attempt": attempt, "of": of, "reason": reason])
                } else if !quiet {
                    Output.err("ferry: \(reason); retrying (\(attempt)/\(of)) in \(delay)")
                }
            case .changedOnServer:
                if !quiet && !json { progress.note("\(Output.shown(address.path)) changed on the server; fetching the new version") }
            }
        }
    }

    static func localPath(for remote: RemotePath, local: String?) -> String {
        let name = String(decoding: remote.name, as: UTF8.self)
        guard let local else { return name }
        var st = stat()
        if local.hasSuffix("/") || (stat(local, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR) {
            return (local.hasSuffix("/") ? local : local + "/") + name
        }
        return local
    }
}

extension Duration {
    var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}
