#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol
import Logging

/// `ferry get`: one file, resumable, verified, renamed into place only when complete.
public struct Downloader {
    public struct Options: Sendable {
        public var connection: ConnectionOptions
        public var retry: RetryPolicy
        public var resume: Bool

        public init(connection: ConnectionOptions = ConnectionOptions(), retry: RetryPolicy = RetryPolicy(), resume: Bool = true) {
            self.connection = connection
            self.retry = retry
            self.resume = resume
        }
    }

    public struct Result: Sendable {
        public var path: RemotePath
        public var localPath: String
        public var size: Int64
        public var sha256: String
        public var bytesWritten: Int64
        public var wireBytes: Int64
        public var resumedFrom: Int64
        public var retries: Int
        /// How the whole file was checked: `xxh3-128` (it came whole in one reply whose transfer
        /// digest matched; `sha256` is then the server's) or `sha-256` (computed here).
        public var checkedWith: String
    }

    /// Events for the progress display.
    public enum Event: Sendable {
        /// Kept data of an earlier run is being checked against the server.
        case verifying(kept: Int64)
        /// `done` bytes of the kept data have been checked (reported as the check goes on).
        case verified(done: Int64, of: Int64)
        case started(size: Int64, resumedFrom: Int64)
        case bytes(Int)
        case retrying(attempt: Int, of: Int, reason: String, delay: Duration)
        case changedOnServer
    }

    public let endpoint: Endpoint
    public let options: Options
    public let logger: Logger

    public init(endpoint: Endpoint, options: Options, logger: Logger) {
        self.endpoint = endpoint
        self.options = options
        self.logger = logger
    }

    /// Where partial data for `localPath` is kept: `.NAME.ferry-partial` beside it.
    public static func partialPath(for localPath: String) -> String {
        let slash = localPath.lastIndex(of: "/")
        let dir = slash.map { String(localPath[...$0]) } ?? ""
        let name = slash.map { String(localPath[localPath.index(after: $0)...]) } ?? localPath
        return dir + "." + name + ".ferry-partial"
    }

    public func get(_ path: RemotePath, to localPath: String, onEvent: (Event) -> Void = { _ in }) async throws -> Result {
        let counter = ByteCounter()
        var tracker = RetryPolicy.Tracker(options.retry)
        var changes = 0
        var written: Int64 = 0
        try Self.checkLocalTarget(localPath)
        try Self.checkLocalTarget(Self.partialPath(for: localPath), partial: true)
        while true {
            let writtenBefore = written
            do {
                return try await FerryConnection.with(endpoint, options: options.connection, counter: counter) { connection in
                    let (target, entry) = try await Self.statFile(path, on: connection)
                    let identity = PartialIdentity(size: entry.size, mtime: entry.mtime, sha256: nil)
                    let transfer = try FileTransfer(path: target, identity: identity,
                                                    partialPath: Self.partialPath(for: localPath), resume: options.resume)
                    if transfer.partial.verified > 0 { onEvent(.verifying(kept: transfer.partial.verified)) }
                    let kept = transfer.partial.verified
                    try await transfer.verifyKeptData(on: connection) { onEvent(.verified(done: $0, of: kept)) }
                    onEvent(.started(size: entry.size, resumedFrom: transfer.partial.verified))
                    try await connection.send(transfer.request())
                    let sha: String
                    do {
                        sha = try await transfer.receive(on: connection) { n in
                            written += Int64(n)
                            onEvent(.bytes(n))
                        }
                    } catch {
                        // Failed for good (the server may not read the file, it vanished) with
                        // nothing kept: an empty partial and its sidecar would only stay for ever.
                        if transfer.partial.verified == 0, case .permanent = FileFailure(error) { transfer.partial.discard() }
                        throw error
                    }
                    try await transfer.complete(expected: sha)
                    try Self.checkLocalTarget(localPath)  // again: something may have appeared meanwhile
                    try transfer.finish(to: localPath, mode: entry.mode, mtime: entry.mtime)
                    return Result(path: target, localPath: localPath, size: entry.size,
                                  sha256: sha, bytesWritten: written, wireBytes: counter.count,
                                  resumedFrom: transfer.resumedFrom, retries: tracker.retries,
                                  checkedWith: transfer.wholeFileSHA ? "sha-256" : "xxh3-128")
                }
            } catch let changed as FileTransfer.Changed {
                changes += 1
                logger.info("\(changed.path) changed on the server; fetching the new version whole")
                onEvent(.changedOnServer)
                if changes > 3 {
                    throw ClientError.integrity(path: path.description, "the file keeps changing on the server; try again when it is stable")
                }
            } catch {
                let failure = FileFailure(error, serverAnsweredThisRun: counter.count > 0)
                let decision = tracker.record(failure, progressed: written > writtenBefore)
                switch decision {
                case .reconnect(let attempt, let of, let delay), .retryFile(let attempt, let of, let delay):
                    onEvent(.retrying(attempt: attempt, of: of, reason: "\(error)", delay: delay))
                    try await Task.sleep(for: delay)
                case .giveUp:
                    throw error
                }
            }
        }
    }

    /// Refuses a LOCAL that ferry must not replace: a directory, a device node, a FIFO or a
    /// socket. ferry writes a verified copy beside LOCAL and renames it over LOCAL, which would
    /// swap a device node such as `/dev/null` for a regular file; it never writes into such a
    /// file either (a partial copy would reach a device before being verified). A symlink at
    /// LOCAL is replaced by the file, as rsync does: the link's target is never written, so
    /// nothing outside the named place changes. (`partial`: the same for the partial file.)
    static func checkLocalTarget(_ path: String, partial: Bool = false) throws(ClientError) {
        let info: FileInfo
        do { info = try POSIX.lstat(path) } catch {
            if error.errno == ENOENT { return }
            throw .local(error)
        }
        switch info.type {
        case .file, .symlink:
            return
        case .directory:
            throw .localTarget(path: path, partial ? "a directory is in the way of the partial file (move it away)"
                                                   : "it is a directory (name a file, or end LOCAL with / to fetch into it)")
        case .other:
            let what = info.special?.noun ?? "special file"
            throw .localTarget(path: path, partial
                ? "a \(what) is in the way of the partial file (move it away)"
                : "it is a \(what); ferry never replaces or writes into devices, FIFOs or sockets (name a regular file or a directory)")
        }
    }

    /// STATs `path`, following symlinks lexically inside the served tree (as the server's
    /// `GET` does), and returns the file's path and entry.
    static func statFile(_ path: RemotePath, on connection: FerryConnection) async throws -> (RemotePath, Entry) {
        var current = path
        for _ in 0...FerryLimits.maxSymlinkHops {
            let entry = try await connection.stat(current)
            switch entry.type {
            case .file:
                return (current, entry)
            case .symlink:
                guard let target = entry.target, let next = resolveLink(at: current, target: target) else {
                    throw ClientError.server(endpoint: connection.endpoint.description, request: "GET \(path)",
                                             ErrorReply(.pathRefused, "\(current) is a symlink that leads outside the served directory"))
                }
                current = next
            case .directory:
                throw ClientError.server(endpoint: connection.endpoint.description, request: "GET \(path)",
                                         ErrorReply(.wrongType, "\(path) is a directory (use `ferry sync` to copy a directory)"))
            case .other:
                throw ClientError.server(endpoint: connection.endpoint.description, request: "GET \(path)",
                                         ErrorReply(.wrongType, "\(path) is not a regular file"))
            }
        }
        throw ClientError.server(endpoint: connection.endpoint.description, request: "GET \(path)",
                                 ErrorReply(.pathRefused, "too many symlinks"))
    }

    /// The path a relative symlink at `link` points to, or nil if it leaves the tree.
    public static func resolveLink(at link: RemotePath, target: [UInt8]) -> RemotePath? {
        if target.first == 0x2F { return nil }
        var parts = (link.parent ?? .root).components.map(Array.init)
        for c in target.split(separator: 0x2F) {
            if c.elementsEqual([0x2E]) { continue }
            if c.elementsEqual([0x2E, 0x2E]) {
                if parts.isEmpty { return nil }
                parts.removeLast()
                continue
            }
            parts.append(Array(c))
        }
        return try? RemotePath(validating: Array(parts.joined(separator: [0x2F])))
    }
}
