/// How `ferry get` and `ferry sync` try again — one policy for the three retry loops
/// (`Downloader.get`, `Syncer.fetchManifest` and `SyncTransfer`'s workers). What is tried
/// again follows the `FileFailure` classification:
///
/// - `.connection`: a new connection, after a backoff, up to `retries` failures in a row; a
///   connection that delivered a verified chunk or a whole file before it failed starts the
///   count again (the caller says so with `progressed`);
/// - `.transient`: the file (or the manifest) alone, `fileAttempts` attempts in all, each
///   after a backoff;
/// - `.permanent` and `.fatal`: never.
///
/// The backoff before retry n (1, 2, …) is `initialDelay` doubled n − 1 times, at most `maxDelay`.
public struct RetryPolicy: Sendable, Equatable {
    /// Connection failures in a row tolerated (`--retries`).
    public var retries: Int
    /// Attempts, in all, of a file that keeps failing on its own.
    public var fileAttempts: Int
    public var initialDelay: Duration
    public var maxDelay: Duration

    public init(retries: Int = 5, fileAttempts: Int = 3,
                initialDelay: Duration = .milliseconds(250), maxDelay: Duration = .seconds(8)) {
        self.retries = retries
        self.fileAttempts = fileAttempts
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
    }

    /// The wait before retry `n` (1 for the first).
    public func delay(beforeRetry n: Int) -> Duration {
        var d = initialDelay
        for _ in 0..<min(max(n - 1, 0), 16) { d = d * 2 }
        return min(d, maxDelay)
    }

    /// What a loop does after a failure.
    public enum Decision: Equatable, Sendable {
        /// Connect again after `delay`: retry `attempt` of at most `of` in a row.
        case reconnect(attempt: Int, of: Int, delay: Duration)
        /// Try the file again after `delay`: its attempt `attempt` of `of`.
        case retryFile(attempt: Int, of: Int, delay: Duration)
        /// Report the failure.
        case giveUp
    }

    /// The decision after `failure`, given the connection failures in a row and the file's
    /// failed attempts before this one.
    public func decision(after failure: FileFailure, connectionFailuresBefore: Int, fileFailuresBefore: Int) -> Decision {
        switch failure {
        case .connection:
            let n = connectionFailuresBefore + 1
            return n <= retries ? .reconnect(attempt: n, of: retries, delay: delay(beforeRetry: n)) : .giveUp
        case .transient:
            let failures = fileFailuresBefore + 1
            return failures < fileAttempts
                ? .retryFile(attempt: failures + 1, of: fileAttempts, delay: delay(beforeRetry: failures))
                : .giveUp
        case .permanent, .fatal:
            return .giveUp
        }
    }

    /// The counts one loop keeps for one job (a file, the manifest) on a connection at a time.
    public struct Tracker: Sendable, Equatable {
        public let policy: RetryPolicy
        /// Connection failures since the last progress.
        public private(set) var connectionFailures = 0
        /// Failed attempts of the job itself.
        public private(set) var fileFailures = 0
        /// Every retry so far, of either kind.
        public private(set) var retries = 0

        public init(_ policy: RetryPolicy) { self.policy = policy }

        /// Counts `failure` and says what to do. `progressed`: the failed connection delivered
        /// verified data first, so the connection failures in a row start again.
        public mutating func record(_ failure: FileFailure, progressed: Bool = false) -> Decision {
            if progressed { connectionFailures = 0 }
            let decision = policy.decision(after: failure, connectionFailuresBefore: connectionFailures,
                                           fileFailuresBefore: fileFailures)
            switch failure {
            case .connection: connectionFailures += 1
            case .transient: fileFailures += 1
            case .permanent, .fatal: break
            }
            if decision != .giveUp { retries += 1 }
            return decision
        }
    }
}

extension RetryPolicy.Decision {
    /// How long to wait before trying again; nil when giving up.
    public var delay: Duration? {
        switch self {
        case .reconnect(_, _, let d), .retryFile(_, _, let d): return d
        case .giveUp: return nil
        }
    }
}
