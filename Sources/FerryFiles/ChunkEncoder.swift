import FerryProtocol
import NIOCore

/// What to do with a chunk: the encoder's instruction, decided per chunk by the server's
/// compression policy (or once for every chunk an encoder sees, in tests and tools).
public enum ChunkDecision: Sendable, Hashable {
    /// Send it stored without trying a codec.
    case store
    /// Compress the whole chunk. An encoder that saw the previous chunk fail to shrink tests a
    /// sample first.
    case compress(ChunkCompression)
    /// Compress a 16 KiB sample first and the whole chunk only if the sample shrinks. What
    /// `auto` asks for: parallel encoders share no history, and on incompressible data the
    /// sample costs ~6% of a whole attempt.
    case sampleThenCompress(ChunkCompression)

    /// The codec and level it tries; nil for `store`.
    public var compression: ChunkCompression? {
        switch self {
        case .store: return nil
        case .compress(let c), .sampleThenCompress(let c): return c
        }
    }
}

/// What the encoder did with one chunk: the evidence the server's `auto` policy learns from.
public struct ChunkEncodeReport: Sendable, Hashable {
    public enum Attempt: Sendable, Hashable {
        /// Sent stored without trying a codec.
        case none
        /// A small sample did not shrink, so the chunk was not tried (sent stored).
        case sampleRejected
        /// The whole chunk was compressed but saved less than `ChunkEncoder.minimumSaving` (sent stored).
        case rejected
        /// Sent compressed.
        case compressed
    }

    public var attempt: Attempt
    public var rawBytes: Int
    public var wireBytes: Int
    /// Seconds spent inside the codec for this chunk (sample and whole-chunk attempt), by the
    /// wall clock: longer than the CPU time when other work competes for the cores.
    public var codecSeconds: Double
    /// The CPU seconds of the same work (the encoding thread's clock); nil when not measured.
    public var codecCPUSeconds: Double?
    /// The codec and level tried; nil when none was.
    public var compression: ChunkCompression?

    public init(attempt: Attempt, rawBytes: Int, wireBytes: Int, codecSeconds: Double, codecCPUSeconds: Double? = nil,
                compression: ChunkCompression? = nil) {
        self.attempt = attempt
        self.rawBytes = rawBytes
        self.wireBytes = wireBytes
        self.codecSeconds = codecSeconds
        self.codecCPUSeconds = codecCPUSeconds
        self.compression = compression
    }
}

/// One encoded chunk: its header, the bytes to send and what it cost.
public struct EncodedChunk: Sendable {
    public var header: ChunkHeader
    /// For a stored chunk this is the raw buffer itself (no copy).
    public var wire: ByteBuffer
    public var report: ChunkEncodeReport
}

/// Turns raw chunk bytes into a header and wire bytes, as its `ChunkDecision` says. A chunk is
/// sent compressed only if that saves at least 3%; otherwise it is stored. It keeps a little
/// state so that a stream of incompressible data (media, archives) stops paying for whole
/// attempts: after a chunk fails to shrink, a cheap sample test guards the next one.
public struct ChunkEncoder: Sendable {
    public let decision: ChunkDecision
    /// A chunk is compressed only if it shrinks by at least this fraction.
    public static let minimumSaving = 0.03
    static let sampleSize = 16 * 1024

    private var lastWasIncompressible = false

    public init(_ decision: ChunkDecision) {
        self.decision = decision
    }

    /// Encodes one chunk (1...maxChunkRaw bytes); a stored chunk's wire is a copy of `raw`.
    public mutating func encode(raw: UnsafeRawBufferPointer, offset: Int64, allocator: ByteBufferAllocator) -> (ChunkHeader, ByteBuffer) {
        var buffer = allocator.buffer(capacity: raw.count)
        buffer.writeBytes(raw)
        let chunk = encode(buffer, offset: offset, allocator: allocator)
        return (chunk.header, chunk.wire)
    }

    /// Encodes one chunk held in a buffer and reports what it cost. A stored chunk's wire
    /// bytes are `raw` itself, so sending incompressible data copies nothing.
    public mutating func encode(_ raw: ByteBuffer, offset: Int64, allocator: ByteBufferAllocator) -> EncodedChunk {
        var output: ByteBuffer? = nil
        return encode(raw, offset: offset, allocator: allocator, output: &output)
    }

    /// Like `encode(_:offset:allocator:)`, but a compressed chunk is written into `output` when
    /// it holds a buffer (cleared first: a reused buffer spares a fresh allocation and its page
    /// faults). `output` is nil afterwards if its buffer became the chunk's wire bytes; otherwise
    /// it still holds it, for the caller to reuse.
    public mutating func encode(_ raw: ByteBuffer, offset: Int64, allocator: ByteBufferAllocator,
                                output: inout ByteBuffer?) -> EncodedChunk {
        raw.withUnsafeReadableBytes { bytes in
            let crc = CRC32.checksum(bytes)
            let (outcome, seconds, cpuSeconds) = attempt(bytes, allocator: allocator, output: &output)
            var header = ChunkHeader(offset: offset, rawLength: bytes.count, wireLength: bytes.count, codec: .stored, crc32: crc)
            var report = ChunkEncodeReport(attempt: .none, rawBytes: bytes.count, wireBytes: bytes.count, codecSeconds: seconds,
                                           codecCPUSeconds: cpuSeconds, compression: decision.compression)
            var wire = raw
            switch outcome {
            case .compressed(let compressed, let codec):
                header.codec = codec
                header.wireLength = compressed.readableBytes
                report.attempt = .compressed
                report.wireBytes = compressed.readableBytes
                wire = compressed
            case .notTried: report.attempt = .none
            case .sampleRejected: report.attempt = .sampleRejected
            case .rejected: report.attempt = .rejected
            }
            return EncodedChunk(header: header, wire: wire, report: report)
        }
    }

    private enum Outcome {
        case notTried, sampleRejected, rejected
        case compressed(ByteBuffer, ChunkCodec)
    }

    /// Tries the decision's codec; also returns the seconds spent in it, by the wall clock and
    /// in CPU time (nil without a thread CPU clock).
    private mutating func attempt(_ raw: UnsafeRawBufferPointer, allocator: ByteBufferAllocator,
                                  output: inout ByteBuffer?) -> (outcome: Outcome, seconds: Double, cpuSeconds: Double?) {
        guard let compression = decision.compression else { return (.notTried, 0, nil) }
        let start = ContinuousClock.now
        let cpuStart = POSIX.threadCPUSeconds()
        func elapsed(_ outcome: Outcome) -> (outcome: Outcome, seconds: Double, cpuSeconds: Double?) {
            let cpu = cpuStart.flatMap { start in POSIX.threadCPUSeconds().map { max(0, $0 - start) } }
            return (outcome, (ContinuousClock.now - start).seconds, cpu)
        }
        guard shouldTry(raw, compression) else {
            lastWasIncompressible = true
            return elapsed(.sampleRejected)
        }
        guard let wire = Self.compress(raw, compression, allocator: allocator, output: &output) else {
            lastWasIncompressible = true
            return elapsed(.rejected)
        }
        lastWasIncompressible = false
        return elapsed(.compressed(wire, compression.codec))
    }

    /// Whether the whole chunk is worth an attempt: with `sampleThenCompress`, or after a miss,
    /// a sample from its middle must shrink first.
    private func shouldTry(_ raw: UnsafeRawBufferPointer, _ compression: ChunkCompression) -> Bool {
        let samples: Bool
        if case .sampleThenCompress = decision { samples = true } else { samples = lastWasIncompressible }
        guard samples, raw.count > Self.sampleSize * 2 else { return true }
        let mid = raw.count / 2
        let sample = UnsafeRawBufferPointer(rebasing: raw[mid..<(mid + Self.sampleSize)])
        var none: ByteBuffer? = nil
        return Self.compress(sample, compression, allocator: ByteBufferAllocator(), output: &none) != nil
    }

    /// `raw` as one complete unit of the codec, or nil unless that saves `minimumSaving`. Written
    /// into the buffer `output` holds, if any (cleared; taken out of `output` on success, so that
    /// it is uniquely referenced and written in place).
    static func compress(_ raw: UnsafeRawBufferPointer, _ compression: ChunkCompression, allocator: ByteBufferAllocator,
                         output: inout ByteBuffer?) -> ByteBuffer? {
        let limit = Int(Double(raw.count) * (1 - minimumSaving))
        guard limit > 0, let compressor = ChunkCodecs.compressor(for: compression.codec) else { return nil }
        let reusing = output != nil
        // One variable holds the buffer (taken out of `output`), so it is written in place.
        var buffer = output.take() ?? allocator.buffer(capacity: limit)
        buffer.clear()
        var ok = false
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: limit) { out -> Int in
            guard let written = compressor.compress(raw, level: compression.level,
                                                    into: UnsafeMutableRawBufferPointer(rebasing: out[0..<limit])) else { return 0 }
            ok = true
            return written
        }
        if ok { return buffer }
        if reusing { output = buffer }  // not used: the caller may reuse it
        return nil
    }
}

extension Duration {
    /// The duration in seconds, as a Double.
    public var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) * 1e-18
    }
}
