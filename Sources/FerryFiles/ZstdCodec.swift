import CZstd
import FerryProtocol
import NIOConcurrencyHelpers

/// zstd (RFC 8878) chunks: one complete zstd frame per chunk, with the content size in its
/// header, that decodes to exactly the chunk's raw length (wire token `zstd`).
///
/// Decoding is bounded like zlib's: before anything is decoded, the frame header must declare
/// exactly the raw length (`ZSTD_getFrameContentSize`) and no dictionary, and the frame must
/// span the whole wire (`ZSTD_findFrameCompressedSize`: no truncation, no trailing bytes, no
/// second frame); then the
/// one-shot `ZSTD_decompressDCtx` writes into the raw-length destination and nowhere else (it
/// needs no window buffer of its own). Contexts are reused (`ZstdContexts`), as creating one
/// costs an allocation of 100 KiB or more and its page faults.
public enum ZstdCodec: ChunkCompressor {
    public static let codec = ChunkCodec.zstd
    public static let name = "zstd"
    /// 1-19 are zstd's normal levels; -7...-1 its fast ones (less ratio for more speed). 20-22
    /// ("ultra") only widen the window, which a 256 KiB chunk does not fill.
    public static let levels: ClosedRange<Int32> = -7...19

    /// The first four bytes of every zstd frame (little-endian 0xFD2FB528). Skippable frames
    /// and the legacy formats some builds still decode are not chunks.
    static let magic: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD]

    public static func compress(_ raw: UnsafeRawBufferPointer, level: Int32, into output: UnsafeMutableRawBufferPointer) -> Int? {
        guard let src = raw.baseAddress, let dst = output.baseAddress, output.count > 0 else { return nil }
        return ZstdContexts.compression.use { context -> Int? in
            // One-shot with the source size known: the frame header carries the content size.
            let written = ZSTD_compressCCtx(context, dst, output.count, src, raw.count, level)
            return ZSTD_isError(written) != 0 ? nil : written
        } ?? nil
    }

    public static func decompress(_ wire: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) -> DecompressionFailure? {
        guard let src = wire.baseAddress, wire.count >= magic.count, wire.prefix(magic.count).elementsEqual(magic) else {
            return .malformed("not a zstd frame")
        }
        let declared = ZSTD_getFrameContentSize(src, wire.count)
        // ZSTD_CONTENTSIZE_ERROR and ZSTD_CONTENTSIZE_UNKNOWN (macros Swift does not import).
        if declared == UInt64.max - 1 { return .malformed("corrupt or truncated zstd frame header") }
        if declared == UInt64.max { return .malformed("zstd frame without its content size") }
        if declared != UInt64(destination.count) {
            let which = declared > UInt64(destination.count) ? "more" : "less"
            return .malformed("zstd frame declares \(declared) bytes, \(which) than announced")
        }
        if ZSTD_getDictID_fromFrame(src, wire.count) != 0 { return .malformed("zstd frame needs a dictionary") }
        let frame = ZSTD_findFrameCompressedSize(src, wire.count)
        if ZSTD_isError(frame) != 0 { return .malformed("truncated or corrupt zstd frame") }
        if frame != wire.count { return .malformed("trailing bytes after the zstd frame") }
        guard let dst = destination.baseAddress else { return .malformed("empty destination") }
        let result = ZstdContexts.decompression.use { context -> DecompressionFailure? in
            let written = ZSTD_decompressDCtx(context, dst, destination.count, src, wire.count)
            if ZSTD_isError(written) != 0 {
                return .malformed("corrupt zstd frame (\(String(cString: ZSTD_getErrorName(written))))")
            }
            return written == destination.count ? nil : .length(got: written)
        }
        return result ?? .malformed("zstd could not allocate a decompression context")
    }
}

/// zstd contexts kept for reuse by whichever thread encodes or decodes next. A context is
/// handed to one caller at a time; at most `limit` idle ones are kept per kind.
final class ZstdContexts: Sendable {
    static let compression = ZstdContexts(.compression)
    static let decompression = ZstdContexts(.decompression)
    static let limit = 8

    enum Kind: Sendable { case compression, decompression }

    /// One context. `@unchecked Sendable`: a context is only ever used by the one caller the
    /// pool handed it to, so it moves between threads but is never shared.
    private final class Context: @unchecked Sendable {
        let kind: Kind
        let pointer: OpaquePointer

        init?(_ kind: Kind) {
            guard let pointer = kind == .compression ? ZSTD_createCCtx() : ZSTD_createDCtx() else { return nil }
            self.kind = kind
            self.pointer = pointer
        }

        deinit {
            switch kind {
            case .compression: ZSTD_freeCCtx(pointer)
            case .decompression: ZSTD_freeDCtx(pointer)
            }
        }
    }

    private let kind: Kind
    private let idle = NIOLockedValueBox<[Context]>([])

    private init(_ kind: Kind) {
        self.kind = kind
    }

    /// Runs `body` with a context of its own; nil if none could be created.
    func use<R>(_ body: (OpaquePointer) -> R) -> R? {
        guard let context = idle.withLockedValue({ $0.popLast() }) ?? Context(kind) else { return nil }
        defer {
            idle.withLockedValue { contexts in
                if contexts.count < Self.limit { contexts.append(context) }
            }
        }
        return body(context.pointer)
    }
}
