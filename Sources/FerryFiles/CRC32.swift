import CFerryCRC
import CZlib

/// CRC-32 (IEEE 802.3), the value zlib's `crc32` computes: the chunk checksum on both ends.
/// On x86-64 CPUs with PCLMULQDQ it folds 64 bytes per step with carry-less multiplies
/// (`CFerryCRC`, about 12 GB/s against zlib 1.2.13's 3.8 GB/s), and 256 bytes per step with
/// VPCLMULQDQ on AVX-512 where the CPU has it; elsewhere it calls zlib.
public enum CRC32 {
    /// How to compute it; every implementation gives the same value.
    public enum Implementation: Sendable, CaseIterable {
        /// The fastest this CPU has: `CFerryCRC`'s PCLMULQDQ folding, else zlib.
        case automatic
        /// `CFerryCRC`'s portable slice-by-8 path, whatever the CPU (tests and benchmarks).
        case portable
        /// `CFerryCRC`'s 128-bit PCLMULQDQ folding even where the AVX-512 one would be used
        /// (the portable path without PCLMULQDQ).
        case pclmul128
        /// zlib's `crc32_z`.
        case zlib
    }

    /// Whether this CPU takes the carry-less-multiply path.
    public static let isAccelerated = ferry_crc32_accelerated() != 0
    /// Whether this CPU folds large buffers with VPCLMULQDQ on AVX-512 registers.
    public static let isWide = ferry_crc32_wide() != 0

    /// The CRC-32 of `bytes` following bytes whose CRC-32 is `previous` (0 to start), so
    /// `checksum(b, continuing: checksum(a))` is the checksum of `a` followed by `b`.
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing previous: UInt32 = 0,
                                using implementation: Implementation = .automatic) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return previous }
        switch implementation {
        case .automatic where isAccelerated:
            return ferry_crc32(previous, base, bytes.count)
        case .portable:
            return ferry_crc32_portable(previous, base, bytes.count)
        case .pclmul128:
            return ferry_crc32_pclmul128(previous, base, bytes.count)
        case .automatic, .zlib:
            return UInt32(truncatingIfNeeded: crc32_z(uLong(previous), base.assumingMemoryBound(to: Bytef.self), bytes.count))
        }
    }

    public static func checksum(_ bytes: [UInt8], continuing previous: UInt32 = 0,
                                using implementation: Implementation = .automatic) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0, continuing: previous, using: implementation) }
    }
}
