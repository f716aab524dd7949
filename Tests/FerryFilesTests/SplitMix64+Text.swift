import FerryTestSupport

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
