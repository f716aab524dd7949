/// SipHash-2-4 (Aumasson and Bernstein, 2012): a keyed 64-bit hash of short inputs. The hash
/// cache fingerprints paths and `HashKey`s with it under a random key kept in its file, which
/// makes a lookup a few dozen nanoseconds instead of two SHA-256 computations, and leaves
/// nobody who writes into the served tree able to choose names whose fingerprints collide.
struct SipHash24 {
    private var v0: UInt64
    private var v1: UInt64
    private var v2: UInt64
    private var v3: UInt64
    /// Bytes not yet compressed (fewer than 8), little-endian in the low bits.
    private var tail: UInt64 = 0
    private var tailCount = 0
    private var length = 0

    init(key: (UInt64, UInt64)) {
        v0 = key.0 ^ 0x736f_6d65_7073_6575
        v1 = key.1 ^ 0x646f_7261_6e64_6f6d
        v2 = key.0 ^ 0x6c79_6765_6e65_7261
        v3 = key.1 ^ 0x7465_6462_7974_6573
    }

    private mutating func round() {
        v0 &+= v1; v1 = v1.rotateLeft(13); v1 ^= v0; v0 = v0.rotateLeft(32)
        v2 &+= v3; v3 = v3.rotateLeft(16); v3 ^= v2
        v0 &+= v3; v3 = v3.rotateLeft(21); v3 ^= v0
        v2 &+= v1; v1 = v1.rotateLeft(17); v1 ^= v2; v2 = v2.rotateLeft(32)
    }

    private mutating func compress(_ m: UInt64) {
        v3 ^= m
        round(); round()
        v0 ^= m
    }

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        for byte in bytes {
            tail |= UInt64(byte) << (8 * UInt64(tailCount))
            tailCount += 1
            if tailCount == 8 {
                compress(tail)
                tail = 0
                tailCount = 0
            }
        }
        length += bytes.count
    }

    /// Feeds a word as its 8 little-endian bytes.
    mutating func update(_ word: UInt64) {
        withUnsafeBytes(of: word.littleEndian) { update($0) }
    }

    consuming func finalize() -> UInt64 {
        compress(tail | UInt64(truncatingIfNeeded: length) << 56)
        v2 ^= 0xFF
        round(); round(); round(); round()
        return v0 ^ v1 ^ v2 ^ v3
    }
}

extension UInt64 {
    fileprivate func rotateLeft(_ n: UInt64) -> UInt64 { (self << n) | (self >> (64 - n)) }
}
