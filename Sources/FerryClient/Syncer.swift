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

        public init(connection: ConnectionOptions = ConnectionOptions(), retry: RetryPolicy = RetryPolicy(),
                    resume: Bool = true, delete: Bool = false, dryRun: Bool = false, checksum: Bool = false,
                    excludes: ExcludeList = ExcludeList([]), parallel: Int = 2, window: Int = 32,
                    deltaMinimumSize: Int64 = 256 * 1024) {
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
        }
    }

    public enum Event: Sendable {
        case planned(files: Int, bytes: Int64, unchanged: Int, deletions: Int)
        case action(String, RemotePath)
        case fileStarted(RemotePath, size: Int64)
        /// Kept data of an interrupted run was verified: the file continues at `from`.
        case resuming(RemotePath, from: Int64, size: Int64)
        case fileFinished(RemotePath, size: Int64, delta: Bool)
        case failed(RemotePath, String)
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
        public var dryRun = false
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

    public func run(onEvent: @escaping @Sendable (Event) -> Void) async throws -> Summary {
        let start = ContinuousClock.now
        let manifestCounter = ByteCounter()
        // An existing DEST is scanned while the server builds and sends the manifest.
        let existing = try? LocalTree(path: destination, create: false)
        let earlyScan = existing.map { tree in Task { try self.scanLocal(tree) } }
        let manifest: Manifest
        do {
            manifest = try await fetchManifest(counter: manifestCounter)
        } catch {
            _ = try? await earlyScan?.value
            throw error
        }
        var summary = Summary()
        summary.manifestWireBytes = manifestCounter.count
        summary.dryRun = options.dryRun

        let tree: LocalTree?
        if let existing {
            tree = existing
        } else {
            do {
                tree = try LocalTree(path: destination, create: !options.dryRun)
            } catch {
                if options.dryRun && error.errno == ENOENT { tree = nil } else { throw ClientError.local(error) }
            }
        }
        let local: LocalScan
        if let earlyScan { local = try await earlyScan.value } else { local = try scanLocal(tree) }
        let plan = SyncPlan.make(.init(
            remote: manifest.entries, local: local.entries, excludes: options.excludes, delete: options.delete,
            checksum: options.checksum, deltaMinimumSize: options.deltaMinimumSize,
            localHash: { path in
                guard let tree, let file = try? tree.openFile(path), let info = try? file.stat() else { return nil }
                return try? FileHashing.sha256(of: file, length: info.size)
            }))
        summary.filesUnchanged = plan.unchangedFiles
        summary.linksSkipped = plan.skippedLinks.count
        for (path, why) in plan.skippedLinks { onEvent(.warning("skipping symlink \(path): \(why)")) }
        onEvent(.planned(files: plan.fetches.count, bytes: plan.bytesToFetch, unchanged: plan.unchangedFiles,
                         deletions: plan.deletions.count))

        if options.dryRun || tree == nil {
            for d in plan.newDirectories { onEvent(.action("mkdir", d)) }
            for f in plan.fetches { onEvent(.action(f.delta ? "update" : "fetch", f.entry.path)) }
            for l in plan.links { onEvent(.action("link", l.path)) }
            for (p, _) in plan.deletions { onEvent(.action("delete", p)) }
            summary.filesFetched = plan.fetches.count
            summary.filesDeleted = plan.deletions.count
            summary.directoriesCreated = plan.newDirectories.count
            summary.linksCreated = plan.links.count
            summary.wireBytes = summary.manifestWireBytes
            summary.seconds = (ContinuousClock.now - start).secondsDouble
            return summary
        }
        guard let tree else { return summary }  // unreachable: handled with the dry run above
        do { try tree.requireWritable() } catch { throw ClientError.local(error) }

        let failures = NIOLockedValueBox<[(path: String, message: String)]>([])
        func fail(_ path: RemotePath, _ message: String) {
            failures.withLockedValue { $0.append((path.description, message)) }
            onEvent(.failed(path, message))
        }

        // Directories first (parents before children), replacing anything else in the way.
        let newDirs = Set(plan.newDirectories)
        var failedDirs: [RemotePath] = []
        for d in plan.directories where newDirs.contains(d.path) {
            if failedDirs.contains(where: { d.path.hasPrefix($0) }) { continue }
            do {
                if let existing = tree.lstat(d.path), existing.type != .directory { try tree.remove(d.path) }
                try tree.makeDirectory(d.path, mode: d.mode)
                summary.directoriesCreated += 1
            } catch {
                failedDirs.append(d.path)
                fail(d.path, error.description)
            }
        }

        // Files.
        let fetches = plan.fetches.filter { f in !failedDirs.contains(where: { f.entry.path.hasPrefix($0) }) }
        let transfer = SyncTransfer(endpoint: endpoint, tree: tree, options: options, logger: logger,
                                    base: remotePath, onEvent: onEvent)
        let result = try await transfer.run(fetches)
        summary.filesFetched = result.fetched
        summary.deltaFiles = result.delta
        summary.bytesWritten = result.bytesWritten
        summary.wireBytes = summary.manifestWireBytes + result.wireBytes
        for (p, m) in result.failures { fail(p, m) }

        // Symlinks.
        for l in plan.links {
            guard let target = l.target else { continue }
            do {
                if tree.lstat(l.path) != nil { try tree.remove(l.path) }
                try tree.makeSymlink(l.path, target: target)
                tree.setLinkMtime(l.path, mtime: l.mtime)
                summary.linksCreated += 1
            } catch {
                fail(l.path, error.description)
            }
        }

        // Deletions, children first. A directory is removed only when that left it empty: one
        // that still holds entries the scan did not list (excluded ones) is kept.
        for (path, type) in plan.deletions {
            do {
                if type == .directory {
                    guard try Self.removeEmptyDirectory(path, in: tree) else { continue }
                } else {
                    try tree.remove(path)
                }
                summary.filesDeleted += 1
                onEvent(.action("deleted", path))
            } catch {
                fail(path, error.description)
            }
        }

        // Attributes: unchanged files needing a fix, then directories children-first (adding
        // entries changed their mtimes).
        for e in plan.attributeFixes {
            do { try tree.setAttributes(e.path, mode: e.mode, mtime: e.mtime) } catch { fail(e.path, error.description) }
        }
        // Only directories whose entries changed here (which moved their mtime), or whose mode or
        // mtime differ, are touched: a no-op re-sync of a large tree sets nothing.
        var touched = Set<RemotePath>()
        if !fetches.isEmpty { touched.insert(.root) }  // the partial folder came and went
        for f in fetches { touched.insert(f.entry.path.parent ?? .root) }
        for l in plan.links { touched.insert(l.path.parent ?? .root) }
        for (p, _) in plan.deletions { touched.insert(p.parent ?? .root) }
        for d in plan.newDirectories { touched.insert(d); touched.insert(d.parent ?? .root) }
        for p in local.temporaries { touched.insert(p.parent ?? .root) }
        for d in plan.directories.reversed() where !failedDirs.contains(where: { d.path.hasPrefix($0) }) {
            if !touched.contains(d.path), let l = local.entries[d.path], l.type == .directory,
               l.mtime == d.mtime, l.mode == LocalTree.applicableMode(d.mode) { continue }
            do { try tree.setAttributes(d.path, mode: d.mode, mtime: d.mtime) } catch { fail(d.path, error.description) }
        }
        transfer.removePartialFolderIfEmpty()

        summary.failures = failures.withLockedValue { $0 }
        summary.seconds = (ContinuousClock.now - start).secondsDouble
        return summary
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
        var attempt = 0
        while true {
            do {
                return try await FerryConnection.with(endpoint, options: options.connection, counter: counter) { c in
                    let root = try await c.stat(remotePath)
                    guard root.type == .directory else {
                        throw ClientError.server(endpoint: endpoint.description, request: "MANIFEST \(remotePath)",
                                                 ErrorReply(.wrongType, "\(remotePath) is not a directory (use `ferry get` for one file)"))
                    }
                    let m = try await c.manifest(remotePath, hashes: options.checksum)
                    await c.quit()
                    return m
                }
            } catch let error as ClientError
                        where error.isRetryable(serverAnsweredThisRun: counter.count > 0) && attempt < options.retry.retries {
                attempt += 1
                try await Task.sleep(for: options.retry.delay(afterAttempt: attempt - 1))
            }
        }
    }

    /// What DEST holds (by path), and the temporaries found (and removed when stale) on the way.
    struct LocalScan {
        var entries: [RemotePath: Entry] = [:]
        var temporaries: [RemotePath] = []
    }

    private func scanLocal(_ tree: LocalTree?) throws -> LocalScan {
        guard let tree else { return LocalScan() }
        let excludes = options.excludes
        let entries: [Entry]
        let temporaries = NIOLockedValueBox<[RemotePath]>([])
        defer { removeStaleTemporaries(temporaries.withLockedValue { $0 }, in: tree) }
        do {
            entries = try TreeWalker.walk(directory: tree.root.fd, options: .init(exclude: { path, type in
                if type == .file && PartialFile.isTemporaryName(path.name) {
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
        return LocalScan(entries: map, temporaries: temporaries.withLockedValue { $0 })
    }
}

extension Syncer {
    /// Removes temporaries a killed run left beside their targets. One changed in the last
    /// minute may belong to a sync still running into the same directory, and is left alone.
    func removeStaleTemporaries(_ paths: [RemotePath], in tree: LocalTree, olderThan seconds: Int64 = 60) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        for path in paths {
            guard let info = tree.lstat(path), info.type == .file,
                  Int64(now.tv_sec) - info.ctime.seconds >= seconds else { continue }
            if (try? tree.remove(path)) != nil { logger.debug("removed a stale temporary \(tree.display(path))") }
        }
    }
}

extension Duration {
    var secondsDouble: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}
