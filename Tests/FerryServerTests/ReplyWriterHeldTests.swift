@testable import FerryServer
import NIOCore
import XCTest

/// What a connection's writer holds back: small buffers copied together (fewer channel
/// writes), large ones passed on untouched, the bytes and their order always unchanged.
final class ReplyWriterHeldTests: XCTestCase {
    private let allocator = ByteBufferAllocator()

    private func buffer(_ count: Int, fill: UInt8) -> ByteBuffer {
        ByteBuffer(bytes: [UInt8](repeating: fill, count: count))
    }


    func testSmallBuffersAreMergedInOrderAndLargeOnesPassUntouched() {
        var held = ReplyWriter.Held()
        held.holding = true
        var expected: [UInt8] = []
        let large = buffer(ReplyWriter.copyLimit + 1, fill: 0xEE)
        var inputs: [ByteBuffer] = []
        // A file's reply (status line, chunk header, payload, trailer), then a large chunk, repeated.
        for i in 0..<40 {
            inputs += [buffer(20, fill: UInt8(i)), buffer(40, fill: 0xC0), buffer(7_000 + i, fill: 0xAA), buffer(70, fill: 0xE0)]
            if i % 10 == 9 { inputs.append(large) }
        }
        for b in inputs {
            held.append(contentsOf: [b], allocator: allocator)
            expected += b.readableBytesView
        }
        XCTAssertEqual(held.bytes, expected.count)
        let out = held.take()
        XCTAssertEqual(out.flatMap { Array($0.readableBytesView) }, expected, "the bytes and their order are kept")
        XCTAssertLessThan(out.count, inputs.count / 10, "160 small buffers become a few merged ones")
        for b in out where b.readableBytes > ReplyWriter.copyLimit && b.readableBytesView.allSatisfy({ $0 == 0xEE }) {
            XCTAssertEqual(b.readableAddress, large.readableAddress, "a large buffer is written as it is, not copied")
        }
        XCTAssertTrue(out.allSatisfy { $0.readableBytes <= ReplyWriter.mergedSize || $0.readableBytes == large.readableBytes },
                      "no merged buffer outgrows \(ReplyWriter.mergedSize) bytes")
        XCTAssertEqual(held.bytes, 0)
        XCTAssertTrue(held.take().isEmpty, "taking empties what is held")
    }

    func testEmptyBuffersAddNothing() {
        var held = ReplyWriter.Held()
        held.append(contentsOf: [ByteBuffer(), buffer(3, fill: 1), ByteBuffer()], allocator: allocator)
        XCTAssertEqual(held.take().flatMap { Array($0.readableBytesView) }, [1, 1, 1])
    }

    /// Not holding, a write's small buffers become one buffer of their size: a chunk header
    /// before a large chunk does not take a 64 KiB buffer.
    func testAWriteThatIsNotHeldMergesIntoABufferOfItsOwnSize() {
        var held = ReplyWriter.Held()
        let header = buffer(60, fill: 1), large = buffer(256 * 1024, fill: 2), trailer = buffer(70, fill: 3)
        held.append(contentsOf: [header, large, trailer], allocator: allocator)
        let out = held.take()
        XCTAssertEqual(out.map(\.readableBytes), [60, 256 * 1024, 70])
        XCTAssertLessThan(out[0].capacity, 1024, "sized for this write's small buffers (130 bytes), not \(ReplyWriter.mergedSize)")
        XCTAssertEqual(out[1].readableAddress, large.readableAddress)
        held.append(contentsOf: [buffer(20, fill: 4), buffer(40, fill: 5), buffer(9_000, fill: 6), buffer(70, fill: 7)], allocator: allocator)
        let one = held.take()
        XCTAssertEqual(one.count, 1, "a small file's reply is one buffer")
        XCTAssertEqual(one.first?.readableBytes, 9_130)
    }
}
