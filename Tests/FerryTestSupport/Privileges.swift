#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest

/// Who the tests run as, and the environment every child process gets.
///
/// `scripts/test` run as root runs the suite twice from one build: phase 1 as an unprivileged
/// user (everything; the privileged tests skip themselves), phase 2 as root with
/// `FERRY_TEST_REQUIRE_ROOT=1` and only the test classes whose names end in `PrivilegedTests`
/// (there a privileged test that cannot run is a failure, not a skip).
extension TestSupport {
    /// Set by `scripts/test` for the root phase: a privileged test that would skip fails.
    public static var rootIsRequired: Bool {
        ProcessInfo.processInfo.environment["FERRY_TEST_REQUIRE_ROOT"] == "1"
    }

    /// Set by `scripts/test` for the unprivileged phase: a test that needs an ordinary user
    /// and finds itself root fails instead of skipping.
    public static var unprivilegedIsRequired: Bool {
        ProcessInfo.processInfo.environment["FERRY_TEST_REQUIRE_UNPRIVILEGED"] == "1"
    }

    public struct PrivilegeMismatch: Error, CustomStringConvertible {
        public let description: String
    }

    /// For a test that truly needs root (network namespaces, mounting a tmpfs, device nodes);
    /// `why` says what for. Not root: `XCTSkip` with a loud note, or a failure when
    /// `FERRY_TEST_REQUIRE_ROOT=1`. Put such tests in a class named `…PrivilegedTests`, which
    /// is what the root phase of `scripts/test` selects.
    public static func requireRoot(_ why: String, file: StaticString = #filePath, line: UInt = #line) throws {
        guard geteuid() != 0 else { return }
        if rootIsRequired {
            throw PrivilegeMismatch(description: "FERRY_TEST_REQUIRE_ROOT=1 but running as uid \(geteuid()); this test needs root: \(why)")
        }
        warnNotRun("needs root: \(why)")
        throw XCTSkip("needs root: \(why)", file: file, line: line)
    }

    /// For a test whose claim does not hold for root (root reads a chmod-000 file); `why` says
    /// what for. As root: `XCTSkip` with a loud note (scripts/test runs it in its unprivileged
    /// phase), or a failure when `FERRY_TEST_REQUIRE_UNPRIVILEGED=1`.
    public static func requireNonRoot(_ why: String, file: StaticString = #filePath, line: UInt = #line) throws {
        guard geteuid() == 0 else { return }
        if unprivilegedIsRequired {
            throw PrivilegeMismatch(description: "FERRY_TEST_REQUIRE_UNPRIVILEGED=1 but running as root; this test needs an ordinary user: \(why)")
        }
        warnNotRun("needs an ordinary user, not root: \(why) (scripts/test runs it as one)")
        throw XCTSkip("needs an ordinary user: \(why)", file: file, line: line)
    }

    /// A privileged test's precondition other than root (a tool, a kernel feature): skips
    /// outside the root phase, fails inside it.
    public static func requireForPrivilegedTest(_ condition: Bool, _ what: String,
                                                file: StaticString = #filePath, line: UInt = #line) throws {
        guard !condition else { return }
        if rootIsRequired {
            throw PrivilegeMismatch(description: "privileged test cannot run: \(what)")
        }
        warnNotRun(what)
        throw XCTSkip(what, file: file, line: line)
    }

    private static func warnNotRun(_ why: String) {
        let banner = String(repeating: "!", count: 78)
        print("\(banner)\nWARNING: test NOT run: \(why)\n\(banner)")
    }

    /// The first of `candidates` that is an executable file.
    public static func executable(_ candidates: [String]) -> String? {
        candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    // MARK: - Isolated environment

    /// A throwaway home for every child process of this test run (`HOME`, `XDG_STATE_HOME`,
    /// `XDG_CONFIG_HOME`, `XDG_CACHE_HOME`, `XDG_DATA_HOME` point into it), so that no
    /// `ferry serve` without `--state-dir` and no client writes into the invoking user's real
    /// home. Created on first use, removed when the test process exits.
    public static let isolatedHome: URL = {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("ferry-test-home-\(getpid())-\(UUID().uuidString.prefix(8))", isDirectory: true)
        // Without it a child would fall back to the real home; stopping here says why.
        do {
            try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            fatalError("cannot create the tests' throwaway home \(url.path): \(error)")
        }
        atexit { TestSupport.removeTemporaryDirectory(TestSupport.isolatedHome) }
        return url
    }()

    /// The variables that `isolatedHome` replaces.
    public static var isolatedVariables: [String: String] {
        let home = isolatedHome
        return [
            "HOME": home.path,
            "XDG_STATE_HOME": home.appendingPathComponent(".local/state").path,
            "XDG_CONFIG_HOME": home.appendingPathComponent(".config").path,
            "XDG_CACHE_HOME": home.appendingPathComponent(".cache").path,
            "XDG_DATA_HOME": home.appendingPathComponent(".local/share").path,
        ]
    }

    /// This process's environment with the isolated home, then `extra`, on top.
    public static func childEnvironment(_ extra: [String: String]? = nil) -> [String: String] {
        ProcessInfo.processInfo.environment
            .merging(isolatedVariables) { $1 }
            .merging(extra ?? [:]) { $1 }
    }

    /// A `Process` for `command` (program and arguments) in `childEnvironment(environment)`;
    /// for tests that drive a child themselves (signals, streaming output).
    /// A `ferry` client command in it gets the trust arguments of the test server it names
    /// (`TestServers.withTrust`).
    public static func process(_ command: [String], environment: [String: String]? = nil) -> Process {
        let command = TestServers.withTrust(command: command)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: command.first ?? ferryExecutable.path)
        process.arguments = Array(command.dropFirst())
        process.environment = childEnvironment(environment)
        return process
    }
}
