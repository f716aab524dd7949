import FerryClient

/// Process exit statuses (documented in the README, "Exit status"). Only the executable decides
/// them: the libraries throw typed errors, and this file maps each to its status.
enum Exit {
    static let ok: Int32 = 0
    static let failed: Int32 = 1
    static let network: Int32 = 2
    static let refused: Int32 = 3
    static let integrity: Int32 = 4
    static let local: Int32 = 5
    /// The server's identity is not the trusted one (changed key, unknown server not accepted,
    /// expired or unusable certificate).
    static let identity: Int32 = 6
    static let usage: Int32 = 64
}

extension ClientError {
    /// The process exit status for this error.
    var exitStatus: Int32 {
        switch self {
        case .connect, .refused, .closed, .timeout: return Exit.network
        case .protocolViolation, .notFerry, .versionMismatch: return Exit.network
        case .server, .authentication, .refusedPath: return Exit.refused
        case .integrity, .corruptChunk: return Exit.integrity
        case .local, .localTarget: return Exit.local
        case .security(_, let problem):
            switch problem {
            case .unexpectedKey, .expiredCertificate, .badCertificate, .noTokenProof: return Exit.identity
            case .serverSpeaksCleartext, .handshakeFailed, .handshakeTimeout: return Exit.network
            }
        }
    }
}
