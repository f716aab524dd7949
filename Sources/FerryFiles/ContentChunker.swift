import FerryProtocol

/// Content-defined chunking (FastCDC-style): chunk boundaries are found from the bytes
/// themselves with a gear rolling hash, so an insertion or deletion moves only the boundaries
/// near it and every chunk after it keeps its bytes and therefore its hash. The chunk map of
/// `CHUNKS` (PROTOCOL.md) and the client's local chunk index both use these exact parameters;
/// they are part of the protocol (the reply names them, and a client refuses other values).
///
/// Parameters (ARCHITECTURE.md, "Content-defined chunks"): minimum 16 KiB, average 64 KiB,
/// maximum 256 KiB, normalized chunking level 2 (a stricter mask below the average, a looser
/// one above it, which narrows the size distribution around the average).
public enum ContentChunker {
    public static let parameters = ChunkParameters.standard
    public static let minSize = parameters.minSize
    public static let averageSize = parameters.averageSize
    public static let maxSize = parameters.maxSize

    /// Boundary masks: a boundary is where the gear hash has zeros under the mask. 18 one
    /// bits below the average (a boundary there has probability 2^-18 per byte), 14 above it
    /// (2^-14): normalized chunking of level 2 around 2^16 = 64 KiB. The bits are spread over
    /// bits 20–63: the gear hash shifts left once per byte, so bit k depends on the last k+1
    /// bytes, and high bits give every boundary a window of 20 to 64 bytes.
    static let maskStrict: UInt64 = 0x94a5_294a_5290_0000
    static let maskLoose: UInt64 = 0x9124_4922_4890_0000

    /// 256 pseudo-random 64-bit values (SplitMix64 from a fixed seed): the gear table. Fixed
    /// forever: changing it changes every boundary.
    static let gear: [UInt64] = {
        var state: UInt64 = 0x6665_7272_792d_6364  // "ferry-cd"
        return (0..<256).map { _ in
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }()

    /// The length of the chunk that starts at `bytes`' first byte: the first boundary found,
    /// or `min(bytes.count, maxSize)` when there is none. `bytes` must hold everything up to
    /// `maxSize` bytes of the stream from the chunk's start, or the stream's end: a shorter
    /// buffer ends the chunk where it ends.
    public static func cut(_ bytes: UnsafeRawBufferPointer) -> Int {
        let n = bytes.count
        if n <= minSize { return n }
        let end = min(n, maxSize)
        let normal = min(end, averageSize)
        guard let base = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return n }
        return gear.withUnsafeBufferPointer { table -> Int in
            // Invariant: the table has 256 entries, so any byte indexes it.
            let g = table.baseAddress!
            var h: UInt64 = 0
            var i = minSize
            while i < normal {
                h = (h &<< 1) &+ g[Int(base[i])]
                if h & maskStrict == 0 { return i + 1 }
                i += 1
            }
            while i < end {
                h = (h &<< 1) &+ g[Int(base[i])]
                if h & maskLoose == 0 { return i + 1 }
                i += 1
            }
            return end
        }
    }

    /// The chunk lengths of a whole buffer, in order (a pure function, for tests and small data).
    public static func lengths(of bytes: [UInt8]) -> [Int] {
        bytes.withUnsafeBytes { all in
            var out: [Int] = []
            var start = 0
            while start < all.count {
                let n = cut(UnsafeRawBufferPointer(rebasing: all[start...]))
                out.append(n)
                start += n
            }
            return out
        }
    }
}
