/// A tiny deterministic PRNG (SplitMix64) so the randomised tests replay exactly.
struct SplitMix64 {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform-enough value in `0..<n` (n > 0); the modulo bias is irrelevant here.
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }

    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }

    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }

    mutating func bytesArray(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) } }
}

extension SplitMix64 {
    /// Text-like bytes that zlib compresses well (words from a small vocabulary).
    mutating func text(_ count: Int) -> [UInt8] {
        let words = ["ferry", "chunk", "server", "GET", "200", "bytes", "client", "sync", "the", "a", "of", "error",
                     "2024-05-01T12:00:00Z", "INFO", "WARN", "/srv/data/photos", "request", "ok", "LIST", "manifest"]
        var out: [UInt8] = []
        out.reserveCapacity(count + 32)
        while out.count < count {
            out += Array(pick(words).utf8)
            out.append(below(10) == 0 ? 0x0A : 0x20)
        }
        return Array(out.prefix(count))
    }
}
