import Benchmark
import CZlib
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Crypto
import FerryFiles
import FerryProtocol
import NIOCore

// Each ferry hot path next to the raw library call it wraps, in pairs named
// "<what> · ferry" and "<what> · raw": the difference is ferry's own overhead.
// Throughput is reported per iteration; one iteration processes one 256 KiB chunk unless the
// name says otherwise (docs/BENCHMARKS.md converts to MB/s).

let chunkSize = 256 * 1024

/// Deterministic incompressible bytes (SplitMix64).
func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed
    var out = [UInt8]()
    out.reserveCapacity(count + 8)
    while out.count < count {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        withUnsafeBytes(of: z) { out += $0 }
    }
    return Array(out.prefix(count))
}

/// Log-like text that deflate level 1 shrinks to about a quarter, like the benchmark's data.
func logText(_ count: Int) -> [UInt8] {
    var text = ""
    var i = 0
    let services = ["api", "auth", "billing", "search", "worker"]
    let routes = ["/api/v1/items/", "/api/v1/users/", "/static/img/", "/api/v2/orders/"]
    while text.utf8.count < count {
        let ts = 1_700_000_000 + i / 7
        text += "2023-11-14T22:\(10 + (ts / 60) % 50):\(10 + ts % 50).\(100 + i % 900)Z INFO  [\(services[i % 5])-\(i % 8)] "
        text += "GET \(routes[i % 4])\(i * 7919 % 100_000) status=200 bytes=\(i * 104_729 % 200_000) dur_ms=\(i % 300).\(i % 10) "
        text += "req=\(String(UInt32(truncatingIfNeeded: i &* 2_654_435_761), radix: 16)) msg=\"request completed\"\n"
        i += 1
    }
    return Array(text.utf8.prefix(count))
}

/// One complete zlib stream of `raw` at `level` (what ferry's encoder produces).
func rawCompress(_ raw: [UInt8], level: Int32) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: Int(compressBound(uLong(raw.count))))
    var length = uLongf(out.count)
    let r = out.withUnsafeMutableBufferPointer { o in
        raw.withUnsafeBufferPointer { i in
            compress2(o.baseAddress, &length, i.baseAddress, uLong(raw.count), level)
        }
    }
    precondition(r == Z_OK)
    return Array(out.prefix(Int(length)))
}

func padded(_ n: Int, _ width: Int) -> String {
    let s = String(n)
    return String(repeating: "0", count: max(0, width - s.count)) + s
}

func manifestText(entries: Int) -> String {
    var lines = [Manifest.header]
    lines.reserveCapacity(entries + 1)
    let sha = String(repeating: "3f", count: 32)
    var n = 0
    outer: for d in 0..<1000 {
        lines.append("d 0755 0 1700000000.000000000 dir\(padded(d, 4))")
        n += 1
        for f in 0..<99 {
            if n >= entries { break outer }
            lines.append("f 0644 \(1000 + f * 37) 1700000000.123456789 \(sha) dir\(padded(d, 4))/file-\(padded(f, 3)).dat")
            n += 1
        }
        if n >= entries { break }
    }
    return lines.joined(separator: "\n") + "\n"
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.throughput, .wallClock, .mallocCountTotal],
        maxDuration: .seconds(2),
        maxIterations: 100_000
    )
    let allocator = ByteBufferAllocator()
    let text = logText(chunkSize)
    let random = randomBytes(chunkSize, seed: 7)
    let textBuffer = ByteBuffer(bytes: text)
    let randomBuffer = ByteBuffer(bytes: random)

    // MARK: encode (server side)

    Benchmark("encode text zlib-1 · ferry ChunkEncoder") { benchmark in
        for _ in benchmark.scaledIterations {
            var encoder = ChunkEncoder(.compress(.zlib(1)))
            blackHole(encoder.encode(textBuffer, offset: 0, allocator: allocator))
        }
    }
    Benchmark("encode text zlib-1 · raw compress2") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(rawCompress(text, level: 1))
        }
    }
    Benchmark("encode random auto (sampled, stored) · ferry ChunkEncoder") { benchmark in
        for _ in benchmark.scaledIterations {
            var encoder = ChunkEncoder(.sampleThenCompress(.zlib(1)))
            blackHole(encoder.encode(randomBuffer, offset: 0, allocator: allocator))
        }
    }
    Benchmark("encode random zlib-1 (full attempt) · raw compress2") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(rawCompress(random, level: 1))
        }
    }
    Benchmark("encode stored (no zlib) · ferry ChunkEncoder") { benchmark in
        for _ in benchmark.scaledIterations {
            var encoder = ChunkEncoder(.store)
            blackHole(encoder.encode(randomBuffer, offset: 0, allocator: allocator))
        }
    }

    // MARK: codecs side by side (docs/BENCHMARKS.md, "Codecs"): one 256 KiB chunk of log text
    // and of random bytes through ChunkEncoder and back through ChunkDecoder, for each codec
    // and level `--compress` and `auto` use.

    let compressions: [ChunkCompression] = [.zlib(1), .zlib(6), .zstd(-5), .zstd(-2), .zstd(1), .zstd(3), .zstd(6), .zstd(9)]
    for compression in compressions {
        for (kind, buffer) in [("text", textBuffer), ("random", randomBuffer)] {
            Benchmark("codec encode \(kind) \(compression) · ferry ChunkEncoder") { benchmark in
                for _ in benchmark.scaledIterations {
                    var encoder = ChunkEncoder(.compress(compression))
                    blackHole(encoder.encode(buffer, offset: 0, allocator: allocator))
                }
            }
        }
        var encoder = ChunkEncoder(.compress(compression))
        let chunk = encoder.encode(textBuffer, offset: 0, allocator: allocator)
        Benchmark("codec decode text \(compression) (\(chunk.wire.readableBytes) wire bytes) · ferry ChunkDecoder") { benchmark in
            var out = [UInt8](repeating: 0, count: chunkSize)
            for _ in benchmark.scaledIterations {
                out.withUnsafeMutableBytes { d in
                    do { try ChunkDecoder.decode(header: chunk.header, wire: chunk.wire, into: d) } catch { fatalError("\(error)") }
                }
                blackHole(out)
            }
        }
    }

    // MARK: decode (client side)

    var textEncoder = ChunkEncoder(.compress(.zlib(1)))
    let textChunk = textEncoder.encode(textBuffer, offset: 0, allocator: allocator)
    let textWire = Array(textChunk.wire.readableBytesView)
    var storedEncoder = ChunkEncoder(.store)
    let storedChunk = storedEncoder.encode(randomBuffer, offset: 0, allocator: allocator)

    Benchmark("decode text zlib · ferry ChunkDecoder (inflate + CRC-32)") { benchmark in
        var out = [UInt8](repeating: 0, count: chunkSize)
        for _ in benchmark.scaledIterations {
            out.withUnsafeMutableBytes { d in
                do { try ChunkDecoder.decode(header: textChunk.header, wire: textChunk.wire, into: d) } catch { fatalError("\(error)") }
            }
            blackHole(out)
        }
    }
    Benchmark("decode text zlib · raw uncompress") { benchmark in
        var out = [UInt8](repeating: 0, count: chunkSize)
        for _ in benchmark.scaledIterations {
            var length = uLongf(chunkSize)
            let r = out.withUnsafeMutableBufferPointer { o in
                textWire.withUnsafeBufferPointer { i in uncompress(o.baseAddress, &length, i.baseAddress, uLong(textWire.count)) }
            }
            precondition(r == Z_OK)
            blackHole(out)
        }
    }
    Benchmark("decode stored · ferry ChunkDecoder (copy + CRC-32)") { benchmark in
        var out = [UInt8](repeating: 0, count: chunkSize)
        for _ in benchmark.scaledIterations {
            out.withUnsafeMutableBytes { d in
                do { try ChunkDecoder.decode(header: storedChunk.header, wire: storedChunk.wire, into: d) } catch { fatalError("\(error)") }
            }
            blackHole(out)
        }
    }
    Benchmark("decode stored · raw memcpy") { benchmark in
        var out = [UInt8](repeating: 0, count: chunkSize)
        for _ in benchmark.scaledIterations {
            out.withUnsafeMutableBytes { d in random.withUnsafeBytes { s in d.copyMemory(from: s) } }
            blackHole(out)
        }
    }

    // MARK: checksums

    Benchmark("SHA-256 of a chunk · ferry SHA256Hasher") { benchmark in
        for _ in benchmark.scaledIterations {
            var h = SHA256Hasher()
            random.withUnsafeBytes { h.update($0) }
            blackHole(h.finalizeHex())
        }
    }
    Benchmark("SHA-256 of a chunk · raw swift-crypto SHA256") { benchmark in
        for _ in benchmark.scaledIterations {
            var h = SHA256()
            random.withUnsafeBytes { h.update(bufferPointer: $0) }
            blackHole(h.finalize())
        }
    }
    Benchmark("CRC-32 of a chunk · ferry CRC32") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(random.withUnsafeBytes { CRC32.checksum($0) })
        }
    }
    Benchmark("CRC-32 of a chunk · raw zlib crc32_z") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(random.withUnsafeBufferPointer { crc32_z(0, $0.baseAddress, $0.count) })
        }
    }
    // The 128-bit carry-less-multiply path, what a CPU without VPCLMULQDQ on AVX-512 runs; the
    // "ferry CRC32" row above takes the 512-bit path where the CPU has it.
    Benchmark("CRC-32 of a chunk · ferry CRC32 128-bit PCLMULQDQ path") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(random.withUnsafeBytes { CRC32.checksum($0, using: .pclmul128) })
        }
    }
    // The transfer digest of capability `xxh128`, against the SHA-256 rows above; the vector
    // code is the best the CPU has (SSE2, AVX2 or AVX-512, chosen at run time).
    Benchmark("XXH3-128 of a chunk · ferry XXH128Hasher") { benchmark in
        for _ in benchmark.scaledIterations {
            let h = XXH128Hasher()
            random.withUnsafeBytes { h.update($0) }
            blackHole(h.finalizeHex())
        }
    }
    Benchmark("XXH3-128 of a chunk · ferry XXH128Hasher, SSE2 code") { benchmark in
        XXH128Hasher.useVectorLevel(0)
        defer { XXH128Hasher.useVectorLevel(XXH128Hasher.bestVectorLevel) }
        for _ in benchmark.scaledIterations {
            blackHole(random.withUnsafeBytes { XXH128Hasher.hex($0) })
        }
    }
    // What a CPU without PCLMULQDQ would run if it took CFerryCRC's portable path (it calls
    // zlib instead, which is faster there); the automatic path is the "ferry CRC32" one above.
    Benchmark("CRC-32 of a chunk · ferry CRC32 portable path (slice-by-8)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(random.withUnsafeBytes { CRC32.checksum($0, using: .portable) })
        }
    }

    // MARK: protocol parsing (per line / frame)

    let getLine = "GET photos/2024/IMG%200001.jpg 1048576 * 5242880,1700000000.123456789"
    Benchmark("parse a GET request line · ferry Request.parse") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try? Request.parse(Substring(getLine)))
        }
    }
    Benchmark("parse a GET request line · raw split on spaces") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(getLine.split(separator: " "))
        }
    }
    let chunkLine = "CHUNK 1048576 262144 81234 z 9a3f01c2"
    Benchmark("parse a CHUNK header line · ferry ChunkHeader.parse") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try? ChunkHeader.parse(Substring(chunkLine)))
        }
    }
    Benchmark("parse a CHUNK header line · raw split on spaces") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(chunkLine.split(separator: " "))
        }
    }
    // A reply stream of 64 stored 4 KiB chunks and the trailer, framed as the client does.
    var replyStream = ByteBuffer()
    let small = Array(random.prefix(4096))
    for i in 0..<64 {
        let header = ChunkHeader(offset: Int64(i * 4096), rawLength: 4096, wireLength: 4096, codec: .stored,
                                 crc32: small.withUnsafeBytes { CRC32.checksum($0) })
        replyStream.writeString(header.line + "\n")
        replyStream.writeBytes(small)
    }
    replyStream.writeString("END " + String(repeating: "ab", count: 32) + "\n")
    Benchmark("frame a reply stream of 64 chunks · ferry ReplyFrameDecoder") { benchmark in
        for _ in benchmark.scaledIterations {
            var buffer = replyStream
            var decoder = ReplyFrameDecoder()
            var frames = 0
            while let frame = try? decoder.nextFrame(&buffer) {
                blackHole(frame)
                frames += 1
            }
            precondition(frames == 65)
        }
    }
    Benchmark("frame a reply stream of 64 chunks · ferry ReplyFrameSplitter (reads of 64 KiB)") { benchmark in
        // What the client runs: the stream arrives in socket reads; payloads inside one read are
        // sliced, the ones spanning reads assembled.
        let allocator = ByteBufferAllocator()
        let reads: [ByteBuffer] = stride(from: 0, to: replyStream.readableBytes, by: 64 * 1024).map {
            replyStream.getSlice(at: replyStream.readerIndex + $0, length: min(64 * 1024, replyStream.readableBytes - $0))!
        }
        for _ in benchmark.scaledIterations {
            var splitter = ReplyFrameSplitter()
            var frames = 0
            for read in reads { frames += (try? splitter.feed(read, allocator: allocator).count) ?? 0 }
            precondition(frames == 65)
        }
    }
    Benchmark("frame a reply stream of 64 chunks · raw memchr for each LF") { benchmark in
        // The least a framer can do: find each line end with memchr (it still scans payloads).
        for _ in benchmark.scaledIterations {
            let lines = replyStream.withUnsafeReadableBytes { bytes -> Int in
                guard var p = bytes.baseAddress else { return 0 }
                let end = p + bytes.count
                var n = 0
                while p < end, let lf = memchr(p, 0x0A, end - p) {
                    n += 1
                    p = UnsafeRawPointer(lf) + 1
                }
                return n
            }
            blackHole(lines)
        }
    }

    // MARK: manifest

    let manifest = manifestText(entries: 100_000)
    guard (try? Manifest.parse(manifest))?.entries.count == 100_000 else { fatalError("the benchmark's manifest does not parse") }
    Benchmark("parse a manifest of 100,000 entries · ferry Manifest.parse",
              configuration: .init(metrics: [.wallClock, .mallocCountTotal, .peakMemoryResident], maxDuration: .seconds(5),
                                   maxIterations: 20)) { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try? Manifest.parse(manifest))
        }
    }
    let manifestBytes = Array(manifest.utf8)
    Benchmark("parse a manifest of 100,000 entries · ferry Manifest.parse(bytes:)",
              configuration: .init(metrics: [.wallClock, .mallocCountTotal, .peakMemoryResident], maxDuration: .seconds(5),
                                   maxIterations: 20)) { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try? Manifest.parse(bytes: manifestBytes))
        }
    }
    Benchmark("parse a manifest of 100,000 entries · raw count LF and spaces",
              configuration: .init(metrics: [.wallClock, .mallocCountTotal], maxDuration: .seconds(5), maxIterations: 20)) { benchmark in
        for _ in benchmark.scaledIterations {
            var separators = 0
            for b in manifestBytes where b == 0x0A || b == 0x20 { separators += 1 }
            blackHole(separators)
        }
    }
    let parsedManifest = try? Manifest.parse(bytes: manifestBytes)
    Benchmark("produce a manifest of 100,000 entries · ferry Manifest.bytes",
              configuration: .init(metrics: [.wallClock, .mallocCountTotal], maxDuration: .seconds(5), maxIterations: 20)) { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(parsedManifest?.bytes)
        }
    }
    Benchmark("produce a manifest of 100,000 entries · raw copy of the text",
              configuration: .init(metrics: [.wallClock, .mallocCountTotal], maxDuration: .seconds(5), maxIterations: 20)) { benchmark in
        for _ in benchmark.scaledIterations {
            // A real copy (`Array(manifestBytes)` would share the storage): the floor for
            // producing the same bytes.
            let copy = [UInt8](unsafeUninitializedCapacity: manifestBytes.count) { buffer, count in
                _ = manifestBytes.withUnsafeBytes { memcpy(buffer.baseAddress!, $0.baseAddress!, $0.count) }
                count = manifestBytes.count
            }
            blackHole(copy)
        }
    }
    Benchmark("parse a manifest of 100,000 entries · raw split into lines and fields",
              configuration: .init(metrics: [.wallClock, .mallocCountTotal], maxDuration: .seconds(5), maxIterations: 20)) { benchmark in
        for _ in benchmark.scaledIterations {
            var fields = 0
            for line in manifest.split(separator: "\n") { fields += line.split(separator: " ", maxSplits: 5).count }
            blackHole(fields)
        }
    }
}
