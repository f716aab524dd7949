import FerryFiles
import NIOConcurrencyHelpers

/// What `auto` compression has learned about the server's links, kept between streams so that
/// the next file, and a run of small files of one chunk each, start from it instead of from
/// nothing; with the rate of all connections together and the chunk buffers they share. Each
/// `FerryServer` owns one; a connection may keep its own instead.
final class CompressionMemory: Sendable {
    private let state = NIOLockedValueBox<AdaptiveCompression?>(nil)
    /// All connections' writes together.
    let serverRate = ServerRateMeter()
    /// Chunk buffers shared by all of the server's streams.
    let buffers = ChunkBufferPool()

    init() {}

    func load() -> AdaptiveCompression {
        state.withLockedValue { $0 } ?? AdaptiveCompression(encoders: ChunkPipeline.encoders)
    }

    func store(_ controller: AdaptiveCompression) {
        state.withLockedValue { $0 = controller }
    }
}

/// The rate of all of a server's chunk writes together, over windows of at least 250 ms.
final class ServerRateMeter: Sendable {
    private struct State {
        var start = ContinuousClock.now
        var bytes = 0
        var rate: Double?
    }

    private let state = NIOLockedValueBox(State())

    init() {}

    /// Counts `bytes` just written by any connection; returns the rate of the last full window.
    func add(_ bytes: Int) -> Double? {
        state.withLockedValue { s in
            s.bytes += bytes
            let now = ContinuousClock.now
            let elapsed = (now - s.start).seconds
            if elapsed >= 0.25 {
                s.rate = Double(s.bytes) / elapsed
                s.bytes = 0
                s.start = now
            }
            return s.rate
        }
    }
}
