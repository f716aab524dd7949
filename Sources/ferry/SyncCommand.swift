import ArgumentParser
import FerryClient
import FerryFiles
import FerryProtocol
import FerryTrust
#if canImport(FoundationEssentials)
import FoundationEssentials  // not all of Foundation: that links ICU into the static binary
#else
import Foundation
#endif
import Logging

struct SyncCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Make a local directory an exact copy of a directory on a server.",
        discussion: """
        Fetches only what differs: by default a file is unchanged when its size and mtime \
        match (--checksum compares SHA-256 instead). A changed file with an old local copy is \
        rebuilt from the blocks that still match, so only the changed regions cross the \
        network. Every file lands in DEST/.ferry-partial/ first and is renamed into place once \
        its SHA-256 matches the server's; mtime and permission bits are preserved, empty \
        directories created, and symlinks whose target stays inside the tree recreated (others \
        are skipped with a warning). An interrupted sync resumes where it stopped.

        A file that cannot be fetched fails alone: it is named, every other file still \
        syncs, and the exit status is 1 with the list of what was not synced at the end. \
        Without --delete nothing that exists only in DEST is deleted: where the server has a \
        file and DEST a directory with something in it (or the other way round) the entry is \
        left alone as a conflict (exit status 1); --delete replaces it. Nothing below a \
        directory the server cannot read is deleted. DEST/.ferry-partial and names like \
        .~ferry-0123456789abcdef are ferry's own and never copied from the server.

        --exclude takes a glob: `*` and `?` stay within one path component, `**` crosses \
        them, [a-z] and [!a-z] are character classes. A pattern without `/` matches names at \
        any depth (`*.tmp`); one with `/` matches the path from the synced root \
        (`build/**`). Excluded paths are neither fetched nor deleted.

        Examples:
          ferry sync 192.168.1.20/photos ~/photos
          ferry sync studio ~/backup --delete --exclude '*.tmp' --exclude 'cache/**'
          ferry sync studio/docs ./docs --dry-run
        """
    )

    @Argument(help: ArgumentHelp("The server and the directory to copy.", valueName: "SERVER[/PATH]"))
    var source: String

    @Argument(help: ArgumentHelp("The local directory to make a copy in (created if missing).", valueName: "DEST"))
    var destination: String

    @Flag(help: "Delete local entries the server does not have (excluded paths are kept).")
    var delete = false

    @Flag(help: "Print what would change and touch nothing.")
    var dryRun = false

    @Flag(help: "Compare files by SHA-256 instead of size and mtime.")
    var checksum = false

    @Option(help: ArgumentHelp("Skip paths matching GLOB on both sides (repeatable).", valueName: "GLOB"))
    var exclude: [String] = []

    @Flag(help: "Print JSON Lines: events, periodic progress and a final summary object.")
    var json = false

    @Flag(help: "Print only errors.")
    var quiet = false

    @Option(help: ArgumentHelp("How many times to reconnect after a dropped connection.", valueName: "N"))
    var retries: Int = 5

    @Option(help: ArgumentHelp("Connections used to fetch files.", valueName: "N"))
    var parallel: Int = 2

    @Flag(help: "Discard partial data from an interrupted run and fetch those files from the start.")
    var noResume = false

    @Flag(help: "Do not build files from data already in DEST (renamed, copied or shifted chunks); fetch them.")
    var noReuse = false

    @OptionGroup var client: ClientOptions

    func validate() throws {
        guard (1...16).contains(parallel) else { throw ValidationError("--parallel must be 1-16") }
        guard retries >= 0 else { throw ValidationError("--retries must be 0 or more") }
        for pattern in exclude {
            do { _ = try Glob(pattern) } catch { throw ValidationError(error.description) }
        }
    }

    func run() async throws {
        Output.bootstrapLogging(verbose: client.verbose)
        Output.jsonMode = json
        let logger = Logger(label: "ferry.sync")
        let summary: Syncer.Summary
        do {
            summary = try await sync(logger: logger)
        } catch {
            throw Output.fail(error)
        }
        if !summary.failures.isEmpty || !summary.conflicts.isEmpty { throw ExitCode(Exit.failed) }
    }

    /// Where the chunk index of DEST is kept between runs: the state folder `ferry serve` uses
    /// (`$XDG_STATE_HOME/ferry`), one file per DEST named by a hash of its absolute path. Nil
    /// (the index is then rebuilt each run) when the folder cannot be made.
    static func chunkIndexPath(for destination: String) -> String? {
        let dir = ServeCommand.defaultStateDir()
        guard PrivateFile.makeDirectories(dir) == nil else { return nil }
        let absolute = URL(fileURLWithPath: destination).standardizedFileURL.path
        return dir + "/chunks-" + SHA256Hasher.hex(Array(absolute.utf8)).prefix(16) + ".idx"
    }

    private func sync(logger: Logger) async throws -> Syncer.Summary {
        let address = try ServerAddress.parse(source)
        let endpoint = try await ServerResolution.resolve(address, options: client, logger: logger)
        let connection = try await client.connectionOptions(for: endpoint, name: address.serverName, logger: logger)
        let globs = try exclude.map { try Glob($0) }
        let options = Syncer.Options(
            connection: connection, retry: RetryPolicy(retries: retries),
            resume: !noResume, delete: delete, dryRun: dryRun, checksum: checksum,
            excludes: ExcludeList(globs), parallel: parallel, chunkIndexPath: dryRun ? nil : Self.chunkIndexPath(for: destination),
            reuseLocalData: !noReuse)
        let syncer = Syncer(endpoint: endpoint, remotePath: address.path, destination: destination,
                            options: options, logger: logger)
        let mode: ProgressDisplay.Mode = json ? .json : (quiet || dryRun || !Output.stderrIsTerminal) ? .quiet : .terminal
        let progress = ProgressDisplay(mode: mode)
        await Interrupt.install(progress: progress, resumable: !dryRun)
        let json = self.json, quiet = self.quiet, dryRun = self.dryRun
        let summary = try await syncer.run { event in
            switch event {
            case .planned(let files, let bytes, let unchanged, let deletions):
                progress.begin(files: files, bytes: bytes)
                if json {
                    Output.json(["event": "plan", "filesToFetch": files, "bytesToFetch": bytes,
                                 "filesUnchanged": unchanged, "deletions": deletions])
                }
            case .action(let what, let path, let size):
                if json {
                    var object: [String: Any] = ["event": what, "path": path.description]
                    if let size { object["size"] = size }
                    Output.json(object)
                } else if dryRun || (what == "deleted" && !quiet) {
                    progress.clear()
                    Output.out("\(dryRun ? "would " : "")\(what) \(Output.shown(path))" + (size.map { " (\(Output.bytes($0)))" } ?? ""))
                }
            case .kept(let bytes):
                progress.addKept(bytes: bytes)
                if json { Output.json(["event": "kept", "bytes": bytes]) }
            case .resuming(let path, let from, let size, let announced):
                progress.addKept(bytes: from - announced)
                if json {
                    Output.json(["event": "resume", "path": path.description, "from": from, "size": size])
                } else if !quiet && from > 0 {
                    progress.note("resuming \(Output.shown(path)) at \(Output.bytes(from)) of \(Output.bytes(size))")
                }
            case .fileStarted(let path, let size):
                progress.current(path)
                if json { Output.jsonLine(JSONText.fileEvent("start", path: path, size: size)) }
            case .fileFinished(let path, let size, let delta):
                progress.fileDone()
                if json { Output.jsonLine(JSONText.fileEvent("done", path: path, size: size, delta: delta)) }
            case .failed(let path, let message):
                progress.clear()
                if json { Output.json(["event": "error", "path": path.description, "message": message]) }
                Output.err("ferry: \(Output.shown(path)): \(message)")
            case .failedPath(let path, let message):
                progress.clear()
                if json { Output.json(["event": "error", "path": path, "message": message]) }
                Output.err("ferry: \(Output.printable(bytes: Array(path.utf8))): \(message)")
            case .conflict(let path, let message):
                progress.clear()
                if json { Output.json(["event": "conflict", "path": path.description, "message": message]) }
                Output.err("ferry: conflict: \(Output.shown(path)) \(message)")
            case .bytes(let n):
                progress.add(bytes: n)
            case .warning(let message):
                if json { Output.json(["event": "warning", "message": message]) }
                if !quiet && !json {
                    progress.clear()
                    Output.err("ferry: warning: \(message)")
                }
            case .retrying(let message):
                if json { Output.json(["event": "retry", "message": message]) }
                if !quiet && !json {
                    progress.clear()
                    Output.err("ferry: \(message)")
                }
            }
        }
        progress.finish()
        report(summary)
        return summary
    }

    private func report(_ s: Syncer.Summary) {
        if json {
            var object: [String: Any] = [
                "event": "summary", "filesFetched": s.filesFetched, "filesUnchanged": s.filesUnchanged,
                "filesDeleted": s.filesDeleted, "directoriesCreated": s.directoriesCreated,
                "linksCreated": s.linksCreated, "linksSkipped": s.linksSkipped,
                "filesDelta": s.deltaFiles, "bytesWritten": s.bytesWritten, "wireBytes": s.wireBytes,
                "manifestWireBytes": s.manifestWireBytes, "fileWireBytes": s.wireBytes - s.manifestWireBytes,
                "seconds": s.seconds, "failures": s.failures.count, "dryRun": s.dryRun,
                "failed": s.failures.map { ["path": $0.path, "message": $0.message] },
                "conflicts": s.conflicts.map { ["path": $0.path, "message": $0.message] },
                "specialSkipped": s.specialSkipped, "reservedSkipped": s.reservedSkipped,
            ]
            if s.dryRun {
                object["filesToFetch"] = s.plannedFetches
                object["bytesToFetch"] = s.plannedFetchBytes
                object["filesToReplace"] = s.plannedReplacements
                object["bytesToReplace"] = s.plannedReplacementBytes
                object["filesToDelete"] = s.plannedDeletions
                object["bytesToDelete"] = s.plannedDeletionBytes
            }
            Output.json(object)
            return
        }
        finalList(s)
        if quiet && s.failures.isEmpty && s.conflicts.isEmpty { return }
        var line: String
        if s.dryRun {
            line = "would fetch \(s.plannedFetches) file\(s.plannedFetches == 1 ? "" : "s") (\(Output.bytes(s.plannedFetchBytes)))"
                + ", replace \(s.plannedReplacements) (\(Output.bytes(s.plannedReplacementBytes)))"
                + ", delete \(s.plannedDeletions) (\(Output.bytes(s.plannedDeletionBytes)))"
                + ", \(s.filesUnchanged) unchanged"
        } else {
            line = "fetched \(s.filesFetched) file\(s.filesFetched == 1 ? "" : "s") (\(Output.bytes(s.bytesWritten)))"
                + ", \(s.filesUnchanged) unchanged"
            if s.filesDeleted > 0 { line += ", deleted \(s.filesDeleted)" }
        }
        if s.linksSkipped > 0 { line += ", \(s.linksSkipped) symlink\(s.linksSkipped == 1 ? "" : "s") skipped" }
        if !s.specialSkipped.isEmpty { line += ", \(s.specialSkipped.count) special skipped" }
        if !s.reservedSkipped.isEmpty { line += ", \(s.reservedSkipped.count) reserved name\(s.reservedSkipped.count == 1 ? "" : "s") skipped" }
        line += "; \(Output.bytes(s.wireBytes)) on the wire in " + Output.fixed(s.seconds, decimals: 2) + " s"
        if !s.failures.isEmpty { line += "; \(s.failures.count) failed" }
        if !s.conflicts.isEmpty { line += "; \(s.conflicts.count) conflict\(s.conflicts.count == 1 ? "" : "s")" }
        Output.out(line)
    }

    /// The entries that failed and the conflicts, once more at the end where they are seen.
    private func finalList(_ s: Syncer.Summary) {
        if !s.failures.isEmpty {
            Output.err("ferry: \(s.failures.count) entr\(s.failures.count == 1 ? "y was" : "ies were") not synced:")
            for f in s.failures { Output.err("  \(Output.printable(bytes: Array(f.path.utf8))): \(f.message)") }
        }
        if !s.conflicts.isEmpty {
            Output.err("ferry: \(s.conflicts.count) conflict\(s.conflicts.count == 1 ? "" : "s") left alone (--delete replaces them):")
            for c in s.conflicts { Output.err("  \(Output.printable(bytes: Array(c.path.utf8))) \(c.message)") }
        }
    }
}
