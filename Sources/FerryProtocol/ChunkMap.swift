/// The content-defined chunk map of a file (`CHUNKS`, PROTOCOL.md section 6; capability
/// `cdc`): its values, the one encoder and the one parser of its lines, and the reader that
/// checks a whole map as it streams in.

/// A SHA-256 held in four words (no heap): the hash of one content-defined chunk.
public struct ChunkDigest: Hashable, Sendable, Comparable {
    public var a: UInt64, b: UInt64, c: UInt64, d: UInt64

    public init(a: UInt64, b: UInt64, c: UInt64, d: UInt64) {
        self.a = a
        self.b = b
        self.c = c
        self.d = d
    }

    /// From 32 bytes (big-endian words, so the order of digests is that of their hex).
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 32 else { return nil }
        var words: [UInt64] = [0, 0, 0, 0]
        for (i, byte) in bytes.enumerated() { words[i / 8] = words[i / 8] << 8 | UInt64(byte) }
        self.init(a: words[0], b: words[1], c: words[2], d: words[3])
    }

    /// From 64 lowercase hex digits.
    public init?(hex: Substring) {
        guard isSHA256Hex(hex), let bytes = Hex.decode(String(hex)) else { return nil }
        self.init(bytes: bytes)
    }

    public var bytes: [UInt8] {
        [a, b, c, d].flatMap { w in (0..<8).map { UInt8(truncatingIfNeeded: w >> (56 - 8 * $0)) } }
    }

    public var hex: String { Hex.encode(bytes) }

    public static func < (l: ChunkDigest, r: ChunkDigest) -> Bool { (l.a, l.b, l.c, l.d) < (r.a, r.b, r.c, r.d) }
}

/// One chunk of a file's content-defined chunk map.
public struct ChunkRecord: Hashable, Sendable {
    public var offset: Int64
    public var length: Int
    public var digest: ChunkDigest

    public init(offset: Int64, length: Int, digest: ChunkDigest) {
        self.offset = offset
        self.length = length
        self.digest = digest
    }
}

/// The sizes a chunk map was cut with. Protocol 1.1 has one set (`standard`); the reply names
/// it so that a client never matches chunks cut another way.
public struct ChunkParameters: Hashable, Sendable, CustomStringConvertible {
    public var minSize: Int
    public var averageSize: Int
    public var maxSize: Int

    public init(minSize: Int, averageSize: Int, maxSize: Int) {
        self.minSize = minSize
        self.averageSize = averageSize
        self.maxSize = maxSize
    }

    /// 16 KiB / 64 KiB / 256 KiB (ARCHITECTURE.md, "Content-defined chunks", says why).
    public static let standard = ChunkParameters(minSize: 16 * 1024, averageSize: 64 * 1024, maxSize: 256 * 1024)

    public var description: String { "\(minSize) \(averageSize) \(maxSize)" }
}

/// `OK <size> <mtime> <min> <avg> <max>`, the head of a `CHUNKS` reply; chunk lines
/// (`ChunksHead.chunkLine`) and an `END <sha256>` line follow.
public struct ChunksHead: OKReply {
    public var size: Int64
    public var mtime: Timestamp
    public var parameters: ChunkParameters

    public init(size: Int64, mtime: Timestamp, parameters: ChunkParameters = .standard) {
        self.size = size
        self.mtime = mtime
        self.parameters = parameters
    }

    public var detail: String? { "\(size) \(mtime) \(parameters)" }

    /// Checks the sizes' order and range (1 byte to `FerryLimits.maxChunkRaw`), not that they
    /// are the standard ones: a client decides what it does with other parameters.
    public init(detail: Substring?) throws(MalformedReply) {
        guard let detail else { throw MalformedReply("CHUNKS reply without fields", "OK") }
        let f = detail.spaceSeparatedFields()
        guard f.count == 5, let size = parseWireNumber(f[0]), let mtime = Timestamp(f[1]),
              let lo = parseWireNumber(f[2]), let avg = parseWireNumber(f[3]), let hi = parseWireNumber(f[4]),
              1 <= lo, lo <= avg, avg <= hi, hi <= Int64(FerryLimits.maxChunkRaw) else {
            throw MalformedReply("CHUNKS reply needs SIZE MTIME MIN AVG MAX with 1 <= MIN <= AVG <= MAX <= 4 MiB", detail)
        }
        self.init(size: size, mtime: mtime, parameters: ChunkParameters(minSize: Int(lo), averageSize: Int(avg), maxSize: Int(hi)))
    }

    /// One chunk's line: `<offset> <length> <sha256>`.
    public static func chunkLine(_ chunk: ChunkRecord) -> String {
        "\(chunk.offset) \(chunk.length) \(chunk.digest.hex)"
    }

    /// Reads one chunk line (its form only; `ChunkMapReader` checks it against the map).
    public static func parseChunkLine(_ line: Substring) throws(MalformedReply) -> ChunkRecord {
        let f = line.spaceSeparatedFields()
        guard f.count == 3, let offset = parseWireNumber(f[0]), let length = parseWireNumber(f[1]),
              length <= Int64(FerryLimits.maxChunkRaw), let digest = ChunkDigest(hex: f[2]) else {
            throw MalformedReply("a chunk line is OFFSET LENGTH SHA256", line)
        }
        return ChunkRecord(offset: offset, length: Int(length), digest: digest)
    }
}

/// Reads a `CHUNKS` reply's lines after its head, refusing any map that is not exactly what
/// the protocol allows: chunks in order, each starting where the last ended (no gap, no
/// overlap), each between the minimum and maximum size (only the last may be shorter), none
/// past the file's size, at most `FerryLimits.maxChunkCount` of them, and an `END` exactly at
/// the size. The hashes cannot be checked here: a client checks every reused chunk's bytes
/// against its hash, and the whole file's SHA-256 decides in the end.
public struct ChunkMapReader: Sendable {
    public let head: ChunksHead
    /// Where the next chunk must start.
    public private(set) var covered: Int64 = 0
    public private(set) var count = 0
    /// The most chunks accepted (`FerryLimits.maxChunkCount`; smaller in tests).
    public let maxCount: Int

    public enum Item: Hashable, Sendable {
        case chunk(ChunkRecord)
        /// The map is complete; the whole file's SHA-256.
        case end(sha256: String)
        /// The server could not finish the map (a read error): the reply ends here.
        case error(ErrorReply)
    }

    public init(head: ChunksHead, maxCount: Int = FerryLimits.maxChunkCount) {
        self.head = head
        self.maxCount = maxCount
    }

    public mutating func read(_ line: Substring) throws(MalformedReply) -> Item {
        if line.hasPrefix("END ") {
            let trailer = try Trailer.parse(line)
            guard trailer.xxh128 == nil else { throw MalformedReply("a CHUNKS trailer has one field", line) }
            guard covered == head.size else {
                throw MalformedReply("chunk map ends at \(covered), not at the file's size \(head.size)", line)
            }
            return .end(sha256: trailer.sha256)
        }
        if line.hasPrefix("ERR ") { return .error(try ErrorReply.parse(line)) }
        let chunk = try ChunksHead.parseChunkLine(line)
        let p = head.parameters
        guard chunk.offset == covered else {
            throw MalformedReply("chunk at \(chunk.offset), expected \(covered) (out of order, a gap or an overlap)", line)
        }
        guard chunk.length >= 1, chunk.length <= p.maxSize, chunk.length <= head.size - chunk.offset else {
            throw MalformedReply("chunk length \(chunk.length) is outside 1...\(p.maxSize) or past the end (\(head.size))", line)
        }
        guard chunk.length >= p.minSize || chunk.offset + Int64(chunk.length) == head.size else {
            throw MalformedReply("chunk of \(chunk.length) bytes is under the minimum \(p.minSize) and not the last", line)
        }
        guard count < maxCount else {
            throw MalformedReply("more than \(maxCount) chunks", line)
        }
        count += 1
        covered += Int64(chunk.length)
        return .chunk(chunk)
    }
}
