import FerryFiles
import FerryProtocol
import FerryServer
import FerryTestSupport
import NIOCore
import XCTest

/// `ChunkBufferPool` reuses a buffer only once nobody else holds it, and `ChunkEncoder` deflates
/// into a given buffer in place.
final class ChunkBufferPoolTests: XCTestCase {

    private func storageAddress(_ buffer: inout ByteBuffer) -> UInt? {
        buffer.withUnsafeMutableWritableBytes { $0.baseAddress.map { UInt(bitPattern: $0) } }
    }

    func testReusesABufferOnlyWhenUniquelyReferenced() {
        let pool = ChunkBufferPool(limit: 4)
        var first = pool.take(capacity: 256 * 1024)
        first.writeBytes([UInt8](repeating: 7, count: 1000))
        let firstAddress = first.readableAddress
        // Still referenced (as by a channel that has not written it yet): not handed out again.
        let inFlight = first
        pool.recycle(first)
        first = ByteBuffer()
        var second = pool.take(capacity: 256 * 1024)
        XCTAssertNotEqual(storageAddress(&second), firstAddress)
        XCTAssertEqual(pool.count, 1)
        XCTAssertEqual(inFlight.readableBytes, 1000, "the in-flight copy is untouched")
        // Once the other holder lets go, the same storage comes back, empty.
        _ = consume inFlight
        var third = pool.take(capacity: 200 * 1024)
        XCTAssertEqual(third.readableBytes, 0)
        XCTAssertGreaterThanOrEqual(third.capacity, 256 * 1024)
        XCTAssertEqual(storageAddress(&third), firstAddress)
        XCTAssertEqual(pool.count, 0)
        _ = second
    }

    func testBoundsAndSmallBuffers() {
        let pool = ChunkBufferPool(limit: 2)
        for _ in 0..<5 { pool.recycle(ByteBufferAllocator().buffer(capacity: 256 * 1024)) }
        XCTAssertEqual(pool.count, 2, "at most `limit` buffers are kept")
        pool.recycle(ByteBufferAllocator().buffer(capacity: 1024))
        XCTAssertEqual(pool.count, 2, "small buffers are not kept")
        let small = pool.take(capacity: 1000)
        XCTAssertGreaterThanOrEqual(small.capacity, 1000)
        XCTAssertEqual(pool.count, 2, "a small request does not use a pooled chunk buffer")
        // A much larger buffer is not used for a smaller chunk, and vice versa.
        _ = pool.take(capacity: 2 * 1024 * 1024)
        XCTAssertEqual(pool.count, 2)
        _ = pool.take(capacity: 256 * 1024)
        XCTAssertEqual(pool.count, 1)
    }

    func testEncoderDeflatesIntoTheGivenBuffer() throws {
        let text = Array(String(repeating: "ferry moves chunks of text; ", count: 10_000).utf8.prefix(256 * 1024))
        var raw = ByteBufferAllocator().buffer(capacity: text.count)
        raw.writeBytes(text)
        var output: ByteBuffer? = ByteBufferAllocator().buffer(capacity: 256 * 1024)
        if var o = output { o.writeString("stale bytes"); output = o }
        let given = output.flatMap { $0.readableAddress }
        var encoder = ChunkEncoder(.compress(.zlib(1)))
        let chunk = encoder.encode(raw, offset: 0, allocator: ByteBufferAllocator(), output: &output)
        XCTAssertEqual(chunk.header.codec, .zlib)
        XCTAssertNil(output, "the buffer became the wire bytes")
        XCTAssertEqual(chunk.wire.readableAddress, given, "deflated in place, no new allocation")
        XCTAssertEqual(try ChunkDecoder.decode(header: chunk.header, wire: chunk.wire), text)

        // Incompressible: stored, and the output buffer is handed back for reuse.
        var rng = SplitMix64(seed: 3)
        var random = ByteBufferAllocator().buffer(capacity: 256 * 1024)
        random.writeBytes(rng.bytes(256 * 1024))
        var unused: ByteBuffer? = ByteBufferAllocator().buffer(capacity: 256 * 1024)
        let stored = encoder.encode(random, offset: 0, allocator: ByteBufferAllocator(), output: &unused)
        XCTAssertEqual(stored.header.codec, .stored)
        XCTAssertNotNil(unused)
        XCTAssertEqual(try ChunkDecoder.decode(header: stored.header, wire: stored.wire), rng2Bytes())
    }

    private func rng2Bytes() -> [UInt8] {
        var rng = SplitMix64(seed: 3)
        return rng.bytes(256 * 1024)
    }
}
