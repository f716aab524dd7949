#if canImport(Glibc)
import Glibc
#endif
import FerryProtocol

/// A destination directory that ferry writes into. Every operation walks from the root one
/// component at a time with `O_NOFOLLOW`, so nothing is ever created, replaced or removed
/// through a symlink — whatever a manifest says and whatever links already sit in DEST.
public final class LocalTree: Sendable {
    /// The mode bits a client applies: permissions and the sticky bit, never setuid or setgid,
    /// so a server cannot plant set-id programs on the client (least of all one running as root).
    public static func applicableMode(_ mode: UInt32) -> UInt32 { mode & 0o1777 }

    public let rootPath: String
    public let root: FileHandle

    public init(path: String, create: Bool) throws(SystemError) {
        if create, mkdir(path, 0o755) != 0, errno != EEXIST {
            // The first failure is the one to report (EACCES on the parent, say), not the
            // ENOENT that opening the missing directory would give next.
            throw SystemError(errno: errno, operation: "create directory", path: path)
        }
        let fd = retryingEINTR { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard fd >= 0 else {
            if errno == ENOTDIR {
                throw SystemError(errno: ENOTDIR, operation: "use", path: path,
                                  detail: "it is not a directory (DEST must be a folder, or a path where one can be made)")
            }
            throw SystemError(errno: errno, operation: "open directory", path: path)
        }
        rootPath = path
        root = FileHandle(fd: fd)
    }

    /// Throws when this process may not create entries in the root (permission denied or a
    /// read-only file system), so a DEST ferry cannot write into fails once, naming the
    /// folder, rather than once per directory and file below it.
    public func requireWritable() throws(SystemError) {
        if faccessat(root.fd, ".", W_OK | X_OK, AT_EACCESS) != 0, errno == EACCES || errno == EROFS {
            throw SystemError(errno: errno, operation: "write into", path: rootPath)
        }
    }

    public func display(_ path: RemotePath) -> String {
        path.isRoot ? rootPath : (rootPath.hasSuffix("/") ? rootPath : rootPath + "/") + path.description
    }

    /// Opens the directory `path` (every component a real directory, not a symlink).
    public func openDirectory(_ path: RemotePath) throws(SystemError) -> FileHandle {
        var dir = FileHandle(fd: dup(root.fd))
        for component in path.components {
            let fd = POSIX.openAt(dir.fd, Array(component), O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            guard fd >= 0 else { throw SystemError(errno: errno, operation: "open directory", path: display(path)) }
            dir = FileHandle(fd: fd)
        }
        return dir
    }

    /// The parent directory of `path`, opened safely, and the final name.
    public func parent(of path: RemotePath) throws(SystemError) -> (FileHandle, [UInt8]) {
        (try openDirectory(path.parent ?? .root), path.name)
    }

    /// What is at `path` now (symlinks described, not followed); nil when nothing is.
    public func lstat(_ path: RemotePath) -> FileInfo? {
        guard let (dir, name) = try? parent(of: path) else { return nil }
        return POSIX.statAt(dir.fd, name).0
    }

    public func readlink(_ path: RemotePath) -> [UInt8]? {
        guard let (dir, name) = try? parent(of: path) else { return nil }
        return POSIX.readlinkAt(dir.fd, name)
    }

    /// Opens a regular file for reading without following a final symlink.
    public func openFile(_ path: RemotePath) throws(SystemError) -> FileHandle {
        let (dir, name) = try parent(of: path)
        return try FileHandle.openOwned(dir.fd, name, allowDirectory: false, display: display(path))
    }

    public func makeDirectory(_ path: RemotePath, mode: UInt32) throws(SystemError) {
        let (dir, name) = try parent(of: path)
        let r = withCPath(name) { mkdirat(dir.fd, $0, mode_t(LocalTree.applicableMode(mode) | 0o700)) }
        if r != 0 && errno != EEXIST { throw SystemError(errno: errno, operation: "create directory", path: display(path)) }
    }

    public func makeSymlink(_ path: RemotePath, target: [UInt8]) throws(SystemError) {
        let (dir, name) = try parent(of: path)
        let r = withCPath(target) { t in withCPath(name) { symlinkat(t, dir.fd, $0) } }
        if r != 0 { throw SystemError(errno: errno, operation: "create symlink", path: display(path)) }
    }

    /// Removes what is at `path` if that loses nothing: a file, symlink or other non-directory,
    /// or an empty directory. A directory with anything in it stays, and the error says so
    /// (`ENOTEMPTY`).
    public func removeShallow(_ path: RemotePath) throws(SystemError) {
        let (dir, name) = try parent(of: path)
        try Self.removeShallow(dirFD: dir.fd, name: name, display: display(path))
    }

    static func removeShallow(dirFD: Int32, name: [UInt8], display: String) throws(SystemError) {
        let (info, err) = POSIX.statAt(dirFD, name)
        guard let info else {
            if err == ENOENT { return }
            throw SystemError(errno: err, operation: "stat", path: display)
        }
        let r = withCPath(name) { unlinkat(dirFD, $0, info.type == .directory ? AT_REMOVEDIR : 0) }
        guard r != 0, errno != ENOENT else { return }
        if errno == EEXIST { errno = ENOTEMPTY }
        throw SystemError(errno: errno, operation: info.type == .directory ? "replace the directory" : "remove", path: display)
    }

    /// Moves a finished file (in `fromDir` under `fromName`) to `path`, replacing a file or
    /// symlink there, or an empty directory; a directory with anything in it is left alone and
    /// the move fails with `ENOTEMPTY`.
    public func moveIntoPlace(fromDir: Int32, fromName: [UInt8], to path: RemotePath) throws(SystemError) {
        let (dir, name) = try parent(of: path)
        try moveIntoPlace(fromDir: fromDir, fromName: fromName, toDir: dir.fd, name: name, display: display(path))
    }

    /// Moves a finished file to `name` in the open directory `toDir` (one of this tree's,
    /// opened without following symlinks), replacing a file or symlink there, or an empty
    /// directory; never a directory with anything in it (`ENOTEMPTY`).
    public func moveIntoPlace(fromDir: Int32, fromName: [UInt8], toDir: Int32, name: [UInt8], display: String) throws(SystemError) {
        func rename() -> Int32 { withCPath(fromName) { f in withCPath(name) { renameat(fromDir, f, toDir, $0) } } }
        if rename() == 0 { return }
        // A file cannot replace a directory: rename(2) says EISDIR (or ENOTEMPTY/EEXIST).
        guard errno == EISDIR || errno == ENOTEMPTY || errno == EEXIST,
              let info = POSIX.statAt(toDir, name).0, info.type == .directory else {
            throw SystemError(errno: errno, operation: "rename into place", path: display)
        }
        try Self.removeShallow(dirFD: toDir, name: name, display: display)
        if rename() != 0 { throw SystemError(errno: errno, operation: "rename into place", path: display) }
    }

    /// Sets permission bits and mtime of a directory or file (never through a symlink).
    public func setAttributes(_ path: RemotePath, mode: UInt32, mtime: Timestamp) throws(SystemError) {
        let (dir, name) = try parent(of: path)
        let isRoot = path.isRoot
        let handle: FileHandle
        if isRoot {
            let fd = dup(root.fd)
            guard fd >= 0 else { throw SystemError(errno: errno, operation: "open", path: display(path)) }
            handle = FileHandle(fd: fd)
        } else {
            handle = try FileHandle.openOwned(dir.fd, name, allowDirectory: true, display: display(path))
        }
        guard fchmod(handle.fd, mode_t(LocalTree.applicableMode(mode))) == 0 else {
            throw SystemError(errno: errno, operation: "chmod", path: display(path))
        }
        try Self.setMtime(handle.fd, mtime, display: display(path))
    }

    /// Sets a symlink's own mtime.
    public func setLinkMtime(_ path: RemotePath, mtime: Timestamp) {
        guard let (dir, name) = try? parent(of: path) else { return }
        var times = [Self.timespecOf(mtime), Self.timespecOf(mtime)]
        _ = withCPath(name) { utimensat(dir.fd, $0, &times, AT_SYMLINK_NOFOLLOW) }
    }

    static func timespecOf(_ t: Timestamp) -> timespec {
        timespec(tv_sec: time_t(t.seconds), tv_nsec: Int(t.nanoseconds))
    }

    static func setMtime(_ fd: Int32, _ mtime: Timestamp, display: String) throws(SystemError) {
        var times = [timespecOf(mtime), timespecOf(mtime)]
        guard futimens(fd, &times) == 0 else { throw SystemError(errno: errno, operation: "set mtime of", path: display) }
    }
}
