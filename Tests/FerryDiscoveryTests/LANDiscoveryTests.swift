#if canImport(Glibc)
import Glibc
#endif
import FerryTestSupport
import Foundation
import XCTest

/// Discovery across real separate hosts: the test builds its own virtual LAN — network
/// namespaces `ferry-t-<pid>-{br,a,b,c}`, a bridge in `br`, a veth pair from the bridge to
/// each host, addresses from 10.213.77.0/24 that exist only inside these namespaces, and in
/// each host a route for 255.255.255.255 (and none beyond the /24, so nothing else is even
/// routable). Servers run in `a` and `b`; `ferry discover` runs in `c` with its default
/// targets. The LAN is torn down in `defer` even when an assertion fails.
///
/// Needs root (network namespaces) and iproute2: without them these tests skip saying so, and
/// in the root phase of `scripts/test` (`FERRY_TEST_REQUIRE_ROOT=1`) they fail instead. What
/// loopback can show is tested separately by `LoopbackCLIDiscoveryTests`.
final class LANDiscoveryPrivilegedTests: XCTestCase {
    func testDiscoverFindsServersOnOtherHostsAndSyncsByName() throws {
        let lan = try VirtualLAN.create()
        defer { lan.tearDown() }
        let served = try TestSupport.makeTemporaryDirectory("ferry-lan")
        defer { TestSupport.removeTemporaryDirectory(served) }
        let sample = try TestSupport.materializeFixtures(in: served)

        let alpha = try ServerProcess(serving: sample, arguments: ["--name", "alpha"], wrapper: lan.wrapper("a"))
        defer { alpha.stop() }
        let beta = try ServerProcess(serving: sample, arguments: ["--name", "beta"], wrapper: lan.wrapper("b"))
        defer { beta.stop() }

        let result = try lan.ferry(in: "c", ["discover", "--json", "--verbose", "--timeout", "2"])
        XCTAssertEqual(result.status, 0, "ferry discover failed: \(result.stderr)")
        let servers = try JSONLines.parse(result.stdout)
        let byName = Dictionary(servers.compactMap { s in (s["name"] as? String).map { ($0, s) } }) { a, _ in a }
        XCTAssertEqual(Set(byName.keys), ["alpha", "beta"], result.stdout)
        XCTAssertEqual(byName["alpha"]?["host"] as? String, VirtualLAN.address("a"))
        XCTAssertEqual(byName["alpha"]?["port"] as? Int, alpha.port)
        XCTAssertEqual(byName["beta"]?["host"] as? String, VirtualLAN.address("b"))
        XCTAssertEqual(byName["beta"]?["port"] as? Int, beta.port)
        XCTAssertEqual(servers.count, 2, "answers were not de-duplicated: \(result.stdout)")
        // The default targets were used: the limited broadcast and eth0's directed broadcast.
        XCTAssertTrue(result.stderr.contains("probing 255.255.255.255:7447"), result.stderr)
        XCTAssertTrue(result.stderr.contains("probing 10.213.77.255:7447 (eth0 10.213.77.3/24)"), result.stderr)

        let table = try lan.ferry(in: "c", ["discover"])
        XCTAssertEqual(table.status, 0, table.stderr)
        XCTAssertTrue(table.stdout.hasPrefix("NAME "), table.stdout)
        XCTAssertTrue(table.stdout.contains("alpha  10.213.77.1  \(alpha.port)"), table.stdout)

        // A server name works where an address does.
        let dest = served.appendingPathComponent("copy")
        let sync = try lan.ferry(in: "c", ["sync", "alpha", dest.path], timeout: 60)
        XCTAssertEqual(sync.status, 0, "sync by name failed: \(sync.stderr)")
        XCTAssertEqual(FileManager.default.contents(atPath: dest.appendingPathComponent("hello world.txt").path),
                       FileManager.default.contents(atPath: sample.appendingPathComponent("hello world.txt").path))

        // No answer: a clear message, exit status 1, nothing on stdout.
        let none = try lan.ferry(in: "c", ["discover", "--json", "--timeout", "0.5", "--discovery-port", "7999"])
        XCTAssertEqual(none.status, 1, none.stderr)
        XCTAssertEqual(none.stdout, "")
        XCTAssertTrue(none.stderr.contains("no ferry server answered a probe to 255.255.255.255:7999"), none.stderr)
        XCTAssertTrue(none.stderr.contains("firewall"), none.stderr)
    }

    func testWatchSeesAnnouncementsAndGoodbyesFromAnotherHost() throws {
        let lan = try VirtualLAN.create()
        defer { lan.tearDown() }
        let served = try TestSupport.makeTemporaryDirectory("ferry-lan")
        defer { TestSupport.removeTemporaryDirectory(served) }

        let quiet = try ServerProcess(serving: served, arguments: ["--name", "quiet"], wrapper: lan.wrapper("a"))
        defer { quiet.stop() }
        let watcher = try StreamingProcess(lan.wrapper("c") + [TestSupport.ferryExecutable.path,
                                                               "discover", "--watch", "--json", "--timeout", "1"])
        defer { watcher.stop() }
        let found = watcher.waitForObject(timeout: 10) { $0["event"] as? String == "found" && $0["name"] as? String == "quiet" }
        XCTAssertEqual(found?["host"] as? String, VirtualLAN.address("a"), watcher.transcript)

        // Sharing host b's discovery port with another server does not matter.
        let other = try ServerProcess(serving: served, arguments: ["--name", "other"], wrapper: lan.wrapper("b"))
        defer { other.stop() }
        let loud = try ServerProcess(serving: served, arguments: ["--name", "loud", "--announce"], wrapper: lan.wrapper("b"))
        defer { loud.stop() }
        let announced = watcher.waitForObject(timeout: 10) {
            $0["event"] as? String == "announced" && $0["name"] as? String == "loud"
        }
        XCTAssertEqual(announced?["host"] as? String, VirtualLAN.address("b"), watcher.transcript)
        XCTAssertEqual(announced?["port"] as? Int, loud.port, watcher.transcript)
        let id = announced?["id"] as? String
        XCTAssertNotNil(id)

        loud.stop()
        let goodbye = watcher.waitForObject(timeout: 10) { $0["event"] as? String == "goodbye" && $0["id"] as? String == id }
        XCTAssertEqual(goodbye?["host"] as? String, VirtualLAN.address("b"), watcher.transcript)
        XCTAssertEqual(goodbye?["name"] as? String, "loud", watcher.transcript)
        // The quiet servers never announced anything.
        XCTAssertFalse(watcher.objects().contains { $0["event"] as? String == "announced" && $0["name"] as? String != "loud" },
                       watcher.transcript)
    }

}

/// The CLI's discovery in this namespace: servers bound to loopback, found by probes sent only
/// to 127.255.255.255 (never --announce here: announcements go to the real network's broadcast
/// addresses). Runs as any user; it cannot show that probes and answers cross a LAN, which is
/// what `LANDiscoveryPrivilegedTests` is for.
final class LoopbackCLIDiscoveryTests: XCTestCase {
    func freeDiscoveryPort() throws -> String {
        String(try UDPTestSocket.freePort())
    }

    func testDiscoverFindsTwoServersOnLoopback() throws {
        let served = try TestSupport.makeTemporaryDirectory("ferry-loop")
        defer { TestSupport.removeTemporaryDirectory(served) }
        let port = try freeDiscoveryPort()
        let common = ["--bind", "127.0.0.1", "--discovery-port", port]
        let one = try ServerProcess(serving: served, arguments: ["--name", "one"] + common)
        defer { one.stop() }
        let two = try ServerProcess(serving: served, arguments: ["--name", "two"] + common)
        defer { two.stop() }
        let result = try TestSupport.ferry(["discover", "--to", "127.255.255.255", "--discovery-port", port, "--json"],
                                           timeout: 30)
        XCTAssertEqual(result.status, 0, result.stderr)
        let servers = try JSONLines.parse(result.stdout)
        XCTAssertEqual(servers.compactMap { $0["name"] as? String }.sorted(), ["one", "two"], result.stdout)
        XCTAssertEqual(Set(servers.compactMap { $0["port"] as? Int }), [one.port, two.port])
        XCTAssertEqual(Set(servers.compactMap { $0["host"] as? String }), ["127.0.0.1"])

        let none = try TestSupport.ferry(["discover", "--to", "127.255.255.255", "--discovery-port", try freeDiscoveryPort(),
                                          "--timeout", "0.3"], timeout: 30)
        XCTAssertEqual(none.status, 1, none.stderr)
        XCTAssertTrue(none.stderr.contains("no ferry server answered a probe to 127.255.255.255:"), none.stderr)

        let bad = try TestSupport.ferry(["discover", "--to", "not-an-address"], timeout: 30)
        XCTAssertEqual(bad.status, 64, bad.stderr)
    }

    func testWatchFindsARunningServerOnLoopback() throws {
        let served = try TestSupport.makeTemporaryDirectory("ferry-loop")
        defer { TestSupport.removeTemporaryDirectory(served) }
        let port = try freeDiscoveryPort()
        let server = try ServerProcess(serving: served, arguments: ["--name", "one", "--bind", "127.0.0.1", "--discovery-port", port])
        defer { server.stop() }
        let watcher = try StreamingProcess([TestSupport.ferryExecutable.path, "discover", "--watch", "--json",
                                            "--to", "127.255.255.255", "--discovery-port", port])
        defer { watcher.stop() }
        let found = watcher.waitForObject(timeout: 10) { $0["event"] as? String == "found" }
        XCTAssertEqual(found?["name"] as? String, "one", watcher.transcript)
        XCTAssertEqual(found?["port"] as? Int, server.port, watcher.transcript)
    }
}

/// The namespaces, bridge and veth pairs of one test, and how to run commands inside them.
final class VirtualLAN {
    static let prefix = "ferry-t-"
    static let hosts = ["a", "b", "c"]
    let ip: String
    let tag: String
    private var created: [String] = []

    static func address(_ host: String) -> String {
        "10.213.77.\((hosts.firstIndex(of: host) ?? 0) + 1)"
    }

    private init(ip: String, tag: String) {
        self.ip = ip
        self.tag = tag
    }

    func namespace(_ host: String) -> String { "\(tag)-\(host)" }

    /// `ip netns exec NS`, for `ServerProcess` and friends.
    func wrapper(_ host: String) -> [String] { [ip, "netns", "exec", namespace(host)] }

    func ferry(in host: String, _ arguments: [String], timeout: TimeInterval = 30) throws -> TestSupport.ProcessResult {
        try TestSupport.run(ip, ["netns", "exec", namespace(host), TestSupport.ferryExecutable.path] + arguments,
                            timeout: timeout, check: false)
    }

    /// Builds the LAN; skips (or, in the root phase, fails) without root or `ip`.
    static func create() throws -> VirtualLAN {
        try TestSupport.requireRoot("creates network namespaces, a bridge and veth pairs for a private virtual LAN")
        let found = TestSupport.executable(["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"])
        try TestSupport.requireForPrivilegedTest(found != nil, "the `ip` tool (iproute2) is not installed; scripts/setup installs it")
        guard let ip = found else { throw XCTSkip("no `ip` tool") }
        removeStaleNamespaces(ip: ip)
        let lan = VirtualLAN(ip: ip, tag: "\(prefix)\(getpid())")
        do {
            try lan.build()
        } catch {
            lan.tearDown()
            throw error
        }
        return lan
    }

    private func run(_ arguments: [String]) throws {
        try TestSupport.run(ip, arguments, timeout: 20)
    }

    private func build() throws {
        let bridge = namespace("br")
        for ns in [bridge] + Self.hosts.map(namespace) {
            try run(["netns", "add", ns])
            created.append(ns)
        }
        try run(["-n", bridge, "link", "add", "br0", "type", "bridge"])
        try run(["-n", bridge, "link", "set", "br0", "up"])
        for host in Self.hosts {
            let ns = namespace(host)
            // DNS lookups inside the LAN go to loopback only (ip netns exec bind-mounts these).
            let etc = URL(fileURLWithPath: "/etc/netns/\(ns)")
            try FileManager.default.createDirectory(at: etc, withIntermediateDirectories: true)
            try Data("nameserver 127.0.0.1\n".utf8).write(to: etc.appendingPathComponent("resolv.conf"))
            try Data("127.0.0.1 localhost\n".utf8).write(to: etc.appendingPathComponent("hosts"))
            _ = try? TestSupport.run(ip, ["netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
                                     timeout: 10, check: false)
            try run(["-n", bridge, "link", "add", "v\(host)", "type", "veth", "peer", "name", "eth0", "netns", ns])
            try run(["-n", bridge, "link", "set", "v\(host)", "master", "br0"])
            try run(["-n", bridge, "link", "set", "v\(host)", "up"])
            try run(["-n", ns, "addr", "add", "\(Self.address(host))/24", "brd", "+", "dev", "eth0"])
            try run(["-n", ns, "link", "set", "lo", "up"])
            try run(["-n", ns, "link", "set", "eth0", "up"])
            // Makes 255.255.255.255 deliverable; there is deliberately no default route.
            try run(["-n", ns, "route", "add", "255.255.255.255/32", "dev", "eth0"])
        }
        for host in Self.hosts {
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline {
                let link = try TestSupport.run(ip, ["-n", namespace(host), "link", "show", "eth0"], timeout: 10, check: false)
                if link.stdout.contains("LOWER_UP") && link.stdout.contains("state UP") { break }
                usleep(50_000)
            }
        }
    }

    func tearDown() {
        for ns in created.reversed() {
            _ = try? TestSupport.run(ip, ["netns", "del", ns], timeout: 20, check: false)
            try? FileManager.default.removeItem(atPath: "/etc/netns/\(ns)")
        }
        created.removeAll()
    }

    /// Namespaces left by an earlier run of these tests that was killed before tearing down
    /// (their pid is gone). Only names with this test's prefix are touched.
    private static func removeStaleNamespaces(ip: String) {
        guard let list = try? TestSupport.run(ip, ["netns", "list"], timeout: 10, check: false) else { return }
        for line in list.stdout.split(separator: "\n") {
            let name = String(line.split(separator: " ").first ?? "")
            guard name.hasPrefix(prefix) else { continue }
            let pidText = name.dropFirst(prefix.count).prefix { $0 != "-" }
            guard let pid = Int32(pidText), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            _ = try? TestSupport.run(ip, ["netns", "del", name], timeout: 20, check: false)
            try? FileManager.default.removeItem(atPath: "/etc/netns/\(name)")
        }
    }
}

enum JSONLines {
    struct NotJSON: Error, CustomStringConvertible {
        let line: String
        var description: String { "not a JSON object: \(line)" }
    }

    static func parse(_ text: String) throws -> [[String: Any]] {
        try text.split(separator: "\n").map { line in
            guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw NotJSON(line: String(line))
            }
            return object
        }
    }
}

/// A long-running child (e.g. `ferry discover --watch`) whose stdout is read as it comes.
/// Stopped by its own PID only.
final class StreamingProcess: @unchecked Sendable {
    private let process: Process
    private let lock = NSLock()
    private var output = Data()
    private var errors = Data()

    init(_ command: [String]) throws {
        process = TestSupport.process(command)
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        out.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self else { return }
            self.lock.lock()
            self.output.append(data)
            self.lock.unlock()
        }
        err.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self else { return }
            self.lock.lock()
            self.errors.append(data)
            self.lock.unlock()
        }
        try process.run()
    }

    var transcript: String {
        lock.lock()
        defer { lock.unlock() }
        return "stdout:\n" + String(decoding: output, as: UTF8.self) + "\nstderr:\n" + String(decoding: errors, as: UTF8.self)
    }

    func objects() -> [[String: Any]] {
        lock.lock()
        let text = String(decoding: output, as: UTF8.self)
        lock.unlock()
        // The last line may still be incomplete.
        return text.split(separator: "\n", omittingEmptySubsequences: true).compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }
    }

    func waitForObject(timeout: TimeInterval, where predicate: ([String: Any]) -> Bool) -> [String: Any]? {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            if let hit = objects().first(where: predicate) { return hit }
            usleep(50_000)
        } while Date() < deadline && process.isRunning
        return objects().first(where: predicate)
    }

    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(5)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        process.waitUntilExit()
        (process.standardOutput as? Pipe)?.fileHandleForReading.readabilityHandler = nil
        (process.standardError as? Pipe)?.fileHandleForReading.readabilityHandler = nil
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}
