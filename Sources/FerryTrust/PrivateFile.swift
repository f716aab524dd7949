#if canImport(Glibc)
import Glibc
#endif

/// A failure reading or writing one of ferry's own files (the identity, the known-servers
/// list), with what a person can do about it.
public struct TrustFileError: Error, Hashable, Sendable, CustomStringConvertible {
    public let path: String
    public let problem: String
    public let advice: String

    public init(path: String, problem: String, advice: String) {
        self.path = path
        self.problem = problem
        self.advice = advice
    }

    public var description: String { "\(path): \(problem) (\(advice))" }
}

/// Small files ferry keeps for itself: read whole, and replaced atomically (written to a
/// temporary file beside, synced, then renamed or linked into place), so a crash or a full disk
/// never leaves half a file.
public enum PrivateFile {
    /// The file's bytes and mode, or nil when it does not exist. Symlinks are not followed.
    static func read(_ path: String, advice: String) throws(TrustFileError) -> (bytes: [UInt8], mode: mode_t)? {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { return nil }
            throw TrustFileError(path: path, problem: "cannot open: \(String(cString: strerror(code)))", advice: advice)
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw TrustFileError(path: path, problem: "cannot stat: \(String(cString: strerror(errno)))", advice: advice)
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw TrustFileError(path: path, problem: "not a regular file", advice: advice)
        }
        guard st.st_size <= 16 * 1024 * 1024 else {
            throw TrustFileError(path: path, problem: "larger than 16 MiB", advice: advice)
        }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, $0.count - done) }  // non-empty: count > done
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw TrustFileError(path: path, problem: "cannot read: \(String(cString: strerror(errno)))", advice: advice)
            }
            done += n
        }
        return (bytes, st.st_mode & 0o7777)
    }

    /// Writes `bytes` to `path` with mode 600. `replacing: false` fails with EEXIST when the
    /// file appeared meanwhile (another process made it first): the caller reads that one.
    static func write(_ bytes: [UInt8], to path: String, replacing: Bool, advice: String) throws(TrustFileError) {
        let temporary = path + ".tmp-\(getpid())-\(UInt32.random(in: 0 ... .max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw TrustFileError(path: path, problem: "cannot create \(temporary): \(String(cString: strerror(errno)))", advice: advice)
        }
        var done = 0
        var failure: Int32 = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }  // non-empty: count > done
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { failure = errno; break }
            done += n
        }
        if failure == 0 && fsync(fd) != 0 { failure = errno }
        close(fd)
        defer { unlink(temporary) }
        if failure != 0 {
            throw TrustFileError(path: path, problem: "cannot write: \(String(cString: strerror(failure)))", advice: advice)
        }
        let placed = replacing ? rename(temporary, path) : link(temporary, path)
        guard placed == 0 else {
            let code = errno
            if code == EEXIST && !replacing { throw TrustFileError(path: path, problem: "exists", advice: advice) }
            throw TrustFileError(path: path, problem: "cannot put in place: \(String(cString: strerror(code)))", advice: advice)
        }
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        let dirFD = open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 {
            _ = fsync(dirFD)
            close(dirFD)
        }
    }

    /// `mkdir -p path`, mode 700 for the folders it creates; nil when it worked.
    public static func makeDirectories(_ path: String) -> String? {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                return "\(prefix): \(String(cString: strerror(errno)))"
            }
        }
        var st = stat()
        guard stat(path, &st) == 0 else { return String(cString: strerror(errno)) }
        return st.st_mode & S_IFMT == S_IFDIR ? nil : "not a directory"
    }
}
