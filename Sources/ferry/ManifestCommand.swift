#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import FerryFiles
import FerryProtocol
#if canImport(FoundationEssentials)
import FoundationEssentials  // not all of Foundation: that links ICU into the static binary
#else
import Foundation
#endif

struct ManifestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "manifest",
        abstract: "Print the manifest of a local directory, in the format servers send.",
        discussion: """
        One line per entry (type, mode, size, mtime, SHA-256 for files, path, symlink target),
        sorted as in docs/PROTOCOL.md section 8. Useful to compare two trees:

          diff <(ferry manifest ~/photos) <(ssh other ferry manifest photos)

        What the manifest could not describe ends it as note lines, as a server's manifest \
        asked for with report=yes does (docs/PROTOCOL.md section 8.4): a directory that could \
        not be read (its contents are unknown, which is not empty), a path longer than the \
        protocol allows. Each is also named on stderr, with the exit status 1. FIFOs, sockets \
        and devices, which ferry never transfers, are named on stderr only (exit status 0).
        """
    )

    @Argument(help: "The directory to describe.")
    var directory: String

    @Flag(help: "Leave SHA-256 fields as '-' (fast).")
    var noHashes = false

    func run() throws {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else {
            Output.err("ferry: cannot open the directory \(directory): \(String(cString: strerror(errno)))")
            throw ExitCode(Exit.local)
        }
        let dir = FerryFiles.FileHandle(fd: fd)
        let hashes = !noHashes
        let entries: [Entry]
        let notes: [ManifestNote]
        do {
            (entries, notes) = try TreeWalker.walkReporting(directory: dir.fd) { dirFD, name, entry, info in
                if hashes {
                    entry.sha256 = TreeWalker.hashFile(dirFD: dirFD, name: name, info: info, cache: nil, cachePath: entry.path)
                }
            }
        } catch {
            Output.err("ferry: \(error)")
            throw ExitCode(Exit.local)
        }
        // Special files are never transferred, so a synced copy lacks them too: they are named
        // on stderr only, and `diff` of a tree's manifest and its copy's stays clean.
        let kept = notes.filter { if case .special = $0 { return false } else { return true } }
        Output.write(STDOUT_FILENO, Manifest(entries: entries, notes: kept).text)
        // Never silently: what the manifest could not describe is named on stderr as well.
        var incomplete = false
        var specials: [String] = []
        for note in notes {
            switch note {
            case .unreadable(let path):
                incomplete = true
                Output.err("ferry: \(Output.shown(path)): cannot read this directory; its contents are not in the manifest")
            case .tooLong:
                incomplete = true
                Output.err("ferry: \(Output.printable(bytes: Array(note.displayPath.utf8))): its path is longer than \(FerryLimits.maxPathBytes) bytes; not in the manifest")
            case .special(let path):
                specials.append(Output.shown(path))
            }
        }
        if hashes {
            for entry in entries where entry.type == .file && entry.sha256 == nil {
                incomplete = true
                Output.err("ferry: \(Output.shown(entry.path)): cannot read this file; its SHA-256 is left as '-'")
            }
        }
        if !specials.isEmpty {
            Output.err("ferry: warning: left out \(specials.count) special file\(specials.count == 1 ? "" : "s") (FIFO, socket or device): " + specials.joined(separator: ", "))
        }
        if incomplete { throw ExitCode(Exit.failed) }
    }
}
