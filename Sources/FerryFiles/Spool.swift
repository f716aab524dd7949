#if canImport(Glibc)
import Glibc
#endif

/// Bytes written once, in order, then read back: kept in memory up to `memoryLimit`, beyond
/// that in an unnamed temporary file (created in `directory` and unlinked at once, so it
/// vanishes with its descriptor whatever happens). A server builds a manifest of millions of
/// entries this way without holding its text (issue 17: ≤ 128 MiB for 1,000,000 entries).
/// Used by one task at a time (hence `@unchecked Sendable`: it moves between threads, never
/// shared).
public final class Spool: @unchecked Sendable {
    public enum Contents: Sendable {
        case memory([UInt8])
        case file(FileHandle, length: Int64)
    }

    public let directory: String
    public let memoryLimit: Int
    /// Bytes appended so far.
    public private(set) var count: Int64 = 0
    private var buffer: [UInt8] = []
    private var file: FileHandle?
    /// Bytes already in the file.
    private var written: Int64 = 0
    /// Once spilling, bytes are written in pieces of this size.
    static let writeSize = 1 << 20

    public init(directory: String, memoryLimit: Int = 4 << 20) {
        self.directory = directory
        self.memoryLimit = memoryLimit
    }

    /// Appends what `fill` writes to the array it is given (which starts empty of this call's
    /// bytes: `fill` appends only).
    public func append(_ fill: (inout [UInt8]) -> Void) throws(SystemError) {
        let before = buffer.count
        fill(&buffer)
        count += Int64(buffer.count - before)
        let limit = file == nil ? memoryLimit : Self.writeSize
        if buffer.count >= limit { try flush() }
    }

    /// What was appended, to read back.
    public func finish() throws(SystemError) -> Contents {
        guard let file else { return .memory(buffer) }
        try flush()
        buffer = []
        return .file(file, length: written)
    }

    private func flush() throws(SystemError) {
        let handle: FileHandle
        if let file { handle = file } else { handle = try makeFile() }
        file = handle
        try handle.write(buffer, at: written, path: "\(directory)/(spool)")
        written += Int64(buffer.count)
        buffer.removeAll(keepingCapacity: true)
    }

    private func makeFile() throws(SystemError) -> FileHandle {
        var template = Array("\(directory)/.ferry-spool-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { p -> Int32 in
            // The template is a non-empty C string: the base address exists.
            mkstemp(p.baseAddress!)
        }
        guard fd >= 0 else { throw SystemError(errno: errno, operation: "create a temporary file in", path: directory) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        let name = template.withUnsafeBufferPointer { p in String(cString: p.baseAddress!) }  // as above
        unlink(name)
        return FileHandle(fd: fd)
    }
}
