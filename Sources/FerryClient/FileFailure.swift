import FerryProtocol

/// What an error met while fetching one file of a sync means: for that file alone (given up
/// now, or tried again a few times), for the connection, or for the whole sync.
enum FileFailure: Equatable {
    /// Asking again will not help (not found, refused, wrong type, permission denied on the
    /// server, a local file that cannot be written): reported at once.
    case permanent(String)
    /// May work another time (a read error on the server, a chunk or file that failed its
    /// CRC or SHA-256): tried again a few times with backoff, then reported.
    case transient(String)
    /// The connection or the server failed, not the file (connection lost, timeout, shutting
    /// down, a protocol violation): the connection is retried with backoff.
    case connection
    /// DEST cannot take more (disk full, quota, read-only): the sync stops.
    case fatal

    init(_ error: Error) {
        guard let error = error as? ClientError else {
            self = .connection
            return
        }
        switch error {
        case .server(_, _, let reply):
            switch reply.knownCode {
            case .shuttingDown?, .tooMany?, .timeout?, .authRequired?, .authFailed?:
                self = .connection
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
        case .connect, .refused, .closed, .timeout, .protocolViolation, .notFerry, .versionMismatch, .authentication:
            self = .connection
        }
    }
}
