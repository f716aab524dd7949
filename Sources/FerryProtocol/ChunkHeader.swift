/// How a chunk's bytes are carried (PROTOCOL.md section 7).
public enum ChunkCodec: String, Sendable, Hashable, CaseIterable {
    case zlib = "z"
    case stored = "s"
    /// Sent only on a connection that enabled the capability `zstd`: a 1.0 peer refuses it.
    case zstd = "zstd"

    /// What every peer decodes, 1.0 ones included.
    public static let baseline: Set<ChunkCodec> = [.stored, .zlib]

    /// The capability a connection must enable before this codec may be sent on it; nil for
    /// the codecs of protocol 1.0.
    public var capability: Capability? {
        switch self {
        case .zlib, .stored: return nil
        case .zstd: return .zstd
        }
    }

    /// The codecs that may be sent on a connection that enabled `enabled`.
    public static func usable(with enabled: [Capability]) -> Set<ChunkCodec> {
        Set(allCases.filter { codec in codec.capability.map(enabled.contains) ?? true })
    }
}

/// The line that announces a chunk: `CHUNK offset raw-length wire-length codec crc32`.
public struct ChunkHeader: Hashable, Sendable {
    public var offset: Int64
    public var rawLength: Int
    public var wireLength: Int
    public var codec: ChunkCodec
    public var crc32: UInt32

    public init(offset: Int64, rawLength: Int, wireLength: Int, codec: ChunkCodec, crc32: UInt32) {
        self.offset = offset
        self.rawLength = rawLength
        self.wireLength = wireLength
        self.codec = codec
        self.crc32 = crc32
    }

    public var line: String {
        let crc = String(crc32, radix: 16)
        return "CHUNK \(offset) \(rawLength) \(wireLength) \(codec.rawValue) "
            + String(repeating: "0", count: 8 - crc.count) + crc
    }

    public struct Malformed: Error, Hashable, Sendable, CustomStringConvertible {
        public let why: String
        public var description: String { "malformed chunk header: \(why)" }
    }

    /// Parses and bounds-checks a header line (with the `CHUNK ` prefix).
    public static func parse(_ line: Substring) throws(Malformed) -> ChunkHeader {
        let f = line.spaceSeparatedFields()
        guard f.count == 6, f[0] == "CHUNK" else { throw Malformed(why: "expected 6 fields") }
        guard let offset = parseWireNumber(f[1]) else { throw Malformed(why: "bad offset") }
        guard let raw = parseWireNumber(f[2]), raw >= 1, raw <= Int64(FerryLimits.maxChunkRaw) else {
            throw Malformed(why: "raw length outside 1...\(FerryLimits.maxChunkRaw)")
        }
        guard let wire = parseWireNumber(f[3]), wire >= 1, wire <= raw + Int64(FerryLimits.chunkWireSlack) else {
            throw Malformed(why: "wire length out of bounds")
        }
        guard let codec = ChunkCodec(rawValue: String(f[4])) else { throw Malformed(why: "unknown codec '\(f[4].prefix(8))'") }
        if codec == .stored && wire != raw { throw Malformed(why: "stored chunk with wire length != raw length") }
        guard f[5].utf8.count == 8, f[5].utf8.allSatisfy({ PercentEncoding.hexValue($0) != nil }),
              let crc = UInt32(f[5], radix: 16) else { throw Malformed(why: "bad crc32") }
        return ChunkHeader(offset: offset, rawLength: Int(raw), wireLength: Int(wire), codec: codec, crc32: crc)
    }
}
