import FerryProtocol

/// What an error met while fetching a file (one of a sync, the file of `ferry get`, or a sync's
/// manifest) means: for that file alone (given up now, or tried again a few times), for the
/// connection, or for the whole run. `RetryPolicy` decides from it what is tried again.
public enum FileFailure: Equatable, Sendable {
    /// Asking again will not help (not found, refused, wrong type, permission denied on the
    /// server, a local file that cannot be written): reported at once.
    case permanent(String)
    /// May work another time (a read error on the server, a chunk or file that failed its
    /// CRC or SHA-256): tried again a few times with backoff, then reported.
    case transient(String)
    /// The connection or the server failed, not the file (connection lost, timeout, shutting
    /// down, too many clients, a protocol violation): the connection is retried with backoff.
    case connection
    /// The run cannot go on: DEST cannot take more (disk full, quota, read-only), or the server
    /// will not serve this client (authentication, not a ferry server, another protocol
    /// version, nothing listening before it ever answered), or an error ferry does not know.
    case fatal

    public var isTransient: Bool {
        if case .transient = self { return true }
        return false
    }

    /// - Parameter serverAnsweredThisRun: whether this server answered earlier in the run. A
    ///   refused connection then means it is most likely restarting (a connection failure);
    ///   before that, nobody is listening (fatal).
    public init(_ error: Error, serverAnsweredThisRun: Bool = true) {
        guard let error = error as? ClientError else {
            self = .fatal
            return
        }
        switch error {
        case .server(_, _, let reply):
            switch reply.knownCode {
            case .shuttingDown?, .tooMany?, .timeout?:
                self = .connection
            case .authRequired?, .authFailed?:
                self = .fatal
            case .permissionDenied?:
                self = .permanent("permission denied on the server (the server may not read it)")
            case .notFound?:
                self = .permanent("not found on the server (removed since the listing)")
            case .changed?:
                self = .transient("changed on the server")
            default:
                self = reply.code >= 500 ? .transient(reply.reason) : .permanent(reply.reason)
            }
        case .integrity(_, let why):
            self = .transient(why)
        case .corruptChunk(_, let why):
            self = .transient(why.description)
        case .local(let e):
            self = e.stopsTheSync ? .fatal : .permanent(e.description)
        case .refusedPath(let why), .localTarget(_, let why):
            self = .permanent(why)
        case .refused:
            self = serverAnsweredThisRun ? .connection : .fatal
        case .connect, .closed, .timeout, .protocolViolation:
            self = .connection
        case .notFerry, .versionMismatch, .authentication, .security:
            self = .fatal
        }
    }
}
