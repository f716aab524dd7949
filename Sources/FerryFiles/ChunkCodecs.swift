import FerryProtocol

/// The glue between a compressing chunk codec and its library. Adding a codec touches four
/// places: its case and wire token in `ChunkCodec` (FerryProtocol), a type conforming to this
/// protocol, its line in `ChunkCodecs`, and its tests (round trip, bomb, truncated, corrupt,
/// trailing bytes) and fuzz seeds.
///
/// Both directions are one-shot calls on whole chunks with explicit bounds, so a chunk is one
/// self-contained unit (a zlib stream, a zstd frame) and nothing ever allocates more than the
/// chunk's announced raw length.
public protocol ChunkCompressor: Sendable {
    /// Its wire token.
    static var codec: ChunkCodec { get }
    /// Its name in `--compress NAME:LEVEL`.
    static var name: String { get }
    /// The levels it accepts.
    static var levels: ClosedRange<Int32> { get }
    /// Compresses all of `raw` at `level` into `output` as one complete unit; returns the bytes
    /// written, or nil when the unit would not fit in `output` (the caller sizes `output` to the
    /// most it is willing to send).
    static func compress(_ raw: UnsafeRawBufferPointer, level: Int32, into output: UnsafeMutableRawBufferPointer) -> Int?
    /// Decodes `wire`, which must be exactly one complete unit that decodes to exactly
    /// `destination.count` bytes, into `destination`. Writes nothing past `destination` and
    /// allocates nothing in proportion to what the wire claims; nil when the chunk is good.
    static func decompress(_ wire: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) -> DecompressionFailure?
}

/// Why a codec refused a chunk's wire bytes.
public enum DecompressionFailure: Error, Hashable, Sendable {
    /// Not exactly one well-formed unit that decodes to the announced length: corrupt,
    /// truncated, followed by other bytes, decoding (or declaring) more than announced.
    case malformed(String)
    /// A well-formed unit (or stored bytes) of `got` bytes where another length was announced.
    case length(got: Int)
}

/// A codec and a level: what the encoder compresses a chunk with (`zlib:6`, `zstd:3`).
public struct ChunkCompression: Sendable, Hashable, CustomStringConvertible {
    public let codec: ChunkCodec
    public let level: Int32

    /// Nil for `stored` (nothing to compress with) and for a level the codec does not accept.
    public init?(codec: ChunkCodec, level: Int32) {
        guard let compressor = ChunkCodecs.compressor(for: codec), compressor.levels.contains(level) else { return nil }
        self.codec = codec
        self.level = level
    }

    /// zlib at `level`, brought into 1...9.
    public static func zlib(_ level: Int32) -> ChunkCompression { clamped(ZlibCodec.self, level) }

    /// zstd at `level`, brought into `ZstdCodec.levels`.
    public static func zstd(_ level: Int32) -> ChunkCompression { clamped(ZstdCodec.self, level) }

    private static func clamped(_ compressor: any ChunkCompressor.Type, _ level: Int32) -> ChunkCompression {
        let levels = compressor.levels
        // A level brought into the codec's own range is always accepted.
        return ChunkCompression(codec: compressor.codec, level: min(levels.upperBound, max(levels.lowerBound, level)))!
    }

    public var description: String { "\(ChunkCodecs.compressor(for: codec)?.name ?? codec.rawValue):\(level)" }
}

/// The codec registry: which glue carries which wire token, and the one decode path per codec.
public enum ChunkCodecs {
    /// Every compressing codec, in the order `--compress` lists them.
    public static let compressors: [any ChunkCompressor.Type] = [ZlibCodec.self, ZstdCodec.self]

    /// The glue of a compressing codec; nil for `stored`, whose wire bytes are the raw bytes.
    public static func compressor(for codec: ChunkCodec) -> (any ChunkCompressor.Type)? {
        switch codec {
        case .stored: return nil
        case .zlib: return ZlibCodec.self
        case .zstd: return ZstdCodec.self
        }
    }

    /// The compressing codec called `name` in `--compress NAME:LEVEL`.
    public static func compressor(named name: String) -> (any ChunkCompressor.Type)? {
        compressors.first { $0.name == name }
    }

    /// Decodes `wire` (of `codec`) into exactly `destination.count` bytes; nil when it is good.
    public static func decode(_ codec: ChunkCodec, _ wire: UnsafeRawBufferPointer,
                              into destination: UnsafeMutableRawBufferPointer) -> DecompressionFailure? {
        guard let compressor = compressor(for: codec) else {
            // A hand-built header could disagree with itself; never copy past the destination.
            guard wire.count == destination.count else { return .length(got: wire.count) }
            destination.copyMemory(from: wire)
            return nil
        }
        return compressor.decompress(wire, into: destination)
    }
}
