#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol

extension Syncer {
    /// What a sync has done and what it could not do, reported as it happens.
    struct Outcome {
        let onEvent: @Sendable (Event) -> Void
        var summary = Summary()

        init(onEvent: @escaping @Sendable (Event) -> Void) { self.onEvent = onEvent }

        mutating func fail(_ path: RemotePath, _ message: String) {
            summary.failures.append((path.description, message))
            onEvent(.failed(path, message))
        }

        mutating func conflict(_ path: RemotePath, _ message: String) {
            summary.conflicts.append((path.description, message))
            onEvent(.conflict(path, message))
        }

        func finished(since start: ContinuousClock.Instant) -> Summary {
            var s = summary
            s.seconds = (ContinuousClock.now - start).secondsDouble
            return s
        }
    }

    /// The phases of a sync that change DEST around the file transfer, in the order `run` calls
    /// them. Entries left alone by an earlier phase (`blocked`: something of another type was in
    /// the way; `failedDirectories`: could not be created) are skipped, with what is under them,
    /// by the later ones.
    struct Application {
        let tree: LocalTree
        let plan: SyncPlan
        let local: LocalScan
        private(set) var blocked: [RemotePath] = []
        private(set) var failedDirectories: [RemotePath] = []
        /// Deletions done while emptying a directory in the way, not to be done twice.
        private var deletedEarly = Set<RemotePath>()

        init(tree: LocalTree, plan: SyncPlan, local: LocalScan) {
            self.tree = tree
            self.plan = plan
            self.local = local
        }

        private func isBlocked(_ p: RemotePath) -> Bool { blocked.contains { p.hasPrefix($0) } }
        private func isUnderFailedDirectory(_ p: RemotePath) -> Bool { failedDirectories.contains { p.hasPrefix($0) } }

        /// Entries of another type in the way go first — never recursively: a directory is
        /// emptied only of what the plan deletes (with --delete), and one still holding
        /// something (excluded entries) is a conflict, left alone with everything in the way.
        mutating func removeReplacedEntries(_ outcome: inout Outcome) {
            for (path, type) in plan.replacements {
                do {
                    if type == .directory {
                        for (p, t) in plan.deletions where p != path && p.hasPrefix(path) {
                            deletedEarly.insert(p)
                            try delete(p, t, &outcome)
                        }
                    }
                    try tree.removeShallow(path)
                } catch {
                    blocked.append(path)
                    if error.errno == ENOTEMPTY {
                        outcome.conflict(path, "is a directory here holding entries the server does not have (excluded ones?); left alone")
                    } else {
                        outcome.fail(path, error.description)
                    }
                }
            }
        }

        /// New directories, parents before children.
        mutating func createDirectories(_ outcome: inout Outcome) {
            let newDirs = Set(plan.newDirectories)
            for d in plan.directories where newDirs.contains(d.path) {
                if isUnderFailedDirectory(d.path) || isBlocked(d.path) { continue }
                do {
                    try tree.makeDirectory(d.path, mode: d.mode)
                    outcome.summary.directoriesCreated += 1
                } catch {
                    failedDirectories.append(d.path)
                    outcome.fail(d.path, error.description)
                }
            }
        }

        /// The fetches whose place in DEST is there to take them.
        func fetchable() -> [SyncPlan.Fetch] {
            plan.fetches.filter { !isUnderFailedDirectory($0.entry.path) && !isBlocked($0.entry.path) }
        }

        /// Symlinks, over a file or link (a directory in the way was dealt with first).
        func createLinks(_ outcome: inout Outcome) {
            for l in plan.links where !isBlocked(l.path) && !isUnderFailedDirectory(l.path) {
                guard let target = l.target else { continue }
                do {
                    try tree.removeShallow(l.path)
                    try tree.makeSymlink(l.path, target: target)
                    tree.setLinkMtime(l.path, mtime: l.mtime)
                    outcome.summary.linksCreated += 1
                } catch {
                    outcome.fail(l.path, error.description)
                }
            }
        }

        /// Deletions, children first.
        func deleteEntries(_ outcome: inout Outcome) {
            for (path, type) in plan.deletions where !deletedEarly.contains(path) {
                do { try delete(path, type, &outcome) } catch { outcome.fail(path, error.description) }
            }
        }

        /// Deletes one entry of the plan. A directory is removed only when that left it empty:
        /// one that still holds entries the scan did not list (excluded ones) is kept.
        private func delete(_ path: RemotePath, _ type: EntryType, _ outcome: inout Outcome) throws(SystemError) {
            if type == .directory {
                guard try Syncer.removeEmptyDirectory(path, in: tree) else { return }
            } else {
                try tree.removeShallow(path)
            }
            outcome.summary.filesDeleted += 1
            outcome.onEvent(.action("deleted", path, size: nil))
        }

        /// Attributes: unchanged files needing a fix, then directories children-first (adding
        /// entries changed their mtimes). A directory the server could not read keeps the
        /// attributes it has here: its contents were not synced. Only directories whose entries
        /// changed here (which moved their mtime), or whose mode or mtime differ, are touched: a
        /// no-op re-sync of a large tree sets nothing.
        func setAttributes(fetched fetches: [SyncPlan.Fetch], _ outcome: inout Outcome) {
            for e in plan.attributeFixes {
                do { try tree.setAttributes(e.path, mode: e.mode, mtime: e.mtime) } catch { outcome.fail(e.path, error.description) }
            }
            var touched = Set<RemotePath>()
            if !fetches.isEmpty { touched.insert(.root) }  // the partial folder came and went
            for f in fetches { touched.insert(f.entry.path.parent ?? .root) }
            for l in plan.links { touched.insert(l.path.parent ?? .root) }
            for (p, _) in plan.deletions { touched.insert(p.parent ?? .root) }
            for (p, _) in plan.replacements { touched.insert(p.parent ?? .root) }
            for d in plan.newDirectories { touched.insert(d); touched.insert(d.parent ?? .root) }
            for p in local.temporaries { touched.insert(p.parent ?? .root) }
            let unreadable = Set(plan.unreadableDirectories)
            for d in plan.directories.reversed() where !isUnderFailedDirectory(d.path) {
                if isBlocked(d.path) || unreadable.contains(d.path) { continue }
                if !touched.contains(d.path), let l = local.entries[d.path], l.type == .directory,
                   l.mtime == d.mtime, l.mode == LocalTree.applicableMode(d.mode) { continue }
                do { try tree.setAttributes(d.path, mode: d.mode, mtime: d.mtime) } catch { outcome.fail(d.path, error.description) }
            }
        }
    }
}
