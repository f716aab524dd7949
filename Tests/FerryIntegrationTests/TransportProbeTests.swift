@testable import FerryServer
import FerryFiles
import NIOCore
import NIOPosix
import XCTest

/// `TransportProbe` (the `TCP_INFO` reader that lets `--compress auto` tell a slow receiver from a
/// slow link) and `ServerRateMeter` (all connections' writes together).
final class TransportProbeTests: XCTestCase {
    private func bytes(_ fill: (inout [UInt8]) -> Void) -> TransportProbe.TCPInfoBytes {
        var b = [UInt8](repeating: 0, count: 192)
        fill(&b)
        var raw: TransportProbe.TCPInfoBytes = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &raw) { $0.copyBytes(from: b) }
        return raw
    }

    private func put(_ value: UInt64, at offset: Int, in b: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { for (i, byte) in $0.enumerated() { b[offset + i] = byte } }
    }

    func testParsesTheFieldsAtTheKernelsOffsets() throws {
        let raw = bytes { b in
            put(2_000_000, at: TransportProbe.busyTimeOffset, in: &b)
            put(500_000, at: TransportProbe.rwndLimitedOffset, in: &b)
            put(117_000_000, at: TransportProbe.deliveryRateOffset, in: &b)
        }
        let sample = try XCTUnwrap(TransportProbe.parse(raw, at: 3))
        XCTAssertEqual(sample, TransportSample(time: 3, receiverLimited: 0.5, deliveryRate: 117_000_000))
    }

    func testAppLimitedRateIsDropped() throws {
        let raw = bytes { b in
            put(1000, at: TransportProbe.busyTimeOffset, in: &b)
            put(5_000_000, at: TransportProbe.deliveryRateOffset, in: &b)
            b[TransportProbe.appLimitedByte] = 0x01
        }
        XCTAssertNil(try XCTUnwrap(TransportProbe.parse(raw, at: 0)).deliveryRate)
    }

    func testNothingSentOrOldKernelGivesNoSample() {
        XCTAssertNil(TransportProbe.parse(bytes { _ in }, at: 0))
    }

    /// A real loopback connection: once it has been busy for a kernel tick (busy time is kept
    /// in jiffies), the kernel reports it.
    func testReadsARealConnection() async throws {
        #if os(Linux)
        let group = MultiThreadedEventLoopGroup.singleton
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { _ in group.any().makeSucceededVoidFuture() }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try XCTUnwrap(server.localAddress?.port)
        let client = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: port).get()
        var sample: TransportSample?
        for _ in 0..<200 where sample == nil {  // at most 200 MiB
            try await client.writeAndFlush(ByteBuffer(repeating: 0x61, count: 1 << 20)).get()
            sample = await TransportProbe(client).sample()
        }
        try await client.close().get()
        try await server.close().get()
        let s = try XCTUnwrap(sample, "TCP_INFO with tcpi_busy_time (Linux 4.10+)")
        XCTAssertGreaterThanOrEqual(s.receiverLimited, 0)
        XCTAssertLessThan(s.receiverLimited, 60)
        #else
        throw XCTSkip("TCP_INFO is read on Linux only")
        #endif
    }

    func testServerRateMeterCountsAllWritersPerWindow() async throws {
        let meter = ServerRateMeter()
        XCTAssertNil(meter.add(1 << 20), "no full window yet")
        try await Task.sleep(for: .milliseconds(300))
        let rate = try XCTUnwrap(meter.add(1 << 20))
        XCTAssertGreaterThan(rate, 1e5, "2 MiB in a bit over 0.3 s (under 20 s however busy the machine)")
        XCTAssertLessThan(rate, 8e6)
        XCTAssertEqual(meter.add(10), rate, "until the next window ends, the last rate stands")
    }
}
