import FerryFiles
import FerryProtocol

/// What a sync will do, decided by comparing the server's manifest with DEST.
public struct SyncPlan: Sendable {
    public struct Fetch: Sendable {
        public var entry: Entry
        /// An older local copy exists: reuse its blocks that still match.
        public var delta: Bool
    }

    public var directories: [Entry] = []
    /// Directories to create (a subset of `directories`, which also get their attributes set).
    public var newDirectories: [RemotePath] = []
    public var fetches: [Fetch] = []
    public var links: [Entry] = []
    public var skippedLinks: [(RemotePath, String)] = []
    public var deletions: [(RemotePath, EntryType)] = []
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
        var remoteTypes: [RemotePath: EntryType] = [:]
        var excludedDirs: [RemotePath] = []
        for e in inputs.remote {
            if e.path == RemotePath.root { continue }
            // DEST's partial folder and everything below it belong to the client, whatever the
            // server has there (a served tree may itself be a sync destination).
            if isInPartialFolder(e.path) { continue }
            if let last = excludedDirs.last, e.path.hasPrefix(last) { continue }
            if inputs.excludes.excludes(e.path.bytes) {
                if e.type == .directory { excludedDirs.append(e.path) }
                continue
            }
            if inputs.delete {  // only deletions need them: no hashing per entry otherwise
                remotePaths.insert(e.path)
                remoteTypes[e.path] = e.type
            }
            let local = inputs.local[e.path]
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
                plan.fetches.append(Fetch(entry: e, delta: delta))
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
        if inputs.delete {
            // Every local entry the server lacks, children before their directory. A directory
            // is only removed once it is empty (see `Syncer`), so excluded entries inside it
            // (which the local scan does not list) survive, and so does the directory.
            for (path, l) in inputs.local.sorted(by: { $1.key < $0.key }) {
                // Present on both sides: a type change is handled by replacing in place.
                if remotePaths.contains(path) { continue }
                // Below an entry the server has as a file or symlink: replacing that entry
                // removes this one with it.
                var ancestor = path.parent
                var replaced = false
                while let a = ancestor, !a.isRoot {
                    if let type = remoteTypes[a], type != .directory { replaced = true; break }
                    ancestor = a.parent
                }
                if replaced { continue }
                plan.deletions.append((path, l.type))
            }
        }
        return plan
    }
}
