import CZlib
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import FerryProtocol
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

public enum CRC32 {
    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return 0 }
        return UInt32(crc32_z(0, base.assumingMemoryBound(to: Bytef.self), bytes.count))
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0) }
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

    public init(attempt: Attempt, rawBytes: Int, wireBytes: Int, zlibSeconds: Double) {
        self.attempt = attempt
        self.rawBytes = rawBytes
        self.wireBytes = wireBytes
        self.zlibSeconds = zlibSeconds
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

    public init(policy: CompressionPolicy) {
        self.policy = policy
    }

    private var level: Int32? {
        switch policy {
        case .off: return nil
        case .level(let l): return l
        case .auto: return 1
        }
    }

    /// Encodes one chunk. `raw` must be 1...maxChunkRaw bytes.
    public mutating func encode(raw: UnsafeRawBufferPointer, offset: Int64, allocator: ByteBufferAllocator) -> (ChunkHeader, ByteBuffer) {
        let crc = CRC32.checksum(raw)
        if case .compressed(let wire) = attempt(raw, allocator: allocator).outcome {
            return (ChunkHeader(offset: offset, rawLength: raw.count, wireLength: wire.readableBytes, codec: .zlib, crc32: crc), wire)
        }
        var buffer = allocator.buffer(capacity: raw.count)
        buffer.writeBytes(raw)
        return (ChunkHeader(offset: offset, rawLength: raw.count, wireLength: raw.count, codec: .stored, crc32: crc), buffer)
    }

    /// Encodes one chunk held in a buffer and reports what it cost. A stored chunk's wire
    /// bytes are `raw` itself, so sending incompressible data copies nothing.
    public mutating func encode(_ raw: ByteBuffer, offset: Int64, allocator: ByteBufferAllocator) -> EncodedChunk {
        raw.withUnsafeReadableBytes { bytes in
            let crc = CRC32.checksum(bytes)
            let (outcome, seconds) = attempt(bytes, allocator: allocator)
            let kind: ChunkEncodeReport.Attempt
            switch outcome {
            case .compressed(let wire):
                return EncodedChunk(
                    header: ChunkHeader(offset: offset, rawLength: bytes.count, wireLength: wire.readableBytes, codec: .zlib, crc32: crc),
                    wire: wire,
                    report: ChunkEncodeReport(attempt: .compressed, rawBytes: bytes.count, wireBytes: wire.readableBytes,
                                              zlibSeconds: seconds))
            case .notTried: kind = .none
            case .sampleRejected: kind = .sampleRejected
            case .rejected: kind = .rejected
            }
            return EncodedChunk(
                header: ChunkHeader(offset: offset, rawLength: bytes.count, wireLength: bytes.count, codec: .stored, crc32: crc),
                wire: raw,
                report: ChunkEncodeReport(attempt: kind, rawBytes: bytes.count, wireBytes: bytes.count, zlibSeconds: seconds))
        }
    }

    private enum Outcome {
        case notTried, sampleRejected, rejected
        case compressed(ByteBuffer)
    }

    /// Tries zlib as the policy says; also returns the seconds spent in zlib.
    private mutating func attempt(_ raw: UnsafeRawBufferPointer, allocator: ByteBufferAllocator) -> (outcome: Outcome, seconds: Double) {
        guard let level else { return (.notTried, 0) }
        let start = ContinuousClock.now
        guard shouldTry(raw, level: level) else {
            lastWasIncompressible = true
            return (.sampleRejected, (ContinuousClock.now - start).seconds)
        }
        guard let wire = Self.deflate(raw, level: level, limit: Int(Double(raw.count) * (1 - Self.minimumSaving)), allocator: allocator) else {
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

    /// One complete zlib stream, or nil when the output would exceed `limit` bytes.
    static func deflate(_ raw: UnsafeRawBufferPointer, level: Int32, limit: Int, allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard limit > 0, let src = raw.baseAddress else { return nil }
        var buffer = allocator.buffer(capacity: limit)
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
        return ok ? buffer : nil
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

/// The `--compress auto` policy: decides, chunk by chunk, whether zlib pays on this link.
///
/// zlib level 1 trades CPU time for fewer bytes on the wire. That pays only when the network,
/// not the CPU, is the bottleneck: when the sender's writes wait for the socket to drain while
/// cores could be compressing. On loopback or a fast LAN the socket drains faster than zlib
/// (about 90 MB/s per core on text) can fill it, and compressing would slow both ends down.
///
/// The controller keeps three estimates, each decaying so that it follows change:
/// - the link rate `D`: wire bytes per second of the time the writer spent handing data to the
///   socket (waiting for writability included, waiting for encoders not), over about the last
///   few MiB;
/// - the compression rate `C·n`: raw bytes per second one encoder deflates, times the encoders
///   working in parallel;
/// - the ratio `r`: wire/raw bytes of recent zlib attempts (1 for a chunk that did not shrink).
///
/// When the kernel's view of the connection is available (`recordTransport`, from Linux
/// `TCP_INFO`), two more facts sharpen this: the share of time the receiver's window held the
/// sender back (then the receiver is the bottleneck, as on loopback with a busy client, and
/// zlib would only add work on both sides), and the kernel's own delivery rate, which replaces
/// `D` (it is not fooled by socket buffers that absorb the first few MiB).
///
/// The controller decides, when a chunk's encoding is started:
/// 0. the receiver held the sender back more than a quarter of the recent time: **store**;
/// 1. link known and `D ≥ k·C·n` (k = 1, or 2 with the kernel's delivery rate): the link drains
///    faster than zlib can fill it: **store**;
/// 2. `r > 0.9` (the data keeps failing to shrink): **store**, but probe one chunk in 16 and the
///    first chunk of every multi-chunk stream, so compressible data is noticed again;
/// 3. link not known yet (less than `trustBytes` observed): **compress** (a slow link is where
///    a wrong guess costs most; on a fast one the first MiB or so costs a little CPU);
/// 4. otherwise compress a fraction `f = min(1, C·n / (D + C·n·(1 − r)))` of the chunks, spread
///    evenly: the mix at which the link and the encoders are both busy. On a slow link `f` is 1.
///
/// Whatever it decides, a chunk that does not shrink by 3% is sent stored (`ChunkEncoder`).
/// It is a pure value: the caller feeds it measured seconds, so tests drive it deterministically.
public struct AdaptiveCompression: Sendable {
    public struct Tuning: Sendable {
        /// Store while the link is at least this multiple of the encoders' combined speed.
        public var fastLinkFactor = 1.0
        /// The same, when the link rate is the kernel's delivery rate (which, unlike the
        /// writer's timing, never overestimates an underused link).
        public var fastLinkFactorWithTransport = 2.0
        /// Store while the receiver's window held the sender back more than this share of the time.
        public var receiverLimitedShare = 0.25
        /// Weight kept by the transport estimates per new sample.
        public var transportDecay = 0.75
        /// Above this expected wire/raw ratio the data counts as incompressible.
        public var incompressibleRatio = 0.9
        /// While the data is incompressible, one chunk in this many is still tried.
        public var probeInterval = 16
        /// Wire bytes the link must have been observed moving before its rate is trusted.
        public var trustBytes = 4 << 20
        /// The link estimate forgets half its weight every this many wire bytes.
        public var linkHalfLife = 2 << 20
        /// Weight kept by the compression-rate and ratio estimates per new zlib attempt.
        public var attemptDecay = 0.75
        /// Raw bytes per second one encoder is assumed to deflate before any was measured.
        public var priorCompressRate = 100e6
        /// Expected wire/raw ratio before any attempt was seen.
        public var priorRatio = 0.5

        public init() {}
    }

    public let tuning: Tuning
    /// Encoders working in parallel (the pipeline's window, at most the core count).
    public var encoders: Int

    private var linkBytes = 0.0
    private var linkSeconds = 0.0
    private var observedBytes = 0.0
    private var zlibBytes: Double
    private var zlibSeconds: Double
    private var ratioEstimate: Double
    private var sinceProbe = 0
    private var probeNext = false
    private var credit = 0.0
    private var lastTransport: TransportSample?
    private var receiverShareEstimate: Double?
    private var deliveryRateEstimate: Double?

    public init(encoders: Int, tuning: Tuning = Tuning()) {
        self.tuning = tuning
        self.encoders = max(1, encoders)
        // The prior counts as one 256 KiB attempt, so the first real measurement dominates.
        zlibBytes = 262_144
        zlibSeconds = 262_144 / tuning.priorCompressRate
        ratioEstimate = tuning.priorRatio
    }

    /// Wire bytes per second the link drains: the kernel's delivery rate when known, else the
    /// writer's own timing once `trustBytes` have been observed; nil before.
    public var linkRate: Double? {
        if let deliveryRateEstimate { return deliveryRateEstimate }
        guard observedBytes >= Double(tuning.trustBytes) else { return nil }
        return linkSeconds > 0 ? linkBytes / linkSeconds : .infinity
    }

    /// Raw bytes per second all encoders together deflate.
    public var compressRate: Double { zlibBytes / zlibSeconds * Double(encoders) }

    /// Expected wire/raw ratio of the next zlib attempt.
    public var expectedRatio: Double { ratioEstimate }

    /// Share of recent time the receiver's window held the sender back; nil without transport samples.
    public var receiverLimitedShare: Double? { receiverShareEstimate }

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

    /// The writer handed `bytes` to the socket, which took `seconds` (including any wait for
    /// the socket to become writable).
    public mutating func recordSend(bytes: Int, seconds: Double) {
        guard bytes > 0 else { return }
        let keep = pow(0.5, Double(bytes) / Double(tuning.linkHalfLife))
        linkBytes = linkBytes * keep + Double(bytes)
        linkSeconds = linkSeconds * keep + max(0, seconds)
        observedBytes = min(observedBytes + Double(bytes), 1e15)
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
        zlibSeconds = zlibSeconds * a + report.zlibSeconds
    }

    /// Whether the next chunk should be tried with zlib.
    public mutating func shouldCompress() -> Bool {
        let probe = probeNext
        probeNext = false
        if let share = receiverShareEstimate, share > tuning.receiverLimitedShare {
            return false
        }
        let capacity = compressRate
        let factor = deliveryRateEstimate == nil ? tuning.fastLinkFactor : tuning.fastLinkFactorWithTransport
        if let link = linkRate, link >= factor * capacity {
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
        guard let link = linkRate else { return true }
        let fraction = min(1, capacity / (link + capacity * (1 - ratioEstimate)))
        credit += fraction
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
                stream.next_out = destination.baseAddress!.assumingMemoryBound(to: Bytef.self)
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
