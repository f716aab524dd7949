#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import FerryFiles
import FerryProtocol
import Foundation

struct ManifestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "manifest",
        abstract: "Print the manifest of a local directory, in the format servers send.",
        discussion: """
        One line per entry (type, mode, size, mtime, SHA-256 for files, path, symlink target),
        sorted as in docs/PROTOCOL.md section 8. Useful to compare two trees:

          diff <(ferry manifest ~/photos) <(ssh other ferry manifest photos)
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
        do {
            let entries = try TreeWalker.walk(directory: dir.fd) { dirFD, name, entry, info in
                if hashes {
                    entry.sha256 = TreeWalker.hashFile(dirFD: dirFD, name: name, info: info, cache: nil, cachePath: entry.path)
                }
            }
            let text = Manifest(entries: entries).text
            FileHandle.standardOutput.write(Data(text.utf8))
        } catch {
            Output.err("ferry: \(error)")
            throw ExitCode(Exit.local)
        }
    }
}
