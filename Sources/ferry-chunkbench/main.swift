// A micro-benchmark of content-defined chunking (issue 15: at least 1 GB/s per core), next to
// a raw memory scan of the same buffer, so the figure is read against what this machine's
// memory and core can do at all. Run it in release: `swift run -c release ferry-chunkbench [MiB]`.
import FerryFiles
import FerryProtocol

#if canImport(Glibc)
import Glibc
#endif

func now() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}

let mib = CommandLine.arguments.dropFirst().first.flatMap { Int($0) } ?? 256
let size = mib << 20
let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
defer { buffer.deallocate() }
var state: UInt64 = 0x1234_5678_9abc_def0
for i in stride(from: 0, to: size, by: 8) {
    state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
    buffer.storeBytes(of: state ^ (state >> 29), toByteOffset: i, as: UInt64.self)
}
let data = UnsafeRawBufferPointer(buffer)

/// Best of `rounds` runs, in GB/s (10^9 bytes per second), and a value that keeps the work alive.
func measure(_ name: String, rounds: Int = 5, _ body: () -> UInt64) {
    var best = Double.infinity
    var sink: UInt64 = 0
    for _ in 0..<rounds {
        let start = now()
        sink &+= body()
        best = min(best, now() - start)
    }
    let rate = Double(size) / best / 1e9
    print("\(name.padding(toLength: 34, withPad: " ", startingAt: 0)) \(String(format: "%6.2f", rate)) GB/s  (\(sink % 10))")
}

measure("raw scan (byte loop, xor)") {
    var x: UInt64 = 0
    let p = data.baseAddress!.assumingMemoryBound(to: UInt8.self)  // Invariant: allocated above.
    for i in 0..<size { x = (x &<< 1) ^ UInt64(p[i]) }
    return x
}
measure("raw scan (word loop, add)") {
    var x: UInt64 = 0
    let p = data.baseAddress!.assumingMemoryBound(to: UInt64.self)  // Invariant: allocated above.
    for i in 0..<(size / 8) { x &+= p[i] }
    return x
}
var chunkCount = 0
measure("chunk boundaries (gear, FastCDC)") {
    var start = 0, count = 0
    while start < size {
        start += ContentChunker.cut(UnsafeRawBufferPointer(rebasing: data[start...]))
        count += 1
    }
    chunkCount = count
    return UInt64(count)
}
measure("SHA-256 of the buffer") {
    var h = SHA256Hasher()
    h.update(data)
    return UInt64(h.finalizeHex().utf8.first ?? 0)
}
measure("chunk map (boundaries + SHA-256)") {
    var start = 0, x: UInt64 = 0
    while start < size {
        let n = ContentChunker.cut(UnsafeRawBufferPointer(rebasing: data[start...]))
        x ^= ChunkDigest.sha256(UnsafeRawBufferPointer(rebasing: data[start..<(start + n)])).a
        start += n
    }
    return x
}
print("\(mib) MiB of random data: \(chunkCount) chunks, average \(size / max(1, chunkCount)) bytes")
