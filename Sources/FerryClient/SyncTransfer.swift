#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import Logging
import NIOConcurrencyHelpers

/// The file phase of a sync: several connections, each with many pipelined `GET`s in
/// flight, pulling jobs from one queue. A dropped connection puts its unfinished jobs back
/// (their partial data kept) and reconnects with backoff; a job whose file changed on the
/// server is re-stat'ed and fetched whole. A file that fails on its own (an `ERR` reply to its
/// `GET`, a corrupt chunk, a SHA-256 mismatch) fails alone: the error is that `GET`'s reply,
/// the connection goes on with the replies behind it, and the file is given up at once
/// (permanent causes) or after a few attempts with backoff (`FileFailure`).
final class SyncTransfer: Sendable {
    struct Job: Sendable {
        var entry: Entry
        var delta: Bool
        /// May be built from chunks already in DEST (`CHUNKS`, when the server speaks `cdc`).
        var reuse = false
        /// The manifest's identity is stale: STAT again before fetching.
        var restat = false
        var changes = 0
        /// Failed attempts of this file alone (verification, a read error on the server).
        var failures = 0
        /// After a failure of its own, not tried again before this.
        var notBefore: ContinuousClock.Instant?
    }

    /// The rest of a failed file's reply is read and dropped when at most this much is left
    /// (so the connection carries on); a longer rest is cheaper to abandon with the connection.
    static let drainLimit: Int64 = 8 << 20

    struct Result: Sendable {
        var fetched = 0
        var delta = 0
        var bytesWritten: Int64 = 0
        var wireBytes: Int64 = 0
        var failures: [(RemotePath, String)] = []
    }

    private struct Queue {
        var jobs: [Job] = []
        var next = 0
        var requeued: [Job] = []
        /// Jobs waiting out a backoff after a failure of their own.
        var delayed: [Job] = []
        var fatal: Error?
        /// Why the last worker to give up on its connection did so.
        var gaveUp: String?
    }

    let endpoint: Endpoint
    let tree: LocalTree
    let options: Syncer.Options
    let logger: Logger
    let base: RemotePath
    let onEvent: @Sendable (Syncer.Event) -> Void
    let counter = ByteCounter()
    private let queue = NIOLockedValueBox(Queue())
    private let result = NIOLockedValueBox(Result())
    let partialDirPath: String
    /// Names in the partial folder: those found when the transfer started, plus the partials it
    /// made. Only a job whose name is here can have data to resume, so the others skip the probe.
    private let partialNames = NIOLockedValueBox(Set<String>())
    /// Verified bytes of kept partials announced before the transfer (`.kept`), by path, until
    /// each file's resume says how much the server confirmed.
    private let keptEstimates = NIOLockedValueBox([RemotePath: Int64]())
    /// Recently used directories of DEST, open, for temporaries beside their targets.
    private let directories: DirectoryCache
    /// The chunks already in DEST (nil: nothing to reuse).
    private let index: LocalChunkIndex?
    /// Files smaller than this are fetched whole: their chunk map would cost more than a few
    /// percent of them.
    static let reuseMinimumSize = Int64(ContentChunker.minSize)

    init(endpoint: Endpoint, tree: LocalTree, options: Syncer.Options, logger: Logger, base: RemotePath,
         index: LocalChunkIndex? = nil, onEvent: @escaping @Sendable (Syncer.Event) -> Void) {
        self.index = index.flatMap { $0.isEmpty ? nil : $0 }
        self.endpoint = endpoint
        self.tree = tree
        self.options = options
        self.logger = logger
        self.base = base
        self.onEvent = onEvent
        self.partialDirPath = (tree.rootPath.hasSuffix("/") ? tree.rootPath : tree.rootPath + "/")
            + String(decoding: SyncPlan.partialFolder, as: UTF8.self)
        self.directories = DirectoryCache(tree: tree)
    }

    func run(_ fetches: [SyncPlan.Fetch]) async throws -> Result {
        guard !fetches.isEmpty else { return Result() }
        let partialDir = try openPartialFolder()
        // Unreadable: nothing to resume is known, so every file starts afresh.
        let names = (try? POSIX.readDirectoryNames(partialDir.fd)) ?? []
        partialNames.withLockedValue { $0 = Set(names.map { String(decoding: $0, as: UTF8.self) }) }
        announceKeptData(fetches)
        let reusing = index != nil
        let jobs = fetches.map { f in
            // An old copy of the same size was most likely overwritten in place: the aligned
            // `BLOCKS` delta costs less there (exact block edges, a smaller map) than a chunk map.
            let inPlace = f.delta && tree.lstat(f.entry.path)?.size == f.entry.size
            return Job(entry: f.entry, delta: f.delta, reuse: reusing && f.entry.size >= Self.reuseMinimumSize && !inPlace)
        }
        queue.withLockedValue { $0.jobs = jobs }
        let workers = max(1, min(options.parallel, fetches.count))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<workers {
                group.addTask { try await self.worker(partialDir: partialDir) }
            }
            try await group.waitForAll()
        }
        if let fatal = queue.withLockedValue({ $0.fatal }) { throw fatal }
        // Jobs put back by a worker that gave up after the others had finished.
        let (left, why) = queue.withLockedValue { q -> ([Job], String?) in
            defer { q.requeued.removeAll(); q.delayed.removeAll(); q.next = q.jobs.count }
            return (q.requeued + q.delayed + q.jobs[q.next...], q.gaveUp)
        }
        for job in left { failed(job, why ?? "not fetched: no connection to the server was left") }
        var r = result.withLockedValue { $0 }
        r.wireBytes = counter.count
        return r
    }

    private func openPartialFolder() throws(ClientError) -> FileHandle {
        let name = SyncPlan.partialFolder
        if POSIX.makeDirectoryAt(tree.root.fd, name, mode: 0o700) != 0, errno != EEXIST {
            throw .local(SystemError(errno: errno, operation: "create directory", path: partialDirPath))
        }
        let fd = POSIX.openAt(tree.root.fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        guard fd >= 0 else { throw .local(SystemError(errno: errno, operation: "open", path: partialDirPath)) }
        return FileHandle(fd: fd)
    }

    func removePartialFolderIfEmpty() {
        _ = POSIX.removeDirectoryAt(tree.root.fd, SyncPlan.partialFolder)
    }

    /// Where a file's partial data lives: named by a hash of its path, so any path fits.
    func partialPath(for path: RemotePath) -> String {
        partialDirPath + "/" + partialName(for: path)
    }

    func partialName(for path: RemotePath) -> String { Self.partialName(for: path) }

    static func partialName(for path: RemotePath) -> String {
        SHA256Hasher.hex(path.bytes).prefix(40) + ".part"
    }

    /// Whether the partial folder may hold data of `path` from an earlier attempt.
    private func mayHavePartial(_ path: RemotePath) -> Bool {
        if partialNames.withLockedValue({ $0.isEmpty }) { return false }
        let name = partialName(for: path)
        return partialNames.withLockedValue { $0.contains(name) }
    }

    /// Whether a kept partial of `path` holds verified data (which must be checked first).
    private func hasKeptData(_ path: RemotePath) -> Bool {
        mayHavePartial(path) && (PartialFile.existing(at: partialPath(for: path))?.1 ?? 0) > 0
    }


    /// Tells the progress display, before any transfer, how much verified data earlier runs
    /// kept for this run's files (what their sidecars say), so a resumed sync's progress
    /// starts from what is already there. `.resuming` later corrects each file's share by what
    /// the server confirmed.
    private func announceKeptData(_ fetches: [SyncPlan.Fetch]) {
        guard !partialNames.withLockedValue({ $0.isEmpty }) else { return }
        var estimates: [RemotePath: Int64] = [:]
        for f in fetches where mayHavePartial(f.entry.path) {
            guard let (identity, verified) = PartialFile.existing(at: partialPath(for: f.entry.path)),
                  identity.size == f.entry.size, identity.mtime == f.entry.mtime, verified > 0 else { continue }
            estimates[f.entry.path] = verified
        }
        let total = estimates.values.reduce(0, +)
        guard total > 0 else { return }
        keptEstimates.withLockedValue { $0 = estimates }
        onEvent(.kept(bytes: total))
    }

    /// The next job that may run now (not one still waiting out its backoff).
    fileprivate func nextJob() -> Job? {
        queue.withLockedValue { q in
            if q.fatal != nil { return nil }
            if !q.requeued.isEmpty { return q.requeued.removeFirst() }
            let now = ContinuousClock.now
            if let ready = q.delayed.firstIndex(where: { ($0.notBefore ?? now) <= now }) { return q.delayed.remove(at: ready) }
            guard q.next < q.jobs.count else { return nil }
            defer { q.next += 1 }
            return q.jobs[q.next]
        }
    }

    /// How long until a job waiting out its backoff may run; nil when none waits.
    private func timeUntilDelayedJob() -> Duration? {
        queue.withLockedValue { q in
            guard q.fatal == nil, let first = q.delayed.compactMap(\.notBefore).min() else { return nil }
            return max(.zero, first - ContinuousClock.now)
        }
    }

    private func requeue(_ jobs: [Job]) {
        queue.withLockedValue { $0.requeued.append(contentsOf: jobs) }
    }

    /// What a failure of `job` alone means: given up now (permanent), or tried again later, up
    /// to the policy's `fileAttempts`, with backoff. Errors that are not the file's own are rethrown.
    private func fileFailed(_ job: Job, _ error: Error) throws {
        let failure = FileFailure(error)
        switch failure {
        case .connection, .fatal:
            throw error
        case .permanent(let message), .transient(let message):
            switch options.retry.decision(after: failure, connectionFailuresBefore: 0, fileFailuresBefore: job.failures) {
            case .retryFile(let attempt, let of, let delay):
                var again = job
                again.failures += 1
                // Tried again the plain way: the failure may have come from reused data (a
                // local file that changed, a chunk map whose hashes lied).
                again.reuse = false
                again.notBefore = .now + delay
                onEvent(.retrying("\(job.entry.path): \(message); trying it again in \(delay) (attempt \(attempt) of \(of))"))
                queue.withLockedValue { $0.delayed.append(again) }
            case .giveUp, .reconnect:
                let attempts = job.failures + 1
                failed(job, failure.isTransient ? "\(message) (gave up after \(attempts) attempts)" : message)
            }
        }
    }

    private func failed(_ job: Job, _ message: String) {
        result.withLockedValue { $0.failures.append((job.entry.path, message)) }
    }

    /// A worker: one connection at a time, reconnecting after failures while it has work.
    private func worker(partialDir: FileHandle) async throws {
        var tracker = RetryPolicy.Tracker(options.retry)
        let state = WorkerState()
        while true {
            let progressBefore = (state.completed, state.bytes)
            do {
                try await FerryConnection.with(endpoint, options: options.connection, counter: counter) { connection in
                    try await self.serve(connection, state: state, partialDir: partialDir)
                }
                return
            } catch is ConnectionAbandoned {
                // The failed file is dealt with; the others go back, none charged with it.
                state.current = nil
                requeue(state.takeAll())
                continue
            } catch {
                requeue(state.takeAll())
                // (A refused connection is retried too: this server sent the manifest moments
                // ago, so it is restarting.) Only failures in a row without progress (a file or
                // a verified chunk) count.
                // A file's own failures were dealt with (`fileFailed`); one that reaches here was
                // met outside any file, so it counts against the connection.
                let progressed = state.completed > progressBefore.0 || state.bytes > progressBefore.1
                var failure = FileFailure(error, serverAnsweredThisRun: true)
                if failure.isTransient { failure = .connection }
                switch tracker.record(failure, progressed: progressed) {
                case .reconnect(let attempt, let of, let delay):
                    onEvent(.retrying("\(error); reconnecting (\(attempt)/\(of)) in \(delay)"))
                    try await Task.sleep(for: delay)
                case .giveUp where failure == .connection:
                    // The jobs stay queued for the other workers; those left when every worker
                    // has finished fail with this message (see `run`).
                    let message = "\(error) — gave up after \(options.retry.retries) retries"
                    queue.withLockedValue { $0.gaveUp = message }
                    return
                case .giveUp, .retryFile:
                    queue.withLockedValue { if $0.fatal == nil { $0.fatal = error } }
                    throw error
                }
            }
        }
    }

    /// A file failed in a way that left its reply half-read; reconnect and go on.
    struct ConnectionAbandoned: Error {}

    /// Jobs a worker holds, so they can be put back if its connection drops.
    final class WorkerState {
        /// Jobs whose `GET` is sent and whose reply has not been read yet.
        var pending: [Job] = []
        var current: Job?
        /// Jobs this worker took and runs next, before any other (see `prefetchChunkMaps`).
        var ready: [Job] = []
        /// Chunk maps read ahead on the current connection, by path (or the error that was
        /// the answer); used once by `reuseFetch`.
        var maps: [RemotePath: Swift.Result<FerryConnection.ChunkMapAnswer, Error>] = [:]
        var completed = 0
        /// Verified bytes written by this worker.
        var bytes: Int64 = 0

        func takeAll() -> [Job] {
            var jobs = pending + ready
            if let current { jobs.insert(current, at: 0) }
            pending.removeAll()
            ready.removeAll()
            maps.removeAll()
            current = nil
            return jobs
        }

        /// The next job: one this worker already took, or the queue's.
        func next(_ transfer: SyncTransfer) -> Job? {
            ready.isEmpty ? transfer.nextJob() : ready.removeFirst()
        }
    }

    private func serve(_ connection: FerryConnection, state: WorkerState, partialDir: FileHandle) async throws {
        while true {
            var batch: [Request] = []
            var special: Job?
            // Refill the pipeline once half of it has drained, so requests go out in batches
            // (one write for many) rather than one write per reply.
            let refill = state.pending.count <= options.window / 2
            while refill, state.pending.count < options.window, let job = state.next(self) {
                if job.delta || job.restat || hasKeptData(job.entry.path) || (job.reuse && connection.enabled.contains(.cdc)) {
                    special = job
                    break
                }
                // Without kept data a pipelined file is fetched whole; where it is written is only
                // created when its reply comes up (an interruption leaves no empty files behind).
                batch.append(.get(base.appending(job.entry.path), offset: 0, length: nil,
                                  validator: identity(of: job.entry).validator))
                state.pending.append(job)
            }
            if let job = special, !state.pending.isEmpty {
                // It needs round trips of its own: back to the queue until the pipeline drains
                // (before the send below can fail, or the job would be lost with the connection).
                requeueFront(job)
                special = nil
            }
            if !batch.isEmpty { try await connection.send(batch) }
            // Handle one reply, or (once nothing is in flight) the job that needs round trips.
            if state.pending.isEmpty {
                guard let job = special else {
                    // Only files waiting out a backoff are left: wait for the first of them.
                    guard let wait = timeUntilDelayedJob() else { return }
                    try await Task.sleep(for: wait)
                    continue
                }
                state.current = job
                try await prefetchChunkMaps(for: job, connection, state: state)
                try await runInteractive(job, connection, state: state, partialDir: partialDir)
                state.maps[job.entry.path] = nil  // unused when the job went another way
                state.current = nil
                continue
            }
            let job = state.pending.removeFirst()
            state.current = job
            let transfer: FileTransfer
            do {
                transfer = try makeTransfer(job, identity: identity(of: job.entry))
                // The request asked for the whole file: never append it to older data.
                if transfer.partial.verified > 0 { try transfer.partial.truncate(to: 0) }
            } catch {
                // A file that cannot even be started (say, its directory is not writable)
                // fails alone; a full or read-only disk stops the sync.
                let local: SystemError? = switch error {
                case let e as ClientError: if case .local(let l) = e { l } else { nil }
                case let e as SystemError: e
                default: nil
                }
                guard let local, !local.stopsTheSync else { throw error }
                failed(job, local.description)
                try await Self.skipReply(on: connection, for: job.entry.path)
                state.current = nil
                continue
            }
            try await receive(job, transfer, connection, partialDir: partialDir) {
                try await transfer.receive(on: connection) { self.onBytes($0, state) }
            }
            state.current = nil
            state.completed += 1
        }
    }

    /// Reads and drops the reply to a `GET` whose file could not be started.
    private static func skipReply(on connection: FerryConnection, for path: RemotePath) async throws {
        guard case .ok = try await connection.read(GetHead.self, for: "GET \(path)") else { return }
        while true {
            switch try await connection.nextStreamItem() {
            case .chunk: continue
            case .end, .error: return
            }
        }
    }

    private func requeueFront(_ job: Job) {
        queue.withLockedValue { $0.requeued.insert(job, at: 0) }
    }

    private func onBytes(_ n: Int, _ state: WorkerState) {
        state.bytes += Int64(n)
        result.withLockedValue { $0.bytesWritten += Int64(n) }
        onEvent(.bytes(n))
    }

    private func identity(of entry: Entry) -> PartialIdentity {
        PartialIdentity(size: entry.size, mtime: entry.mtime, sha256: entry.sha256)
    }

    /// The transfer of one file. A file that arrives in one chunk goes to a temporary beside
    /// its target (nothing in it could be resumed); larger ones to a resumable partial.
    private func makeTransfer(_ job: Job, identity: PartialIdentity) throws(ClientError) -> FileTransfer {
        let serverPath = base.appending(job.entry.path)
        if identity.size <= Int64(FerryLimits.defaultChunkSize) && !mayHavePartial(job.entry.path) {
            let parent = job.entry.path.parent ?? .root
            do {
                let directory = try directories.open(parent)
                let partial = try PartialFile.temporary(in: directory, directoryDisplay: tree.display(parent),
                                                        for: identity, label: serverPath.description)
                return FileTransfer(path: serverPath, identity: identity, partial: partial)
            } catch {
                throw .local(error)
            }
        }
        let name = partialName(for: job.entry.path)
        partialNames.withLockedValue { _ = $0.insert(name) }
        return try FileTransfer(path: serverPath, identity: identity,
                                partialPath: partialPath(for: job.entry.path), resume: options.resume)
    }

    /// Runs `body` (which reads one file's reply stream), then finishes the file. A failure of
    /// this file alone is dealt with here (`fileFailed`); if it left the reply unfinished the
    /// connection is abandoned (`ConnectionAbandoned`) and the jobs behind it go back to the
    /// queue. Connection-level errors propagate.
    private func receive(_ job: Job, _ transfer: FileTransfer, _ connection: FerryConnection, partialDir: FileHandle,
                         delta: Bool = false, _ body: () async throws -> String) async throws {
        onEvent(.fileStarted(job.entry.path, size: job.entry.size))
        transfer.drainLimit = Self.drainLimit
        do {
            let sha = try await body()
            try await transfer.complete(expected: sha)
            do {
                try transfer.partial.finish(into: tree, at: job.entry.path, partialDir: partialDir,
                                            mode: job.entry.mode, mtime: job.entry.mtime)
            } catch {
                throw ClientError.local(error)
            }
            result.withLockedValue {
                $0.fetched += 1
                if delta { $0.delta += 1 }
            }
            onEvent(.fileFinished(job.entry.path, size: job.entry.size, delta: delta))
        } catch let changed as FileTransfer.Changed {
            changedOnServer(job, changed)
            if !transfer.replyConsumed { throw ConnectionAbandoned() }
        } catch {
            try fileFailed(job, error)
            if !transfer.replyConsumed { throw ConnectionAbandoned() }
        }
    }

    /// The file changed on the server: fetch it again, whole, after a fresh STAT (a few times).
    private func changedOnServer(_ job: Job, _ changed: FileTransfer.Changed) {
        var again = job
        again.restat = true
        again.delta = false
        again.changes += 1
        if again.changes > 3 {
            failed(job, "keeps changing on the server; run the sync again when it is stable")
        } else {
            logger.info("\(changed.path) changed on the server; fetching it again")
            requeue([again])
        }
    }

    /// Jobs that need round trips before their data can be requested: a re-stat, the
    /// verification of kept partial data, or block matching against an old local copy. Every
    /// reply before the data is read whole, so a failure there is this file's alone.
    private func runInteractive(_ job: Job, _ connection: FerryConnection, state: WorkerState, partialDir: FileHandle) async throws {
        let serverPath = base.appending(job.entry.path)
        var current = job
        let transfer: FileTransfer
        do {
            if job.restat {
                let now = try await connection.stat(serverPath)
                guard now.type == .file else {
                    failed(job, "is no longer a regular file on the server")
                    return
                }
                current.entry.size = now.size
                current.entry.mtime = now.mtime
                current.entry.sha256 = nil
            }
            transfer = try makeTransfer(current, identity: identity(of: current.entry))
            try await transfer.verifyKeptData(on: connection)
        } catch let changed as FileTransfer.Changed {
            changedOnServer(current, changed)
            return
        } catch {
            try fileFailed(job, error)
            return
        }
        let entry = current.entry
        let announced = keptEstimates.withLockedValue { $0.removeValue(forKey: job.entry.path) } ?? 0
        if transfer.resumedFrom > 0 || announced > 0 {
            onEvent(.resuming(entry.path, from: transfer.resumedFrom, size: entry.size, announced: announced))
        }
        let useDelta = current.delta && !current.restat
        let reuse = current.reuse && !current.restat && connection.enabled.contains(.cdc)
        try await receive(current, transfer, connection, partialDir: partialDir, delta: useDelta || reuse) {
            if reuse, let sha = try await self.appendFetch(current, transfer, connection, state) {
                return sha
            }
            if reuse, let sha = try await self.reuseFetch(current, transfer, connection, state) {
                return sha
            }
            if useDelta {
                return try await self.deltaFetch(current, transfer, connection, state)
            }
            try await connection.send(transfer.request())
            return try await transfer.receive(on: connection) { self.onBytes($0, state) }
        }
    }

    /// Rebuilds a changed file from the blocks of the old local copy that still match the
    /// server's block hashes, fetching only the other ranges (all requested at once).
    private func deltaFetch(_ job: Job, _ transfer: FileTransfer, _ connection: FerryConnection,
                            _ state: WorkerState) async throws -> String {
        let serverPath = transfer.path
        let size = transfer.identity.size
        let blocks: FerryConnection.BlockList
        do {
            blocks = try await connection.blocks(serverPath, validator: transfer.identity.validator)
        } catch let ClientError.server(_, _, reply) where reply.knownCode == .changed {
            transfer.partial.discard()
            throw FileTransfer.Changed(path: serverPath, now: reply.current)
        }
        let old: FileHandle
        do { old = try tree.openFile(job.entry.path) } catch { throw ClientError.local(error) }
        let oldSize = (try? old.stat().size) ?? 0
        let bs = Int64(blocks.blockSize)

        // Runs of [start, end) that are local (true) or remote (false), from the kept prefix on.
        var runs: [(Int64, Int64, Bool)] = []
        var position = transfer.partial.verified
        while position < size {
            let index = Int(position / bs)
            let blockStart = Int64(index) * bs
            let blockEnd = min(size, blockStart + bs)
            var local = false
            if position == blockStart, blockEnd <= oldSize, index < blocks.hashes.count {
                if let bytes = try? old.read(count: Int(blockEnd - blockStart), at: blockStart),
                   SHA256Hasher.hex(bytes) == blocks.hashes[index] {
                    local = true
                }
            }
            if let last = runs.last, last.2 == local, last.1 == position {
                runs[runs.count - 1].1 = blockEnd
            } else {
                runs.append((position, blockEnd, local))
            }
            position = blockEnd
        }
        let remote = runs.filter { !$0.2 }
        try await connection.send(remote.map {
            .get(serverPath, offset: $0.0, length: $0.1 - $0.0, validator: transfer.identity.validator)
        })
        var sha: String?
        // Replies to the ranged GETs not read yet: after a failure with any left, the
        // connection cannot carry another reply.
        var unread = remote.count
        do {
            for (start, end, local) in runs {
                if local {
                    var p = start
                    while p < end {
                        let n = Int(min(Int64(1 << 20), end - p))
                        let bytes: [UInt8]
                        do { bytes = try old.read(count: n, at: p) } catch { throw ClientError.local(error) }
                        try await transfer.appendVerified(bytes)
                        result.withLockedValue { $0.bytesWritten += Int64(bytes.count) }
                        p += Int64(n)
                    }
                } else {
                    do { sha = try await transfer.receive(on: connection, until: end) { self.onBytes($0, state) } } catch {
                        if transfer.replyConsumed { unread -= 1 }
                        throw error
                    }
                    unread -= 1
                }
            }
        } catch {
            if unread > 0 { transfer.markReplyUnfinished() }
            throw error
        }
        if let sha { return sha }
        if let known = transfer.identity.sha256 { return known }
        return try await connection.hash(serverPath, offset: 0, length: size, validator: transfer.identity.validator)
    }
}

extension SyncTransfer {
    /// Chunk maps asked for together: one request per file costs a round trip and a few packets
    /// each, which for a renamed folder of small files is most of the wire bytes. With `job`
    /// (which needs a map) up to `mapBatch` of the jobs that follow it and need one too are
    /// taken, their `CHUNKS` sent in one write and the maps read and kept for `reuseFetch`;
    /// the other jobs taken meanwhile wait in `state.ready`, in order.
    fileprivate func prefetchChunkMaps(for job: Job, _ connection: FerryConnection, state: WorkerState) async throws {
        // A file with an old copy may be an append (`appendFetch`), which needs no map.
        guard wantsMap(job, connection), !job.delta, state.maps[job.entry.path] == nil else { return }
        var batch = [job]
        var others: [Job] = []
        while batch.count < Self.mapBatch, let next = state.next(self) {
            if wantsMap(next, connection) && !next.delta && next.entry.size <= Self.mapBatchFileSize {
                batch.append(next)
            } else {
                others.append(next)
                if others.count >= Self.mapBatch { break }
            }
        }
        // Before anything is sent: a dropped connection gives them back (`takeAll`).
        state.ready = Array(batch.dropFirst()) + others + state.ready
        guard batch.count > 1 else { return }
        try await connection.send(batch.map { .chunks(base.appending($0.entry.path), validator: identity(of: $0.entry).validator) })
        for b in batch {
            do {
                state.maps[b.entry.path] = .success(try await connection.readChunkMap(base.appending(b.entry.path)))
            } catch let error as ClientError {
                guard case .server = error else { throw error }
                state.maps[b.entry.path] = .failure(error)
            }
        }
    }

    static let mapBatch = 32
    /// Larger files ask for their map alone (a batch holds every map in memory at once).
    static let mapBatchFileSize: Int64 = 64 << 20

    private func wantsMap(_ job: Job, _ connection: FerryConnection) -> Bool {
        index != nil && job.reuse && !job.restat && connection.enabled.contains(.cdc)
    }

    /// An old copy shorter than the new file is most often its start (an append: a log, a
    /// growing archive). One `HASH` of that prefix, compared with the old copy's SHA-256
    /// (computed meanwhile), decides: then the old copy is copied and only the new end is
    /// fetched — less than any map. Returns nil, having written nothing, when it is not an append.
    fileprivate func appendFetch(_ job: Job, _ transfer: FileTransfer, _ connection: FerryConnection,
                                 _ state: WorkerState) async throws -> String? {
        guard job.delta, transfer.partial.verified == 0, let old = try? tree.openFile(job.entry.path),
              let info = try? old.stat(), info.type == .file, info.size >= Self.reuseMinimumSize,
              info.size < transfer.identity.size else { return nil }
        try await connection.send(.hash(transfer.path, offset: 0, length: info.size, validator: transfer.identity.validator))
        let local: String
        do {
            local = try FileHashing.sha256(of: old, length: info.size)
        } catch {
            transfer.markReplyUnfinished()
            throw ClientError.local(error)
        }
        let remote: String
        do {
            remote = try await connection.expect(HashReply.self, for: "HASH \(transfer.path)").sha256
        } catch let ClientError.server(_, _, reply) where reply.knownCode == .changed {
            transfer.partial.discard()
            throw FileTransfer.Changed(path: transfer.path, now: reply.current)
        }
        guard local == remote else { return nil }
        // Copied after the check: if the old copy changes in between, the file's SHA-256 fails
        // and it is fetched again without reuse.
        var position: Int64 = 0
        while position < info.size {
            let n = Int(min(Int64(1 << 20), info.size - position))
            let bytes: [UInt8]
            do { bytes = try old.read(count: n, at: position) } catch { throw ClientError.local(error) }
            guard bytes.count == n else {
                throw ClientError.integrity(path: transfer.path.description, "the old copy became shorter while it was reused")
            }
            try await transfer.appendVerified(bytes)
            result.withLockedValue { $0.bytesWritten += Int64(n) }
            position += Int64(n)
        }
        try await connection.send(transfer.request())
        return try await transfer.receive(on: connection) { self.onBytes($0, state) }
    }

    /// Builds a file from chunks already in DEST and ranged `GET`s of the others, after the
    /// server's chunk map (`CHUNKS`). Returns nil when there is no usable map (the server
    /// refused it, or the map broke the protocol's rules: said as a warning), so the caller
    /// fetches the file another way.
    fileprivate func reuseFetch(_ job: Job, _ transfer: FileTransfer, _ connection: FerryConnection,
                                _ state: WorkerState) async throws -> String? {
        guard let index else { return nil }
        let serverPath = transfer.path
        let identity = transfer.identity
        let answer: FerryConnection.ChunkMapAnswer
        do {
            if let known = state.maps.removeValue(forKey: job.entry.path) {
                answer = try known.get()
            } else {
                answer = try await connection.chunkMap(serverPath, validator: identity.validator)
            }
        } catch let ClientError.server(_, _, reply) {
            if reply.knownCode == .changed {
                transfer.partial.discard()
                throw FileTransfer.Changed(path: serverPath, now: reply.current)
            }
            logger.info("\(serverPath): no chunk map (\(reply)); fetching it another way")
            return nil
        }
        let chunks: [ChunkRecord], sha: String
        switch answer {
        case .refused(let why):
            onEvent(.warning("\(serverPath): refused the server's chunk map (\(why)); fetching the file without it"))
            return nil
        case .map(let head, let map, let whole):
            guard head.size == identity.size, head.mtime == identity.mtime else {
                throw connection.violation("CHUNKS \(serverPath) answered for a different version of the file than the validator named")
            }
            (chunks, sha) = (map, whole)
        }
        let plan = ReusePlan.make(chunks, from: transfer.partial.verified, index: index)
        let ranges = plan.remoteRanges
        try await connection.send(ranges.map { .get(serverPath, offset: $0.start, length: $0.end - $0.start, validator: identity.validator) })
        // Replies to the ranged GETs not read yet: after a failure with any left, the
        // connection cannot carry another reply.
        var unread = ranges.count
        var sources = LocalSources(tree: tree)
        do {
            for run in plan.runs {
                switch run {
                case .remote(_, let end):
                    do { _ = try await transfer.receive(on: connection, until: end) { self.onBytes($0, state) } } catch {
                        if transfer.replyConsumed { unread -= 1 }
                        throw error
                    }
                    unread -= 1
                case .local(let chunk, let candidates):
                    if let bytes = sources.read(chunk, from: candidates) {
                        try await transfer.appendVerified(bytes)
                        result.withLockedValue { $0.bytesWritten += Int64(bytes.count) }
                    } else if unread == 0 {
                        // Changed in DEST since it was indexed, and nothing is in flight: fetch it now.
                        let end = chunk.offset + Int64(chunk.length)
                        try await connection.send(transfer.request(upTo: end))
                        _ = try await transfer.receive(on: connection, until: end) { self.onBytes($0, state) }
                    } else {
                        throw ClientError.integrity(path: serverPath.description,
                                                    "a chunk of DEST changed while it was being reused; trying the file again")
                    }
                }
            }
        } catch {
            if unread > 0 { transfer.markReplyUnfinished() }
            throw error
        }
        return sha
    }
}

/// The files of DEST that chunks are reused from, opened the safe way (one component at a
/// time, no symlink followed) and kept open while one file is built.
struct LocalSources {
    let tree: LocalTree
    private var open: [RemotePath: FileHandle] = [:]

    init(tree: LocalTree) { self.tree = tree }

    /// The bytes of `chunk` from the first candidate whose bytes have the chunk's SHA-256; nil
    /// when none has (a file changed or went away since it was indexed).
    mutating func read(_ chunk: ChunkRecord, from candidates: [LocalChunkIndex.Location]) -> [UInt8]? {
        for place in candidates {
            let handle: FileHandle
            if let known = open[place.path] {
                handle = known
            } else {
                guard let opened = try? tree.openFile(place.path) else { continue }
                if open.count >= 64 { open.removeAll() }
                open[place.path] = opened
                handle = opened
            }
            guard let bytes = try? handle.read(count: place.length, at: place.offset), bytes.count == chunk.length else { continue }
            let digest = bytes.withUnsafeBytes { ChunkDigest.sha256($0) }
            if digest == chunk.digest { return bytes }
        }
        return nil
    }
}

/// Directories of a destination tree kept open for a while (opened the safe way, one component
/// at a time without following symlinks), so files of one directory do not each reopen it.
final class DirectoryCache: Sendable {
    private let tree: LocalTree
    private let cache = NIOLockedValueBox([RemotePath: FileHandle]())
    static let capacity = 64

    init(tree: LocalTree) { self.tree = tree }

    func open(_ path: RemotePath) throws(SystemError) -> FileHandle {
        if let hit = cache.withLockedValue({ $0[path] }) { return hit }
        let handle = try tree.openDirectory(path)
        cache.withLockedValue { c in
            // Manifest order visits a directory's files together: dropping everything now
            // and then is as good as an LRU here, and handles in use stay open (reference counted).
            if c.count >= Self.capacity { c.removeAll(keepingCapacity: true) }
            c[path] = handle
        }
        return handle
    }
}
