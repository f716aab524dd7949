import FerryDiscovery
import FerryTestSupport
import FerryProtocol
import Foundation
import Logging
import XCTest

/// In-process responders and probers on loopback. Every probe goes to 127.255.255.255 (or
/// 127.0.0.1) and no responder announces anywhere but 127.255.255.255: nothing leaves the
/// machine.
final class LoopbackDiscoveryTests: XCTestCase {
    static let loopback = [ProbeTarget.loopbackBroadcast]
    let logger = Logger(label: "ferry.discovery.test")

    private func id(_ n: Int) -> String { Self.id(n) }
    static func id(_ n: Int) -> String { String(format: "%032x", n) }

    private func startResponder(name: String, idNumber: Int, tcpPort: Int, port: Int, bindHost: String = "0.0.0.0",
                                announce: Bool = false, interval: Duration = .seconds(30)) async throws -> DiscoveryResponder {
        try await DiscoveryResponder.start(
            advert: ServerAdvert(name: name, id: id(idNumber), tcpPort: tcpPort, version: "0.1.0"),
            bindHost: bindHost, port: port, announce: announce, announceInterval: interval,
            announceTargets: announce ? Self.loopback : nil, logger: logger)
    }

    func testTwoRespondersOnOnePortBothAnswerOneLoopbackBroadcast() async throws {
        let port = try UDPTestSocket.freePort()
        let a = try await startResponder(name: "alpha", idNumber: 1, tcpPort: 40001, port: port)
        let b = try await startResponder(name: "beta", idNumber: 2, tcpPort: 40002, port: port)
        XCTAssertEqual(a.boundPort, port)
        XCTAssertEqual(b.boundPort, port)
        let found = try await DiscoveryProber.probe(targets: Self.loopback, port: port, timeout: .seconds(1), logger: logger)
        await a.stop()
        await b.stop()
        XCTAssertEqual(found, [
            DiscoveredServer(name: "alpha", id: id(1), host: "127.0.0.1", port: 40001, version: "0.1.0"),
            DiscoveredServer(name: "beta", id: id(2), host: "127.0.0.1", port: 40002, version: "0.1.0"),
        ])
    }

    func testAResponderBoundToLoopbackAnswersLoopbackBroadcasts() async throws {
        let port = try UDPTestSocket.freePort()
        let r = try await startResponder(name: "local", idNumber: 3, tcpPort: 40003, port: port, bindHost: "127.0.0.1")
        let found = try await DiscoveryProber.probe(targets: Self.loopback, port: port, timeout: .milliseconds(700), logger: logger)
        await r.stop()
        XCTAssertEqual(found.map(\.name), ["local"])
        XCTAssertEqual(found.first?.host, "127.0.0.1")
    }

    func testAPicksAFreePortAndStopsCleanly() async throws {
        let r = try await startResponder(name: "any", idNumber: 4, tcpPort: 40004, port: 0)
        XCTAssertGreaterThan(r.boundPort, 0)
        let found = try await DiscoveryProber.probe(targets: Self.loopback, port: r.boundPort, timeout: .milliseconds(500), logger: logger)
        XCTAssertEqual(found.map(\.port), [40004])
        await r.stop()
        await r.stop()
        let after = try await DiscoveryProber.probe(targets: Self.loopback, port: r.boundPort, timeout: .milliseconds(300), logger: logger)
        XCTAssertEqual(after, [], "a stopped responder still answered")
    }

    func testResolveByName() async throws {
        let port = try UDPTestSocket.freePort()
        let responders = [
            try await startResponder(name: "studio", idNumber: 10, tcpPort: 41000, port: port),
            try await startResponder(name: "twin", idNumber: 11, tcpPort: 41001, port: port),
            try await startResponder(name: "twin", idNumber: 12, tcpPort: 41002, port: port),
        ]
        defer { for r in responders { Task { await r.stop() } } }
        let timeout = Duration.milliseconds(600)

        let studio = try await DiscoveryProber.resolve(name: "Studio", targets: Self.loopback, port: port, timeout: timeout, logger: logger)
        XCTAssertEqual(studio.port, 41000)
        XCTAssertEqual(studio.host, "127.0.0.1")

        do {
            let s = try await DiscoveryProber.resolve(name: "twin", targets: Self.loopback, port: port, timeout: timeout, logger: logger)
            XCTFail("an ambiguous name resolved to \(s)")
        } catch {
            guard case .ambiguousName(_, let matches) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(Set(matches.map(\.port)), [41001, 41002])
            XCTAssertTrue(error.description.contains("127.0.0.1:41001"), error.description)
            XCTAssertTrue(error.description.contains("127.0.0.1:41002"), error.description)
        }

        do {
            let s = try await DiscoveryProber.resolve(name: "nobody", targets: Self.loopback, port: port, timeout: timeout, logger: logger)
            XCTFail("a missing name resolved to \(s)")
        } catch {
            guard case .nameNotFound = error else { return XCTFail("\(error)") }
            XCTAssertTrue(error.description.contains("studio (127.0.0.1:41000)"), error.description)
        }

        for r in responders { await r.stop() }
        let emptyPort = try UDPTestSocket.freePort()
        do {
            let s = try await DiscoveryProber.resolve(name: "studio", targets: Self.loopback, port: emptyPort,
                                                      timeout: .milliseconds(300), logger: logger)
            XCTFail("resolved \(s) with no server running")
        } catch {
            guard case .noAnswer = error else { return XCTFail("\(error)") }
            let text = error.description
            XCTAssertTrue(text.contains("127.255.255.255:\(emptyPort)"), text)
            XCTAssertTrue(text.contains("firewall") && text.contains("client isolation") && text.contains("container"), text)
        }
    }

    /// Garbage is ignored without a reply; a real probe afterwards is still answered, and the
    /// answer is small next to the probe.
    func testGarbageIsIgnoredAndAnswersStaySmall() async throws {
        let port = try UDPTestSocket.freePort()
        let r = try await startResponder(name: String(repeating: "n", count: 63), idNumber: 20, tcpPort: 65535, port: port)
        let socket = try UDPTestSocket(broadcast: true)
        var rng = SplitMix64(seed: 7)
        let nonce = "00000000deadbeef"
        let garbage: [[UInt8]] = [
            [], Array("hello".utf8), Array(repeating: 0x41, count: 1400),
            Array("FERRY-PROBE 1 nonce=\(nonce)".utf8) + Array(repeating: 0x20, count: 600),
            Array("FERRY-PROBE 2 nonce=\(nonce)".utf8), Array("FERRY-HERE 1 nonce=\(nonce)".utf8),
            Array("FERRY-ANNOUNCE 1 name=x id=\(id(1)) port=1 version=1".utf8),
        ]
        for i in 0..<300 {
            let bytes = i < garbage.count ? garbage[i]
                : (0..<Int.random(in: 0...600, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            socket.send(bytes, to: i % 2 == 0 ? "127.0.0.1" : "127.255.255.255", port: port)
        }
        let repliesToGarbage = socket.receive(timeout: 0.5)
        XCTAssertEqual(repliesToGarbage.count, 0, "garbage was answered")

        // A valid but unpadded probe is smaller than the answer: never answered (no amplification).
        socket.send(Array("FERRY-PROBE 1 nonce=\(nonce)".utf8), to: "127.255.255.255", port: port)
        XCTAssertEqual(socket.receive(timeout: 0.5).count, 0, "an unpadded probe was answered")

        let probe = DiscoveryDatagram.probe(nonce: nonce).encoded
        socket.send(probe, to: "127.255.255.255", port: port)
        let replies = socket.receive(timeout: 1, limit: 1)
        await r.stop()
        XCTAssertEqual(replies.count, 1)
        guard let reply = replies.first else { return }
        XCTAssertEqual(reply.from, "127.0.0.1")
        XCTAssertLessThanOrEqual(reply.bytes.count, DiscoveryDatagram.maxAnswerBytes)
        XCTAssertLessThanOrEqual(reply.bytes.count, probe.count)
        guard case .answer(let n, let advert)? = try? DiscoveryDatagram.parse(reply.bytes) else {
            return XCTFail("not an answer: \(String(decoding: reply.bytes, as: UTF8.self))")
        }
        XCTAssertEqual(n, nonce)
        XCTAssertEqual(advert.port, 65535)
    }

    func testAFloodOfProbesFromOneAddressGetsAtMostTwentyAnswers() async throws {
        let port = try UDPTestSocket.freePort()
        let r = try await startResponder(name: "limited", idNumber: 30, tcpPort: 40030, port: port)
        let socket = try UDPTestSocket()
        for i in 0..<100 {
            socket.send(DiscoveryDatagram.probe(nonce: String(format: "%016x", i)).encoded, to: "127.0.0.1", port: port)
        }
        let replies = socket.receive(timeout: 0.6)
        await r.stop()
        XCTAssertGreaterThan(replies.count, 0)
        XCTAssertLessThanOrEqual(replies.count, 20)
    }

    func testWatchSeesAnswersAnnouncementsAndGoodbyes() async throws {
        let port = try UDPTestSocket.freePort()
        let earlyResponder = try await startResponder(name: "early", idNumber: 40, tcpPort: 40040, port: port)
        let stream = DiscoveryProber.watch(targets: Self.loopback, port: port, probeWindow: .seconds(1), logger: logger)
        let events = EventLog()
        let reader = Task {
            for try await event in stream {
                await events.append(event)
            }
        }
        defer { reader.cancel() }
        let early = Self.server("early", 40, 40040)
        let sawEarly = await events.waitFor(timeout: 3) { $0.contains(.found(early)) }
        XCTAssertTrue(sawEarly, "the watcher's probe did not find a running server")

        let announcer = try await startResponder(name: "loud", idNumber: 41, tcpPort: 40041, port: port,
                                                 announce: true, interval: .seconds(60))
        let loud = Self.server("loud", 41, 40041)
        let sawAnnouncement = await events.waitFor(timeout: 3) { $0.contains(.announced(loud)) }
        XCTAssertTrue(sawAnnouncement, "no announcement seen")
        await announcer.stop()
        let goodbye = DiscoveryEvent.goodbye(id: Self.id(41), host: "127.0.0.1")
        let sawGoodbye = await events.waitFor(timeout: 3) { $0.contains(goodbye) }
        XCTAssertTrue(sawGoodbye, "no goodbye seen")
        await earlyResponder.stop()
        // The same announcement is reported once even though the responder sends it once per target.
        let announced = await events.all.filter { if case .announced = $0 { return true } else { return false } }
        XCTAssertEqual(announced.count, 1)
        reader.cancel()
        _ = await reader.result
    }

    func testWatchReportsAPortItCannotOpen() async throws {
        let stream = DiscoveryProber.watch(targets: Self.loopback, port: 0, logger: logger)
        do {
            for try await event in stream { XCTFail("unexpected \(event)") }
            XCTFail("watching port 0 did not fail")
        } catch {
            XCTAssertTrue("\(error)".contains("between 1 and 65535"), "\(error)")
        }
    }

    func testStartRefusesBadAdvertsAndAddresses() async {
        let cases: [(ServerAdvert, String, String)] = [
            (ServerAdvert(name: "bad name", id: id(1), tcpPort: 1), "0.0.0.0", "a space"),
            (ServerAdvert(name: "ok", id: "XYZ", tcpPort: 1), "0.0.0.0", "32 lowercase hex"),
            (ServerAdvert(name: "ok", id: id(1), tcpPort: 0), "0.0.0.0", "TCP port 0"),
            (ServerAdvert(name: "ok", id: id(1), tcpPort: 1), "192.0.2.77", "no network interface"),
        ]
        for (advert, bind, expected) in cases {
            do {
                let r = try await DiscoveryResponder.start(advert: advert, bindHost: bind, port: 0, announce: false, logger: logger)
                await r.stop()
                XCTFail("started with \(advert) on \(bind)")
            } catch {
                XCTAssertTrue(error.description.contains(expected), error.description)
            }
        }
    }

    func testABusyPortIsReportedWithWhatToDo() async throws {
        // A socket without SO_REUSEADDR holds the port exclusively.
        let holder = try UDPTestSocket()
        var addr = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(holder.fd, $0, &length) }
        }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        do {
            let r = try await startResponder(name: "x", idNumber: 50, tcpPort: 1, port: port)
            await r.stop()
            XCTFail("bound a port that is held exclusively")
        } catch {
            XCTAssertTrue("\(error)".contains("--discovery-port"), "\(error)")
            XCTAssertTrue("\(error)".contains("--no-discovery"), "\(error)")
        }
    }

    static func server(_ name: String, _ idNumber: Int, _ port: Int) -> DiscoveredServer {
        DiscoveredServer(name: name, id: id(idNumber), host: "127.0.0.1", port: port, version: "0.1.0")
    }
}

final class DiscoveryTargetTests: XCTestCase {
    func testParse() throws {
        XCTAssertEqual(try DiscoveryTargets.parse("127.255.255.255").address, "127.255.255.255")
        XCTAssertEqual(try DiscoveryTargets.parse("192.168.1.255").address, "192.168.1.255")
        XCTAssertEqual(try DiscoveryTargets.parse(" 10.0.0.5 ").address, "10.0.0.5")
        for bad in ["", "localhost", "1.2.3", "1.2.3.4.5", "256.1.1.1", "::1", "0.0.0.0", "1.2.3.4:7447", "01.2.3.4x"] {
            XCTAssertThrowsError(try DiscoveryTargets.parse(bad), bad) { error in
                XCTAssertTrue("\(error)".contains("IPv4"), "\(error)")
            }
        }
    }

    /// Only enumerates interfaces; nothing is sent.
    func testDefaultTargetsStartWithTheLimitedBroadcastAndHaveNoDuplicates() {
        let targets = DiscoveryTargets.defaultTargets()
        XCTAssertEqual(targets.first?.address, "255.255.255.255")
        XCTAssertEqual(Set(targets.map(\.address)).count, targets.count)
        XCTAssertFalse(targets.contains { $0.address.hasPrefix("127.") })
        for t in targets { XCTAssertNoThrow(try DiscoveryTargets.parse(t.address)) }
    }
}

/// Events collected by a watch test, awaited with a deadline.
actor EventLog {
    private(set) var all: [DiscoveryEvent] = []

    func append(_ event: DiscoveryEvent) { all.append(event) }

    func waitFor(timeout: Double, _ condition: @Sendable ([DiscoveryEvent]) -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition(all) { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return condition(all)
    }
}
