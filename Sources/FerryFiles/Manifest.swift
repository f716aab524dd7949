#if canImport(Glibc)
import Glibc
#endif
import FerryProtocol

/// The manifest of a tree (PROTOCOL.md section 8): entries in manifest order, paths relative
/// to the manifest's root.
public struct Manifest: Sendable, Equatable {
    public static let header = "ferry-manifest 1"

    public var entries: [Entry]

    public init(entries: [Entry]) { self.entries = entries }

    /// The text form: header line, then one `manifestLine` per entry, each ending in LF.
    public var text: String {
        var s = Self.header + "\n"
        for e in entries { s += e.manifestLine + "\n" }
        return s
    }

    public enum ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        case badHeader
        case badLine(number: Int, Entry.ParseError)
        case unsorted(number: Int)
        case tooManyEntries
        case orphan(number: Int)

        public var description: String {
            switch self {
            case .badHeader: return "the manifest does not start with '\(Manifest.header)'"
            case .badLine(let n, let why): return "manifest line \(n): \(why)"
            case .unsorted(let n): return "manifest line \(n) is out of order or repeated"
            case .tooManyEntries: return "the manifest has more than \(FerryLimits.maxManifestEntries) entries"
            case .orphan(let n): return "manifest line \(n) names an entry whose parent is not a directory in the manifest"
            }
        }
    }

    /// Parses and checks a manifest as a client must (PROTOCOL.md section 10): every path is
    /// validated, entries are strictly sorted (so no duplicates), and every entry's parent is a
    /// directory listed before it (so nothing can be placed beneath a file or a symlink).
    public static func parse(_ text: String) throws(ParseError) -> Manifest {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        if lines.last == "" { lines.removeLast() }
        guard let first = lines.first, first == Self.header else { throw .badHeader }
        guard lines.count - 1 <= FerryLimits.maxManifestEntries else { throw .tooManyEntries }
        var entries: [Entry] = []
        entries.reserveCapacity(lines.count - 1)
        var directories: Set<RemotePath> = [.root]
        for (i, line) in lines.dropFirst().enumerated() {
            let number = i + 2
            let entry: Entry
            do { entry = try Entry(manifestLine: line) } catch { throw .badLine(number: number, error) }
            if let last = entries.last, !(last.path < entry.path) { throw .unsorted(number: number) }
            guard let parent = entry.path.parent, directories.contains(parent) else { throw .orphan(number: number) }
            if entry.type == .directory { directories.insert(entry.path) }
            entries.append(entry)
        }
        return Manifest(entries: entries)
    }
}

/// Walks a directory tree without following symlinks and produces manifest entries.
public enum TreeWalker {
    /// Options for a walk.
    public struct Options: Sendable {
        /// Paths (relative to the walk's root) to leave out, with everything beneath them.
        public var exclude: @Sendable (RemotePath, EntryType) -> Bool
        public var maxEntries: Int

        public init(exclude: @escaping @Sendable (RemotePath, EntryType) -> Bool = { _, _ in false },
                    maxEntries: Int = FerryLimits.maxManifestEntries) {
            self.exclude = exclude
            self.maxEntries = maxEntries
        }
    }

    public enum WalkError: Error, Sendable, CustomStringConvertible {
        case io(SystemError)
        case tooManyEntries(Int)

        public var description: String {
            switch self {
            case .io(let e): return e.description
            case .tooManyEntries(let n): return "the tree has more than \(n) entries"
            }
        }
    }

    /// Entries of the tree below the open directory `fd`, in manifest order, without hashes.
    /// `visitFile` is called for each regular file with its directory fd and name, and may
    /// fill in the hash.
    public static func walk(directory fd: Int32, options: Options = Options(),
                            visitFile: (Int32, [UInt8], inout Entry, FileInfo) -> Void = { _, _, _, _ in }) throws(WalkError) -> [Entry] {
        var out: [Entry] = []
        try walk(fd: fd, prefix: .root, options: options, into: &out, visitFile: visitFile)
        return out
    }

    private static func walk(fd: Int32, prefix: RemotePath, options: Options, into out: inout [Entry],
                             visitFile: (Int32, [UInt8], inout Entry, FileInfo) -> Void) throws(WalkError) {
        let names: [[UInt8]]
        do { names = try POSIX.readDirectoryNames(fd) } catch { throw .io(error) }
        var children: [(RemotePath, [UInt8])] = []
        children.reserveCapacity(names.count)
        for name in names {
            guard let path = try? prefix.appending(name: name) else { continue }  // over-long: skipped
            children.append((path, name))
        }
        children.sort { $0.0 < $1.0 }
        for (path, name) in children {
            let (infoOrNil, _) = POSIX.statAt(fd, name)
            guard let info = infoOrNil, info.type != .other else { continue }  // vanished, or FIFO/socket/device
            if options.exclude(path, info.type) { continue }
            if out.count >= options.maxEntries { throw .tooManyEntries(options.maxEntries) }
            switch info.type {
            case .file:
                var entry = Entry(info: info, path: path, target: nil)
                visitFile(fd, name, &entry, info)
                out.append(entry)
            case .symlink:
                guard let target = POSIX.readlinkAt(fd, name), !target.isEmpty else { continue }
                out.append(Entry(info: info, path: path, target: target))
            case .directory:
                out.append(Entry(info: info, path: path, target: nil))
                let child = POSIX.openAt(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
                guard child >= 0 else { continue }  // unreadable or swapped: listed, not descended
                let handle = FileHandle(fd: child)
                try walk(fd: handle.fd, prefix: path, options: options, into: &out, visitFile: visitFile)
            case .other:
                continue
            }
        }
    }

    /// Hashes the file `name` in directory `dirFD` (opened without following symlinks),
    /// using and filling `cache` under `cachePath`. Returns nil if the file changed or vanished.
    public static func hashFile(dirFD: Int32, name: [UInt8], info: FileInfo, cache: HashCache?, cachePath: RemotePath) -> String? {
        let key = HashKey(info)
        if let cached = cache?.lookup(cachePath, key) { return cached }
        let fd = POSIX.openAt(dirFD, name, O_RDONLY | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        let handle = FileHandle(fd: fd)
        guard let sha = try? FileHashing.sha256(of: handle, length: info.size),
              let after = try? handle.stat(), HashKey(after) == key else { return nil }
        cache?.store(cachePath, key, sha256: sha)
        return sha
    }
}

/// Block hashes (PROTOCOL.md section 8.2).
public enum BlockHashes {
    public static let minimumBlockSize = 64 * 1024
    public static let maximumBlockSize = 16 * 1024 * 1024
    public static let targetBlockCount: Int64 = 4096

    /// The smallest power of two ≥ 64 KiB giving at most 4096 blocks, capped at 16 MiB.
    public static func blockSize(forFileSize size: Int64) -> Int {
        var bs = minimumBlockSize
        while bs < maximumBlockSize && (size + Int64(bs) - 1) / Int64(bs) > targetBlockCount { bs *= 2 }
        return bs
    }

    public static func blockCount(fileSize: Int64, blockSize: Int) -> Int {
        Int((fileSize + Int64(blockSize) - 1) / Int64(blockSize))
    }

    /// SHA-256 of each block of an open file, reading at most `limit` bytes (nil: to the end
    /// of the file as `size` says). The last block may be short.
    public static func compute(file: FileHandle, size: Int64, blockSize: Int) throws(SystemError) -> [String] {
        let count = blockCount(fileSize: size, blockSize: blockSize)
        var out: [String] = []
        out.reserveCapacity(count)
        for i in 0..<count {
            let offset = Int64(i) * Int64(blockSize)
            out.append(try FileHashing.sha256(of: file, offset: offset, length: min(Int64(blockSize), size - offset)))
        }
        return out
    }
}
