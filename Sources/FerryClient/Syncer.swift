#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import Logging
import NIOConcurrencyHelpers

/// `ferry sync`: makes DEST an exact copy of a served tree.
public struct Syncer: Sendable {
    public struct Options: Sendable {
        public var connection: ConnectionOptions
        public var retry: RetryPolicy
        public var resume: Bool
        public var delete: Bool
        public var dryRun: Bool
        public var checksum: Bool
        public var excludes: ExcludeList
        /// Connections fetching files at once.
        public var parallel: Int
        /// Requests in flight per connection.
        public var window: Int
        /// Changed files at least this big reuse the matching blocks of the old local copy.
        public var deltaMinimumSize: Int64
        /// Where the index of the chunks in DEST is kept between runs (`LocalChunkIndex`); nil
        /// builds it afresh each run. `false` in `reuseLocalData` turns reuse off altogether.
        public var chunkIndexPath: String?
        public var reuseLocalData: Bool

        public init(connection: ConnectionOptions = ConnectionOptions(), retry: RetryPolicy = RetryPolicy(),
                    resume: Bool = true, delete: Bool = false, dryRun: Bool = false, checksum: Bool = false,
                    excludes: ExcludeList = ExcludeList([]), parallel: Int = 2, window: Int = 32,
                    deltaMinimumSize: Int64 = 256 * 1024, chunkIndexPath: String? = nil, reuseLocalData: Bool = true) {
            self.connection = connection
            self.retry = retry
            self.resume = resume
            self.delete = delete
            self.dryRun = dryRun
            self.checksum = checksum
            self.excludes = excludes
            self.parallel = parallel
            self.window = window
            self.deltaMinimumSize = deltaMinimumSize
            self.chunkIndexPath = chunkIndexPath
            self.reuseLocalData = reuseLocalData
        }
    }

    public enum Event: Sendable {
        case planned(files: Int, bytes: Int64, unchanged: Int, deletions: Int)
        /// Something done (`deleted`), or with `--dry-run` something that would be: `fetch`,
        /// `replace`, `delete` (with the bytes concerned), `mkdir`, `link`.
        case action(String, RemotePath, size: Int64?)
        case fileStarted(RemotePath, size: Int64)
        /// Before the transfer: verified bytes that interrupted runs kept for this run's files.
        case kept(bytes: Int64)
        /// Kept data of an interrupted run was checked with the server: the file continues at
        /// `from` (0: nothing could be kept). `announced` is what `.kept` counted for it.
        case resuming(RemotePath, from: Int64, size: Int64, announced: Int64)
        case fileFinished(RemotePath, size: Int64, delta: Bool)
        case failed(RemotePath, String)
        /// An entry not synced whose path is not a valid one (longer than the protocol allows).
        case failedPath(String, String)
        /// An entry left alone because DEST holds what the server does not (no `--delete`).
        case conflict(RemotePath, String)
        case bytes(Int)
        case warning(String)
        case retrying(String)
    }

    public struct Summary: Sendable {
        public var filesFetched = 0
        public var filesUnchanged = 0
        public var filesDeleted = 0
        public var directoriesCreated = 0
        public var linksCreated = 0
        public var linksSkipped = 0
        public var bytesWritten: Int64 = 0
        public var wireBytes: Int64 = 0
        public var manifestWireBytes: Int64 = 0
        public var deltaFiles = 0
        public var seconds = 0.0
        public var failures: [(path: String, message: String)] = []
        public var conflicts: [(path: String, message: String)] = []
        /// FIFOs, sockets and devices on the server, not copied.
        public var specialSkipped: [String] = []
        /// Server entries named as ferry's own in DEST, not copied.
        public var reservedSkipped: [String] = []
        public var dryRun = false
        /// The plan's figures (what a dry run would do; what this run set out to do).
        public var plannedFetches = 0
        public var plannedFetchBytes: Int64 = 0
        public var plannedReplacements = 0
        public var plannedReplacementBytes: Int64 = 0
        public var plannedDeletions = 0
        public var plannedDeletionBytes: Int64 = 0
    }

    public let endpoint: Endpoint
    public let remotePath: RemotePath
    public let destination: String
    public let options: Options
    public let logger: Logger

    public init(endpoint: Endpoint, remotePath: RemotePath, destination: String, options: Options, logger: Logger) {
        self.endpoint = endpoint
        self.remotePath = remotePath
        self.destination = destination
        self.options = options
        self.logger = logger
    }

    /// How long a sync waits for another sync into the same DEST to finish its start-up
    /// (manifest and scan, while it holds DEST alone).
    static let lockWait: Duration = .seconds(120)

    /// Runs the sync's phases in order: start-up (manifest, DEST, scan, lock), plan, then —
    /// unless it is a dry run, which only reports the plan — replacements, directories, files,
    /// symlinks, deletions, attributes, and the clean-up of the partial folder.
    public func run(onEvent: @escaping @Sendable (Event) -> Void) async throws -> Summary {
        let start = ContinuousClock.now
        let startUp = try await startUp(onEvent: onEvent)
        var outcome = Outcome(onEvent: onEvent)
        outcome.summary.manifestWireBytes = startUp.manifestWireBytes
        outcome.summary.dryRun = options.dryRun
        let plan = makePlan(startUp, &outcome)
        guard !options.dryRun, let tree = startUp.tree else {
            reportDryRun(plan, local: startUp.local, &outcome)
            return outcome.finished(since: start)
        }
        do { try tree.requireWritable() } catch { throw ClientError.local(error) }
        var apply = Application(tree: tree, plan: plan, local: startUp.local)
        apply.removeReplacedEntries(&outcome)
        apply.createDirectories(&outcome)
        let fetches = apply.fetchable()
        let index = chunkIndex(tree, local: startUp.local, fetches: fetches, onEvent: onEvent)
        let transfer = SyncTransfer(endpoint: endpoint, tree: tree, options: options, logger: logger,
                                    base: remotePath, index: index, onEvent: onEvent)
        let result = try await transfer.run(fetches)
        outcome.summary.filesFetched = result.fetched
        outcome.summary.deltaFiles = result.delta
        outcome.summary.bytesWritten = result.bytesWritten
        outcome.summary.wireBytes = outcome.summary.manifestWireBytes + result.wireBytes
        for (p, m) in result.failures { outcome.fail(p, m) }
        apply.createLinks(&outcome)
        apply.deleteEntries(&outcome)
        apply.setAttributes(fetched: fetches, &outcome)
        // With no other sync live here, nothing in the partial folder but the data of files that
        // failed this time is anyone's: the rest was left by a killed run (a sidecar whose data
        // was renamed into place, a partial of a file no longer wanted) and goes.
        let keep = Set(result.failures.map { SyncTransfer.partialName(for: $0.0) })
        if DestinationLock.tryExclusive(tree) == true { Self.cleanPartialFolder(in: tree, keeping: keep, logger: logger) }
        transfer.removePartialFolderIfEmpty()
        return outcome.finished(since: start)
    }

    /// The index of the chunks already in DEST (its files and the data in its partial folder),
    /// when some file to fetch is big enough to be built from them: last run's index, brought
    /// up to date, and saved for the next run. Only new or changed files are read, and at most
    /// `indexReadBudget(toFetch:)` bytes of them per run, the likeliest sources first: old
    /// versions of the files to fetch and the partial folder, then files in the same
    /// directories, then the rest (a DEST of 100 GB is not read whole to spare a 20 KB fetch).
    private func chunkIndex(_ tree: LocalTree, local: LocalScan, fetches: [SyncPlan.Fetch],
                            onEvent: @escaping @Sendable (Event) -> Void) -> LocalChunkIndex? {
        guard options.reuseLocalData, fetches.contains(where: { $0.entry.size >= SyncTransfer.reuseMinimumSize }) else { return nil }
        var paths = local.entries.values.filter { $0.type == .file && $0.size > 0 }.map(\.path)
        var first: Set<RemotePath> = Set(fetches.map(\.entry.path))
        if let folder = try? RemotePath(validating: SyncPlan.partialFolder), let dir = try? tree.openDirectory(folder),
           let names = try? POSIX.readDirectoryNames(dir.fd) {
            let parts = names.filter { $0.first != 0x2E && String(decoding: $0, as: UTF8.self).hasSuffix(".part") }
                .compactMap { try? folder.appending(name: $0) }
            paths += parts
            first.formUnion(parts)
        }
        guard !paths.isEmpty else { return nil }
        let nearby = Set(fetches.map { $0.entry.path.parent ?? .root })
        func rank(_ p: RemotePath) -> Int { first.contains(p) ? 0 : nearby.contains(p.parent ?? .root) ? 1 : 2 }
        paths.sort { a, b in
            let (ra, rb) = (rank(a), rank(b))
            return ra != rb ? ra < rb : a.bytes.lexicographicallyPrecedes(b.bytes)
        }
        let previous = options.chunkIndexPath.flatMap(LocalChunkIndex.load)
        let toFetch = fetches.reduce(Int64(0)) { $0 + $1.entry.size }
        let (index, read) = LocalChunkIndex.build(paths.map { path in
            (path, {
                guard let file = try? tree.openFile(path), let info = try? file.stat() else { return nil }
                return (file, info)
            })
        }, previous: previous, readBudget: Self.indexReadBudget(toFetch: toFetch))
        logger.debug("chunk index of DEST: \(index.files.count) files, \(index.chunkCount) chunks, \(read) bytes read")
        if let path = options.chunkIndexPath, read > 0 || previous?.files.count != index.files.count {
            do { try index.save(to: path) } catch { onEvent(.warning("could not save the chunk index \(path): \(error)")) }
        }
        return index
    }

    /// The most bytes of DEST one run reads to bring its chunk index up to date: 4 times what
    /// it is to fetch, and at least 1 GiB (cheap next to a network transfer of the same size).
    static func indexReadBudget(toFetch: Int64) -> Int64 {
        max(1 << 30, toFetch.multipliedReportingOverflow(by: 4).overflow ? .max : toFetch * 4)
    }

    /// What the start-up phase found: the manifest, DEST (nil when a dry run's DEST does not
    /// exist) and what it holds.
    struct StartUp {
        var manifest: Manifest
        var manifestWireBytes: Int64
        var tree: LocalTree?
        var local: LocalScan
    }

    /// Fetches the manifest while DEST is scanned, removes what a killed run left when no other
    /// sync is live here, and holds DEST shared for the transfer.
    private func startUp(onEvent: @escaping @Sendable (Event) -> Void) async throws -> StartUp {
        let manifestCounter = ByteCounter()
        // An existing DEST is scanned while the server builds and sends the manifest. A sync that
        // finds no other live sync holding DEST owns whatever a killed run left (see `DestinationLock`).
        let existing = try? LocalTree(path: destination, create: false)
        let exclusive = options.dryRun ? false : existing.map { DestinationLock.tryExclusive($0) } ?? true
        let earlyScan = existing.map { tree in Task { try self.scanLocal(tree) } }
        let manifest: Manifest
        do {
            manifest = try await fetchManifest(counter: manifestCounter)
        } catch {
            _ = try? await earlyScan?.value
            throw error
        }
        let tree: LocalTree?
        if let existing {
            tree = existing
        } else {
            do {
                tree = try LocalTree(path: destination, create: !options.dryRun)
            } catch {
                if options.dryRun && error.errno == ENOENT { tree = nil } else { throw ClientError.local(error) }
            }
            if let tree, !options.dryRun { _ = DestinationLock.tryExclusive(tree) }
        }
        let local: LocalScan
        if let earlyScan { local = try await earlyScan.value } else { local = try scanLocal(tree) }
        if let tree, !options.dryRun {
            // Temporaries of a killed run: all of them when no other sync is live here; by age
            // when DEST cannot be locked (a file system without flock).
            switch exclusive {
            case true?: removeStaleTemporaries(local.temporaries, in: tree, olderThan: 0)
            case nil: removeStaleTemporaries(local.temporaries, in: tree)
            case false?: break
            }
            try await DestinationLock.share(tree, within: Self.lockWait, onWait: onEvent)
        }
        return StartUp(manifest: manifest, manifestWireBytes: manifestCounter.count, tree: tree, local: local)
    }

    /// Plans the sync, records its figures, and reports what the plan alone decides: skipped
    /// links and special files, conflicts, unreadable directories and over-long paths.
    private func makePlan(_ startUp: StartUp, _ outcome: inout Outcome) -> SyncPlan {
        let tree = startUp.tree
        let plan = SyncPlan.make(.init(
            remote: startUp.manifest.entries, local: startUp.local.entries, excludes: options.excludes,
            delete: options.delete, checksum: options.checksum, deltaMinimumSize: options.deltaMinimumSize,
            localHash: { path in
                guard let tree, let file = try? tree.openFile(path), let info = try? file.stat() else { return nil }
                return try? FileHashing.sha256(of: file, length: info.size)
            }, notes: startUp.manifest.notes, localSpecials: startUp.local.specials))
        outcome.summary.filesUnchanged = plan.unchangedFiles
        outcome.summary.linksSkipped = plan.skippedLinks.count
        outcome.summary.specialSkipped = plan.specialFiles.map(\.description)
        outcome.summary.reservedSkipped = plan.reservedNames.map(\.description)
        for f in plan.fetches {
            if f.replaces {
                outcome.summary.plannedReplacements += 1
                outcome.summary.plannedReplacementBytes += f.entry.size
            } else {
                outcome.summary.plannedFetches += 1
                outcome.summary.plannedFetchBytes += f.entry.size
            }
        }
        outcome.summary.plannedDeletions = plan.deletions.count
        outcome.summary.plannedDeletionBytes = plan.bytesToDelete
        for (path, why) in plan.skippedLinks { outcome.onEvent(.warning("skipping symlink \(path): \(why)")) }
        Self.reportSkipped(plan, outcome.onEvent)
        outcome.onEvent(.planned(files: plan.fetches.count, bytes: plan.bytesToFetch, unchanged: plan.unchangedFiles,
                                 deletions: plan.deletions.count))
        for (path, why) in plan.conflicts { outcome.conflict(path, why) }
        for d in plan.unreadableDirectories {
            outcome.fail(d, "the server cannot read this directory, so its contents were not synced"
                         + (options.delete ? " (and nothing in it was deleted here)" : ""))
        }
        for p in plan.tooLong {
            let message = "its path is longer than \(FerryLimits.maxPathBytes) bytes, which ferry cannot transfer"
            outcome.summary.failures.append((p, message))
            outcome.onEvent(.failedPath(p, message))
        }
        return plan
    }

    /// A dry run: every action the plan holds, itemised, and the summary it would have.
    private func reportDryRun(_ plan: SyncPlan, local: LocalScan, _ outcome: inout Outcome) {
        let newDirs = Set(plan.newDirectories)
        let onEvent = outcome.onEvent
        for (p, type) in plan.replacements where newDirs.contains(p) {
            onEvent(.action("replace", p, size: type == .file ? local.entries[p]?.size ?? 0 : nil))
        }
        for d in plan.newDirectories { onEvent(.action("mkdir", d, size: nil)) }
        for f in plan.fetches { onEvent(.action(f.replaces ? "replace" : "fetch", f.entry.path, size: f.entry.size)) }
        for l in plan.links { onEvent(.action("link", l.path, size: nil)) }
        for (p, type) in plan.deletions {
            onEvent(.action("delete", p, size: type == .file ? local.entries[p]?.size ?? 0 : nil))
        }
        outcome.summary.filesFetched = plan.fetches.count
        outcome.summary.filesDeleted = plan.deletions.count
        outcome.summary.directoriesCreated = plan.newDirectories.count
        outcome.summary.linksCreated = plan.links.count
        outcome.summary.wireBytes = outcome.summary.manifestWireBytes
    }

    /// Warnings for what the server has that ferry does not copy (beyond symlinks).
    private static func reportSkipped(_ plan: SyncPlan, _ onEvent: (Event) -> Void) {
        func list(_ paths: [String]) -> String {
            paths.prefix(10).joined(separator: ", ") + (paths.count > 10 ? ", … (\(paths.count - 10) more)" : "")
        }
        let special = plan.specialFiles.map(\.description)
        if !special.isEmpty {
            onEvent(.warning("skipped \(special.count) special file\(special.count == 1 ? "" : "s") (FIFO, socket or device): \(list(special))"))
        }
        let kept = plan.keptLocalSpecials.map(\.description)
        if !kept.isEmpty {
            onEvent(.warning("left alone \(kept.count) special file\(kept.count == 1 ? "" : "s") (FIFO, socket or device) that only "
                             + "DEST has; --delete never removes them: \(list(kept))"))
        }
        let reserved = plan.reservedNames.map(\.description)
        if !reserved.isEmpty {
            onEvent(.warning("skipped \(reserved.count) entr\(reserved.count == 1 ? "y" : "ies") named as ferry's own files in DEST "
                             + "(.ferry-partial at the top, .~ferry-<16 hex digits>): \(list(reserved))"))
        }
    }

    /// Removes from DEST's partial folder everything but the partials named in `keeping` (and
    /// their sidecars), and the folder itself when that empties it. Only for a sync that holds
    /// DEST exclusively, so no live sync is using any of it.
    static func cleanPartialFolder(in tree: LocalTree, keeping keep: Set<String>, logger: Logger) {
        let fd = POSIX.openAt(tree.root.fd, SyncPlan.partialFolder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        guard fd >= 0 else { return }
        let folder = FileHandle(fd: fd)
        guard let names = try? POSIX.readDirectoryNames(folder.fd) else { return }
        let present = Set(names.map { String(decoding: $0, as: UTF8.self) })
        for name in names {
            let text = String(decoding: name, as: UTF8.self)
            let data = text.hasSuffix(".meta") ? String(text.dropLast(5)) : text
            // A partial is kept only whole: data and sidecar both there.
            if keep.contains(data) && present.contains(data) && present.contains(data + ".meta") { continue }
            guard let info = POSIX.statAt(folder.fd, name).0, info.type != .directory else { continue }
            if POSIX.unlinkAt(folder.fd, name) == 0 {
                logger.debug("removed \(text) left in the partial folder by an earlier run")
            }
        }
    }

    /// Removes the directory `path` if it is empty; false when it still holds something.
    static func removeEmptyDirectory(_ path: RemotePath, in tree: LocalTree) throws(SystemError) -> Bool {
        let (dir, name) = try tree.parent(of: path)
        if POSIX.removeDirectoryAt(dir.fd, name) == 0 { return true }
        switch errno {
        case ENOTEMPTY, EEXIST: return false
        case ENOENT: return true
        default: throw SystemError(errno: errno, operation: "remove directory", path: tree.display(path))
        }
    }

    private func fetchManifest(counter: ByteCounter) async throws -> Manifest {
        var tracker = RetryPolicy.Tracker(options.retry)
        while true {
            do {
                return try await FerryConnection.with(endpoint, options: options.connection, counter: counter) { c in
                    let root = try await c.stat(remotePath)
                    guard root.type == .directory else {
                        throw ClientError.server(endpoint: endpoint.description, request: "MANIFEST \(remotePath)",
                                                 ErrorReply(.wrongType, "\(remotePath) is not a directory (use `ferry get` for one file)"))
                    }
                    // What the server leaves out, too (a 1.0 server gets the plain request).
                    let m = try await c.manifest(remotePath, hashes: options.checksum, report: true)
                    await c.quit()
                    return m
                }
            } catch {
                let decision = tracker.record(FileFailure(error, serverAnsweredThisRun: counter.count > 0))
                guard let delay = decision.delay else { throw error }
                try await Task.sleep(for: delay)
            }
        }
    }

    /// What DEST holds (by path), and the temporaries found (and removed when stale) on the way.
    struct LocalScan {
        var entries: [RemotePath: Entry] = [:]
        var temporaries: [RemotePath] = []
        /// FIFOs, sockets and devices in DEST: never listed as entries, never replaced unasked.
        var specials: Set<RemotePath> = []
    }

    private func scanLocal(_ tree: LocalTree?) throws -> LocalScan {
        guard let tree else { return LocalScan() }
        let excludes = options.excludes
        let entries: [Entry]
        let notes: [ManifestNote]
        let temporaries = NIOLockedValueBox<[RemotePath]>([])
        do {
            (entries, notes) = try TreeWalker.walkReporting(directory: tree.root.fd, options: .init(exclude: { path, type in
                if type == .file && PartialFile.isTemporary(path) {
                    temporaries.withLockedValue { $0.append(path) }
                    return true
                }
                // The partial folder's name holds no `/`: equal bytes mean the top-level folder.
                return path.bytes == SyncPlan.partialFolder || excludes.excludes(path.bytes)
            }))
        } catch {
            switch error {
            case .io(let e): throw ClientError.local(e)
            case .tooManyEntries(let n): throw ClientError.local(SystemError(errno: E2BIG, operation: "scan (more than \(n) entries)", path: destination))
            }
        }
        var map: [RemotePath: Entry] = [:]
        map.reserveCapacity(entries.count)
        for e in entries { map[e.path] = e }
        var specials = Set<RemotePath>()
        for case .special(let path) in notes { specials.insert(path) }
        return LocalScan(entries: map, temporaries: temporaries.withLockedValue { $0 }, specials: specials)
    }
}

/// A lock on DEST (`flock` on its directory) held by every sync writing into it: shared while
/// it transfers, exclusive — taken without waiting — to clean up. A sync that gets it
/// exclusively knows no other live sync is using DEST, so every temporary and every stray file
/// of the partial folder was left by a run that is gone (the kernel drops a killed process's
/// locks). Nothing is created for it, and it lasts as long as the tree's descriptor is open.
enum DestinationLock {
    /// True: no other sync holds DEST. False: one does. Nil: the file system cannot lock.
    static func tryExclusive(_ tree: LocalTree) -> Bool? {
        if flock(tree.root.fd, LOCK_EX | LOCK_NB) == 0 { return true }
        return errno == EWOULDBLOCK ? false : nil
    }

    /// Holds DEST shared (converting an exclusive hold), waiting out another sync's cleanup —
    /// at most `within`: a sync that has held DEST alone for that long is stuck or very slow,
    /// and this one stops, saying so, rather than wait for ever.
    static func share(_ tree: LocalTree, within: Duration,
                      onWait: (Syncer.Event) -> Void) async throws {
        let deadline = ContinuousClock.now + within
        var told = false
        while true {
            if flock(tree.root.fd, LOCK_SH | LOCK_NB) == 0 { return }
            guard errno == EWOULDBLOCK || errno == EINTR else { return }  // cannot lock: go on unlocked
            if ContinuousClock.now >= deadline {
                throw ClientError.local(SystemError(
                    errno: EWOULDBLOCK, operation: "wait for", path: tree.rootPath,
                    detail: "another ferry sync into this folder has held it for \(within) (run this one again when that one has finished)"))
            }
            if !told {
                onWait(.warning("another ferry sync into \(tree.rootPath) is starting; waiting for it (at most \(within))"))
                told = true
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

extension Syncer {
    /// Removes temporaries a killed run left beside their targets. With the default age, one
    /// changed in the last minute may belong to a sync still running into the same directory,
    /// and is left alone; a sync holding DEST exclusively passes 0.
    func removeStaleTemporaries(_ paths: [RemotePath], in tree: LocalTree, olderThan seconds: Int64 = 60) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        for path in paths {
            guard let info = tree.lstat(path), info.type == .file,
                  Int64(now.tv_sec) - info.ctime.seconds >= seconds else { continue }
            if (try? tree.removeShallow(path)) != nil { logger.debug("removed a stale temporary \(tree.display(path))") }
        }
    }
}

extension Duration {
    var secondsDouble: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}
