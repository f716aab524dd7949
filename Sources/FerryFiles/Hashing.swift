import Crypto
import CFerryXXH
import FerryProtocol

/// Streaming SHA-256 that renders as the protocol's lowercase hex.
// `@unchecked`: swift-crypto's `SHA256` is a value type that is not marked Sendable, but its
// only reference, the BoringSSL context, is copy-on-write (`update` copies it unless uniquely
// referenced), so a copy handed to another task is independent of the original.
public struct SHA256Hasher: @unchecked Sendable {
    private var hasher = SHA256()

    public init() {}

    public mutating func update(_ bytes: UnsafeRawBufferPointer) { hasher.update(bufferPointer: bytes) }
    public mutating func update(_ bytes: [UInt8]) { hasher.update(data: bytes) }

    public consuming func finalizeHex() -> String { Hex.encode(Array(hasher.finalize())) }

    public static func hex(_ bytes: [UInt8]) -> String {
        var h = SHA256Hasher()
        h.update(bytes)
        return h.finalizeHex()
    }
}

public enum FileHashing {
    static let readSize = 1 << 20

    /// SHA-256 of `length` bytes of an open file from `offset`, read in 1 MiB steps.
    public static func sha256(of file: FileHandle, offset: Int64 = 0, length: Int64) throws(SystemError) -> String {
        var hasher = SHA256Hasher()
        _ = try read(file, from: offset, to: offset + length) { hasher.update($0) }
        return hasher.finalizeHex()
    }

    /// Reads bytes `[from, to)` of `file` in 1 MiB steps through one buffer, handing each step
    /// to `body`. Returns where it stopped: `to`, or the end of a file that is shorter.
    public static func read(_ file: FileHandle, from: Int64, to: Int64,
                            _ body: (UnsafeRawBufferPointer) -> Void) throws(SystemError) -> Int64 {
        guard from < to else { return from }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: readSize, alignment: 64)
        defer { buffer.deallocate() }
        var position = from
        while position < to {
            let want = Int(min(Int64(readSize), to - position))
            let n = try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: position)
            if n == 0 { break }
            body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            position += Int64(n)
        }
        return position
    }
}

/// SHA-256 of a file range computed a piece at a time, so that a long hash can be spread over
/// many short jobs (the server interleaves them with other clients' work and stops between them
/// when the client has gone) instead of holding a thread for the whole range.
// `@unchecked`: the state is mutated by one job at a time; the caller awaits each `advance`
// before starting the next, so no two threads ever touch it together.
public final class RangeHash: @unchecked Sendable {
    private let file: FileHandle
    private var position: Int64
    private let end: Int64
    private var hasher = SHA256Hasher()

    /// A second hasher fed the same bytes: the state of a longer prefix being continued.
    private var continued: SHA256Hasher?
    private let startsAtZero: Bool

    /// `continuing`: the state of the file's bytes before `offset`, to be carried on too.
    public init(file: FileHandle, offset: Int64, length: Int64, continuing: SHA256Hasher? = nil) {
        self.file = file
        self.position = offset
        self.end = offset + length
        self.continued = continuing
        self.startsAtZero = offset == 0 && continuing == nil
    }

    /// The state of the file's bytes from 0 to where the range ends, when known: the continued
    /// prefix, or the range's own state when it starts at 0 (no second hasher needed then).
    public var prefix: SHA256Hasher? { continued ?? (startsAtZero ? hasher : nil) }

    /// True once the whole range (or everything up to the end of a file that became shorter) is in.
    public private(set) var isDone = false

    /// Hashes up to `maxBytes` more bytes.
    public func advance(by maxBytes: Int) throws(SystemError) {
        guard !isDone else { return }
        let stop = min(end, position + Int64(maxBytes))
        let reached = try FileHashing.read(file, from: position, to: stop) { bytes in
            hasher.update(bytes)
            continued?.update(bytes)
        }
        isDone = reached < stop || reached >= end
        position = reached
    }

    public func finalizeHex() -> String { hasher.finalizeHex() }
}

/// Streaming XXH3-128, the transfer digest of the `xxh128` capability (PROTOCOL.md section 7):
/// it checks that the bytes of a `GET` reply arrived as the server read them, at memory speed,
/// where SHA-256 (the file's identity) set the pace of a transfer. Not a cryptographic hash:
/// it guards against corruption and bugs; TLS guards against people.
/// One owner at a time (not Sendable): a reply's chunks are fed in order by the task reading it.
public final class XXH128Hasher {
    /// xxHash's state, one aligned allocation of about 600 bytes.
    private let state: OpaquePointer

    public init() {
        // Invariant: a failed allocation of 600 bytes ends the process, as any Swift allocation does.
        state = ferry_xxh128_new()!
    }
    deinit { ferry_xxh128_free(state) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        ferry_xxh128_update(state, bytes.baseAddress, bytes.count)
    }

    public func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0) } }

    /// The digest of everything given so far, as 32 lowercase hex digits.
    public func finalizeHex() -> String {
        var out = [UInt8](repeating: 0, count: 16)
        out.withUnsafeMutableBufferPointer { ferry_xxh128_digest(state, $0.baseAddress) }
        return Hex.encode(out)
    }

    /// The digest of `bytes` in one call.
    public static func hex(_ bytes: UnsafeRawBufferPointer) -> String {
        var out = [UInt8](repeating: 0, count: 16)
        out.withUnsafeMutableBufferPointer { ferry_xxh128_oneshot(bytes.baseAddress, bytes.count, $0.baseAddress) }
        return Hex.encode(out)
    }

    public static func hex(_ bytes: [UInt8]) -> String { bytes.withUnsafeBytes { hex($0) } }

    /// The best vector code this CPU runs (0 SSE2, 1 AVX2, 2 AVX-512), chosen on first use.
    public static var bestVectorLevel: Int { Int(ferry_xxh128_best_level()) }

    /// Uses the vector code of `level` from now on (for tests: every level must give the same
    /// digests); false, changing nothing, when the CPU lacks it.
    @discardableResult
    public static func useVectorLevel(_ level: Int) -> Bool { ferry_xxh128_use(Int32(level)) != 0 }
}
