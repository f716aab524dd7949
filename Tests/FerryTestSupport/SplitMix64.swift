/// A tiny deterministic PRNG (SplitMix64) so randomised tests and generated test data replay
/// exactly from a seed. The one generator of every test target.
public struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    /// Whether `below(n)` with n <= 1 still draws (and discards) a value. The generators made
    /// with `init(seed:)` do, the per-iteration fuzz generators do not; both keep the sequences
    /// their tests were written against.
    private let drawsForTrivialRange: Bool

    public init(seed: UInt64) {
        state = seed
        drawsForTrivialRange = true
    }

    /// One generator per fuzz iteration, derived from the test's seed and the iteration number,
    /// so that a failure names exactly the input to replay. Its `below(n)` answers 0 for n <= 1
    /// without drawing a value.
    public init(seed: UInt64, iteration: Int) {
        state = seed ^ (UInt64(bitPattern: Int64(iteration)) &* 0xD1B5_4A32_D192_ED03)
        drawsForTrivialRange = false
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform-enough value in `0..<n` (n > 0; a per-iteration generator also takes 0 and
    /// answers 0); the modulo bias is irrelevant here.
    public mutating func below(_ n: Int) -> Int {
        if n <= 1 && !drawsForTrivialRange { return 0 }
        return Int(next() % UInt64(n))
    }

    public mutating func chance(_ percent: Int) -> Bool { below(100) < percent }

    public mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }

    /// `bytes` after one to three random edits, each removing a byte, replacing one with a piece
    /// of `alphabet`, or inserting a piece: the inputs of the parser equivalence tests.
    public mutating func mutated(_ bytes: [UInt8], alphabet: [[UInt8]]) -> [UInt8] {
        var out = bytes
        for _ in 0..<(1 + below(3)) {
            let at = below(out.count + 1)
            switch below(3) {
            case 0 where at < out.count: out.remove(at: at)
            case 1 where at < out.count: out.replaceSubrange(at..<(at + 1), with: pick(alphabet))
            default: out.insert(contentsOf: pick(alphabet), at: at)
            }
        }
        return out
    }

    public mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) } }

    /// `count` random bytes, all eight of each draw (a draw per byte, as `bytes` does, is eight
    /// times slower for the megabytes of test data a chunking test needs).
    public mutating func packedBytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        for i in stride(from: 0, to: count, by: 8) {
            let v = next()
            for j in 0..<min(8, count - i) { out[i + j] = UInt8(truncatingIfNeeded: v >> (8 * j)) }
        }
        return out
    }

    /// `count` lowercase hex digits.
    public mutating func hex(_ count: Int) -> String { String((0..<count).map { _ in pick(Array("0123456789abcdef")) }) }

    /// Text-like bytes that zlib compresses well (words from a small vocabulary).
    public mutating func text(_ count: Int) -> [UInt8] {
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
