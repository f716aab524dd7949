import FerryFiles
import FerryServer
import FerryProtocol
import NIOCore
import XCTest

/// `AdaptiveCompression` (the `--compress auto` policy) driven with synthetic measurements, and
/// the encoder reports it learns from.
final class AdaptiveCompressionTests: XCTestCase {
    private let chunk = 256 * 1024
    private let MB = 1e6

    /// Feeds `count` chunks compressed with `compression` at `rate` raw bytes/s to `ratio`.
    private func compressed(_ c: inout AdaptiveCompression, rate: Double, ratio: Double, count: Int = 40,
                            with compression: ChunkCompression = .zlib(1)) {
        for _ in 0..<count {
            c.record(ChunkEncodeReport(attempt: .compressed, rawBytes: chunk, wireBytes: Int(Double(chunk) * ratio),
                                       codecSeconds: Double(chunk) / rate, compression: compression))
        }
    }

    /// Feeds chunk writes of `bytes` each at `rate` wire bytes/s by the wall clock; `blocked`:
    /// each write was held back by a full socket buffer, as long as the link takes to drain the
    /// 768 KiB between NIO's high and low watermarks.
    private func writes(_ c: inout AdaptiveCompression, rate: Double, total: Int, blocked: Bool, bytes: Int = 256 * 1024) {
        for _ in 0..<(total / bytes) {
            c.recordChunkWritten(wireBytes: bytes, sendSeconds: blocked ? 768 * 1024 / rate : 0.00001,
                                 intervalSeconds: Double(bytes) / rate)
        }
    }

    private func decisions(_ c: inout AdaptiveCompression, _ n: Int, codec: ChunkCodec = .zlib) -> Int {
        (0..<n).filter { _ in c.shouldCompress(codec) }.count
    }

    func testLinkRateIsUnknownUntilEnoughBytesWereSeenAndThenMeasured() throws {
        var c = AdaptiveCompression(encoders: 2)
        XCTAssertNil(c.linkRate)
        writes(&c, rate: 50 * MB, total: 3 << 20, blocked: true)
        XCTAssertNil(c.linkRate, "3 MiB is not enough evidence")
        writes(&c, rate: 50 * MB, total: 2 << 20, blocked: true)
        let rate = try XCTUnwrap(c.linkRate)
        XCTAssertEqual(rate / MB, 50, accuracy: 0.01)
    }

    func testUnknownLinkCompressesCompressibleData() {
        var c = AdaptiveCompression(encoders: 2)
        XCTAssertEqual(decisions(&c, 8), 8, "before the link is measured, assume it is slow")
    }

    func testFastLinkIsSentStored() {
        // Loopback: 1.5 GB/s; zlib does 90 MB/s per encoder. Even if the socket fills up (a busy
        // client), compressing could not keep up.
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 90 * MB, ratio: 0.3)
        writes(&c, rate: 1500 * MB, total: 8 << 20, blocked: true)
        XCTAssertEqual(c.compressRate(.zlib) / MB, 180, accuracy: 1)
        XCTAssertEqual(decisions(&c, 100), 0)
    }

    func testWritesThatTakeNoTimeMeanAFastLink() {
        var c = AdaptiveCompression(encoders: 2)
        for _ in 0..<32 { c.recordChunkWritten(wireBytes: chunk, sendSeconds: 0, intervalSeconds: 0) }
        XCTAssertEqual(c.linkRate, .infinity)
        XCTAssertFalse(c.shouldCompress())
    }

    func testSlowLinkCompressesEveryChunk() {
        // 100 Mbit/s: 12.5 MB/s, far below what the encoders manage; every write waits.
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 90 * MB, ratio: 0.3)
        writes(&c, rate: 12.5 * MB, total: 8 << 20, blocked: true)
        XCTAssertEqual(c.networkPressure, 1, accuracy: 0.001)
        XCTAssertEqual(decisions(&c, 100), 100)
    }

    func testPressureFollowsWhetherTheSendBufferFills() {
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 90 * MB, ratio: 0.3)
        writes(&c, rate: 117 * MB, total: 8 << 20, blocked: true)
        XCTAssertEqual(decisions(&c, 20), 20, "a 1 Gbit/s link that backs up: compress")
        // Compressing everything, the encoders cannot keep the buffer full: writes stop waiting.
        writes(&c, rate: 60 * MB, total: 12 << 20, blocked: false, bytes: 64 * 1024)
        XCTAssertLessThan(c.networkPressure, 0.01)
        XCTAssertEqual(decisions(&c, 20), 0, "the encoders are the bottleneck now: store")
        // A steady mix: one write in eight waits, so the buffer filled within the last 1.5 MiB
        // for six chunks in eight (the decaying average ends a cycle at about 0.62).
        for _ in 0..<20 {
            writes(&c, rate: 117 * MB, total: chunk, blocked: true)
            writes(&c, rate: 117 * MB, total: 7 * chunk, blocked: false)
        }
        XCTAssertTrue((0.5...0.75).contains(c.networkPressure), "\(c.networkPressure)")
        let n = decisions(&c, 100)
        XCTAssertTrue((50...75).contains(n), "\(n) of 100 compressed")
    }

    func testALinkThatIsClearlyTheBottleneckGetsEveryChunkCompressed() {
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 90 * MB, ratio: 0.2)
        // Now and then the send buffer drains for a moment (one write in twenty is not held
        // back within 1.5 MiB), as on the 100 Mbit/s link, whose log showed a pressure of 99%.
        for _ in 0..<20 {
            writes(&c, rate: 12 * MB, total: 6 * chunk, blocked: false)
            writes(&c, rate: 12 * MB, total: 14 * chunk, blocked: true)
        }
        XCTAssertGreaterThanOrEqual(c.networkPressure, 0.9)
        XCTAssertLessThan(c.networkPressure, 1)
        XCTAssertEqual(decisions(&c, 100), 100, "a stored chunk of text costs a slow link five compressed ones")
    }

    func testASlowLinkGetsNoStoredChunksWhenThePressureDips() {
        // The server's log on the 100 Mbit/s link (stop 15): 22 to 32 of 1,024 chunks of text
        // stored while the pressure dipped to 37% on a busy machine (the stored ones were 10% of
        // the bytes). By the wall clock the two encoders do 200 MB/s at level 1: too little
        // for level 4's headroom (3.5 × the ~60 MB/s of raw text the link carries), so the level
        // is 1, but over three times what the link carries: a dip is a stall, not slow encoders.
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 100 * MB, ratio: 0.19, with: .zstd(1))
        writes(&c, rate: 11.5 * MB, total: 16 << 20, blocked: true)
        writes(&c, rate: 11.5 * MB, total: 4 << 20, blocked: false)
        XCTAssertLessThan(c.networkPressure, 0.5)
        XCTAssertEqual(c.level(for: .zstd), 1)
        XCTAssertTrue(c.encodersFarAhead(.zstd))
        XCTAssertEqual(decisions(&c, 100, codec: .zstd), 100, "every chunk compressed, whatever the level")
        // Encoders that are really too slow for the link (here 2 × 40 MB/s by the wall clock
        // against ~60 MB/s of raw text) still mix stored chunks in.
        var slow = AdaptiveCompression(encoders: 2)
        compressed(&slow, rate: 40 * MB, ratio: 0.19, with: .zstd(1))
        writes(&slow, rate: 11.5 * MB, total: 16 << 20, blocked: true)
        writes(&slow, rate: 11.5 * MB, total: 4 << 20, blocked: false)
        XCTAssertFalse(slow.encodersFarAhead(.zstd))
        XCTAssertLessThan(decisions(&slow, 100, codec: .zstd), 100)
    }

    func testLevelFourTimingsAtTheirRealSpeedLetASlowLinkClimbToSix() {
        // The server's log on a 100 Mbit/s link (issue 13): zstd level 4 chunks at ~70 MB/s by
        // the wall clock per encoder, ratio 0.18, link 12 MB/s. Level 4 runs at ~0.38 of level
        // 1's speed (`zstd -b4 -B256K`), so level 1 would do ~184 MB/s per encoder: two feed
        // the 67 MB/s of raw text the link carries 5.5 times over, enough for level 6.
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 70 * MB, ratio: 0.18, with: .zstd(4))
        writes(&c, rate: 12 * MB, total: 32 << 20, blocked: true)
        XCTAssertEqual(c.compressRate(.zstd) / MB, 2 * 70 / 0.38, accuracy: 2)
        XCTAssertEqual(c.level(for: .zstd), 6)
    }

    func testTheLevelFollowsCPUTimeAndTheStoreDecisionTheWallClock() {
        // Four chunks in flight on two busy cores: each chunk's wall time is four times its
        // CPU time. Level 1 by CPU: 300 MB/s per encoder; by the wall clock: 75.
        var c = AdaptiveCompression(encoders: 2)
        for _ in 0..<40 {
            c.record(ChunkEncodeReport(attempt: .compressed, rawBytes: chunk, wireBytes: chunk / 5,
                                       codecSeconds: Double(chunk) / (75 * MB), codecCPUSeconds: Double(chunk) / (300 * MB),
                                       compression: .zstd(1)))
        }
        XCTAssertEqual(c.compressRate(.zstd) / MB, 150, accuracy: 1)
        XCTAssertEqual(c.capacity(.zstd) / MB, 600, accuracy: 1)
        writes(&c, rate: 14 * MB, total: 32 << 20, blocked: true)
        XCTAssertEqual(c.level(for: .zstd), 6, "14 MB/s carries 70 MB/s raw: 600 ≥ 4.9 × 70 by CPU (150 by the wall clock would give level 1)")
        writes(&c, rate: 400 * MB, total: 32 << 20, blocked: true)
        XCTAssertFalse(c.shouldCompress(.zstd), "400 MB/s ≥ 2 × 150 MB/s delivered by the wall clock: store")
    }

    func testEncodersFallingBehindDoNotHideTheLinksRate() throws {
        // 1 Gbit/s text on two busy cores: the link carried 120 MB/s while it was the
        // bottleneck; then the encoders fell behind and only 60 MB/s left.
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 300 * MB, ratio: 0.2, with: .zstd(1))  // 600 MB/s with two encoders
        writes(&c, rate: 120 * MB, total: 16 << 20, blocked: true)
        writes(&c, rate: 60 * MB, total: 16 << 20, blocked: false)
        XCTAssertEqual(try XCTUnwrap(c.linkRate) / MB, 60, accuracy: 10, "the delivered rate follows the encoders")
        // (The first 1.5 MiB after the last held-back write still count as the link's.)
        let capacity = try XCTUnwrap(c.linkCapacity) / MB
        XCTAssertTrue((95...121).contains(capacity), "the link's own rate is remembered: \(capacity)")
        XCTAssertLessThan(c.level(for: .zstd), 1,
                          "the link carries ~500 MB/s of raw text: level 1 (600) has too little margin, a fast level has 1.3x "
                          + "(by the delivered 60 MB/s it would be level 1)")
    }

    func testMixIsSpreadEvenly() {
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 90 * MB, ratio: 0.3)
        for _ in 0..<20 {  // one write in seven waits: pressure about 0.78
            writes(&c, rate: 117 * MB, total: chunk, blocked: true)
            writes(&c, rate: 117 * MB, total: 6 * chunk, blocked: false)
        }
        XCTAssertGreaterThan(c.networkPressure, 0.6)
        var longestStoredRun = 0, run = 0
        for _ in 0..<200 {
            if c.shouldCompress() { run = 0 } else { run += 1; longestStoredRun = max(longestStoredRun, run) }
        }
        XCTAssertEqual(longestStoredRun, 1, "a mix of more than half never stores two chunks in a row")
    }

    func testMoreEncodersMakeCompressionWorthItOnTheSameLink() {
        var two = AdaptiveCompression(encoders: 2)
        var eight = AdaptiveCompression(encoders: 8)
        compressed(&two, rate: 90 * MB, ratio: 0.3)
        compressed(&eight, rate: 90 * MB, ratio: 0.3)
        writes(&two, rate: 400 * MB, total: 8 << 20, blocked: true)
        writes(&eight, rate: 400 * MB, total: 8 << 20, blocked: true)
        XCTAssertEqual(decisions(&two, 50), 0, "400 MB/s ≥ 2 × 180 MB/s: store")
        XCTAssertEqual(decisions(&eight, 50), 50, "720 MB/s of encoders against a 400 MB/s link that backs up")
    }

    func testFollowsALinkThatSlowsDownAndSpeedsUp() {
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 90 * MB, ratio: 0.3)
        writes(&c, rate: 2000 * MB, total: 8 << 20, blocked: false)
        XCTAssertEqual(decisions(&c, 20), 0)
        writes(&c, rate: 10 * MB, total: 16 << 20, blocked: true)
        XCTAssertGreaterThanOrEqual(decisions(&c, 20), 19, "after 16 MiB at 10 MB/s the link is slow")
        writes(&c, rate: 2000 * MB, total: 16 << 20, blocked: false)
        XCTAssertLessThanOrEqual(decisions(&c, 20), 1, "and fast again after 16 MiB (the socket stopped backing up)")
    }

    func testSlowEncodersOnAModerateLinkStore() {
        // A busy machine: zlib manages only 30 MB/s per encoder; a 150 MB/s link is faster.
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 30 * MB, ratio: 0.3)
        writes(&c, rate: 150 * MB, total: 8 << 20, blocked: true)
        XCTAssertEqual(decisions(&c, 50), 0)
    }

    // MARK: The codec and zstd's levels

    func testZstdForPeersThatDecodeItZlibForOthers() {
        var c = AdaptiveCompression(encoders: 2)
        XCTAssertEqual(AdaptiveCompression.codec(for: ChunkCodec.baseline), .zlib)
        XCTAssertEqual(AdaptiveCompression.codec(for: [.stored, .zlib, .zstd]), .zstd)
        XCTAssertEqual(c.decide(peerCodecs: ChunkCodec.baseline), .sampleThenCompress(.zlib(1)), "unknown link: compress")
        XCTAssertEqual(c.decide(peerCodecs: [.stored, .zlib, .zstd]), .sampleThenCompress(.zstd(1)))
        // Whatever the link does, a 1.0 peer never gets zstd.
        for rate in [2.0, 12, 117, 400, 3000] {
            writes(&c, rate: rate * MB, total: 8 << 20, blocked: true)
            for _ in 0..<20 {
                XCTAssertNotEqual(c.decide(peerCodecs: ChunkCodec.baseline).compression?.codec, .zstd)
            }
        }
    }

    func testSpeedsAreKeptPerCodec() {
        var c = AdaptiveCompression(encoders: 2)
        XCTAssertEqual(c.compressRate(.zlib) / MB, 200, accuracy: 1, "the priors: 100 MB/s per encoder")
        XCTAssertEqual(c.compressRate(.zstd) / MB, 400, accuracy: 1, "and 200 for zstd")
        compressed(&c, rate: 90 * MB, ratio: 0.3)
        compressed(&c, rate: 250 * MB, ratio: 0.25, with: .zstd(1))
        XCTAssertEqual(c.compressRate(.zlib) / MB, 180, accuracy: 1)
        XCTAssertEqual(c.compressRate(.zstd) / MB, 500, accuracy: 1)
        // zstd 6 at 0.27 times level 1's speed counts in level-1 terms.
        compressed(&c, rate: 67.5 * MB, ratio: 0.2, with: .zstd(6))
        XCTAssertEqual(c.compressRate(.zstd) / MB, 500, accuracy: 1)
        XCTAssertEqual(c.compressRate(.zlib) / MB, 180, accuracy: 1, "zstd's chunks say nothing about zlib's speed")
    }

    func testZstdLevelFollowsTheLink() {
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 200 * MB, ratio: 0.2, with: .zstd(1))  // 400 MB/s with two encoders
        XCTAssertEqual(c.level(for: .zstd), 1, "unknown link")
        writes(&c, rate: 5 * MB, total: 32 << 20, blocked: true)
        XCTAssertEqual(c.level(for: .zstd), 9, "5 MB/s carries 25 MB/s raw: 400 ≥ 9.5 × 25")
        writes(&c, rate: 12 * MB, total: 32 << 20, blocked: true)
        XCTAssertEqual(c.level(for: .zstd), 6, "12 MB/s (100 Mbit/s) carries 60 MB/s raw: 400 ≥ 4.9 × 60, < 9.5 ×")
        writes(&c, rate: 20 * MB, total: 32 << 20, blocked: true)
        XCTAssertEqual(c.level(for: .zstd), 4, "20 MB/s carries 100 MB/s raw: 400 ≥ 3.5 × 100, < 4.9 ×")
        writes(&c, rate: 60 * MB, total: 32 << 20, blocked: true)
        XCTAssertEqual(c.level(for: .zstd), 1, "60 MB/s carries 300 MB/s raw: level 1 keeps up (400 ≥ 1.3 × 300), no more")
        writes(&c, rate: 65 * MB, total: 32 << 20, blocked: true)
        XCTAssertEqual(c.level(for: .zstd), -1, "65 MB/s carries 325 MB/s raw: level -1 does 440 ≥ 1.3 × 325")
        writes(&c, rate: 117 * MB, total: 32 << 20, blocked: true)
        XCTAssertEqual(c.level(for: .zstd), -4, "1 Gbit/s carries 585 MB/s raw: only level -4 (580) comes close")
        XCTAssertEqual(c.decide(peerCodecs: [.stored, .zlib, .zstd]).compression?.level, -4)
        writes(&c, rate: 1500 * MB, total: 32 << 20, blocked: true)
        XCTAssertEqual(decisions(&c, 50, codec: .zstd), 0, "loopback: stored, even by zstd")
        // A higher level is climbed only while the network is the bottleneck.
        writes(&c, rate: 12 * MB, total: 32 << 20, blocked: true)
        XCTAssertEqual(c.level(for: .zstd), 6)
        writes(&c, rate: 12 * MB, total: 8 << 20, blocked: false, bytes: 64 * 1024)
        XCTAssertEqual(c.level(for: .zstd), 6, "the socket stops backing up, but the encoders deliver 400 MB/s ≥ 4.9 × 60")
        writes(&c, rate: 40 * MB, total: 16 << 20, blocked: false, bytes: 64 * 1024)
        XCTAssertEqual(c.level(for: .zstd), 1, "a faster link that no longer backs up: 200 MB/s raw, level 1 (400 < 3.5 × 200)")
    }

    func testEveryRungIsALevelTheCodecAccepts() {
        for codec in [ChunkCodec.zlib, .zstd] {
            let ladder = AdaptiveCompression.ladder(for: codec)
            XCTAssertEqual(ladder.map(\.level), ladder.map(\.level).sorted(), "ascending")
            XCTAssertTrue(ladder.contains { $0.level == 1 }, "level 1 is the base")
            for rung in ladder {
                let compression = ChunkCompression(codec: codec, level: rung.level)
                XCTAssertNotNil(compression, "\(codec) \(rung.level)")
                if let compression, rung.level > 1 {
                    let margin = AdaptiveCompression.relativeSpeed(compression) * rung.headroom
                    XCTAssertGreaterThanOrEqual(margin, 1.3, "\(compression): the encoders keep a margin over the link")
                }
            }
        }
    }

    func testSpareCPUOnASlowLinkRaisesTheLevel() {
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 90 * MB, ratio: 0.3)
        writes(&c, rate: 117 * MB, total: 8 << 20, blocked: true)
        XCTAssertEqual(c.level(for: .zlib), 1, "1 Gbit/s: the link carries 390 MB/s of raw text; two encoders do 180")
        writes(&c, rate: 25 * MB, total: 32 << 20, blocked: true)
        XCTAssertEqual(c.level(for: .zlib), 3, "25 MB/s carries 83 MB/s raw: 180 ≥ 1.75 × 83")
        writes(&c, rate: 12 * MB, total: 32 << 20, blocked: true)
        XCTAssertEqual(c.level(for: .zlib), 6, "12 MB/s carries 40 MB/s raw: 180 ≥ 4 × 40")
        // Level-6 chunks that take 1/0.42 times as long as level 1 do not lower the estimate.
        for _ in 0..<20 {
            c.record(ChunkEncodeReport(attempt: .compressed, rawBytes: chunk, wireBytes: Int(Double(chunk) * 0.3),
                                       codecSeconds: Double(chunk) / (90 * MB) / 0.42, compression: .zlib(6)))
        }
        XCTAssertEqual(c.compressRate(.zlib) / MB, 180, accuracy: 1)
        XCTAssertEqual(c.level(for: .zlib), 6)
        writes(&c, rate: 12 * MB, total: 8 << 20, blocked: false, bytes: 64 * 1024)
        XCTAssertEqual(c.level(for: .zlib), 6, "the socket stops backing up, but the encoders still deliver 180 MB/s ≥ 4 × 40")
        // Other work takes the cores: the encoders still need the same CPU time per chunk but
        // deliver a third of it by the wall clock.
        for _ in 0..<20 {
            c.record(ChunkEncodeReport(attempt: .compressed, rawBytes: chunk, wireBytes: Int(Double(chunk) * 0.3),
                                       codecSeconds: Double(chunk) / (30 * MB) / 0.42, codecCPUSeconds: Double(chunk) / (90 * MB) / 0.42,
                                       compression: .zlib(6)))
        }
        XCTAssertEqual(c.level(for: .zlib), 1, "they deliver ~60 MB/s at level-1 terms, < 1.75 × 40: down to level 1")
        writes(&c, rate: 12 * MB, total: 32 << 20, blocked: true)
        XCTAssertEqual(c.level(for: .zlib), 6, "the link backs up again: the CPU time says level 6 is affordable")
    }

    func testIncompressibleDataIsOnlyProbed() {
        var c = AdaptiveCompression(encoders: 2)
        writes(&c, rate: 10 * MB, total: 8 << 20, blocked: true)  // a slow link: compression would be welcome
        for _ in 0..<10 {
            c.record(ChunkEncodeReport(attempt: .sampleRejected, rawBytes: chunk, wireBytes: chunk, codecSeconds: 0.0004, compression: .zlib(1)))
        }
        XCTAssertGreaterThan(c.expectedRatio, 0.9)
        XCTAssertEqual(decisions(&c, 64), 4, "one probe in 16 chunks")
    }

    func testNewMultiChunkStreamProbesItsFirstChunk() {
        var c = AdaptiveCompression(encoders: 2)
        writes(&c, rate: 10 * MB, total: 8 << 20, blocked: true)
        for _ in 0..<10 {
            c.record(ChunkEncodeReport(attempt: .rejected, rawBytes: chunk, wireBytes: chunk, codecSeconds: 0.007, compression: .zlib(1)))
        }
        _ = decisions(&c, 3)
        c.beginStream(chunks: 40)
        XCTAssertTrue(c.shouldCompress(), "a new file may compress")
        XCTAssertFalse(c.shouldCompress())
        c.beginStream(chunks: 1)
        XCTAssertFalse(c.shouldCompress(), "single-chunk streams follow the history (small files)")
    }

    func testCompressibleAgainAfterSuccessfulProbes() {
        var c = AdaptiveCompression(encoders: 2)
        writes(&c, rate: 10 * MB, total: 8 << 20, blocked: true)
        for _ in 0..<10 {
            c.record(ChunkEncodeReport(attempt: .sampleRejected, rawBytes: chunk, wireBytes: chunk, codecSeconds: 0.0004, compression: .zlib(1)))
        }
        XCTAssertFalse(c.shouldCompress())
        compressed(&c, rate: 90 * MB, ratio: 0.3, count: 3)
        XCTAssertLessThan(c.expectedRatio, 0.9)
        XCTAssertTrue(c.shouldCompress())
    }

    func testFastLinkNeedsNoProbes() {
        var c = AdaptiveCompression(encoders: 2)
        writes(&c, rate: 2000 * MB, total: 8 << 20, blocked: true)
        c.beginStream(chunks: 100)
        XCTAssertEqual(decisions(&c, 100), 0, "on a fast link even the first chunk is not sampled")
    }

    func testManyConnectionsTogetherFasterThanZlibStore() {
        // Fifty clients: each connection moves only 5 MB/s and its socket backs up, but the
        // server writes 250 MB/s in all, more than twice what two encoders could compress.
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 60 * MB, ratio: 0.3)
        writes(&c, rate: 5 * MB, total: 8 << 20, blocked: true)
        XCTAssertEqual(decisions(&c, 10), 10, "alone, a 5 MB/s connection is worth compressing for")
        c.recordServerRate(250 * MB)
        XCTAssertEqual(c.serverRate, 250 * MB)
        XCTAssertEqual(decisions(&c, 10), 0)
        c.recordServerRate(20 * MB)
        XCTAssertEqual(decisions(&c, 10), 10, "fifty clients behind a slow uplink: compress")
    }

    // MARK: - Encoder time against the link time it saves

    func testEncoderTimeMustBeBelowTheSendTimeItSavesWhenConnectionsShareTheEncoders() {
        // Two encoders at 100 MB/s, text to 0.4: a chunk costs R / 200 MB/s of encoder time and
        // saves 0.6 · R / rate of sending, so with many connections sharing the encoders
        // compressing pays below 120 MB/s of total server rate.
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 100 * MB, ratio: 0.4)
        XCTAssertEqual(c.savingBound(.zlib) / MB, 120, accuracy: 0.5)
        writes(&c, rate: 10 * MB, total: 8 << 20, blocked: true)
        c.recordServerRate(110 * MB)
        XCTAssertEqual(decisions(&c, 20), 20, "110 MB/s in all: each chunk saves more than it costs")
        c.recordServerRate(130 * MB)
        XCTAssertEqual(decisions(&c, 20), 0, "130 MB/s in all: below the 2 × 200 MB/s guard, but a loss")
    }

    func testAConnectionAloneNearTheEncodersSpeedMixesCompressedChunksIn() {
        // One client on a 1 Gbit/s link (117 MB/s) with two encoders at 70 MB/s by the wall
        // clock (the client shares the cores) and text to 0.24: compressing half of the chunks
        // raises the delivered rate well above the link's (~190 MB/s of raw data), so the
        // saving bound (0.76 × 140 = 106 MB/s), meant for connections sharing the encoders,
        // does not apply.
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 70 * MB, ratio: 0.24)
        writes(&c, rate: 117 * MB, total: 16 << 20, blocked: true)
        c.recordServerRate(118 * MB)
        XCTAssertLessThan(c.savingBound(.zlib), 117 * MB)
        XCTAssertGreaterThan(decisions(&c, 40), 20, "the link is the bottleneck: compress most chunks")
    }

    func testManyClientsOnASaturatedMachineStore() {
        // Fifty clients on loopback: every connection's socket backs up at 1.5 MB/s because its
        // client gets little CPU, the server writes 75 MB/s in all, and the encoders, fighting the
        // clients for two cores, deflate 40 MB/s each by the wall clock. Compressing would cost
        // 1/80 s of encoder time per MB to save 0.55/75 s of sending: store.
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 40 * MB, ratio: 0.45)
        writes(&c, rate: 1.5 * MB, total: 8 << 20, blocked: true)
        XCTAssertEqual(c.networkPressure, 1, accuracy: 0.001)
        c.recordServerRate(75 * MB)
        XCTAssertLessThan(c.savingBound(.zlib), 75 * MB)
        XCTAssertEqual(decisions(&c, 50), 0)
        // Once it stores, the same machine pushes more; still stored.
        c.recordServerRate(150 * MB)
        XCTAssertEqual(decisions(&c, 50), 0)
        // The same fifty clients behind a 100 Mbit/s uplink: 12.5 MB/s in all, compress.
        c.recordServerRate(12.5 * MB)
        XCTAssertEqual(decisions(&c, 50), 50)
    }

    func testSlowLinkOnABusyMachineStillCompresses() {
        // lan100m while other work loads the machine: zlib gets only a third of a core per
        // encoder (30 MB/s), and still saves far more sending time than it costs.
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 30 * MB, ratio: 0.3)
        writes(&c, rate: 12.5 * MB, total: 16 << 20, blocked: true)
        c.recordServerRate(12.5 * MB)
        XCTAssertEqual(c.savingBound(.zlib) / MB, 42, accuracy: 0.5)
        XCTAssertEqual(decisions(&c, 50), 50)
    }

    func testIncompressibleProbesAreNotBlockedByTheSavingBound() {
        // With a ratio near 1 the bound is tiny, but the probes that notice compressible data
        // again must go on (below the fast-link guard).
        var c = AdaptiveCompression(encoders: 2)
        compressed(&c, rate: 90 * MB, ratio: 0.3, count: 3)
        writes(&c, rate: 50 * MB, total: 8 << 20, blocked: true)
        for _ in 0..<20 {
            c.record(ChunkEncodeReport(attempt: .sampleRejected, rawBytes: chunk, wireBytes: chunk, codecSeconds: 0.0004, compression: .zlib(1)))
        }
        XCTAssertGreaterThan(c.expectedRatio, 0.9)
        XCTAssertLessThan(c.savingBound(.zlib), 50 * MB)
        XCTAssertEqual(decisions(&c, 64), 4, "one probe in 16 chunks")
    }

    // MARK: - Encoder reports

    private let allocator = ByteBufferAllocator()

    private func randomBytes(_ count: Int) -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        var out = [UInt8]()
        out.reserveCapacity(count + 8)
        while out.count < count { withUnsafeBytes(of: g.next() as UInt64) { out += $0 } }
        return Array(out.prefix(count))
    }

    private func text(_ count: Int) -> ByteBuffer {
        var b = ByteBuffer()
        var i = 0
        while b.readableBytes < count {
            b.writeString("2024-05-01T12:00:\(i % 60) INFO request \(i) served in \(i % 97) ms\n")
            i += 1
        }
        return b.getSlice(at: 0, length: count) ?? b
    }

    func testStoredChunkIsTheRawBufferItself() throws {
        let raw = ByteBuffer(bytes: randomBytes(300_000))
        var encoder = ChunkEncoder(.store)
        let out = encoder.encode(raw, offset: 7, allocator: allocator)
        XCTAssertEqual(out.header.codec, .stored)
        XCTAssertEqual(out.header.offset, 7)
        XCTAssertEqual(out.wire, raw)
        let same = raw.withUnsafeReadableBytes { r in out.wire.withUnsafeReadableBytes { w in r.baseAddress == w.baseAddress } }
        XCTAssertTrue(same, "stored chunks are not copied")
        XCTAssertEqual(out.report, ChunkEncodeReport(attempt: .none, rawBytes: 300_000, wireBytes: 300_000, codecSeconds: 0))
        XCTAssertEqual(try ChunkDecoder.decode(header: out.header, wire: out.wire), Array(raw.readableBytesView))
    }

    func testReportsSayWhatZlibDid() throws {
        let random = ByteBuffer(bytes: randomBytes(256 * 1024))
        var auto = ChunkEncoder(.sampleThenCompress(.zlib(1)))
        let sampled = auto.encode(random, offset: 0, allocator: allocator)
        XCTAssertEqual(sampled.header.codec, .stored)
        XCTAssertEqual(sampled.report.attempt, .sampleRejected)
        XCTAssertGreaterThan(sampled.report.codecSeconds, 0)

        let small = ByteBuffer(bytes: randomBytes(20_000))  // too small to sample
        var level = ChunkEncoder(.compress(.zlib(1)))
        let rejected = level.encode(small, offset: 0, allocator: allocator)
        XCTAssertEqual(rejected.header.codec, .stored)
        XCTAssertEqual(rejected.report.attempt, .rejected)
        XCTAssertEqual(rejected.wire, small)

        let log = text(256 * 1024)
        var fresh = ChunkEncoder(.sampleThenCompress(.zlib(1)))
        let packed = fresh.encode(log, offset: 0, allocator: allocator)
        XCTAssertEqual(packed.header.codec, .zlib)
        XCTAssertEqual(packed.report.attempt, .compressed)
        XCTAssertEqual(packed.report.rawBytes, 256 * 1024)
        XCTAssertEqual(packed.report.wireBytes, packed.wire.readableBytes)
        XCTAssertLessThan(packed.report.wireBytes, 256 * 1024 / 3)
        XCTAssertEqual(try ChunkDecoder.decode(header: packed.header, wire: packed.wire), Array(log.readableBytesView))
    }

    func testBufferAndPointerEncodingsAgree() {
        let log = text(100_000)
        for decision: ChunkDecision in [.store, .compress(.zlib(1)), .compress(.zlib(6)), .sampleThenCompress(.zlib(1))] {
            var a = ChunkEncoder(decision)
            var b = ChunkEncoder(decision)
            let viaBuffer = a.encode(log, offset: 42, allocator: allocator)
            let viaPointer = log.withUnsafeReadableBytes { b.encode(raw: $0, offset: 42, allocator: allocator) }
            XCTAssertEqual(viaBuffer.header, viaPointer.0, "\(decision)")
            XCTAssertEqual(viaBuffer.wire, viaPointer.1, "\(decision)")
        }
    }
}
