#if canImport(Glibc)
import Glibc
#endif
import FerryProtocol

/// The manifest of a tree (PROTOCOL.md section 8): entries in manifest order, paths relative
/// to the manifest's root.
public struct Manifest: Sendable, Equatable {
    public static let header = "ferry-manifest 1"

    public var entries: [Entry]
    /// What the server left out, in a manifest asked for with `report=yes` (section 8.4).
    public var notes: [ManifestNote]

    public init(entries: [Entry], notes: [ManifestNote] = []) {
        self.entries = entries
        self.notes = notes
    }

    /// The text form: header line, then one `manifestLine` per entry, each ending in LF.
    public var text: String { String(decoding: bytes, as: UTF8.self) }

    /// `text` as UTF-8 bytes, written straight into one array (no per-entry String).
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.header.utf8.count + 1 + entries.count * 112)
        out.append(contentsOf: Self.header.utf8)
        out.append(0x0A)
        for e in entries {
            e.appendLine(to: &out, manifest: true)
            out.append(0x0A)
        }
        for n in notes {
            out.append(contentsOf: n.bytes)
            out.append(0x0A)
        }
        return out
    }

    public enum ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        case badHeader
        case badLine(number: Int, Entry.ParseError)
        case unsorted(number: Int)
        case tooManyEntries
        case orphan(number: Int)
        case badNote(number: Int, ManifestNote.ParseError)
        case entryAfterNote(number: Int)

        public var description: String {
            switch self {
            case .badHeader: return "the manifest does not start with '\(Manifest.header)'"
            case .badLine(let n, let why): return "manifest line \(n): \(why)"
            case .unsorted(let n): return "manifest line \(n) is out of order or repeated"
            case .tooManyEntries: return "the manifest has more than \(FerryLimits.maxManifestEntries) entries"
            case .orphan(let n): return "manifest line \(n) names an entry whose parent is not a directory in the manifest"
            case .badNote(let n, let why): return "manifest line \(n): \(why)"
            case .entryAfterNote(let n): return "manifest line \(n) is an entry after a note (notes come last)"
            }
        }
    }

    /// Parses and checks a manifest as a client must (PROTOCOL.md section 10): every path is
    /// validated, entries are strictly sorted (so no duplicates), and every entry's parent is a
    /// directory listed before it (so nothing can be placed beneath a file or a symlink).
    public static func parse(_ text: String) throws(ParseError) -> Manifest {
        var text = text
        let result: Result<Manifest, ParseError> = text.withUTF8 { b in
            do throws(ParseError) { return .success(try parse(utf8: b)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// `parse(_:)` on the UTF-8 bytes as received, without building a String first. Bytes that
    /// are not valid UTF-8 are refused where they could otherwise pass (in paths and targets).
    public static func parse(bytes: [UInt8]) throws(ParseError) -> Manifest {
        let result: Result<Manifest, ParseError> = bytes.withUnsafeBufferPointer { b in
            do throws(ParseError) { return .success(try parse(utf8: b)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// `parse(_:)` on UTF-8 bytes: lines are split on LF by byte offset and each entry is parsed
    /// from bytes (`Entry(manifestLineBytes:)`).
    public static func parse(utf8 b: UnsafeBufferPointer<UInt8>) throws(ParseError) -> Manifest {
        let n = b.count
        // Lines as `split(separator: "\n")` gives them, less one empty last line.
        var lineCount = 1
        for c in b where c == 0x0A { lineCount += 1 }
        if n == 0 || b[n - 1] == 0x0A { lineCount -= 1 }
        var start = 0
        func nextLine() -> UnsafeBufferPointer<UInt8> {
            var end = start
            while end < n && b[end] != 0x0A { end += 1 }
            let line = UnsafeBufferPointer(rebasing: b[start..<end])
            start = end + 1
            return line
        }
        guard lineCount >= 1, nextLine().elementsEqual(Self.header.utf8) else { throw .badHeader }
        guard lineCount - 1 <= FerryLimits.maxManifestEntries else { throw .tooManyEntries }
        var entries: [Entry] = []
        // An entry line is at least 22 bytes (`d 0755 0 1.000000000 a`): a flood of short
        // lines does not reserve room for millions of entries.
        entries.reserveCapacity(min(lineCount - 1, n / 22 + 1))
        // The directories enclosing the current position, outermost first (indices into
        // `entries`). Entries are strictly sorted with `/` first, so a directory's subtree
        // directly follows it: an entry's parent is a listed directory exactly when, after
        // leaving the directories that do not contain it, the innermost one left is its parent.
        var open: [Int] = []
        var notes: [ManifestNote] = []
        for number in stride(from: 2, through: lineCount, by: 1) {
            let line = nextLine()
            if line.first == ManifestNote.marker {
                do { notes.append(try ManifestNote(bytes: line)) } catch { throw .badNote(number: number, error) }
                continue
            }
            if !notes.isEmpty { throw .entryAfterNote(number: number) }
            let entry: Entry
            do { entry = try Entry(manifestLineBytes: line) } catch { throw .badLine(number: number, error) }
            if let last = entries.last, !(last.path < entry.path) { throw .unsorted(number: number) }
            let parentFound: Bool = entry.path.bytes.withUnsafeBufferPointer { p in
                var parentLength = p.count - 1
                while parentLength >= 0 && p[parentLength] != 0x2F { parentLength -= 1 }
                // parentLength is -1 for an entry at the top (its parent is the root).
                while let top = open.last {
                    let d = entries[top].path.bytes
                    let contains = d.count < p.count && p[d.count] == 0x2F
                        && d.withUnsafeBufferPointer { $0.elementsEqual(UnsafeBufferPointer(rebasing: p[0..<d.count])) }
                    if contains { break }
                    open.removeLast()
                }
                if let top = open.last { return entries[top].path.bytes.count == parentLength }
                return parentLength < 0
            }
            guard parentFound else { throw .orphan(number: number) }
            if entry.type == .directory { open.append(entries.count) }
            entries.append(entry)
        }
        return Manifest(entries: entries, notes: notes)
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
        try walkReporting(directory: fd, options: options, visitFile: visitFile).entries
    }

    /// `walk`, and what it left out (PROTOCOL.md section 8.4): directories it could not read
    /// (completely), FIFOs, sockets and devices, and entries whose path would be too long.
    /// Only the root's own listing failing is an error.
    public static func walkReporting(directory fd: Int32, options: Options = Options(),
                                     visitFile: (Int32, [UInt8], inout Entry, FileInfo) -> Void = { _, _, _, _ in })
        throws(WalkError) -> (entries: [Entry], notes: [ManifestNote]) {
        var out: [Entry] = []
        let cursor = TreeCursor(directory: fd, options: options)
        while try cursor.advance(entries: Int.max, visitFile: visitFile, emit: { out.append($0) }) {}
        return (out, cursor.notes)
    }

    /// Hashes the file `name` in directory `dirFD` (opened without following symlinks),
    /// using and filling `cache` under `cachePath`. Returns nil if the file changed or vanished.
    public static func hashFile(dirFD: Int32, name: [UInt8], info: FileInfo, cache: HashCache?, cachePath: RemotePath) -> String? {
        let key = HashKey(info)
        if let cached = cache?.lookup(cachePath, key) { return cached }
        guard let handle = try? FileHandle.openOwned(dirFD, name, allowDirectory: false, display: cachePath.description),
              let sha = try? FileHashing.sha256(of: handle, length: info.size),
              let after = try? handle.stat(), HashKey(after) == key else { return nil }
        cache?.store(cachePath, key, sha256: sha)
        return sha
    }
}

/// A walk of a tree in manifest order that can stop after any number of entries and go on
/// later (`TreeWalker` walks with it in one go): a server walks a huge tree in slices on its
/// pool for expensive work, so one `MANIFEST` neither holds a thread for minutes nor the tree
/// in memory. It holds the sorted names of each directory on the current path, no more.
/// Used by one task at a time (hence `@unchecked Sendable`: it moves between threads, never
/// shared).
public final class TreeCursor: @unchecked Sendable {
    private struct Level {
        let handle: FileHandle?
        let fd: Int32
        let prefix: RemotePath
        var names: NameList
        var next = 0
        /// A note saying the directory could not be read completely was written.
        var incomplete = false
    }

    public let options: TreeWalker.Options
    /// What the walk left out so far (PROTOCOL.md section 8.4).
    public private(set) var notes: [ManifestNote] = []
    /// Entries emitted so far.
    public private(set) var count = 0
    private var levels: [Level] = []
    private var started = false
    private let rootFD: Int32

    /// A walk of the tree below the open directory `fd` (which must stay open meanwhile).
    public init(directory fd: Int32, options: TreeWalker.Options = TreeWalker.Options()) {
        self.rootFD = fd
        self.options = options
    }

    /// Emits up to `entries` more entries; false once the walk is complete. Only the root's own
    /// listing failing, too many entries, or an error from `emit` ends it with an error.
    public func advance(entries limit: Int, visitFile: (Int32, [UInt8], inout Entry, FileInfo) -> Void,
                        emit: (Entry) throws(TreeWalker.WalkError) -> Void) throws(TreeWalker.WalkError) -> Bool {
        if !started {
            started = true
            do { levels.append(Level(handle: nil, fd: rootFD, prefix: .root, names: try Self.sortedNames(rootFD))) } catch {
                throw .io(error)
            }
        }
        var emitted = 0
        while emitted < limit, let top = levels.indices.last {
            guard levels[top].next < levels[top].names.count else {
                levels.removeLast()
                continue
            }
            let name = levels[top].names[levels[top].next]
            levels[top].next += 1
            let (fd, prefix) = (levels[top].fd, levels[top].prefix)
            guard let path = try? prefix.appending(name: name) else {
                notes.append(.tooLong(parent: prefix, name: name))
                continue
            }
            let (infoOrNil, err) = POSIX.statAt(fd, name)
            guard let info = infoOrNil else {
                // Vanished since it was listed: nothing to say. Anything else (a directory
                // that may be listed but not searched): its entries cannot be described.
                if err != ENOENT && !levels[top].incomplete {
                    levels[top].incomplete = true
                    notes.append(.unreadable(prefix))
                }
                continue
            }
            if options.exclude(path, info.type) { continue }
            if info.type == .other {
                notes.append(.special(path))
                continue
            }
            if count >= options.maxEntries { throw .tooManyEntries(options.maxEntries) }
            switch info.type {
            case .file:
                var entry = Entry(info: info, path: path, target: nil)
                visitFile(fd, name, &entry, info)
                try emit(entry)
            case .symlink:
                guard let target = POSIX.readlinkAt(fd, name), !target.isEmpty else { continue }
                try emit(Entry(info: info, path: path, target: target))
            case .directory:
                try emit(Entry(info: info, path: path, target: nil))
                let child = POSIX.openAt(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
                guard child >= 0 else {
                    // Swapped for something else since the stat: left as listed. Otherwise
                    // (permission denied, an I/O error) its contents are unknown, not empty.
                    let e = errno
                    if e != ENOENT && e != ENOTDIR && e != ELOOP { notes.append(.unreadable(path)) }
                    break
                }
                let handle = FileHandle(fd: child)
                do {
                    levels.append(Level(handle: handle, fd: child, prefix: path, names: try Self.sortedNames(child, fresh: true)))
                } catch {
                    notes.append(.unreadable(path))
                }
            case .other:
                continue
            }
            count += 1
            emitted += 1
        }
        return !levels.isEmpty
    }

    /// `fresh`: `fd` was just opened here (see `POSIX.forEachDirectoryName`).
    private static func sortedNames(_ fd: Int32, fresh: Bool = false) throws(SystemError) -> NameList {
        var names = NameList()
        try POSIX.forEachDirectoryName(fd, fresh: fresh) { names.append($0) }
        names.sort()
        return names
    }
}

/// The names of one directory in one byte array with their start offsets: a directory of a
/// million names costs about the names' bytes plus 4 bytes each while it is walked, where an
/// array per name cost about 72 bytes each (issue 17: a manifest of 1,000,000 entries in
/// ≤ 128 MiB, whatever the tree's shape).
struct NameList {
    private var bytes: [UInt8] = []
    private var starts: [UInt32] = []

    var count: Int { starts.count }

    mutating func append(_ name: UnsafeBufferPointer<UInt8>) {
        starts.append(UInt32(bytes.count))
        bytes.append(contentsOf: name)
    }

    private func range(_ i: Int) -> Range<Int> {
        Int(starts[i])..<(i + 1 < starts.count ? Int(starts[i + 1]) : bytes.count)
    }

    subscript(i: Int) -> [UInt8] { Array(bytes[range(i)]) }

    /// Into manifest order (siblings share their prefix, so ordering the names orders the paths).
    mutating func sort() {
        var order = Array(0..<UInt32(starts.count))
        bytes.withUnsafeBufferPointer { all in
            order.sort { a, b in
                let (x, y) = (range(Int(a)), range(Int(b)))
                return RemotePath.manifestOrder(UnsafeBufferPointer(rebasing: all[x]), UnsafeBufferPointer(rebasing: all[y])) < 0
            }
        }
        var sorted = NameList()
        sorted.bytes.reserveCapacity(bytes.count)
        sorted.starts.reserveCapacity(starts.count)
        bytes.withUnsafeBufferPointer { all in
            for i in order { sorted.append(UnsafeBufferPointer(rebasing: all[range(Int(i))])) }
        }
        self = sorted
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
}
