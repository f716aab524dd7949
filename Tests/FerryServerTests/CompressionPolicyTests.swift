import FerryFiles
import FerryProtocol
import NIOCore
@testable import FerryServer
import XCTest

/// `--compress` values (`CompressionMode`) and the step that turns a mode into each chunk's
/// decision for one peer (`ChunkCompressionPolicy`): zstd only for a peer that decodes it.
final class CompressionPolicyTests: XCTestCase {
    private let zstdPeer: Set<ChunkCodec> = [.stored, .zlib, .zstd]

    func testParsesEveryForm() throws {
        let cases: [(String, CompressionMode)] = [
            ("auto", .auto), ("off", .off), ("0", .off), ("1", .fixed(.zlib(1))), ("9", .fixed(.zlib(9))),
            ("zlib:6", .fixed(.zlib(6))), ("zstd:1", .fixed(.zstd(1))), ("zstd:19", .fixed(.zstd(19))),
            ("zstd:-7", .fixed(.zstd(-7))), ("zstd:-1", .fixed(.zstd(-1))),
        ]
        for (text, mode) in cases {
            XCTAssertEqual(try CompressionMode(parsing: text), mode, text)
        }
        for mode in cases.map(\.1) {
            XCTAssertEqual(try CompressionMode(parsing: mode.description), mode, "\(mode) survives its text form")
        }
        XCTAssertEqual(CompressionMode.fixed(.zstd(3)).description, "zstd:3")
    }

    func testRefusesWhatNoCodecAccepts() {
        for text in ["", "10", "-1", "zlib:0", "zlib:10", "zstd:20", "zstd:-8", "zstd:", ":3", "zstd", "lz4:1",
                     "auto:1", "zlib:1:2", "ZSTD:3", " 3", "zstd: 3"] {
            XCTAssertThrowsError(try CompressionMode(parsing: text), "'\(text)'") { error in
                let message = "\(error)"
                XCTAssertTrue(message.contains("zstd:N") && message.contains("zlib:N"), message)
            }
        }
    }

    func testOffAlwaysStores() {
        var controller = AdaptiveCompression(encoders: 2)
        for peer in [ChunkCodec.baseline, zstdPeer] {
            XCTAssertEqual(ChunkCompressionPolicy(mode: .off, peerCodecs: peer).decide(&controller), .store)
        }
    }

    func testFixedZstdGoesOnlyToPeersThatDecodeIt() {
        var controller = AdaptiveCompression(encoders: 2)
        let expected: [(ChunkCompression, ChunkCompression)] = [
            (.zstd(-7), .zlib(1)), (.zstd(1), .zlib(1)), (.zstd(3), .zlib(1)), (.zstd(4), .zlib(6)), (.zstd(9), .zlib(6)),
            (.zstd(10), .zlib(9)), (.zstd(19), .zlib(9)), (.zlib(4), .zlib(4)),
        ]
        for (fixed, fallback) in expected {
            let policy = ChunkCompressionPolicy(mode: .fixed(fixed), peerCodecs: ChunkCodec.baseline)
            XCTAssertEqual(policy.decide(&controller), .compress(fallback), "\(fixed) to a 1.0 peer")
            let modern = ChunkCompressionPolicy(mode: .fixed(fixed), peerCodecs: zstdPeer)
            XCTAssertEqual(modern.decide(&controller), .compress(fixed), "\(fixed) to a peer that decodes zstd")
        }
        XCTAssertEqual(ChunkCompressionPolicy(mode: .fixed(.zstd(3))).peerCodecs, ChunkCodec.baseline, "the default is a 1.0 peer")
    }

    func testAutoAsksTheControllerForThePeersCodec() {
        var controller = AdaptiveCompression(encoders: 2)
        let old = ChunkCompressionPolicy(mode: .auto, peerCodecs: ChunkCodec.baseline)
        let new = ChunkCompressionPolicy(mode: .auto, peerCodecs: zstdPeer)
        XCTAssertTrue(old.adapts && new.adapts)
        XCTAssertFalse(ChunkCompressionPolicy(mode: .fixed(.zlib(1))).adapts)
        XCTAssertEqual(old.decide(&controller), .sampleThenCompress(.zlib(1)))
        XCTAssertEqual(new.decide(&controller), .sampleThenCompress(.zstd(1)))
    }

    /// What a 1.0 client would be sent: whatever the mode, no chunk of it is zstd.
    func testA10PeerNeverGetsZstdWhateverTheMode() throws {
        let random = ByteBuffer(bytes: (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) })
        let text = ByteBuffer(string: String(repeating: "ferry sends chunks of log text to old clients too\n", count: 6000))
        for mode in [CompressionMode.auto, .fixed(.zstd(1)), .fixed(.zstd(19)), .fixed(.zstd(-7)), .off] {
            var controller = AdaptiveCompression(encoders: 2)
            let policy = ChunkCompressionPolicy(mode: mode, peerCodecs: ChunkCodec.baseline)
            for raw in [text, random] {
                var encoder = ChunkEncoder(policy.decide(&controller))
                let chunk = encoder.encode(raw, offset: 0, allocator: ByteBufferAllocator())
                XCTAssertTrue(ChunkCodec.baseline.contains(chunk.header.codec), "\(mode): \(chunk.header.codec)")
                XCTAssertEqual(try ChunkDecoder.decode(header: chunk.header, wire: chunk.wire), Array(raw.readableBytesView))
            }
            let modern = ChunkCompressionPolicy(mode: mode, peerCodecs: zstdPeer)
            var encoder = ChunkEncoder(modern.decide(&controller))
            let chunk = encoder.encode(text, offset: 0, allocator: ByteBufferAllocator())
            XCTAssertEqual(chunk.header.codec, mode == .off ? ChunkCodec.stored : .zstd, "\(mode) to a peer that decodes zstd")
        }
    }

    /// `auto` stores for a client on this machine; a fixed mode is what the person asked for.
    func testAutoStoresForALoopbackPeerAndFixedModesDoNot() throws {
        var controller = AdaptiveCompression(encoders: 2)  // link unknown: it would compress
        XCTAssertNotEqual(ChunkCompressionPolicy(mode: .auto, peerCodecs: zstdPeer).decide(&controller), .store)
        XCTAssertEqual(ChunkCompressionPolicy(mode: .auto, peerCodecs: zstdPeer, localPeer: true).decide(&controller), .store)
        let fixed = ChunkCompressionPolicy(mode: .fixed(.zstd(3)), peerCodecs: zstdPeer, localPeer: true)
        XCTAssertEqual(fixed.decide(&controller), .compress(.zstd(3)))

        for local in ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"] {
            XCTAssertTrue(ConnectionHandler.isLoopback(try SocketAddress(ipAddress: local, port: 7446)), local)
        }
        for remote in ["10.213.90.2", "192.168.1.20", "128.0.0.1", "::2", "fe80::1", "::ffff:10.0.0.1"] {
            XCTAssertFalse(ConnectionHandler.isLoopback(try SocketAddress(ipAddress: remote, port: 7446)), remote)
        }
    }
}
