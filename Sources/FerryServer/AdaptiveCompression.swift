import FerryFiles
import FerryProtocol
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The `--compress auto` policy: decides, chunk by chunk, whether compressing pays on this link,
/// with which codec and at which level (`decide`).
///
/// The codec is zstd when the peer decodes it (it compresses text several times faster than
/// zlib at a better ratio, and is cheaper to decode), else zlib. Compressing trades CPU time for
/// fewer bytes on the wire. That pays only when the network, not the CPU, is the bottleneck:
/// when the sender's writes wait for the socket to drain while cores could be compressing. On
/// loopback or a fast LAN the socket drains faster than the encoders can fill it, and
/// compressing would slow both ends down.
///
/// What the controller observes, all decaying so that it follows change:
/// - the *network pressure*: the recent share of chunks written while the socket's send buffer
///   was filling up (a write was held back by the socket within the last 1.5 MiB written): while
///   that happens the link, not the encoders, sets the pace;
/// - the link rate `D`: wire bytes per second actually written over about the last few MiB, by
///   the wall clock (it never overestimates the link; it is the link's rate while the network
///   is the bottleneck);
/// - the compression rate `C·n`, per codec: raw bytes per second one encoder compresses
///   (converted to the codec's base level, `relativeSpeed`), times the encoders working in parallel;
/// - the ratio `r`: wire/raw bytes of recent attempts (1 for a chunk that did not shrink);
/// - the server's total rate over all its connections (`recordServerRate`): the encoders serve
///   them all, so fifty connections that each look slow can together outrun the encoders;
///
/// It decides, when a chunk's encoding is started:
/// 1. `D`, or the server's total rate, is at least `2·C·n`: the data leaves twice as fast as the
///    encoders could produce it at the base level: **store** (this keeps loopback, where client and server share the CPU,
///    and many clients at once, stored);
/// 2. `r > 0.9` (the data keeps failing to shrink): **store**, but probe one chunk in 16 and the
///    first chunk of every multi-chunk stream, so compressible data is noticed again;
/// 2b. other connections are busy too (the server's total rate is more than twice `D`) and that
///    total is at least `savingBound = (1 - r)·C·n`: the encoders serve every connection, and the
///    encoder time a chunk costs would exceed the sending time it saves, so compressing would
///    only make the CPU the bottleneck: **store** (wall-clock `C` falls when the machine's CPU is
///    saturated, as with fifty clients on loopback). A connection alone is not held to this
///    bound: while the encoders have CPU to spare, mixing compressed chunks into a link that is
///    nearly as fast as they are still raises the delivered rate (1 Gbit/s text, below);
/// 3. link not known yet (less than 4 MiB observed): **compress** (a slow link is where a wrong
///    guess costs most; on a fast one the first MiB or so costs a little CPU);
/// 4. otherwise, while the network is clearly the bottleneck (pressure at least `levelPressure`),
///    or the level chosen is above 1, compress every chunk: a stored chunk of text costs the link
///    about five compressed ones, so even 1% stored would add 5% to the bytes of a slow link.
///    Likewise while the encoders at the base level could feed the link twice over (`mixFactor`):
///    then a dip in the pressure is a stall of a busy machine, not encoders too slow for the link.
///    Else compress the share of chunks given by the network pressure, spread evenly: near the
///    crossover compressing too much lets the buffer drain, the pressure falls and stored chunks
///    mix in, so that the link and the encoders are both busy.
///
/// The level (`level(for:)`) climbs the codec's `ladder`: from its base level (1) to a higher
/// rung while the network is the bottleneck (pressure above 0.9) and the encoders at the base
/// level (by CPU time, `capacity`) could feed the link the rung's `headroom` times over (zlib: 3 at 1.75×, 6 at 4×, a
/// 100 Mbit/s link and a few cores): spare CPU buys a better ratio. If the higher level makes
/// the encoders the bottleneck, the pressure drops and the level with it, to the rung the
/// encoders' wall-clock speed (what they deliver on the loaded machine) can feed. Where even the base
/// level cannot keep up with the link (its capacity below `keepUpMargin` (1.3) times the raw
/// rate the link carries), zstd drops to the slowest of its fast (negative) levels that can, or
/// its fastest: every chunk compressed a
/// little beats a mix of stored and compressed ones.
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
        /// Weight kept by the compression-rate and ratio estimates per new attempt.
        public var attemptDecay = 0.75
        /// Raw bytes per second one encoder is assumed to compress at the codec's base level
        /// before any was measured (log text; zstd 1 is about twice as fast as zlib 1).
        public var priorCompressRate: [ChunkCodec: Double] = [.zlib: 100e6, .zstd: 200e6]
        /// Expected wire/raw ratio before any attempt was seen.
        public var priorRatio = 0.5
        /// A higher rung of the ladder is climbed only while the network is the bottleneck:
        /// pressure above this.
        public var levelPressure = 0.9
        /// A level counts as keeping up with the link when the encoders at it could feed the
        /// link this many times over (the rungs' headrooms keep the same margin): level 1 gives
        /// way to a fast level below it.
        public var keepUpMargin = 1.3
        /// Stored chunks never mix in while the encoders at the base level (by the wall clock)
        /// could feed the link this many times over.
        public var mixFactor = 2.0

        public init() {}
    }

    /// A level `auto` may choose for a codec.
    public struct Rung: Sendable, Hashable {
        public var level: Int32
        /// Chosen above the base level when the encoders at the base level could feed the link
        /// this many times over (and the network is the bottleneck). Unused for fast levels.
        /// (Its level's speed times the headroom is 1.3 to 1.7: the encoders keep a margin over
        /// what the link carries.)
        public var headroom: Double

        public init(level: Int32, headroom: Double) {
            self.level = level
            self.headroom = headroom
        }
    }

    /// The levels `auto` chooses among, ascending; the base level is 1. Fast (negative) levels
    /// are chosen when the base level cannot keep up with the link, higher ones when it could
    /// feed the link `headroom` times over.
    public static func ladder(for codec: ChunkCodec) -> [Rung] {
        switch codec {
        case .stored: return [Rung(level: 1, headroom: 0)]
        case .zlib: return [Rung(level: 1, headroom: 0), Rung(level: 3, headroom: 1.75), Rung(level: 6, headroom: 4)]
        case .zstd:
            // Levels 2 and 3 gain almost nothing over 1 on chunks of text; 4, 6 and 9 do. At
            // 100 Mbit/s, beating rsync -z (whose zstd streams a whole file) takes level 6.
            return [Rung(level: -4, headroom: 0), Rung(level: -1, headroom: 0), Rung(level: 1, headroom: 0),
                    Rung(level: 4, headroom: 3.5), Rung(level: 6, headroom: 4.9), Rung(level: 9, headroom: 9.5)]
        }
    }

    /// How fast a codec compresses at a level, as a multiple of its speed at level 1, roughly
    /// (256 KiB chunks of the benchmark's log text: `zstd -bN -B256K` of zstd 1.5.4 and Python's
    /// zlib per chunk, docs/BENCHMARKS.md, "Codecs"); used to convert measured speeds to
    /// base-level terms and back. An estimate too high for a level makes the encoders look
    /// slower than they are while it is in use, and the ladder stops below where it should.
    public static func relativeSpeed(_ compression: ChunkCompression) -> Double {
        switch (compression.codec, compression.level) {
        case (.zlib, ...1): return 1
        case (.zlib, 2...3): return 0.9
        case (.zlib, 4...5): return 0.6
        case (.zlib, 6): return 0.42
        case (.zlib, _): return 0.24
        case (.zstd, ...(-4)): return 1.3
        case (.zstd, ...(-1)): return 1.1
        case (.zstd, ...2): return 1
        case (.zstd, 3): return 0.85
        case (.zstd, 4): return 0.38
        case (.zstd, 5): return 0.3
        case (.zstd, 6): return 0.27
        case (.zstd, 7): return 0.22
        case (.zstd, 8): return 0.17
        case (.zstd, 9): return 0.14
        case (.zstd, 10...12): return 0.07
        case (.zstd, _): return 0.02
        case (.stored, _): return 1
        }
    }

    /// The codec `auto` compresses with for a peer that decodes `codecs`.
    public static func codec(for codecs: Set<ChunkCodec>) -> ChunkCodec {
        codecs.contains(.zstd) ? .zstd : .zlib
    }

    public let tuning: Tuning
    /// Encoders working in parallel (the pipeline's window, at most the core count).
    public var encoders: Int

    /// Raw bytes and seconds of recent attempts of one codec, in base-level terms.
    private struct Speed: Sendable {
        var bytes: Double
        var seconds: Double
    }

    private var observedBytes = 0.0
    private var deliveredBytes = 0.0
    private var deliveredSeconds = 0.0
    /// The same, counting only chunks written while the network was the bottleneck: the
    /// link's own rate, which the delivered rate understates while the encoders fall behind.
    private var boundBytes = 0.0
    private var boundSeconds = 0.0
    private var boundObserved = 0.0
    private var speeds: [ChunkCodec: Speed] = [:]
    /// The same attempts timed by the encoding thread's CPU clock.
    private var cpuSpeeds: [ChunkCodec: Speed] = [:]
    private var ratioEstimate: Double
    private var pressure = 1.0
    private var bytesSinceBlocked = 0.0
    private var sinceProbe = 0
    private var probeNext = false
    private var credit = 0.0
    private var serverRateEstimate: Double?

    public init(encoders: Int, tuning: Tuning = Tuning()) {
        self.tuning = tuning
        self.encoders = max(1, encoders)
        ratioEstimate = tuning.priorRatio
    }

    /// Wire bytes per second the link drains: the wall-clock throughput once `trustBytes` have
    /// been observed; nil before.
    public var linkRate: Double? { throughput }

    /// Raw bytes per second all encoders together compress with `codec` at its base level, by
    /// the wall clock: what they deliver on this machine as loaded as it is (the store/compress
    /// decisions use it: on a saturated machine compressing costs more than it seems).
    public func compressRate(_ codec: ChunkCodec) -> Double {
        let speed = speeds[codec] ?? prior(codec)
        return speed.bytes / speed.seconds * Double(encoders)
    }

    /// Raw bytes per second all encoders together could compress with `codec` at its base level,
    /// by CPU time (the wall-clock `compressRate` until CPU times were reported). The level is
    /// chosen by it: with more chunks in flight than cores, each chunk's wall time counts the
    /// others' turns too (4 chunks on 2 cores: twice the CPU time), which made the encoders
    /// look 3–4 times slower than they are on a 100 Mbit/s link and kept the level low.
    public func capacity(_ codec: ChunkCodec) -> Double {
        guard let speed = cpuSpeeds[codec], speed.seconds > 0 else { return compressRate(codec) }
        return speed.bytes / speed.seconds * Double(encoders)
    }

    /// What is assumed of a codec before it was measured: one 256 KiB attempt at the prior
    /// speed, so that the first real measurement dominates.
    private func prior(_ codec: ChunkCodec) -> Speed {
        let rate = tuning.priorCompressRate[codec] ?? tuning.priorCompressRate[.zlib] ?? 100e6
        return Speed(bytes: 262_144, seconds: 262_144 / rate)
    }

    /// Expected wire/raw ratio of the next attempt.
    public var expectedRatio: Double { ratioEstimate }

    /// Recent share of chunks written while the socket's send buffer kept filling up.
    public var networkPressure: Double { pressure }

    /// Wire bytes per second actually written, by the wall clock (recent chunks); nil until
    /// `trustBytes` have been written.
    public var throughput: Double? {
        guard observedBytes >= Double(tuning.trustBytes) else { return nil }
        return deliveredSeconds > 0 ? deliveredBytes / deliveredSeconds : .infinity
    }

    /// Wire bytes per second the link carried while it was the bottleneck (chunks written
    /// while the send buffer kept filling); nil until `trustBytes` of those were written.
    public var linkCapacity: Double? {
        guard boundObserved >= Double(tuning.trustBytes), boundSeconds > 0 else { return nil }
        return boundBytes / boundSeconds
    }

    /// The level for chunks compressed with `codec`: a rung of its `ladder`.
    public func level(for codec: ChunkCodec) -> Int32 {
        let ladder = Self.ladder(for: codec)
        guard let needed = rawLinkRate else { return 1 }
        let base = capacity(codec)
        let fast = ladder.filter { $0.level < 1 }
        let keepUp = tuning.keepUpMargin * needed
        if base < keepUp, let fastest = fast.first {
            // The slowest fast level that keeps up with the link, else the fastest there is.
            return fast.last { rung in
                ChunkCompression(codec: codec, level: rung.level).map { base * Self.relativeSpeed($0) >= keepUp } ?? false
            }?.level ?? fastest.level
        }
        // While the network is clearly the bottleneck, the highest rung the encoders' CPU time
        // says they can feed. When the send buffer drains now and then, the encoders fell
        // behind: the rung that what they deliver by the wall clock (on this machine, as loaded
        // as it is) can feed — a step down, usually not all the way to level 1, whose chunks
        // cost a slow link a fifth more.
        let delivering = pressure >= tuning.levelPressure ? base : min(base, compressRate(codec))
        return ladder.last { $0.level >= 1 && delivering >= $0.headroom * needed }?.level ?? 1
    }

    /// Whether the encoders at the base level, by the wall clock, could feed the link at least
    /// `mixFactor` times the raw bytes it carries (at its rate while it was the bottleneck, if
    /// that is more than what it delivers now).
    public func encodersFarAhead(_ codec: ChunkCodec) -> Bool {
        guard let needed = rawLinkRate else { return false }
        return compressRate(codec) >= tuning.mixFactor * needed
    }

    /// Raw bytes per second the link carries at the current ratio; nil until its rate is known.
    /// Its rate as seen while it was the bottleneck, if that is more than what it delivers:
    /// while the encoders fall behind (1 Gbit/s text on two busy cores), the delivered rate
    /// falls with them and would make level 1 look fast enough for a link it cannot keep busy.
    private var rawLinkRate: Double? {
        guard let delivered = linkRate, delivered > 0 else { return nil }
        return max(delivered, linkCapacity ?? 0) / max(ratioEstimate, 0.05)
    }

    /// The rate (wire bytes per second, of this link or of the whole server) from which
    /// compressing with `codec` costs more encoder time than it saves link time: per chunk of
    /// `R` raw bytes the encoders spend `R / compressRate` seconds (they work in parallel, for
    /// all connections) to save `(1 - ratio) · R / rate` seconds of sending. Measured encoder
    /// speeds are wall-clock, so a machine whose CPU is saturated (fifty clients on loopback)
    /// shows slow encoders and a low bound.
    public func savingBound(_ codec: ChunkCodec) -> Double {
        (1 - min(max(ratioEstimate, 0), 1)) * compressRate(codec) * tuning.savingFactor
    }

    /// Wire bytes per second the whole server wrote recently (all connections); nil when unknown.
    public var serverRate: Double? { serverRateEstimate }

    /// The server's total rate over all its connections, measured just now.
    public mutating func recordServerRate(_ bytesPerSecond: Double) {
        serverRateEstimate = max(0, bytesPerSecond)
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
        if networkBound > 0 {
            boundBytes = boundBytes * keep + Double(wireBytes)
            boundSeconds = boundSeconds * keep + max(0, intervalSeconds)
            boundObserved = min(boundObserved + Double(wireBytes), 1e15)
        }
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
        guard let compression = report.compression, report.codecSeconds > 0, report.rawBytes > 0 else { return }
        let a = tuning.attemptDecay
        var speed = speeds[compression.codec] ?? prior(compression.codec)
        speed.bytes = speed.bytes * a + Double(report.rawBytes)
        // In base-level terms: a zlib-6 chunk that took 4 ms counts as a zlib-1 chunk of 1.7 ms.
        speed.seconds = speed.seconds * a + report.codecSeconds * Self.relativeSpeed(compression)
        speeds[compression.codec] = speed
        if let cpu = report.codecCPUSeconds, cpu > 0 {
            var cpuSpeed = cpuSpeeds[compression.codec] ?? Speed(bytes: 0, seconds: 0)
            cpuSpeed.bytes = cpuSpeed.bytes * a + Double(report.rawBytes)
            cpuSpeed.seconds = cpuSpeed.seconds * a + cpu * Self.relativeSpeed(compression)
            cpuSpeeds[compression.codec] = cpuSpeed
        }
    }

    /// The decision for the next chunk of a stream to a peer that decodes `codecs`: store it,
    /// or test a sample and compress it with `codec(for:)` at `level(for:)`.
    public mutating func decide(peerCodecs codecs: Set<ChunkCodec>) -> ChunkDecision {
        let codec = Self.codec(for: codecs)
        guard shouldCompress(codec), let compression = ChunkCompression(codec: codec, level: level(for: codec)) else {
            return .store
        }
        return .sampleThenCompress(compression)
    }

    /// Whether the next chunk should be tried with `codec` (at `level(for:)`).
    public mutating func shouldCompress(_ codec: ChunkCodec = .zlib) -> Bool {
        let probe = probeNext
        probeNext = false
        if let rate = [linkRate, serverRateEstimate].compactMap({ $0 }).max(), rate >= tuning.fastLinkFactor * compressRate(codec) {
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
        if let server = serverRateEstimate, server > tuning.sharedServerFactor * (linkRate ?? 0), server >= savingBound(codec) {
            return false
        }
        guard linkRate != nil else { return true }
        // Stored chunks mix in only where compressing at level 1 is all the encoders can do:
        // above it, a dip in the pressure is the encoders falling behind at a higher level, and
        // `level(for:)` steps down instead. Nor while the encoders at level 1 could feed the
        // link `mixFactor` times over: a dip in the pressure is then a moment's stall (on a
        // busy machine), not encoders too slow for the link, and stored text costs a slow link
        // five times its compressed bytes.
        credit += pressure >= tuning.levelPressure || level(for: codec) > 1 || encodersFarAhead(codec) ? 1 : pressure
        if credit >= 1 - 1e-9 {
            credit -= 1
            return true
        }
        return false
    }
}

