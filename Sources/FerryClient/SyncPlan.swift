import FerryFiles
import FerryProtocol

/// What a sync will do, decided by comparing the server's manifest with DEST.
public struct SyncPlan: Sendable {
    public struct Fetch: Sendable {
        public var entry: Entry
        /// An older local copy exists: reuse its blocks that still match.
        public var delta: Bool
        /// Something is at its place in DEST already (an older copy, a link, an empty directory).
        public var replaces = false
    }

    public var directories: [Entry] = []
    /// Directories to create (a subset of `directories`, which also get their attributes set).
    public var newDirectories: [RemotePath] = []
    public var fetches: [Fetch] = []
    public var links: [Entry] = []
    public var skippedLinks: [(RemotePath, String)] = []
    public var deletions: [(RemotePath, EntryType)] = []
    /// Bytes of the local files among `deletions`.
    public var bytesToDelete: Int64 = 0
    /// Local entries of another type that must go before the server's entry can take their
    /// place: a link or other non-directory where the server has a directory (a file only with
    /// `--delete`), a directory where the server has a file or link (an empty one, or any with
    /// `--delete`: its contents are among `deletions`). Removed first, never recursively.
    public var replacements: [(RemotePath, EntryType)] = []
    /// Entries left alone because the two sides disagree on their type and the local one holds
    /// what the server does not have (without `--delete`), with the reason.
    public var conflicts: [(RemotePath, String)] = []
    /// Server directories whose contents the server could not read: unknown, not empty, so
    /// nothing below them is deleted here (`ManifestNote.unreadable`).
    public var unreadableDirectories: [RemotePath] = []
    /// FIFOs, sockets and devices on the server: never copied.
    public var specialFiles: [RemotePath] = []
    /// FIFOs, sockets and devices only DEST has, which `--delete` leaves alone (ferry never
    /// removes what it cannot have made): reported, not deleted.
    public var keptLocalSpecials: [RemotePath] = []
    /// Server entries whose path is longer than the protocol allows, as text.
    public var tooLong: [String] = []
    /// Server entries whose names ferry reserves in DEST (`.ferry-partial` at the top, the
    /// `.~ferry-<16 hex>` temporaries): never copied.
    public var reservedNames: [RemotePath] = []
    /// Unchanged files whose mode or mtime must still be corrected.
    public var attributeFixes: [Entry] = []
    public var unchangedFiles = 0
    public var unchangedLinks = 0

    public var bytesToFetch: Int64 { fetches.reduce(0) { $0 + $1.entry.size } }

    /// The name of DEST's partial-data folder, which sync never lists, compares or deletes.
    public static let partialFolder: [UInt8] = Array(".ferry-partial".utf8)

    public struct Inputs {
        public var remote: [Entry]
        public var local: [RemotePath: Entry]
        public var excludes: ExcludeList
        public var delete: Bool
        public var checksum: Bool
        public var deltaMinimumSize: Int64
        /// SHA-256 of a local file (for `--checksum`); nil when it cannot be read.
        public var localHash: (RemotePath) -> String?
        /// What the server's manifest left out (from a server that reports it).
        public var notes: [ManifestNote] = []
        /// FIFOs, sockets and devices in DEST (not in `local`): ferry does not own them.
        public var localSpecials: Set<RemotePath> = []
    }

    /// Whether a server entry's name is one ferry reserves in DEST: the partial folder at the
    /// top, and the temporaries' `.~ferry-<16 hex>` anywhere.
    static func isReserved(_ path: RemotePath) -> Bool {
        path.bytes == partialFolder || PartialFile.isTemporary(path)
    }

    /// Whether a relative link target has all its `..` components before any name
    /// (`../../a/b`, not `a/../b`). The lexical check alone is not enough: in `x/..` the `x`
    /// may itself be a symlink (say `x -> .`), and then `x/..` is the parent of DEST on disk
    /// while it looks like DEST lexically. With every `..` first, a link climbs only through
    /// real directories that sync created and then descends, so it cannot leave DEST.
    static func climbsOnlyFirst(_ target: [UInt8]) -> Bool {
        var seenName = false
        for component in target.split(separator: 0x2F) {
            if component.elementsEqual([0x2E]) { continue }
            if component.elementsEqual([0x2E, 0x2E]) {
                if seenName { return false }
            } else {
                seenName = true
            }
        }
        return true
    }

    /// Whether the first component of `path` is the partial folder (without splitting the path).
    static func isInPartialFolder(_ path: RemotePath) -> Bool {
        let b = path.bytes, p = partialFolder
        return b.count >= p.count && (b.count == p.count || b[p.count] == 0x2F) && b[0..<p.count].elementsEqual(p)
    }

    public static func make(_ inputs: Inputs) -> SyncPlan {
        var plan = SyncPlan()
        var remotePaths = Set<RemotePath>()
        var skippedDirs: [RemotePath] = []
        for note in inputs.notes {
            switch note {
            case .unreadable(let p):
                if p.isRoot || !(inputs.excludes.excludes(p.bytes) || isReserved(p)) { plan.unreadableDirectories.append(p) }
            case .special(let p):
                if !inputs.excludes.excludes(p.bytes) { plan.specialFiles.append(p) }
            case .tooLong:
                plan.tooLong.append(note.displayPath)
            }
        }
        // Local directories holding something (listed by the scan), computed when first needed.
        var localParents: Set<RemotePath>?
        func holdsEntries(_ path: RemotePath) -> Bool {
            if localParents == nil { localParents = Set(inputs.local.keys.compactMap(\.parent)) }
            return localParents?.contains(path) ?? false
        }
        for e in inputs.remote {
            if e.path == RemotePath.root { continue }
            if let last = skippedDirs.last, e.path.hasPrefix(last) { continue }
            // DEST's partial folder and everything below it belong to the client, whatever the
            // server has there (a served tree may itself be a sync destination); so do the
            // temporaries. Such server entries are reported, never copied.
            if isReserved(e.path) {
                if !inputs.excludes.excludes(e.path.bytes) { plan.reservedNames.append(e.path) }
                if e.type == .directory { skippedDirs.append(e.path) }
                continue
            }
            if inputs.excludes.excludes(e.path.bytes) {
                if e.type == .directory { skippedDirs.append(e.path) }
                continue
            }
            if inputs.delete {  // only deletions need them: no hashing per entry otherwise
                remotePaths.insert(e.path)
            }
            // A FIFO, socket or device in DEST where the server has an entry: writing a file
            // over it or a directory's attributes into it is never done unasked (opening a FIFO
            // would also wait for ever); --delete removes it first.
            if inputs.localSpecials.contains(e.path) {
                guard inputs.delete else {
                    let what = e.type == .directory ? "directory" : e.type == .symlink ? "symlink" : "file"
                    plan.conflicts.append((e.path, "is a FIFO, socket or device here but a \(what) on the server; left alone (--delete replaces it)"))
                    if e.type == .directory { skippedDirs.append(e.path) }
                    continue
                }
                plan.replacements.append((e.path, .other))
            }
            let local = inputs.local[e.path]
            // A directory where the server has something else, or the other way round: the
            // local entry goes first, unless that loses what only DEST has. (A file or link
            // replacing a file or link is renamed or created over it.)
            if let l = local, (l.type == .directory) != (e.type == .directory) {
                if e.type == .directory && l.type == .file && !inputs.delete {
                    plan.conflicts.append((e.path, "is a file here but a directory on the server; left alone (--delete replaces it)"))
                    skippedDirs.append(e.path)
                    continue
                }
                if l.type == .directory && !inputs.delete && holdsEntries(e.path) {
                    plan.conflicts.append((e.path, "is a directory with contents here but a \(e.type == .file ? "file" : "symlink") "
                                           + "on the server; left alone (--delete replaces it)"))
                    continue
                }
                plan.replacements.append((e.path, l.type))
            }
            switch e.type {
            case .directory:
                plan.directories.append(e)
                if local?.type != .directory { plan.newDirectories.append(e.path) }
            case .file:
                if let l = local, l.type == .file, l.size == e.size {
                    if inputs.checksum {
                        if let sha = e.sha256, inputs.localHash(e.path) == sha {
                            plan.unchangedFiles += 1
                            if l.mtime != e.mtime || l.mode != LocalTree.applicableMode(e.mode) { plan.attributeFixes.append(e) }
                            continue
                        }
                    } else if l.mtime == e.mtime {
                        plan.unchangedFiles += 1
                        if l.mode != LocalTree.applicableMode(e.mode) { plan.attributeFixes.append(e) }
                        continue
                    }
                }
                let delta = local?.type == .file && (local?.size ?? 0) > 0 && e.size >= inputs.deltaMinimumSize
                plan.fetches.append(Fetch(entry: e, delta: delta, replaces: local != nil))
            case .symlink:
                guard let target = e.target, Downloader.resolveLink(at: e.path, target: target) != nil else {
                    plan.skippedLinks.append((e.path, "its target \(String(decoding: e.target ?? [], as: UTF8.self)) is outside the synced tree"))
                    continue
                }
                guard climbsOnlyFirst(target) else {
                    plan.skippedLinks.append((e.path, "its target \(String(decoding: target, as: UTF8.self)) climbs ('..') after a name, "
                                              + "which can lead outside the synced tree through another symlink"))
                    continue
                }
                if let l = local, l.type == .symlink, l.target == target {
                    plan.unchangedLinks += 1
                    continue
                }
                plan.links.append(e)
            case .other:
                continue
            }
        }
        // Notes about what lies in an excluded (or reserved, or conflicting) directory concern
        // nothing this sync would have copied.
        if !skippedDirs.isEmpty {
            func skipped(_ p: RemotePath) -> Bool { skippedDirs.contains { p.hasPrefix($0) } }
            plan.unreadableDirectories.removeAll { skipped($0) }
            plan.specialFiles.removeAll { skipped($0) }
            plan.tooLong = inputs.notes.compactMap { note in
                guard case .tooLong(let parent, _) = note, !skipped(parent) else { return nil }
                return note.displayPath
            }
        }
        if inputs.delete {
            // Every local entry the server lacks, children before their directory. A directory
            // is only removed once it is empty (see `Syncer`), so excluded entries inside it
            // (which the local scan does not list) survive, and so does the directory. Nothing
            // below a directory the server could not read is the server's to judge, nor what
            // lies below a conflict.
            let unreadable = plan.unreadableDirectories
            for (path, l) in inputs.local.sorted(by: { $1.key < $0.key }) {
                if remotePaths.contains(path) { continue }
                if unreadable.contains(where: { path.hasPrefix($0) }) { continue }
                plan.deletions.append((path, l.type))
                if l.type == .file { plan.bytesToDelete += l.size }
            }
            plan.keptLocalSpecials = inputs.localSpecials.filter { path in
                !remotePaths.contains(path) && !unreadable.contains(where: { path.hasPrefix($0) })
                    && !inputs.excludes.excludes(path.bytes)
            }.sorted()
        }
        return plan
    }
}
