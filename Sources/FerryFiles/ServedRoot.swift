#if canImport(Glibc)
import Glibc
#endif
import CFerrySys
import FerryProtocol
import NIOConcurrencyHelpers

/// Why a path could not be served; each maps onto a reply code.
public enum ServeError: Error, Hashable, Sendable, CustomStringConvertible {
    case notFound(RemotePath)
    case refused(RemotePath, String)
    case wrongType(RemotePath, String)
    case changed(Validator)
    case badRange(String)
    case tooLarge(String)
    case io(SystemError)

    public var reply: ErrorReply {
        switch self {
        case .notFound(let p): return ErrorReply(.notFound, "not found: \(p.wire)")
        case .refused(let p, let why): return ErrorReply(.pathRefused, "path refused: \(p.wire): \(why)")
        case .wrongType(let p, let why): return ErrorReply(.wrongType, "\(p.wire): \(why)")
        case .changed(let now): return .changed(now)
        case .badRange(let why): return ErrorReply(.badRange, why)
        case .tooLarge(let why): return ErrorReply(.tooLarge, why)
        case .io(let e): return Self.reply(for: e)
        }
    }

    /// A failed system call on the served tree: permission denied (423: asking again will not
    /// help) or another I/O error (520: it may work another time), so a client can tell them apart.
    public static func reply(for e: SystemError) -> ErrorReply {
        switch e.errno {
        case EACCES, EPERM: return ErrorReply(.permissionDenied, "\(e.operation) \(e.path): permission denied on the server")
        default: return ErrorReply(.readError, "\(e.operation) \(e.path) failed on the server: \(e.message)")
        }
    }

    public var description: String { reply.description }
}

/// The served directory. Every lookup walks from the root one component at a time with
/// `openat(O_NOFOLLOW)`, so nothing outside the root can be reached — not by `..` (refused
/// by `RemotePath`), not by a symlink (resolved lexically and refused when it leaves the root),
/// and not by a string-prefix accident.
public final class ServedRoot: Sendable {
    public let displayPath: String
    private let rootFD: Int32

    public init(path: String) throws(SystemError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError(errno: errno, operation: "open directory", path: path) }
        self.rootFD = fd
        self.displayPath = path
    }

    deinit { close(rootFD) }

    /// A resolved entry: its parent directory (open), its name, what lstat says, and its
    /// canonical path after in-tree symlinks were followed.
    public struct Resolved {
        public let parent: FileHandle
        public let name: [UInt8]
        public let info: FileInfo
        public let canonical: RemotePath
    }

    /// Resolves `path`. Symlinks in the middle are followed when they stay inside the root;
    /// a final symlink is followed only when `followFinal` is set.
    public func resolve(_ path: RemotePath, followFinal: Bool) throws(ServeError) -> Resolved {
        if let direct = try resolveWithoutSymlinks(path, followFinal: followFinal) { return direct }
        var pending: [[UInt8]] = path.components.map(Array.init)
        var hops = 0
        restart: while true {
            var walked: [[UInt8]] = []
            var dir = FileHandle(fd: dup(rootFD))
            if dir.fd < 0 { throw .io(SystemError(errno: errno, operation: "dup", path: displayPath)) }
            if pending.isEmpty {
                // The root itself: describe it through "." of the root.
                let (info, err) = POSIX.statAt(rootFD, [0x2E])
                guard let info else { throw .io(SystemError(errno: err, operation: "stat", path: displayPath)) }
                return Resolved(parent: dir, name: [0x2E], info: info, canonical: .root)
            }
            var index = 0
            while index < pending.count {
                let name = pending[index]
                let isLast = index == pending.count - 1
                let info = try Self.lstat(dir.fd, name, for: path)
                if info.type == .symlink && (!isLast || followFinal) {
                    hops += 1
                    if hops > FerryLimits.maxSymlinkHops { throw .refused(path, "too many symlinks") }
                    guard let target = POSIX.readlinkAt(dir.fd, name) else { throw .notFound(path) }
                    guard let rewritten = Self.splice(walked: walked, target: target, rest: pending[(index + 1)...]) else {
                        throw .refused(path, "a symlink leads outside the served directory")
                    }
                    pending = rewritten
                    continue restart
                }
                if isLast {
                    let canonical: RemotePath
                    do { canonical = try RemotePath(validating: (walked + [name]).joined(separator: [0x2F]).map { $0 }) } catch {
                        throw .refused(path, error.description)
                    }
                    return Resolved(parent: dir, name: name, info: info, canonical: canonical)
                }
                guard info.type == .directory else { throw .notFound(path) }
                let next = POSIX.openAt(dir.fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
                if next < 0 {
                    if errno == ELOOP || errno == ENOTDIR { continue restart }  // swapped under us: look again
                    throw .io(SystemError(errno: errno, operation: "open", path: path.description))
                }
                dir = FileHandle(fd: next)
                walked.append(name)
                index += 1
            }
            throw .notFound(path)
        }
    }

    /// The common case in one pass: every directory on the way is opened without following a
    /// symlink, and the final entry is not a symlink to follow; the canonical path is `path`
    /// itself. Nil when a symlink (or a concurrent swap) is met: the general walk then decides.
    /// The parent directory opens with one `openat2` (`ferry_open_beneath`: inside the root,
    /// through no symlink) where the kernel has it, else one `openat(O_NOFOLLOW)` per directory.
    private func resolveWithoutSymlinks(_ path: RemotePath, followFinal: Bool) throws(ServeError) -> Resolved? {
        let components = path.components
        guard let last = components.last else { return nil }
        var beneath = Beneath.unavailable
        if components.count > 1, let parent = path.parent { beneath = try Self.openBeneath(rootFD, parent.bytes, for: path) }
        let dir: FileHandle
        switch beneath {
        case .opened(let handle): dir = handle
        case .walkDecides: return nil
        case .unavailable:
            guard let walked = try openDirectories(components.dropLast(), for: path) else { return nil }
            dir = walked
        }
        let name = Array(last)
        let info = try Self.lstat(dir.fd, name, for: path)
        if info.type == .symlink && followFinal { return nil }
        return Resolved(parent: dir, name: name, info: info, canonical: path)
    }

    /// The directory at the end of `components`, opened one component at a time with
    /// `O_NOFOLLOW`; nil when one is a symlink, a file, or cannot be opened (the walk says which).
    private func openDirectories(_ components: ArraySlice<ArraySlice<UInt8>>, for path: RemotePath) throws(ServeError) -> FileHandle? {
        var dir = FileHandle(fd: dup(rootFD))
        if dir.fd < 0 { throw .io(SystemError(errno: errno, operation: "dup", path: displayPath)) }
        for component in components {
            let next = POSIX.openAt(dir.fd, Array(component), O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            if next < 0 {
                if errno == ENOENT { throw .notFound(path) }
                return nil
            }
            dir = FileHandle(fd: next)
        }
        return dir
    }

    private enum Beneath {
        case opened(FileHandle)
        /// No `openat2` here: open one component at a time.
        case unavailable
        /// A symlink or a file on the way, or an error: the general walk decides and words it.
        case walkDecides
    }

    /// Set once `openat2` was found missing (a kernel before 5.6, a seccomp filter), so the
    /// component walk is used from then on without asking again.
    static let beneathMissing = NIOLockedValueBox(false)

    /// The directory `relative` (several components) under `root`, opened with one `openat2`
    /// that stays inside `root` and follows no symlink.
    private static func openBeneath(_ root: Int32, _ relative: [UInt8], for path: RemotePath) throws(ServeError) -> Beneath {
        if beneathMissing.withLockedValue({ $0 }) { return .unavailable }
        let fd = withCPath(relative) { ferry_open_beneath(root, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW) }
        if fd >= 0 { return .opened(FileHandle(fd: fd)) }
        switch errno {
        case ENOENT: throw .notFound(path)
        case ENOSYS, EPERM, EINVAL, E2BIG:
            beneathMissing.withLockedValue { $0 = true }
            return .unavailable
        default: return .walkDecides
        }
    }

    /// What `name` in `dirFD` is (not following a symlink); a missing entry is `path` not found.
    private static func lstat(_ dirFD: Int32, _ name: [UInt8], for path: RemotePath) throws(ServeError) -> FileInfo {
        let (info, err) = POSIX.statAt(dirFD, name)
        if let info { return info }
        if err == ENOENT || err == ENOTDIR { throw .notFound(path) }
        throw .io(SystemError(errno: err, operation: "stat", path: path.description))
    }

    /// Lexically substitutes a symlink's target; nil when the result leaves the root.
    static func splice(walked: [[UInt8]], target: [UInt8], rest: ArraySlice<[UInt8]>) -> [[UInt8]]? {
        if target.first == 0x2F { return nil }
        var out = walked
        for c in target.split(separator: 0x2F) {
            if c.elementsEqual([0x2E]) { continue }
            if c.elementsEqual([0x2E, 0x2E]) {
                if out.isEmpty { return nil }
                out.removeLast()
                continue
            }
            out.append(Array(c))
        }
        return out + rest
    }

    /// Opens a regular file for reading (symlinks inside the tree are followed).
    public func openFile(_ path: RemotePath) throws(ServeError) -> (FileHandle, FileInfo) {
        let (handle, info, _) = try openFileCanonical(path)
        return (handle, info)
    }

    /// Opens a regular file for reading (symlinks inside the tree are followed), and names the
    /// path it really has in the tree (after those symlinks).
    public func openFileCanonical(_ path: RemotePath) throws(ServeError) -> (FileHandle, FileInfo, RemotePath) {
        let r = try resolve(path, followFinal: true)
        guard r.info.type == .file else {
            throw .wrongType(path, r.info.type == .directory ? "is a directory" : "is not a regular file")
        }
        // Swapped for a FIFO, device or directory since the lstat above: refused on the opened
        // descriptor, without blocking (issue: a FIFO open used to hang a worker thread).
        do {
            let (handle, info) = try FileHandle.openOwnedWithInfo(r.parent.fd, r.name, allowDirectory: false, display: path.description)
            return (handle, info, r.canonical)
        } catch {
            if error.errno == EINVAL { throw .wrongType(path, "is not a regular file") }
            throw .io(error)
        }
    }

    /// Opens a directory (symlinks inside the tree are followed).
    public func openDirectory(_ path: RemotePath) throws(ServeError) -> (FileHandle, RemotePath) {
        let r = try resolve(path, followFinal: true)
        guard r.info.type == .directory else { throw .wrongType(path, "is not a directory") }
        let fd = POSIX.openAt(r.parent.fd, r.name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        guard fd >= 0 else { throw .io(SystemError(errno: errno, operation: "open", path: path.description)) }
        return (FileHandle(fd: fd), r.canonical)
    }

    /// The entry for `path` itself (a final symlink is described, not followed).
    public func stat(_ path: RemotePath) throws(ServeError) -> Entry {
        let r = try resolve(path, followFinal: false)
        let target = r.info.type == .symlink ? POSIX.readlinkAt(r.parent.fd, r.name) : nil
        return Entry(info: r.info, path: path, target: target)
    }

    /// The entries of one directory, sorted by name bytes.
    public func list(_ path: RemotePath) throws(ServeError) -> [Entry] {
        let (dir, _) = try openDirectory(path)
        return try DirectoryListing.entries(of: dir.fd, displayPath: path.description)
    }
}

public enum DirectoryListing {
    /// Reads and stats every entry of an open directory; each `Entry.path` holds just the name.
    /// Entries that vanish between readdir and stat are skipped.
    public static func entries(of fd: Int32, displayPath: String) throws(ServeError) -> [Entry] {
        let names: [[UInt8]]
        do { names = try POSIX.readDirectoryNames(fd) } catch { throw .io(error) }
        var out: [Entry] = []
        out.reserveCapacity(names.count)
        for name in names {
            let (info, _) = POSIX.statAt(fd, name)
            guard let info, let path = try? RemotePath(validating: name) else { continue }
            let target = info.type == .symlink ? POSIX.readlinkAt(fd, name) : nil
            out.append(Entry(info: info, path: path, target: target))
        }
        out.sort { $0.path < $1.path }
        return out
    }
}

extension Entry {
    /// A symlink whose target cannot be read is described with the target `?`; its size is
    /// always the length of the target sent (PROTOCOL.md section 5).
    public init(info: FileInfo, path: RemotePath, target: [UInt8]?) {
        let sentTarget = info.type == .symlink ? (target ?? [0x3F]) : nil
        let size: Int64
        switch info.type {
        case .file: size = info.size
        case .symlink: size = Int64(sentTarget?.count ?? 0)
        default: size = 0
        }
        self.init(type: info.type, mode: info.mode, size: size, mtime: info.mtime, path: path, target: sentTarget)
        self.special = info.special
    }
}
