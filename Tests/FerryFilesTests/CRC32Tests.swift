import CFerryCRC
import CZlib
import FerryFiles
import FerryTestSupport
import XCTest

/// `CRC32` (PCLMULQDQ folding where the CPU has it, portable slice-by-8, zlib) against zlib's
/// `crc32_z`, the reference: every implementation must give zlib's value for any length,
/// alignment and starting value.
final class CRC32Tests: XCTestCase {
    private func zlib(_ bytes: UnsafeRawBufferPointer, _ start: UInt32 = 0) -> UInt32 {
        UInt32(truncatingIfNeeded: crc32_z(uLong(start), bytes.baseAddress?.assumingMemoryBound(to: Bytef.self), bytes.count))
    }

    func testKnownVectors() {
        let vectors: [(String, UInt32)] = [
            ("", 0),
            ("a", 0xE8B7_BE43),
            ("abc", 0x3524_41C2),
            ("123456789", 0xCBF4_3926),
            ("The quick brown fox jumps over the lazy dog", 0x414F_A339),
        ]
        for implementation in CRC32.Implementation.allCases {
            for (text, crc) in vectors {
                XCTAssertEqual(CRC32.checksum(Array(text.utf8), using: implementation), crc, "\(implementation) \(text)")
            }
            // 64 bytes and more take the folding path where there is one.
            XCTAssertEqual(CRC32.checksum([UInt8](repeating: 0, count: 4096), using: implementation), 0xC71C_0011)
            XCTAssertEqual(CRC32.checksum([UInt8](repeating: 0xFF, count: 256), using: implementation), zlibOf([UInt8](repeating: 0xFF, count: 256)))
        }
    }

    private func zlibOf(_ bytes: [UInt8]) -> UInt32 { bytes.withUnsafeBytes { zlib($0) } }

    /// Every length 0...1024 at every alignment 0...15, for every implementation.
    func testEveryLengthAndAlignmentMatchesZlib() {
        var rng = SplitMix64(seed: 0xC0FF_EE)
        let buffer = rng.bytes(1024 + 16)
        buffer.withUnsafeBytes { all in
            for alignment in 0..<16 {
                for length in 0...1024 {
                    let slice = UnsafeRawBufferPointer(rebasing: all[alignment..<(alignment + length)])
                    let expected = zlib(slice)
                    for implementation in CRC32.Implementation.allCases {
                        let got = CRC32.checksum(slice, using: implementation)
                        if got != expected {
                            XCTFail("\(implementation) length \(length) alignment \(alignment): \(got) != \(expected)")
                            return
                        }
                    }
                }
            }
        }
    }

    /// Random buffers up to 1 MiB at random offsets, split at a random point and combined
    /// through `continuing:` (the starting value zlib takes).
    func testRandomBuffersAndContinuation() {
        var rng = SplitMix64(seed: 42)
        let buffer = rng.bytes((1 << 20) + 64)
        buffer.withUnsafeBytes { all in
            for round in 0..<48 {
                let length = round < 4 ? [1 << 20, 262_144, 65, 63][round] : rng.below(1 << 20)
                let offset = rng.below(64)
                let slice = UnsafeRawBufferPointer(rebasing: all[offset..<(offset + length)])
                let expected = zlib(slice)
                let cut = length == 0 ? 0 : rng.below(length)
                let head = UnsafeRawBufferPointer(rebasing: slice[0..<cut])
                let tail = UnsafeRawBufferPointer(rebasing: slice[cut...])
                for implementation in CRC32.Implementation.allCases {
                    XCTAssertEqual(CRC32.checksum(slice, using: implementation), expected, "\(implementation) \(length)")
                    let first = CRC32.checksum(head, using: implementation)
                    XCTAssertEqual(CRC32.checksum(tail, continuing: first, using: implementation), expected,
                                   "\(implementation) \(length) cut at \(cut)")
                }
                // A non-zero starting value, as zlib takes it.
                XCTAssertEqual(CRC32.checksum(slice, continuing: 0xDEAD_BEEF), zlib(slice, 0xDEAD_BEEF))
            }
        }
    }

    /// The C entry points directly: the portable path is what a CPU without PCLMULQDQ runs, and
    /// an empty or NULL buffer leaves the value unchanged.
    func testPortablePathAndEdgeCases() {
        var rng = SplitMix64(seed: 7)
        let bytes = rng.bytes(300_001)
        bytes.withUnsafeBytes { b in
            let expected = zlib(b)
            XCTAssertEqual(ferry_crc32_portable(0, b.baseAddress, b.count), expected)
            XCTAssertEqual(ferry_crc32(0, b.baseAddress, b.count), expected)
        }
        XCTAssertEqual(ferry_crc32(0x1234_5678, nil, 0), 0x1234_5678)
        XCTAssertEqual(ferry_crc32_portable(0x1234_5678, nil, 0), 0x1234_5678)
        XCTAssertEqual(CRC32.checksum(UnsafeRawBufferPointer(start: nil, count: 0), continuing: 99), 99)
        #if arch(x86_64)
        // This project's CI and benchmark machines have it; a CPU without it must still pass the
        // tests above through the portable path, so only report it.
        if !CRC32.isAccelerated { print("CRC32Tests: no PCLMULQDQ on this CPU, the portable path was tested twice") }
        if !CRC32.isWide { print("CRC32Tests: no VPCLMULQDQ with AVX-512 on this CPU, the 128-bit path was tested twice") }
        #endif
    }
}
