#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import CFerrySys
import FerryProtocol
import NIOConcurrencyHelpers

/// A failed system call, with the errno and what was being done, for messages a person can act on.
public struct SystemError: Error, Hashable, Sendable, CustomStringConvertible {
    public let errno: Int32
    public let operation: String
    public let path: String
    /// Said instead of the system's text for `errno`, when ferry itself decided.
    public let detail: String?

    public init(errno: Int32, operation: String, path: String, detail: String? = nil) {
        self.errno = errno
        self.operation = operation
        self.path = path
        self.detail = detail
    }

    public var message: String { detail ?? String(cString: strerror(errno)) }
    public var description: String { "\(operation) \(path): \(message)" }
    public var isNoSpace: Bool { errno == ENOSPC || errno == EDQUOT }

    /// Whether this local error stops the whole sync rather than failing one file: DEST cannot
    /// take more (disk full, quota exceeded) or cannot be written at all (read-only file
    /// system), so every later file would fail the same way. The one rule for this decision.
    public var stopsTheSync: Bool { isNoSpace || errno == EROFS }
}

/// Runs a byte path (no NUL inside, checked by `RemotePath`) as a C string.
@inline(__always)
func withCPath<R>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) throws -> R) rethrows -> R {
    // A stack buffer (no heap copy per call for the usual name or path).
    try withUnsafeTemporaryAllocation(of: CChar.self, capacity: bytes.count + 1) { buf in
        bytes.withUnsafeBytes { src in
            // Invariant: `buf` holds at least the NUL, so it has a base address.
            UnsafeMutableRawPointer(buf.baseAddress!).copyMemory(from: src.baseAddress ?? UnsafeRawPointer(buf.baseAddress!), byteCount: src.count)
        }
        buf[bytes.count] = 0
        return try body(UnsafePointer(buf.baseAddress!))
    }
}

/// Retries a system call interrupted by a signal.
@inline(__always)
func retryingEINTR<T: BinaryInteger>(_ call: () -> T) -> T {
    while true {
        let r = call()
        if r == -1 && errno == EINTR { continue }
        return r
    }
}

/// An open file descriptor, closed when the last reference goes away. A class rather than a
/// non-copyable struct so handles can be stored and passed between tasks simply.
public final class FileHandle: Sendable {
    public let fd: Int32

    public init(fd: Int32) { self.fd = fd }

    deinit { if fd >= 0 { _ = Glibc.close(fd) } }

    /// Opens an entry ferry may read or change: a regular file (or, with `allowDirectory`, a
    /// directory), never through a symlink. `O_NONBLOCK` keeps a FIFO (or a device) that appeared
    /// after the caller's `lstat` from blocking the open for ever, and the type is checked again
    /// on the opened descriptor: anything but the allowed types is refused (`EINVAL`, "it is a
    /// FIFO here") and left as it is — ferry never reads, chmods or writes a FIFO, socket or
    /// device, on the client (DEST) or on the server (the served tree).
    public static func openOwned(_ dirFD: Int32, _ name: [UInt8], allowDirectory: Bool, display: String) throws(SystemError) -> FileHandle {
        try openOwnedWithInfo(dirFD, name, allowDirectory: allowDirectory, display: display).0
    }

    /// `openOwned`, with what `fstat` said of the opened descriptor.
    public static func openOwnedWithInfo(_ dirFD: Int32, _ name: [UInt8], allowDirectory: Bool,
                                         display: String) throws(SystemError) -> (FileHandle, FileInfo) {
        let fd = POSIX.openAt(dirFD, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK)
        guard fd >= 0 else { throw SystemError(errno: errno, operation: "open", path: display) }
        let handle = FileHandle(fd: fd)
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0 else { throw SystemError(errno: errno, operation: "stat", path: display) }
        let type = st.st_mode & S_IFMT
        guard type == S_IFREG || (allowDirectory && type == S_IFDIR) else {
            let what = type == S_IFIFO ? "a FIFO" : type == S_IFSOCK ? "a socket"
                : type == S_IFCHR || type == S_IFBLK ? "a device" : type == S_IFDIR ? "a directory" : "not a regular file"
            throw SystemError(errno: EINVAL, operation: "use", path: display,
                              detail: "it is \(what) here, which ferry leaves alone")
        }
        // Reads block again as usual (O_NONBLOCK matters only for FIFOs and devices). Of the
        // flags F_SETFL can change, O_NONBLOCK is the only one this open set: 0 clears just it.
        _ = fcntl(fd, F_SETFL, 0)
        return (handle, FileInfo(st))
    }

    public func stat() throws(SystemError) -> FileInfo {
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0 else { throw SystemError(errno: errno, operation: "stat", path: "fd \(fd)") }
        return FileInfo(st)
    }

    /// Reads up to `count` bytes at `offset` into `buffer`, looping over short reads.
    /// Returns the number of bytes read; fewer than `count` only at end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(SystemError) -> Int {
        var done = 0
        // Invariant: the loop runs only for a non-empty buffer, which has a base address.
        while done < buffer.count {
            let n = retryingEINTR { pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done)) }
            if n < 0 { throw SystemError(errno: errno, operation: "read", path: "fd \(fd)") }
            if n == 0 { break }
            done += n
        }
        return done
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: Int64, path: String) throws(SystemError) {
        var done = 0
        // Invariant: the loop runs only for a non-empty buffer, which has a base address.
        while done < buffer.count {
            let n = retryingEINTR { pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done)) }
            if n < 0 { throw SystemError(errno: errno, operation: "write", path: path) }
            done += n
        }
    }
}

extension FileHandle {
    /// Writes all of `bytes` at `offset`.
    public func write(_ bytes: [UInt8], at offset: Int64, path: String) throws(SystemError) {
        let result: Result<Void, SystemError> = bytes.withUnsafeBytes { b in
            do throws(SystemError) {
                try write(b, at: offset, path: path)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
    }

    /// Reads up to `count` bytes at `offset` (fewer only at end of file).
    public func read(count: Int, at offset: Int64) throws(SystemError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let result: Result<Int, SystemError> = out.withUnsafeMutableBytes { b in
            do throws(SystemError) { return .success(try read(into: b, at: offset)) } catch { return .failure(error) }
        }
        let n = try result.get()
        if n < count { out.removeLast(count - n) }
        return out
    }
}

/// What `stat` says about an entry, reduced to what ferry uses.
public struct FileInfo: Hashable, Sendable {
    public var type: EntryType
    public var mode: UInt32
    public var size: Int64
    public var mtime: Timestamp
    public var inode: UInt64
    public var device: UInt64
    /// Status change time: moves on every write, chmod or rename, and cannot be set back by
    /// a user (unlike mtime), so it catches an in-place rewrite whose mtime was restored.
    public var ctime: Timestamp
    /// What an entry of type `.other` is (nil for the other types, or an unknown kind).
    public var special: SpecialKind?

    init(_ st: Glibc.stat) {
        special = nil
        switch st.st_mode & S_IFMT {
        case S_IFREG: type = .file
        case S_IFDIR: type = .directory
        case S_IFLNK: type = .symlink
        case S_IFIFO: type = .other; special = .fifo
        case S_IFSOCK: type = .other; special = .socket
        case S_IFCHR: type = .other; special = .character
        case S_IFBLK: type = .other; special = .block
        default: type = .other
        }
        mode = UInt32(st.st_mode & 0o7777)
        size = Int64(st.st_size)
        mtime = Timestamp(seconds: Int64(st.st_mtim.tv_sec), nanoseconds: Int32(st.st_mtim.tv_nsec))
        inode = UInt64(st.st_ino)
        device = UInt64(st.st_dev)
        ctime = Timestamp(seconds: Int64(st.st_ctim.tv_sec), nanoseconds: Int32(st.st_ctim.tv_nsec))
    }

    public var validator: Validator { Validator(size: size, mtime: mtime) }
}

private func followingStat(_ path: String, _ st: inout Glibc.stat) -> Int32 { stat(path, &st) }

public enum POSIX {
    /// CPU seconds the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`); nil where the
    /// clock is not available. The difference of two readings on one thread is the CPU time
    /// of what ran between them, whatever else competed for the cores meanwhile.
    public static func threadCPUSeconds() -> Double? {
        var t = timespec()
        guard clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t) == 0 else { return nil }
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    public static func lstat(_ path: String) throws(SystemError) -> FileInfo {
        var st = Glibc.stat()
        guard Glibc.lstat(path, &st) == 0 else { throw SystemError(errno: errno, operation: "stat", path: path) }
        return FileInfo(st)
    }

    public static func stat(_ path: String) throws(SystemError) -> FileInfo {
        var st = Glibc.stat()
        guard followingStat(path, &st) == 0 else { throw SystemError(errno: errno, operation: "stat", path: path) }
        return FileInfo(st)
    }

    public static func statAt(_ dirfd: Int32, _ name: [UInt8]) -> (FileInfo?, Int32) {
        var st = Glibc.stat()
        let r = withCPath(name) { fstatat(dirfd, $0, &st, AT_SYMLINK_NOFOLLOW) }
        return r == 0 ? (FileInfo(st), 0) : (nil, errno)
    }

    public static func readlinkAt(_ dirfd: Int32, _ name: [UInt8]) -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        // Invariant: `buf` is PATH_MAX + 1 bytes, so it has a base address.
        let n = withCPath(name) { p in
            buf.withUnsafeMutableBufferPointer { readlinkat(dirfd, p, UnsafeMutableRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), $0.count) }
        }
        guard n > 0 else { return nil }
        return Array(buf[0..<n])
    }

    public static func openAt(_ dirfd: Int32, _ name: [UInt8], _ flags: Int32, mode: mode_t = 0) -> Int32 {
        withCPath(name) { p in retryingEINTR { openat(dirfd, p, flags | O_CLOEXEC, mode) } }
    }

    public static func makeDirectoryAt(_ dirfd: Int32, _ name: [UInt8], mode: mode_t) -> Int32 {
        withCPath(name) { mkdirat(dirfd, $0, mode) }
    }

    public static func unlinkAt(_ dirfd: Int32, _ name: [UInt8]) -> Int32 {
        withCPath(name) { unlinkat(dirfd, $0, 0) }
    }

    public static func removeDirectoryAt(_ dirfd: Int32, _ name: [UInt8]) -> Int32 {
        withCPath(name) { unlinkat(dirfd, $0, AT_REMOVEDIR) }
    }

    /// Reads all names of an open directory (consumes a dup of `fd`), without `.` and `..`.
    public static func readDirectoryNames(_ fd: Int32) throws(SystemError) -> [[UInt8]] {
        var names: [[UInt8]] = []
        try forEachDirectoryName(fd) { names.append(Array($0)) }
        return names
    }

    /// Hands each name of an open directory, from its start, without `.` and `..`, to `body`;
    /// the buffer is valid only during the call. The directory is read with `getdents64`
    /// straight from `fd`, which it rewinds first as `rewinddir` did, unless `fresh` says `fd`
    /// was just opened and never read (a walk's subdirectories: one `lseek` fewer each);
    /// `readdir` through a dup of `fd` only where that system call is missing.
    public static func forEachDirectoryName(_ fd: Int32, fresh: Bool = false,
                                            _ body: (UnsafeBufferPointer<UInt8>) -> Void) throws(SystemError) {
        if direntsMissing.withLockedValue({ $0 }) { return try forEachDirectoryNameByReaddir(fd, body) }
        if !fresh, lseek(fd, 0, SEEK_SET) < 0 { throw SystemError(errno: errno, operation: "read directory", path: "fd \(fd)") }
        let failure: Int32? = withUnsafeTemporaryAllocation(byteCount: 32 << 10, alignment: 8) { buffer in
            while true {
                let filled = ferry_read_directory(fd, buffer.baseAddress, UInt(buffer.count))
                if filled == 0 { return nil }
                // A directory removed after it was opened answers ENOENT: it is empty now, as
                // `readdir` says (a walk must not call it unreadable).
                if filled < 0 { return errno == ENOENT ? nil : errno }
                var offset = 0
                while offset < filled {
                    var name: UnsafePointer<CChar>?
                    var length: UInt = 0
                    let next = ferry_dirent_at(buffer.baseAddress, filled, offset, &name, &length)
                    // A record the kernel wrote malformed: stop rather than read past it.
                    guard next > offset, let name else { return EIO }
                    offset = next
                    let c = UnsafeBufferPointer(start: UnsafeRawPointer(name).assumingMemoryBound(to: UInt8.self), count: Int(length))
                    if length == 0 || (c[0] == 0x2E && (length == 1 || (length == 2 && c[1] == 0x2E))) { continue }  // `.`, `..`
                    body(c)
                }
            }
        }
        guard let failure else { return }
        if failure == ENOSYS {
            direntsMissing.withLockedValue { $0 = true }
            return try forEachDirectoryNameByReaddir(fd, body)
        }
        throw SystemError(errno: failure, operation: "read directory", path: "fd \(fd)")
    }

    /// Set once `getdents64` was found missing (a seccomp filter), so `readdir` is used from
    /// then on without asking again.
    static let direntsMissing = NIOLockedValueBox(false)

    /// `forEachDirectoryName` through `readdir` on a dup of `fd`.
    static func forEachDirectoryNameByReaddir(_ fd: Int32, _ body: (UnsafeBufferPointer<UInt8>) -> Void) throws(SystemError) {
        let dupFD = dup(fd)
        guard dupFD >= 0, let dir = fdopendir(dupFD) else {
            throw SystemError(errno: errno, operation: "read directory", path: "fd \(fd)")
        }
        defer { closedir(dir) }
        rewinddir(dir)
        // The offset exists: `d_name` is a stored field of `dirent`.
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        while true {
            errno = 0
            guard let ent = readdir(dir) else {
                if errno != 0 { throw SystemError(errno: errno, operation: "read directory", path: "fd \(fd)") }
                break
            }
            // The name is read in place: glibc packs entries by `d_reclen`, so the last one
            // in its buffer can end well before `sizeof(dirent)`, and copying the whole struct
            // (`ent.pointee`) read past the buffer and crashed on a page boundary (a walk of
            // 1000 directories of 999 files each hit it).
            let c = (UnsafeRawPointer(ent) + nameOffset).assumingMemoryBound(to: UInt8.self)
            let length = strlen(UnsafeRawPointer(c).assumingMemoryBound(to: CChar.self))
            if c[0] == 0x2E && (length == 1 || (length == 2 && c[1] == 0x2E)) { continue }  // `.`, `..`
            body(UnsafeBufferPointer(start: c, count: length))
        }
    }
}
