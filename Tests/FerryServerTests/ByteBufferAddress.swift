import NIOCore

extension ByteBuffer {
    /// Where the readable bytes lie in memory: equal for two buffers that share storage (one
    /// is the other, not a copy of it).
    var readableAddress: UInt? {
        withUnsafeReadableBytes { $0.baseAddress.map { UInt(bitPattern: $0) } }
    }
}
