import FerryFiles
import FerryProtocol

/// What `ferry serve --compress` asks for: the user's mode, for the whole server.
/// `ChunkCompressionPolicy` turns it into a decision for each chunk.
public enum CompressionMode: Sendable, Hashable, CustomStringConvertible {
    /// Never compress.
    case off
    /// Codec and level chosen chunk by chunk from the link and the CPU (`AdaptiveCompression`).
    case auto
    /// Every chunk tried with this codec and level; chunks that do not shrink by 3% are stored.
    /// A peer that does not decode the codec gets zlib at a comparable level (`fallback`).
    case fixed(ChunkCompression)

    /// Why a `--compress` value was refused.
    public struct Invalid: Error, Hashable, Sendable, CustomStringConvertible {
        public let text: String
        public var description: String {
            let levels = ChunkCodecs.compressors.map { "\($0.name):N (\($0.levels.lowerBound) to \($0.levels.upperBound))" }
            return "'\(text)' is not a compression mode: use auto, off, \(levels.joined(separator: ", ")), or a zlib level 1-9"
        }
    }

    /// `auto`, `off` (or `0`), `zlib:N`, `zstd:N`, or a bare zlib level `1`-`9` (as before zstd).
    public init(parsing text: String) throws(Invalid) {
        switch text {
        case "auto": self = .auto
        case "off", "0": self = .off
        default:
            let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            let compressor = parts.count == 2 ? ChunkCodecs.compressor(named: String(parts[0])) : ZlibCodec.self
            guard let compressor, let levelText = parts.last, let level = Int32(levelText),
                  let compression = ChunkCompression(codec: compressor.codec, level: level) else { throw Invalid(text: text) }
            self = .fixed(compression)
        }
    }

    /// Whether chunks may go out in `codec` under this mode (for a peer that decodes it).
    public func mayUse(_ codec: ChunkCodec) -> Bool {
        switch self {
        case .off: return codec == .stored
        case .auto: return true
        case .fixed(let compression): return compression.codec == codec || codec == .stored
        }
    }

    public var description: String {
        switch self {
        case .off: return "off"
        case .auto: return "auto"
        case .fixed(let compression): return compression.description
        }
    }

    /// What a fixed `compression` becomes for a peer that does not decode its codec: zlib at
    /// about the same effort (zstd up to 3 → zlib 1, up to 9 → zlib 6, above → zlib 9).
    static func fallback(_ compression: ChunkCompression, peerCodecs: Set<ChunkCodec>) -> ChunkCompression {
        guard !peerCodecs.contains(compression.codec) else { return compression }
        switch compression.level {
        case ...3: return .zlib(1)
        case ...9: return .zlib(6)
        default: return .zlib(9)
        }
    }
}

/// Turns the server's `CompressionMode` into the decision for each chunk of a stream to one
/// peer: the one place where `auto` consults its controller.
struct ChunkCompressionPolicy: Sendable {
    let mode: CompressionMode
    /// The codecs the peer decodes: `ChunkCodec.baseline` for every 1.0 peer; `zstd` only on a
    /// connection that enabled that capability.
    let peerCodecs: Set<ChunkCodec>
    /// The peer is on this machine (a loopback address): there is no link to save, and the
    /// client decompresses on the same cores the server compresses on, so `auto` stores.
    let localPeer: Bool

    init(mode: CompressionMode, peerCodecs: Set<ChunkCodec> = ChunkCodec.baseline, localPeer: Bool = false) {
        self.mode = mode
        self.peerCodecs = peerCodecs
        self.localPeer = localPeer
    }

    /// Whether decisions depend on what the controller measures.
    var adapts: Bool { mode == .auto }

    func decide(_ controller: inout AdaptiveCompression) -> ChunkDecision {
        switch mode {
        case .off: return .store
        case .fixed(let compression): return .compress(CompressionMode.fallback(compression, peerCodecs: peerCodecs))
        case .auto: return localPeer ? .store : controller.decide(peerCodecs: peerCodecs)
        }
    }
}
