import FerryProtocol
import NIOConcurrencyHelpers
import NIOCore

/// Chunk-sized buffers a server reuses for file reads and compressed output (`ChunkPipeline`), instead of a fresh
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
