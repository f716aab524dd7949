#if canImport(Glibc)
import Glibc
#endif
import FerryFiles
import FerryProtocol

/// Everything that can go wrong on the client side, worded for the person at the terminal.
public enum ClientError: Error, CustomStringConvertible {
    case connect(endpoint: String, reason: String)
    /// Nothing listens at the address (ECONNREFUSED).
    case refused(endpoint: String)
    case closed(endpoint: String)
    /// A wait for the server ran out (`WaitPolicy`); the text says what was awaited.
    case timeout(endpoint: String, String)
    case protocolViolation(endpoint: String, String)
    case notFerry(endpoint: String, firstLine: String)
    case versionMismatch(endpoint: String, version: Int)
    case server(endpoint: String, request: String, ErrorReply)
    case authentication(endpoint: String, String)
    case integrity(path: String, String)
    case corruptChunk(path: String, ChunkError)
    case local(SystemError)
    case refusedPath(String)
    /// LOCAL (or what stands at its place) is something ferry must not replace.
    case localTarget(path: String, String)
    /// TLS failed, or the server is not the one trusted (`SecurityProblem` says which).
    case security(endpoint: String, SecurityProblem)

    public var description: String {
        switch self {
        case .connect(let e, let why):
            return "cannot connect to \(e): \(why) (is `ferry serve` running there, and is the port right?)"
        case .refused(let e):
            return "cannot connect to \(e): connection refused — nothing is listening on that port "
                + "(start `ferry serve` there, or check the address and port; the default port is \(FerryDefaults.tcpPort))"
        case .closed(let e):
            return "the server \(e) closed the connection unexpectedly (it may have stopped; run the command again to resume)"
        case .timeout(let e, let why):
            return "the server \(e) \(why); giving up on this connection (on a slow link, raise --timeout)"
        case .protocolViolation(let e, let why):
            return "the server \(e) broke the ferry protocol: \(why)"
        case .notFerry(let e, let line):
            return "\(e) is not a ferry server (it said '\(line.prefix(60))')"
        case .versionMismatch(let e, let v):
            return "the server \(e) speaks ferry protocol version \(v); this ferry speaks version \(FerryDefaults.protocolVersion) (upgrade the older side)"
        case .server(let e, let request, let reply):
            return "server \(e) refused \(request): \(reply.reason)" + Self.hint(for: reply)
        case .authentication(let e, let why):
            return "server \(e) \(why)"
        case .integrity(let path, let why):
            return "\(path): \(why); nothing was written under the final name"
        case .corruptChunk(let path, let why):
            return "\(path): \(why)"
        case .local(let e):
            if e.isNoSpace { return "\(e) (free some space and run the command again; the partial data was kept for resume)" }
            if e.errno == EACCES || e.errno == EPERM { return "\(e) (check that you may write there, or choose another place)" }
            if e.errno == EROFS { return "\(e) (the file system is mounted read-only)" }
            return e.description
        case .refusedPath(let why):
            return "refused a path sent by the server: \(why)"
        case .localTarget(let path, let why):
            return "cannot write \(path): \(why)"
        case .security(let e, let problem):
            return "\(e): \(problem)"
        }
    }

    static func hint(for reply: ErrorReply) -> String {
        switch reply.knownCode {
        case .notFound?: return " (check the path with `ferry ls`)"
        case .authRequired?, .authFailed?: return " (pass the server's token with --token-file or FERRY_TOKEN_FILE)"
        case .tooMany?, .shuttingDown?: return " (try again later)"
        case .tlsRequired?: return " (drop --plaintext: ferry speaks TLS to it by default)"
        default: return ""
        }
    }
}
