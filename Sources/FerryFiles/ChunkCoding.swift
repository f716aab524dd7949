import CFerryCRC
import CZlib
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import FerryProtocol
import NIOConcurrencyHelpers
import NIOCore

/// A chunk that failed its checks on the receiving side.
public enum ChunkError: Error, Hashable, Sendable, CustomStringConvertible {
    case checksum(offset: Int64)
    case inflate(offset: Int64, String)
    case length(offset: Int64, expected: Int, got: Int)

    public var description: String {
        switch self {
        case .checksum(let o): return "chunk at offset \(o) failed its CRC-32 check"
        case .inflate(let o, let why): return "chunk at offset \(o) could not be inflated (\(why))"
        case .length(let o, let e, let g): return "chunk at offset \(o) inflated to \(g) bytes, expected \(e)"
        }
    }
}

/// CRC-32 (IEEE 802.3), the value zlib's `crc32` computes: the chunk checksum on both ends.
/// On x86-64 CPUs with PCLMULQDQ it folds 64 bytes per step with carry-less multiplies
/// (`CFerryCRC`, about 12 GB/s against zlib 1.2.13's 3.8 GB/s); elsewhere it calls zlib.
public enum CRC32 {
    /// How to compute it; every implementation gives the same value.
    public enum Implementation: Sendable, CaseIterable {
        /// The fastest this CPU has: `CFerryCRC`'s PCLMULQDQ folding, else zlib.
        case automatic
        /// `CFerryCRC`'s portable slice-by-8 path, whatever the CPU (tests and benchmarks).
        case portable
        /// zlib's `crc32_z`.
        case zlib
    }

    /// Whether this CPU takes the carry-less-multiply path.
    public static let isAccelerated = ferry_crc32_accelerated() != 0

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
        case .automatic, .zlib:
            return UInt32(truncatingIfNeeded: crc32_z(uLong(previous), base.assumingMemoryBound(to: Bytef.self), bytes.count))
        }
    }

    public static func checksum(_ bytes: [UInt8], continuing previous: UInt32 = 0,
                                using implementation: Implementation = .automatic) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0, continuing: previous, using: implementation) }
    }
}

/// Compression level policy for outgoing chunks.
public enum CompressionPolicy: Sendable, Hashable {
    /// Never compress.
    case off
    /// zlib at a fixed level (1...9); chunks that do not shrink are still sent stored.
    case level(Int32)
    /// zlib level 1 when the network, not the CPU, is the bottleneck, chunk by chunk
    /// (`AdaptiveCompression` decides); never on data that keeps proving incompressible.
    case auto
}

/// What the encoder did with one chunk: the evidence `AdaptiveCompression` learns from.
public struct ChunkEncodeReport: Sendable, Hashable {
    public enum Attempt: Sendable, Hashable {
        /// Sent stored without trying zlib.
        case none
        /// A small sample did not shrink, so the chunk was not tried (sent stored).
        case sampleRejected
        /// The whole chunk was deflated but saved less than `ChunkEncoder.minimumSaving` (sent stored).
        case rejected
        /// Sent zlib-compressed.
        case compressed
    }

    public var attempt: Attempt
    public var rawBytes: Int
    public var wireBytes: Int
    /// Seconds spent inside zlib for this chunk (sample and whole-chunk attempt).
    public var zlibSeconds: Double
    /// The zlib level tried (1 when none was).
    public var level: Int32

    public init(attempt: Attempt, rawBytes: Int, wireBytes: Int, zlibSeconds: Double, level: Int32 = 1) {
        self.attempt = attempt
        self.rawBytes = rawBytes
        self.wireBytes = wireBytes
        self.zlibSeconds = zlibSeconds
        self.level = level
    }
}

/// One encoded chunk: its header, the bytes to send and what it cost.
public struct EncodedChunk: Sendable {
    public var header: ChunkHeader
    /// For a stored chunk this is the raw buffer itself (no copy).
    public var wire: ByteBuffer
    public var report: ChunkEncodeReport
}

/// Turns raw chunk bytes into a header and wire bytes. It keeps a little state so that a
/// stream of incompressible data (media, archives) stops paying for zlib attempts: after a
/// chunk fails to shrink, a cheap sample test guards the next full attempt.
public struct ChunkEncoder: Sendable {
    public let policy: CompressionPolicy
    /// A chunk is compressed only if it shrinks by at least this fraction.
    public static let minimumSaving = 0.03
    static let sampleSize = 16 * 1024

    private var lastWasIncompressible = false
    /// The level `auto` uses (normally 1; `AdaptiveCompression.level` may raise it).
    public let autoLevel: Int32

    public init(policy: CompressionPolicy, autoLevel: Int32 = 1) {
        self.policy = policy
        self.autoLevel = min(9, max(1, autoLevel))
    }

    private var level: Int32? {
        switch policy {
        case .off: return nil
        case .level(let l): return l
        case .auto: return autoLevel
        }
    }

    /// Encodes one chunk. `raw` must be 1...maxChunkRaw bytes.
    public mutating func encode(raw: UnsafeRawBufferPointer, offset: Int64, allocator: ByteBufferAllocator) -> (ChunkHeader, ByteBuffer) {
        let crc = CRC32.checksum(raw)
        var output: ByteBuffer? = nil
        if case .compressed(let wire) = attempt(raw, allocator: allocator, output: &output).outcome {
            return (ChunkHeader(offset: offset, rawLength: raw.count, wireLength: wire.readableBytes, codec: .zlib, crc32: crc), wire)
        }
        var buffer = allocator.buffer(capacity: raw.count)
        buffer.writeBytes(raw)
        return (ChunkHeader(offset: offset, rawLength: raw.count, wireLength: raw.count, codec: .stored, crc32: crc), buffer)
    }

    /// Encodes one chunk held in a buffer and reports what it cost. A stored chunk's wire
    /// bytes are `raw` itself, so sending incompressible data copies nothing.
    public mutating func encode(_ raw: ByteBuffer, offset: Int64, allocator: ByteBufferAllocator) -> EncodedChunk {
        var output: ByteBuffer? = nil
        return encode(raw, offset: offset, allocator: allocator, output: &output)
    }

    /// Like `encode(_:offset:allocator:)`, but a compressed chunk is deflated into `output` when
    /// it holds a buffer (cleared first: a reused buffer spares a fresh allocation and its page
    /// faults). `output` is nil afterwards if its buffer became the chunk's wire bytes; otherwise
    /// it still holds it, for the caller to reuse.
    public mutating func encode(_ raw: ByteBuffer, offset: Int64, allocator: ByteBufferAllocator,
                                output: inout ByteBuffer?) -> EncodedChunk {
        raw.withUnsafeReadableBytes { bytes in
            let crc = CRC32.checksum(bytes)
            let (outcome, seconds) = attempt(bytes, allocator: allocator, output: &output)
            let kind: ChunkEncodeReport.Attempt
            switch outcome {
            case .compressed(let wire):
                return EncodedChunk(
                    header: ChunkHeader(offset: offset, rawLength: bytes.count, wireLength: wire.readableBytes, codec: .zlib, crc32: crc),
                    wire: wire,
                    report: ChunkEncodeReport(attempt: .compressed, rawBytes: bytes.count, wireBytes: wire.readableBytes,
                                              zlibSeconds: seconds, level: level ?? 1))
            case .notTried: kind = .none
            case .sampleRejected: kind = .sampleRejected
            case .rejected: kind = .rejected
            }
            return EncodedChunk(
                header: ChunkHeader(offset: offset, rawLength: bytes.count, wireLength: bytes.count, codec: .stored, crc32: crc),
                wire: raw,
                report: ChunkEncodeReport(attempt: kind, rawBytes: bytes.count, wireBytes: bytes.count, zlibSeconds: seconds,
                                          level: level ?? 1))
        }
    }

    private enum Outcome {
        case notTried, sampleRejected, rejected
        case compressed(ByteBuffer)
    }

    /// Tries zlib as the policy says; also returns the seconds spent in zlib.
    private mutating func attempt(_ raw: UnsafeRawBufferPointer, allocator: ByteBufferAllocator,
                                  output: inout ByteBuffer?) -> (outcome: Outcome, seconds: Double) {
        guard let level else { return (.notTried, 0) }
        let start = ContinuousClock.now
        guard shouldTry(raw, level: level) else {
            lastWasIncompressible = true
            return (.sampleRejected, (ContinuousClock.now - start).seconds)
        }
        guard let wire = Self.deflate(raw, level: level, limit: Int(Double(raw.count) * (1 - Self.minimumSaving)),
                                      allocator: allocator, output: &output) else {
            lastWasIncompressible = true
            return (.rejected, (ContinuousClock.now - start).seconds)
        }
        lastWasIncompressible = false
        return (.compressed(wire), (ContinuousClock.now - start).seconds)
    }

    /// Deflates a small sample first; only if the sample shrinks is the whole chunk tried.
    /// Costs ~6% of a full attempt.
    private func shouldTry(_ raw: UnsafeRawBufferPointer, level: Int32) -> Bool {
        // `auto` always samples first, so parallel encoders (which share no history) still
        // skip zlib on incompressible data; a fixed level samples only after a miss.
        guard policy == .auto || lastWasIncompressible, raw.count > Self.sampleSize * 2 else { return true }
        let mid = raw.count / 2
        let sample = UnsafeRawBufferPointer(rebasing: raw[mid..<(mid + Self.sampleSize)])
        return Self.deflate(sample, level: level, limit: Int(Double(sample.count) * (1 - Self.minimumSaving)),
                            allocator: ByteBufferAllocator()) != nil
    }

    /// One complete zlib stream, or nil when the output would exceed `limit` bytes. Written into
    /// the buffer `output` holds, if any (cleared; taken out of `output` on success, so that it
    /// is uniquely referenced and written in place).
    static func deflate(_ raw: UnsafeRawBufferPointer, level: Int32, limit: Int, allocator: ByteBufferAllocator) -> ByteBuffer? {
        var none: ByteBuffer? = nil
        return deflate(raw, level: level, limit: limit, allocator: allocator, output: &none)
    }

    static func deflate(_ raw: UnsafeRawBufferPointer, level: Int32, limit: Int, allocator: ByteBufferAllocator,
                        output: inout ByteBuffer?) -> ByteBuffer? {
        guard limit > 0, let src = raw.baseAddress else { return nil }
        let reusing = output != nil
        // One variable holds the buffer (taken out of `output`), so it is written in place.
        var buffer = output.take() ?? allocator.buffer(capacity: limit)
        buffer.clear()
        var ok = false
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: limit) { out -> Int in
            guard let dst = out.baseAddress else { return 0 }
            var stream = z_stream()
            guard deflateInit_(&stream, level, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return 0 }
            defer { deflateEnd(&stream) }
            stream.next_in = UnsafeMutablePointer(mutating: src.assumingMemoryBound(to: Bytef.self))
            stream.avail_in = uInt(raw.count)
            stream.next_out = dst.assumingMemoryBound(to: Bytef.self)
            stream.avail_out = uInt(limit)
            let r = CZlib.deflate(&stream, Z_FINISH)
            guard r == Z_STREAM_END else { return 0 }
            ok = true
            return Int(stream.total_out)
        }
        if ok { return buffer }
        if reusing { output = buffer }  // not used: the caller may reuse it
        return nil
    }
}

/// Chunk-sized buffers a server reuses for file reads and zlib output (`ChunkPipeline`), instead of a fresh
/// 256 KiB allocation per chunk: a fresh one is served by `mmap` or a trimmed heap, and its
/// first touch costs 64 page faults and zeroing (about 8% of the server's CPU on a large file).
///
/// A buffer is handed back right after its write was queued, while the channel may still hold
/// it; ByteBuffer is copy-on-write, so it is reused only once the pool's reference is the only
/// one again (`modifyIfUniquelyOwned`), and until then `take` passes it over. At most `limit`
/// buffers are kept (4 MiB at 256 KiB chunks), for all connections together: enough for one or
/// two streams' chunks in flight (encoding, queued and in the socket's buffer). Small chunks
/// (under 64 KiB) are not pooled: malloc serves them from its arenas.
public final class ChunkBufferPool: Sendable {
    /// Buffers smaller than this are not worth keeping (malloc serves them from its arenas).
    public static let minimumCapacity = 64 * 1024
    public let limit: Int
    private let free = NIOLockedValueBox<[ByteBuffer]>([])
    private let allocator = ByteBufferAllocator()

    public init(limit: Int = 16) {
        self.limit = limit
    }

    /// Buffers kept now (some may still be in flight).
    public var count: Int { free.withLockedValue { $0.count } }

    /// An empty buffer of at least `capacity` bytes: a kept one nobody else references, else a new one.
    public func take(capacity: Int) -> ByteBuffer {
        guard capacity >= Self.minimumCapacity else { return allocator.buffer(capacity: capacity) }
        let reused: ByteBuffer? = free.withLockedValue { buffers in
            // Oldest first: the longest since written, the likeliest to be released.
            for i in buffers.indices where buffers[i].capacity >= capacity && buffers[i].capacity <= 2 * capacity {
                if buffers[i].modifyIfUniquelyOwned({ $0.clear() }) != nil {
                    return buffers.remove(at: i)
                }
            }
            return nil
        }
        return reused ?? allocator.buffer(capacity: capacity)
    }

    /// Keeps `buffer` for reuse once whoever else holds it (the channel) lets go; dropped when
    /// the pool is full or the buffer is small.
    public func recycle(_ buffer: ByteBuffer) {
        guard buffer.capacity >= Self.minimumCapacity, buffer.capacity <= FerryLimits.maxChunkRaw + FerryLimits.chunkWireSlack else { return }
        free.withLockedValue { buffers in
            if buffers.count < limit { buffers.append(buffer) }
        }
    }
}

/// What the kernel says about one TCP connection (Linux `TCP_INFO`), read now and then by the
/// sender. Cumulative values, like the kernel's.
public struct TransportSample: Sendable, Hashable {
    /// When it was read (any monotonic clock), in seconds.
    public var time: Double
    /// Total seconds the sender has been held back by the receiver's window
    /// (`tcpi_rwnd_limited`): the receiver, not the network, was the bottleneck.
    public var receiverLimited: Double
    /// The latest delivery-rate sample in bytes per second (`tcpi_delivery_rate`), nil when
    /// that sample was application-limited and so says nothing about the link.
    public var deliveryRate: Double?

    public init(time: Double, receiverLimited: Double, deliveryRate: Double?) {
        self.time = time
        self.receiverLimited = receiverLimited
        self.deliveryRate = deliveryRate
    }
}

/// The `--compress auto` policy: decides, chunk by chunk, whether zlib pays on this link, and
/// at which level.
///
/// zlib trades CPU time for fewer bytes on the wire. That pays only when the network, not the
/// CPU, is the bottleneck: when the sender's writes wait for the socket to drain while cores
/// could be compressing. On loopback or a fast LAN the socket drains faster than zlib (about
/// 90 MB/s per core on text at level 1) can fill it, and compressing would slow both ends down.
///
/// What the controller observes, all decaying so that it follows change:
/// - the *network pressure*: the recent share of chunks written while the socket's send buffer
///   was filling up (a write was held back by the socket within the last 1.5 MiB written): while
///   that happens the link, not the encoders, sets the pace;
/// - the link rate `D`: wire bytes per second actually written over about the last few MiB, by
///   the wall clock (it never overestimates the link; it is the link's rate while the network
///   is the bottleneck);
/// - the compression rate `C·n`: raw bytes per second one encoder deflates (converted to level
///   1), times the encoders working in parallel;
/// - the ratio `r`: wire/raw bytes of recent zlib attempts (1 for a chunk that did not shrink);
/// - the server's total rate over all its connections (`recordServerRate`): the encoders serve
///   them all, so fifty connections that each look slow can together outrun zlib;
/// - when the connection's `TCP_INFO` is available (`recordTransport`): the share of time the
///   receiver's window held the sender back, and the kernel's delivery rate, which replaces `D`
///   (it measures the link even while it is not saturated).
///
/// It decides, when a chunk's encoding is started:
/// 0. the receiver held the sender back more than a quarter of the recent time: **store** (the
///    receiver is the bottleneck, as on loopback with a busy client; zlib would add work to both);
/// 1. `D`, or the server's total rate, is at least `2·C·n`: the data leaves twice as fast as zlib
///    could produce it: **store** (this keeps loopback, where client and server share the CPU,
///    and many clients at once, stored);
/// 2. `r > 0.9` (the data keeps failing to shrink): **store**, but probe one chunk in 16 and the
///    first chunk of every multi-chunk stream, so compressible data is noticed again;
/// 2b. other connections are busy too (the server's total rate is more than twice `D`) and that
///    total is at least `savingBound = (1 - r)·C·n`: the encoders serve every connection, and the
///    encoder time a chunk costs would exceed the sending time it saves, so zlib would only make
///    the CPU the bottleneck: **store** (wall-clock `C` falls when the machine's CPU is
///    saturated, as with fifty clients on loopback). A connection alone is not held to this
///    bound: while the encoders have CPU to spare, mixing compressed chunks into a link that is
///    nearly as fast as they are still raises the delivered rate (1 Gbit/s text, below);
/// 3. link not known yet (less than 4 MiB observed): **compress** (a slow link is where a wrong
///    guess costs most; on a fast one the first MiB or so costs a little CPU);
/// 4. otherwise compress the share of chunks given by the network pressure, spread evenly: on a
///    slow link the send buffer is always full and every chunk is compressed; near the crossover
///    compressing too much lets the buffer drain, the pressure falls and stored chunks mix in,
///    so that the link and the encoders are both busy.
///
/// The level is 1, raised to 3 while the network is the bottleneck (pressure above 0.9) and the
/// encoders at level 1 could feed the link 1.75 times over, and to 6 at 4 times (a 100 Mbit/s
/// link and a few cores): spare CPU buys a better ratio. If the higher level makes the encoders the
/// bottleneck, the pressure drops and the level with it.
/// Whatever it decides, a chunk that does not shrink by 3% is sent stored (`ChunkEncoder`).
/// It is a pure value: the caller feeds it measured seconds, so tests drive it deterministically.
public struct AdaptiveCompression: Sendable {
    public struct Tuning: Sendable {
        /// Store while the link is at least this multiple of the encoders' combined speed.
        public var fastLinkFactor = 2.0
        /// Store compressible data while the server's total rate is at least this multiple of
        /// `(1 - ratio) × compressRate` (and other connections are busy, see
        /// `sharedServerFactor`): the encoder time a chunk costs (spread over the encoders, which
        /// serve every connection) would exceed the link time it saves.
        public var savingFactor = 1.0
        /// Other connections count as busy while the server's total rate is more than this
        /// multiple of this connection's own rate.
        public var sharedServerFactor = 2.0
        /// Store while the receiver's window held the sender back more than this share of the time.
        public var receiverLimitedShare = 0.25
        /// Weight kept by the transport estimates per new sample.
        public var transportDecay = 0.75
        /// A write that waited at least this long was held back by the socket (its buffer was
        /// full: NIO suspends writes above the high watermark until it drains to the low one).
        public var blockedSend = 0.001
        /// The network counts as the bottleneck while a write was held back within this many
        /// wire bytes (the 768 KiB between the watermarks, twice).
        public var recentBlockBytes = 3 << 19
        /// Weight kept by the network pressure per chunk written.
        public var pressureDecay = 0.85
        /// Above this expected wire/raw ratio the data counts as incompressible.
        public var incompressibleRatio = 0.9
        /// While the data is incompressible, one chunk in this many is still tried.
        public var probeInterval = 16
        /// Wire bytes the link must have been observed moving before its rate is trusted.
        public var trustBytes = 4 << 20
        /// The link-rate estimate forgets half its weight every this many wire bytes.
        public var linkHalfLife = 4 << 20
        /// Weight kept by the compression-rate and ratio estimates per new zlib attempt.
        public var attemptDecay = 0.75
        /// Raw bytes per second one encoder is assumed to deflate at level 1 before any was measured.
        public var priorCompressRate = 100e6
        /// Expected wire/raw ratio before any attempt was seen.
        public var priorRatio = 0.5
        /// Raise the level to 3 (6) when the encoders at level 1 could feed the link this many
        /// times over, and the network is the bottleneck (pressure above `levelPressure`).
        public var level3Headroom = 1.75
        public var level6Headroom = 4.0
        public var levelPressure = 0.9

        public init() {}
    }

    /// How much slower than level 1 a level deflates, roughly (log-like text and source code);
    /// used to convert measured speeds to level-1 terms and back.
    public static func relativeSpeed(level: Int32) -> Double {
        switch level {
        case ...1: return 1
        case 2...3: return 0.8
        case 4...5: return 0.6
        case 6: return 0.4
        default: return 0.25
        }
    }

    public let tuning: Tuning
    /// Encoders working in parallel (the pipeline's window, at most the core count).
    public var encoders: Int

    private var observedBytes = 0.0
    private var deliveredBytes = 0.0
    private var deliveredSeconds = 0.0
    private var zlibBytes: Double
    private var zlibSeconds: Double
    private var ratioEstimate: Double
    private var pressure = 1.0
    private var bytesSinceBlocked = 0.0
    private var sinceProbe = 0
    private var probeNext = false
    private var credit = 0.0
    private var lastTransport: TransportSample?
    private var receiverShareEstimate: Double?
    private var deliveryRateEstimate: Double?
    private var serverRateEstimate: Double?

    public init(encoders: Int, tuning: Tuning = Tuning()) {
        self.tuning = tuning
        self.encoders = max(1, encoders)
        // The prior counts as one 256 KiB attempt, so the first real measurement dominates.
        zlibBytes = 262_144
        zlibSeconds = 262_144 / tuning.priorCompressRate
        ratioEstimate = tuning.priorRatio
    }

    /// Wire bytes per second the link drains: the kernel's delivery rate when known, else the
    /// wall-clock throughput once `trustBytes` have been observed; nil before.
    public var linkRate: Double? { deliveryRateEstimate ?? throughput }

    /// Raw bytes per second all encoders together deflate at level 1.
    public var compressRate: Double { zlibBytes / zlibSeconds * Double(encoders) }

    /// Expected wire/raw ratio of the next zlib attempt.
    public var expectedRatio: Double { ratioEstimate }

    /// Recent share of chunks written while the socket's send buffer kept filling up.
    public var networkPressure: Double { pressure }

    /// Share of recent time the receiver's window held the sender back; nil without transport samples.
    public var receiverLimitedShare: Double? { receiverShareEstimate }

    /// Wire bytes per second actually written, by the wall clock (recent chunks); nil until
    /// `trustBytes` have been written.
    public var throughput: Double? {
        guard observedBytes >= Double(tuning.trustBytes) else { return nil }
        return deliveredSeconds > 0 ? deliveredBytes / deliveredSeconds : .infinity
    }

    /// The zlib level for chunks that are compressed.
    public var level: Int32 {
        guard pressure >= tuning.levelPressure, let rate = linkRate, rate > 0 else { return 1 }
        // Raw bytes per second the link carries at the current ratio.
        let needed = rate / max(ratioEstimate, 0.05)
        if compressRate >= tuning.level6Headroom * needed { return 6 }
        if compressRate >= tuning.level3Headroom * needed { return 3 }
        return 1
    }

    /// The rate (wire bytes per second, of this link or of the whole server) from which
    /// compressing costs more encoder time than it saves link time: per chunk of `R` raw bytes
    /// the encoders spend `R / compressRate` seconds (they work in parallel, for all
    /// connections) to save `(1 - ratio) · R / rate` seconds of sending. Measured encoder speeds
    /// are wall-clock, so a machine whose CPU is saturated (fifty clients on loopback) shows slow
    /// encoders and a low bound.
    public var savingBound: Double {
        (1 - min(max(ratioEstimate, 0), 1)) * compressRate * tuning.savingFactor
    }

    /// Wire bytes per second the whole server wrote recently (all connections); nil when unknown.
    public var serverRate: Double? { serverRateEstimate }

    /// The server's total rate over all its connections, measured just now.
    public mutating func recordServerRate(_ bytesPerSecond: Double) {
        serverRateEstimate = max(0, bytesPerSecond)
    }

    /// The kernel's view of the connection, read now (cumulative values).
    public mutating func recordTransport(_ sample: TransportSample) {
        defer { lastTransport = sample }
        guard let last = lastTransport else { return }
        let elapsed = sample.time - last.time
        guard elapsed > 0 else { return }
        let a = tuning.transportDecay
        let share = min(1, max(0, (sample.receiverLimited - last.receiverLimited) / elapsed))
        receiverShareEstimate = receiverShareEstimate.map { $0 * a + share * (1 - a) } ?? share
        if let rate = sample.deliveryRate, rate > 0 {
            deliveryRateEstimate = deliveryRateEstimate.map { $0 * a + rate * (1 - a) } ?? rate
        }
    }

    /// A new stream (one `GET` or manifest) of `chunks` chunks begins: its first chunk is
    /// probed even if recent data was incompressible, since a new file may differ.
    public mutating func beginStream(chunks: Int) {
        probeNext = chunks > 1
    }

    /// One chunk of `wireBytes` was written; the socket took `sendSeconds` to take it, and
    /// `intervalSeconds` passed since the previous chunk was written.
    public mutating func recordChunkWritten(wireBytes: Int, sendSeconds: Double, intervalSeconds: Double) {
        if sendSeconds >= tuning.blockedSend {
            bytesSinceBlocked = 0
        } else {
            bytesSinceBlocked = min(bytesSinceBlocked + Double(wireBytes), 1e15)
        }
        let networkBound = bytesSinceBlocked < Double(tuning.recentBlockBytes) ? 1.0 : 0.0
        let a = tuning.pressureDecay
        pressure = pressure * a + networkBound * (1 - a)
        let keep = pow(0.5, Double(wireBytes) / Double(tuning.linkHalfLife))
        deliveredBytes = deliveredBytes * keep + Double(wireBytes)
        deliveredSeconds = deliveredSeconds * keep + max(0, intervalSeconds)
        observedBytes = min(observedBytes + Double(wireBytes), 1e15)
    }

    /// An encoder finished a chunk.
    public mutating func record(_ report: ChunkEncodeReport) {
        let a = tuning.attemptDecay
        switch report.attempt {
        case .none:
            return
        case .sampleRejected:
            ratioEstimate = ratioEstimate * a + (1 - a)
        case .rejected:
            ratioEstimate = ratioEstimate * a + (1 - a)
            recordSpeed(report)
        case .compressed:
            ratioEstimate = ratioEstimate * a + (1 - a) * Double(report.wireBytes) / Double(max(1, report.rawBytes))
            recordSpeed(report)
        }
    }

    private mutating func recordSpeed(_ report: ChunkEncodeReport) {
        guard report.zlibSeconds > 0, report.rawBytes > 0 else { return }
        let a = tuning.attemptDecay
        zlibBytes = zlibBytes * a + Double(report.rawBytes)
        // In level-1 terms: a level-6 chunk that took 4 ms counts as a level-1 chunk of 1.6 ms.
        zlibSeconds = zlibSeconds * a + report.zlibSeconds * Self.relativeSpeed(level: report.level)
    }

    /// Whether the next chunk should be tried with zlib (at `level`).
    public mutating func shouldCompress() -> Bool {
        let probe = probeNext
        probeNext = false
        if let share = receiverShareEstimate, share > tuning.receiverLimitedShare {
            return false
        }
        if let rate = [linkRate, serverRateEstimate].compactMap({ $0 }).max(), rate >= tuning.fastLinkFactor * compressRate {
            return false
        }
        if ratioEstimate > tuning.incompressibleRatio {
            sinceProbe += 1
            if probe || sinceProbe >= tuning.probeInterval {
                sinceProbe = 0
                return true
            }
            return false
        }
        if let server = serverRateEstimate, server > tuning.sharedServerFactor * (linkRate ?? 0), server >= savingBound {
            return false
        }
        guard linkRate != nil else { return true }
        credit += pressure
        if credit >= 1 - 1e-9 {
            credit -= 1
            return true
        }
        return false
    }
}

extension Duration {
    /// The duration in seconds, as a Double.
    public var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) * 1e-18
    }
}

public enum ChunkDecoder {
    /// Checks and decodes one chunk into `destination` (which must hold `rawLength` bytes).
    public static func decode(header: ChunkHeader, wire: ByteBuffer, into destination: UnsafeMutableRawBufferPointer) throws(ChunkError) {
        precondition(destination.count >= header.rawLength)
        guard wire.readableBytes == header.wireLength else {
            throw .length(offset: header.offset, expected: header.wireLength, got: wire.readableBytes)
        }
        let result: Result<Void, ChunkError> = wire.withUnsafeReadableBytes { src in
            switch header.codec {
            case .stored:
                // A hand-built header could disagree with itself; never copy past `rawLength`.
                guard src.count == header.rawLength else {
                    return .failure(.length(offset: header.offset, expected: header.rawLength, got: src.count))
                }
                destination.copyMemory(from: src)
                return .success(())
            case .zlib:
                var stream = z_stream()
                guard inflateInit_(&stream, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
                    return .failure(.inflate(offset: header.offset, "inflateInit failed"))
                }
                defer { inflateEnd(&stream) }
                stream.next_in = UnsafeMutablePointer(mutating: src.baseAddress?.assumingMemoryBound(to: Bytef.self))
                stream.avail_in = uInt(src.count)
                stream.next_out = destination.baseAddress?.assumingMemoryBound(to: Bytef.self)
                stream.avail_out = uInt(header.rawLength)
                let r = inflate(&stream, Z_FINISH)
                if r != Z_STREAM_END {
                    let why = r == Z_BUF_ERROR ? "inflates to more than announced" : "corrupt zlib stream"
                    return .failure(.inflate(offset: header.offset, why))
                }
                if stream.avail_in != 0 { return .failure(.inflate(offset: header.offset, "trailing bytes")) }
                if Int(stream.total_out) != header.rawLength {
                    return .failure(.length(offset: header.offset, expected: header.rawLength, got: Int(stream.total_out)))
                }
                return .success(())
            }
        }
        try result.get()
        let crc = CRC32.checksum(UnsafeRawBufferPointer(rebasing: destination[0..<header.rawLength]))
        guard crc == header.crc32 else { throw .checksum(offset: header.offset) }
    }

    /// Convenience for tests and small payloads.
    public static func decode(header: ChunkHeader, wire: ByteBuffer) throws(ChunkError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: header.rawLength)
        let result: Result<Void, ChunkError> = out.withUnsafeMutableBytes { d in
            do throws(ChunkError) {
                try decode(header: header, wire: wire, into: d)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
        return out
    }
}
