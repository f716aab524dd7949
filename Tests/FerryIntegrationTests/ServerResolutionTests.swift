#if canImport(Glibc)
import Glibc
#endif
import FerryClient
import FerryProtocol
import FerryTestSupport
import Foundation
import XCTest

/// How a SERVER is turned into an address: which forms may be looked up by discovery (and so
/// broadcast), and what the person is told when nothing is found.
final class ServerResolutionTests: XCTestCase {
    // MARK: - The decision, from how SERVER is written

    func testHowEachFormIsLookedUp() throws {
        let cases: [(String, ServerAddress.Lookup)] = [
            ("192.168.1.20", .none),
            ("127.0.0.1:7446/docs", .none),
            ("[::1]:7446", .none),
            ("[127.0.0.1]:7446", .none),
            ("ferry://10.0.0.1/photos", .none),
            ("studio", .hostsDiscoveryDNS),
            ("studio/photos/2024", .hostsDiscoveryDNS),
            ("ferry://studio/photos", .hostsDiscoveryDNS),
            ("my_server-2", .hostsDiscoveryDNS),
            ("nosuchhost:7446", .dnsOnly),
            ("studio:7446/photos", .dnsOnly),
            ("ferry://studio:7446/photos", .dnsOnly),
            ("nosuchhost.invalid", .dnsOnly),
            ("nas.local/photos", .dnsOnly),
            ("nosuchhost.invalid:7446", .dnsOnly),
            ("[nosuch]:7446", .dnsOnly),
            ("[nosuch]", .dnsOnly),
            ("[nosuch]/docs", .dnsOnly),
            ("localhost", .hostsDiscoveryDNS),
            ("localhost:7446", .dnsOnly),
        ]
        for (input, expected) in cases {
            let address = try ServerAddress.parse(input)
            XCTAssertEqual(address.lookup, expected, input)
        }
        let bracketed = try ServerAddress.parse("[nosuch]:7447/a/b")
        XCTAssertEqual(bracketed.host, .name("nosuch"))
        XCTAssertEqual(bracketed.port, 7447)
        XCTAssertEqual(bracketed.path.description, "a/b")
    }

    func testBracketsStillRejectWhatIsNeitherAnAddressNorAName() {
        for input in ["[]:7446", "[::zz]:7446", "[1.2.3]:7446", "[300.1.1.1]", "[bad name]", "[a..b]"] {
            XCTAssertThrowsError(try ServerAddress.parse(input), input)
        }
    }

    func testABadToIsAUsageErrorEvenWhenNoProbeIsNeeded() throws {
        // 127.0.0.1 needs no lookup at all; the mistake in --to is still reported, before anything is sent.
        for bad in [["--to", "not-an-address"], ["--to", "10.0.0"], ["--discovery-port", "0"], ["--discovery-port", "70000"]] {
            let r = try TestSupport.ferry(["ls", "127.0.0.1:1"] + bad, timeout: 30)
            XCTAssertEqual(r.status, 64, "\(bad): \(r.stderr)")
            XCTAssertFalse(r.stderr.contains("cannot connect"), "\(bad): nothing is tried: \(r.stderr)")
        }
    }

    // MARK: - End to end, in a private network namespace

    /// The commands run inside a fresh network namespace (`unshare -rn`: a user namespace, so
    /// no root is needed where the kernel allows them) with loopback and a veth pair on a
    /// private /24 whose both ends stay in the namespace. The system resolver cannot reach any
    /// DNS server from there (no route), so no lookup leaves the machine, and the transmit
    /// counters of `lo` and the veth show every probe ferry sends.
    func testNamesWithAPortADotOrBracketsAreNeverBroadcast() throws {
        let work = try TestSupport.makeTemporaryDirectory("ferry-names")
        defer { TestSupport.removeTemporaryDirectory(work) }
        chmod(work.path, 0o777)
        let served = work.appendingPathComponent("served")
        try FileManager.default.createDirectory(at: served, withIntermediateDirectories: true)
        try Files.write(served.appendingPathComponent("hello.txt"), "hello\n")
        chmod(served.path, 0o755)
        let state = work.appendingPathComponent("state")
        let cases = [
            "nosuchhost:7446", "nosuchhost.invalid:7446", "nosuchhost.invalid", "[nosuch]:7446",
            // With --to too: the address form decides, not the options.
            "nosuchhost:7446 --to 127.255.255.255",
        ]
        let output = try runInPrivateNetwork(script: Self.script, arguments: [
            TestSupport.ferryExecutable.path, served.path, state.path,
        ] + cases)
        let results = Self.parse(output)

        for input in cases {
            let r = try XCTUnwrap(results[input], "no result for \(input): \(output)")
            XCTAssertEqual(r.status, 2, "\(input): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("cannot find the host"), "\(input): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("DNS"), "\(input): the error says what DNS answered: \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("never by discovery"), "\(input): \(r.stderr)")
            XCTAssertEqual(r.vethPackets, 0, "\(input): nothing may be sent on the LAN interface")
            XCTAssertEqual(r.loopbackPackets, 0, "\(input): nothing may be sent on loopback either")
        }

        // The control: a bare name is probed for, so the counters do see probes.
        let bare = try XCTUnwrap(results["nosuch"], output)
        XCTAssertEqual(bare.status, 2, bare.stderr)
        XCTAssertGreaterThan(bare.vethPackets, 0, "the probe to the veth's broadcast address must be counted: \(bare.stderr)")
        XCTAssertTrue(bare.stderr.contains("not a host name") && bare.stderr.contains("DNS"),
                      "a bare name's failure says what DNS answered: \(bare.stderr)")
        XCTAssertTrue(bare.stderr.contains("10.213.78.255"), "and what discovery probed: \(bare.stderr)")
        let bareTo = try XCTUnwrap(results["nosuch --to 127.255.255.255"], output)
        XCTAssertEqual(bareTo.status, 2, bareTo.stderr)
        XCTAssertEqual(bareTo.vethPackets, 0, "--to narrows the probe to loopback: \(bareTo.stderr)")
        XCTAssertGreaterThan(bareTo.loopbackPackets, 0, bareTo.stderr)
        XCTAssertTrue(bareTo.stderr.contains("127.255.255.255"), bareTo.stderr)

        // A bare name in /etc/hosts is used even with --to, without probing.
        let local = try XCTUnwrap(results["localhost --to 127.255.255.255"], output)
        XCTAssertEqual(local.status, 0, local.stderr)
        XCTAssertTrue(local.stdout.contains("hello.txt"), local.stdout)
        XCTAssertEqual(local.vethPackets, 0)
        let localPort = try XCTUnwrap(results["localhost:7446"], output)
        XCTAssertEqual(localPort.status, 0, localPort.stderr)
        XCTAssertTrue(localPort.stdout.contains("hello.txt"), localPort.stdout)
    }

    struct Result {
        var status: Int32 = -1
        var vethPackets = -1
        var loopbackPackets = -1
        var stdout = ""
        var stderr = ""
    }

    /// Runs `ferry ls` for each case argument (split on spaces), and for the controls, and
    /// prints for each a block the test parses. Argument 1 is ferry, 2 the served folder, 3
    /// the state folder, the rest the cases.
    static let script = #"""
    set -u
    ferry="$1"; served="$2"; state="$3"; shift 3
    tx() { ip -s link show dev "$1" | awk 'f { print $2; exit } /TX:/ { f = 1 }'; }
    ip link set lo up || exit 90
    ip link add fv0 type veth peer name fv1 || exit 91
    echo 1 > /proc/sys/net/ipv6/conf/fv0/disable_ipv6
    echo 1 > /proc/sys/net/ipv6/conf/fv1/disable_ipv6
    ip addr add 10.213.78.1/24 brd + dev fv0 || exit 92
    ip link set fv0 up && ip link set fv1 up || exit 93
    out=$(mktemp -d)
    "$ferry" serve "$served" --bind 127.0.0.1 --port 7446 --no-discovery --state-dir "$state" > "$out/serve" 2>&1 &
    server=$!
    trap 'kill $server 2> /dev/null' EXIT
    for _ in $(seq 100); do grep -q '^fingerprint ' "$out/serve" && break; sleep 0.1; done
    fp=$(sed -n 's/^fingerprint //p' "$out/serve")
    run() {
        v0=$(tx fv0); l0=$(tx lo)
        # shellcheck disable=SC2086
        "$ferry" ls $1 --discovery-port 7999 --timeout 5 --fingerprint "$fp" > "$out/o" 2> "$out/e"
        status=$?
        echo "=== $1"
        echo "status $status"
        echo "veth $(( $(tx fv0) - v0 ))"
        echo "lo $(( $(tx lo) - l0 ))"
        sed 's/^/out /' "$out/o"
        sed 's/^/err /' "$out/e"
    }
    for c in "$@"; do run "$c"; done
    run "nosuch"
    run "nosuch --to 127.255.255.255"
    run "localhost --to 127.255.255.255"
    run "localhost:7446"
    """#

    static func parse(_ output: String) -> [String: Result] {
        var results: [String: Result] = [:]
        var current: String?
        for line in output.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("=== ") {
                current = String(line.dropFirst(4))
                results[current ?? ""] = Result()
                continue
            }
            guard let key = current else { continue }
            let (tag, rest) = line.firstIndex(of: " ").map { (line[..<$0], String(line[line.index(after: $0)...])) } ?? (line, "")
            switch tag {
            case "status": results[key]?.status = Int32(rest) ?? -1
            case "veth": results[key]?.vethPackets = Int(rest) ?? -1
            case "lo": results[key]?.loopbackPackets = Int(rest) ?? -1
            case "out": results[key]?.stdout += rest + "\n"
            case "err": results[key]?.stderr += rest + "\n"
            default: break
            }
        }
        return results
    }

    /// Runs `sh -c script` in a new network namespace: `unshare -rn` (a user namespace too, for
    /// an ordinary user), or as root `unshare -n`. Skips when the system allows neither.
    func runInPrivateNetwork(script: String, arguments: [String]) throws -> String {
        let unshare = ["/usr/bin/unshare", "/bin/unshare"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let unshare else { throw XCTSkip("needs unshare(1) (util-linux) to make a private network namespace") }
        var attempts = [["-rn"]]
        if geteuid() == 0 { attempts.append(["-n"]) }
        var reasons: [String] = []
        for flags in attempts {
            let probe = try TestSupport.run(unshare, flags + ["true"], timeout: 30, check: false)
            guard probe.status == 0 else {
                reasons.append("unshare \(flags.joined(separator: " ")): \(probe.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
                continue
            }
            let r = try TestSupport.run(unshare, flags + ["sh", "-c", script, "sh"] + arguments, timeout: 240, check: false)
            guard r.status == 0 else {
                throw IntegrationFailure("the namespace script failed (\(r.status)): \(r.stderr)\n\(r.stdout)")
            }
            return r.stdout
        }
        throw XCTSkip("cannot make a private network namespace here (\(reasons.joined(separator: "; "))); "
                      + "the decision itself is covered by testHowEachFormIsLookedUp")
    }
}
