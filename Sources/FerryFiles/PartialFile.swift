#if canImport(Glibc)
import Glibc
#endif
import FerryProtocol
import NIOConcurrencyHelpers

/// The server file a partial download belongs to. A partial is only ever continued for the
/// same identity, so a resumed file can never be a splice of two versions.
public struct PartialIdentity: Hashable, Sendable {
    public var size: Int64
    public var mtime: Timestamp
    /// The server's SHA-256 of the whole file when it was known.
    public var sha256: String?

    public init(size: Int64, mtime: Timestamp, sha256: String?) {
        self.size = size
        self.mtime = mtime
        self.sha256 = sha256
    }

    public var validator: Validator { Validator(size: size, mtime: mtime) }
}

/// Data received so far for one file, plus a small sidecar (`<data>.meta`) naming the server
/// file's identity and how many leading bytes are whole, checksum-verified chunks. The
/// sidecar is updated after each chunk is written, so an interruption of any kind (Ctrl-C,
/// `kill -9`, a dropped connection) loses at most the chunk in flight.
public final class PartialFile {
    public let dataPath: String
    public var metaPath: String { dataPath + ".meta" }
    public let identity: PartialIdentity
    public private(set) var verified: Int64
    let handle: FileHandle
    let label: String

    static let magic = "ferry-partial 1"

    /// The sidecar, kept open: after each chunk only its `verified=` line is rewritten in place.
    private var meta: FileHandle?
    private var metaPrefixLength = 0

    /// Where the data lives until it is finished.
    enum Placement {
        /// In the partial folder, named by a hash of its path, with a sidecar: resumable.
        case partialFolder
        /// A temporary (`.~ferry-XXXXXXXXXXXXXXXX`) in the directory that will hold the file,
        /// without a sidecar: for files that arrive in one chunk, where there is nothing to
        /// resume. Creating it beside its final name spreads creations over the tree's
        /// directories and keeps the final rename within one directory (no filesystem-wide
        /// rename lock). Removed again if the partial is dropped unfinished.
        case besideTarget(directory: FileHandle, name: [UInt8])
    }
    let placement: Placement
    private var placed = false

    private init(dataPath: String, identity: PartialIdentity, verified: Int64, handle: FileHandle, label: String,
                 placement: Placement = .partialFolder) {
        self.dataPath = dataPath
        self.identity = identity
        self.verified = verified
        self.handle = handle
        self.label = label
        self.placement = placement
    }

    deinit {
        if case .besideTarget(let directory, let name) = placement, !placed {
            _ = withCPath(name) { unlinkat(directory.fd, $0, 0) }
        }
    }

    /// The prefix of the temporaries `temporary(in:...)` creates.
    static let temporaryPrefix: [UInt8] = Array(".~ferry-".utf8)
    static let temporaryRandomLength = 16

    /// Whether `name` is one of the temporaries `temporary(in:...)` creates (left behind only
    /// when the process died between creating and renaming it).
    public static func isTemporaryName<Name: Collection>(_ name: Name) -> Bool where Name.Element == UInt8 {
        guard name.count == temporaryPrefix.count + temporaryRandomLength,
              name.starts(with: temporaryPrefix) else { return false }
        return name.dropFirst(temporaryPrefix.count).allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// Whether the last component of `path` is a temporary's name (looked at in place: this
    /// runs for every entry of a scan and of a plan).
    public static func isTemporary(_ path: RemotePath) -> Bool { isTemporaryName(path.nameBytes) }

    /// Starts a new, empty file that is not resumable, as a temporary in `directory` (the
    /// directory that will hold it; `directoryDisplay` names it in messages).
    public static func temporary(in directory: FileHandle, directoryDisplay: String, for identity: PartialIdentity,
                                 label: String) throws(SystemError) -> PartialFile {
        var attempts = 0
        while true {
            var name = temporaryPrefix
            Hex.append(TemporaryNames.next(), to: &name)
            let display = (directoryDisplay.hasSuffix("/") ? directoryDisplay : directoryDisplay + "/") + String(decoding: name, as: UTF8.self)
            let fd = POSIX.openAt(directory.fd, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
            if fd < 0 {
                attempts += 1
                if errno == EEXIST && attempts < 8 { continue }
                throw SystemError(errno: errno, operation: "create", path: display)
            }
            return PartialFile(dataPath: display, identity: identity, verified: 0, handle: FileHandle(fd: fd),
                               label: label, placement: .besideTarget(directory: directory, name: name))
        }
    }

    /// Reads the identity and verified length of an existing partial, if there is a valid one.
    public static func existing(at dataPath: String) -> (PartialIdentity, Int64)? {
        guard let bytes = try? AtomicFile.read(dataPath + ".meta", limit: 4096) else { return nil }
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n")
        guard lines.first.map(String.init) == magic else { return nil }
        var fields: [Substring: Substring] = [:]
        for line in lines.dropFirst() {
            guard let eq = line.firstIndex(of: "=") else { continue }
            fields[line[..<eq]] = line[line.index(after: eq)...]
        }
        guard let sizeText = fields["size"], let size = parseWireNumber(sizeText),
              let mtimeText = fields["mtime"], let mtime = Timestamp(mtimeText),
              let shaText = fields["sha256"], shaText == "-" || isSHA256Hex(shaText),
              let vText = fields["verified"], let verified = parseWireNumber(vText.drop(while: { $0 == " " })),
              verified <= size else { return nil }
        guard let info = try? POSIX.lstat(dataPath), info.type == .file else { return nil }
        return (PartialIdentity(size: size, mtime: mtime, sha256: shaText == "-" ? nil : String(shaText)),
                min(verified, info.size))
    }

    /// Opens a partial for `identity`: continues an existing one with the same identity
    /// (keeping its verified length, which the caller must still check against the server),
    /// or starts a new, empty one.
    public static func open(at dataPath: String, for identity: PartialIdentity, label: String,
                            allowResume: Bool = true) throws(SystemError) -> PartialFile {
        var verified: Int64 = 0
        if allowResume, let (old, v) = existing(at: dataPath),
           old.size == identity.size, old.mtime == identity.mtime,
           old.sha256 == nil || identity.sha256 == nil || old.sha256 == identity.sha256 {
            verified = v
        }
        let flags = O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | (verified == 0 ? O_TRUNC : 0)
        let fd = retryingEINTR { Glibc.open(dataPath, flags, 0o600) }
        guard fd >= 0 else { throw SystemError(errno: errno, operation: "create", path: dataPath) }
        // Whatever lies past the verified end (a chunk being written when the run was killed)
        // goes: appends skip runs of zeros, which is right only where the file has none yet.
        if verified > 0 && ftruncate(fd, off_t(verified)) != 0 {
            let e = errno
            close(fd)
            throw SystemError(errno: e, operation: "truncate", path: dataPath)
        }
        let partial = PartialFile(dataPath: dataPath, identity: identity, verified: verified,
                                  handle: FileHandle(fd: fd), label: label)
        try partial.writeMeta()
        return partial
    }

    /// Writes raw bytes at the verified end and advances it (chunks arrive in order). Blocks
    /// of zeros are not written but left as holes (the file stays sparse, as with
    /// `cp --sparse=auto`): the data file never extends past the verified end, so what is not
    /// written reads back as zeros.
    public func append(_ raw: UnsafeRawBufferPointer, at offset: Int64) throws(SystemError) {
        precondition(offset == verified, "chunks are appended in order")
        let end = offset + Int64(raw.count)
        let written = try SparseWriter.write(raw, at: offset, to: handle, path: dataPath)
        if written < end && ftruncate(handle.fd, off_t(end)) != 0 {
            throw SystemError(errno: errno, operation: "extend", path: dataPath)
        }
        verified = end
        try writeMeta()
    }

    /// Forgets everything after `length` (used when verification finds a bad tail).
    public func truncate(to length: Int64) throws(SystemError) {
        guard ftruncate(handle.fd, off_t(length)) == 0 else {
            throw SystemError(errno: errno, operation: "truncate", path: dataPath)
        }
        verified = min(verified, length)
        try writeMeta()
    }

    /// The data file, for reading back what was written (verification of kept data).
    public var fileHandle: FileHandle { handle }

    /// Writes the sidecar. The verified length is written with a fixed width, so updates
    /// after each chunk are a single small `pwrite` of one line.
    private func writeMeta() throws(SystemError) {
        if case .besideTarget = placement { return }
        let digits = String(verified)
        let field = String(repeating: " ", count: max(0, 19 - digits.count)) + digits + "\n"
        if let meta {
            try meta.write(Array(field.utf8), at: Int64(metaPrefixLength), path: metaPath)
            return
        }
        let prefix = "\(Self.magic)\nsize=\(identity.size)\nmtime=\(identity.mtime)\nsha256=\(identity.sha256 ?? "-")\n"
            + "file=\(PercentEncoding.encode(Array(label.utf8)))\nverified="
        let fd = retryingEINTR { Glibc.open(metaPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600) }
        guard fd >= 0 else { throw SystemError(errno: errno, operation: "create", path: metaPath) }
        let handle = FileHandle(fd: fd)
        try handle.write(Array((prefix + field).utf8), at: 0, path: metaPath)
        meta = handle
        metaPrefixLength = prefix.utf8.count
    }

    /// Sets mode and mtime and renames the data to `finalPath`; removes the sidecar.
    public func finish(to finalPath: String, mode: UInt32, mtime: Timestamp) throws(SystemError) {
        try prepareForPlacement(mode: mode, mtime: mtime)
        guard rename(dataPath, finalPath) == 0 else {
            throw SystemError(errno: errno, operation: "rename into place", path: finalPath)
        }
        unlink(metaPath)
    }

    /// Sets mode and mtime and moves the data to `path` inside `tree` (never through a
    /// symlink); removes the sidecar. The partial must live in `partialDir` of the same tree.
    public func finish(into tree: LocalTree, at path: RemotePath, partialDir: FileHandle, mode: UInt32, mtime: Timestamp) throws(SystemError) {
        try prepareForPlacement(mode: mode, mtime: mtime)
        switch placement {
        case .partialFolder:
            let name = Array((dataPath.split(separator: "/").last.map(String.init) ?? dataPath).utf8)
            try tree.moveIntoPlace(fromDir: partialDir.fd, fromName: name, to: path)
            unlink(metaPath)
        case .besideTarget(let directory, let name):
            try tree.moveIntoPlace(fromDir: directory.fd, fromName: name, toDir: directory.fd, name: path.name, display: tree.display(path))
            placed = true
        }
    }

    private func prepareForPlacement(mode: UInt32, mtime: Timestamp) throws(SystemError) {
        guard fchmod(handle.fd, mode_t(LocalTree.applicableMode(mode))) == 0 else {
            throw SystemError(errno: errno, operation: "chmod", path: dataPath)
        }
        try LocalTree.setMtime(handle.fd, mtime, display: dataPath)
    }

    /// Deletes the partial data and its sidecar.
    public func discard() {
        switch placement {
        case .partialFolder:
            unlink(dataPath)
            unlink(metaPath)
        case .besideTarget(let directory, let name):
            _ = withCPath(name) { unlinkat(directory.fd, $0, 0) }
            placed = true
        }
    }

    public static func discard(at dataPath: String) {
        unlink(dataPath)
        unlink(dataPath + ".meta")
    }
}

/// Writes data leaving blocks of zeros as holes.
public enum SparseWriter {
    /// Holes are made in whole blocks of this size, aligned to the file offset.
    public static let blockSize = 4096

    /// Writes the blocks of `raw` (placed at `offset`) that are not all zeros, each run of them
    /// in one `pwrite`; returns the end offset of the last byte written (`offset` when nothing
    /// was). The caller extends the file when that is short of the data's end.
    @discardableResult
    public static func write(_ raw: UnsafeRawBufferPointer, at offset: Int64, to handle: FileHandle,
                             path: String) throws(SystemError) -> Int64 {
        let n = raw.count
        var writtenEnd = offset
        var runStart: Int?
        var position = 0
        while position < n {
            // Up to the next block boundary of the file.
            let blockEnd = min(n, position + blockSize - Int((offset + Int64(position)) % Int64(blockSize)))
            let zero = isZero(UnsafeRawBufferPointer(rebasing: raw[position..<blockEnd]))
            if zero, let start = runStart {
                try handle.write(UnsafeRawBufferPointer(rebasing: raw[start..<position]), at: offset + Int64(start), path: path)
                writtenEnd = offset + Int64(position)
                runStart = nil
            } else if !zero && runStart == nil {
                runStart = position
            }
            position = blockEnd
        }
        if let start = runStart {
            try handle.write(UnsafeRawBufferPointer(rebasing: raw[start..<n]), at: offset + Int64(start), path: path)
            writtenEnd = offset + Int64(n)
        }
        return writtenEnd
    }

    /// Whether every byte is zero (eight at a time; most data has a non-zero byte early).
    public static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let n = bytes.count
        var i = 0
        while i + 8 <= n {
            if bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
            i += 8
        }
        while i < n {
            if bytes[i] != 0 { return false }
            i += 1
        }
        return true
    }
}

/// Names for temporaries: 64-bit values from a generator seeded once per process from the
/// system's random source (SplitMix64), so a sync of 10,000 small files does not make 10,000
/// `getrandom` calls. The names need to be hard to guess, not secret: creating one is
/// `O_CREAT | O_EXCL | O_NOFOLLOW`, so a name someone else took (or a symlink planted there)
/// only costs another try.
enum TemporaryNames {
    private static let state: NIOLockedValueBox<UInt64> = {
        var rng = SystemRandomNumberGenerator()
        return NIOLockedValueBox(rng.next())
    }()

    static func next() -> UInt64 {
        let s = state.withLockedValue { s -> UInt64 in
            s &+= 0x9E37_79B9_7F4A_7C15
            return s
        }
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
