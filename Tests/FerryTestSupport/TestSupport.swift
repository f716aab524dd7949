import Foundation
import XCTest

/// Shared helpers for the test targets: locating the built `ferry` executable, materialising
/// the fixture tree, running processes with a time limit in an isolated environment, and
/// marking the tests that need (or must not have) root.
public enum TestSupport {
    /// The package root (three levels above this file).
    public static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The built `ferry` executable; `swift test` builds it together with the tests, next to
    /// the test bundle. `FERRY_EXECUTABLE` overrides the lookup.
    public static var ferryExecutable: URL {
        if let env = ProcessInfo.processInfo.environment["FERRY_EXECUTABLE"] { return URL(fileURLWithPath: env) }
        let beside = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        for dir in [beside, Bundle.main.bundleURL, packageRoot.appendingPathComponent(".build/debug")] {
            let candidate = dir.appendingPathComponent("ferry")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        return packageRoot.appendingPathComponent(".build/debug/ferry")
    }

    /// A fresh temporary directory, removed by the caller with `removeTemporaryDirectory`.
    public static func makeTemporaryDirectory(_ label: String = "ferry-test") throws -> URL {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("\(label)-\(UUID().uuidString.prefix(8))", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    public static func removeTemporaryDirectory(_ url: URL) {
        try? FileManager.default.removeItem(at: url)
    }

    /// Copies `Fixtures/sample` into `parent/sample`, adding the empty directory git cannot
    /// store, and returns the copy's URL. Symlinks are copied as symlinks.
    public static func materializeFixtures(in parent: URL) throws -> URL {
        let source = packageRoot.appendingPathComponent("Fixtures/sample")
        let dest = parent.appendingPathComponent("sample")
        try run("/bin/cp", ["-a", source.path, dest.path])
        try FileManager.default.createDirectory(at: dest.appendingPathComponent("empty-dir"),
                                                withIntermediateDirectories: true)
        return dest
    }

    public struct ProcessResult: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    public struct ProcessFailed: Error, CustomStringConvertible {
        public let description: String
    }

    /// Runs a program to completion (killed after `timeout` seconds) and captures its output.
    /// It runs in `childEnvironment(environment)`: never with the invoking user's home. A `ferry`
    /// client command in it (alone or after a wrapper such as setpriv) gets the trust arguments
    /// of the test server it names (`TestServers.withTrust`).
    @discardableResult
    public static func run(_ program: String, _ arguments: [String], timeout: TimeInterval = 120,
                           environment: [String: String]? = nil, check: Bool = true) throws -> ProcessResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        let command = TestServers.withTrust(command: [program] + arguments)
        process.arguments = Array(command.dropFirst())
        process.environment = childEnvironment(environment)
        let outFile = try makeTemporaryDirectory("ferry-proc")
        defer { removeTemporaryDirectory(outFile) }
        let outURL = outFile.appendingPathComponent("out"), errURL = outFile.appendingPathComponent("err")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: outURL)
        process.standardError = try FileHandle(forWritingTo: errURL)
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw ProcessFailed(description: "\(program) \(arguments.joined(separator: " ")) timed out after \(timeout)s")
        }
        let result = ProcessResult(status: process.terminationStatus,
                                   stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
                                   stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "")
        if check && result.status != 0 {
            throw ProcessFailed(description: "\(program) \(arguments.joined(separator: " ")) exited \(result.status): \(result.stderr)")
        }
        return result
    }

    /// Runs the built `ferry` with `arguments` (see `run` for the trust arguments it gets).
    @discardableResult
    public static func ferry(_ arguments: [String], timeout: TimeInterval = 120, check: Bool = false,
                             environment: [String: String]? = nil) throws -> ProcessResult {
        try run(ferryExecutable.path, arguments, timeout: timeout, environment: environment, check: check)
    }
}

/// The servers tests run (`ServerProcess`, fake and in-process servers), by the address or
/// name a client names them with, and what a client passes to trust each: `--fingerprint FP`,
/// or `--plaintext` for one that speaks cleartext. `TestSupport.ferry` adds them to a client
/// command (`ls`, `get`, `sync`) that names such a server, unless it chose `--fingerprint`,
/// `--plaintext` or `--trust-new` itself.
public enum TestServers {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var byKey: [String: [String]] = [:]

    public static func register(_ key: String, _ clientArguments: [String]) {
        lock.withLock { byKey[key] = clientArguments }
    }

    public static func unregister(_ key: String) {
        lock.withLock { _ = byKey.removeValue(forKey: key) }
    }

    /// `command` (a program and its arguments) with the trust arguments added after the `ferry`
    /// executable in it, if any.
    public static func withTrust(command: [String]) -> [String] {
        guard let ferry = command.firstIndex(of: TestSupport.ferryExecutable.path) else { return command }
        return Array(command[...ferry]) + withTrust(Array(command[(ferry + 1)...]))
    }

    public static func withTrust(_ arguments: [String]) -> [String] {
        guard let command = arguments.first, ["ls", "get", "sync"].contains(command),
              !arguments.contains(where: { ["--fingerprint", "--plaintext", "--trust-new"].contains($0) }) else { return arguments }
        let extra: [String]? = lock.withLock {
            byKey.first { key, _ in
                arguments.dropFirst().contains { $0 == key || $0.hasPrefix(key + "/") || $0.hasPrefix("ferry://" + key) }
            }?.value
        }
        guard let extra else { return arguments }
        return [command] + extra + arguments.dropFirst()
    }
}

/// A `ferry serve` child process (optionally wrapped, e.g. in `ip netns exec NS`). It is
/// started on an ephemeral port and stopped (SIGTERM, then SIGKILL) by `stop()`.
public final class ServerProcess: @unchecked Sendable {
    public let process: Process
    public let host: String
    public let port: Int
    /// The fingerprint the server printed at start; nil for a `--plaintext` server.
    public let fingerprint: String?
    /// The names given with `--name`, under which clients may ask for it too.
    private var names: [String] = []
    private let stdoutPipe: Pipe
    public let stderrURL: URL

    /// What a client passes to trust this server: `--fingerprint FP`, or `--plaintext`.
    public var clientArguments: [String] { fingerprint.map { ["--fingerprint", $0] } ?? ["--plaintext"] }

    /// Starts `ferry serve DIR --port 0 ARGS...` (with `--plaintext` unless `tls`) and waits
    /// for its `listening on` line and, with TLS, its `fingerprint` line. It runs in
    /// `TestSupport.childEnvironment(environment)`, so even without `--state-dir` its hash
    /// cache and identity land in the tests' throwaway home.
    public init(serving dir: URL, tls: Bool = true, arguments: [String] = [], wrapper: [String] = [], timeout: TimeInterval = 20,
                environment: [String: String]? = nil) throws {
        let ferry = TestSupport.ferryExecutable.path
        let process = TestSupport.process(wrapper + [ferry, "serve", dir.path, "--port", "0"] + (tls ? [] : ["--plaintext"]) + arguments,
                                          environment: environment)
        let pipe = Pipe()
        process.standardOutput = pipe
        let errDir = try TestSupport.makeTemporaryDirectory("ferry-serve-log")
        stderrURL = errDir.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        process.standardInput = FileHandle.nullDevice
        try process.run()
        self.process = process
        self.stdoutPipe = pipe
        let deadline = Date().addingTimeInterval(timeout)
        let text = Self.readLine(pipe.fileHandleForReading.fileDescriptor, until: deadline)
        let fingerprintLine = tls ? Self.readLine(pipe.fileHandleForReading.fileDescriptor, until: deadline) : ""
        guard text.hasPrefix("listening on "), let colon = text.lastIndex(of: ":"),
              let port = Int(text[text.index(after: colon)...]), !tls || fingerprintLine.hasPrefix("fingerprint ") else {
            process.terminate()
            process.waitUntilExit()
            let err = (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? ""
            throw TestSupport.ProcessFailed(description: "ferry serve did not start (first lines '\(text)', '\(fingerprintLine)'): \(err)")
        }
        var host = String(text.dropFirst("listening on ".count)[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.host = host
        self.port = port
        self.fingerprint = tls ? String(fingerprintLine.dropFirst("fingerprint ".count)) : nil
        names = arguments.indices.filter { arguments[$0] == "--name" && $0 + 1 < arguments.count }.map { arguments[$0 + 1] }
        for key in [address] + names { TestServers.register(key, clientArguments) }
    }

    /// One line from `fd`, read byte by byte so nothing after it is consumed.
    private static func readLine(_ fd: Int32, until deadline: Date) -> String {
        var line = [UInt8]()
        while Date() < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 100) <= 0 { continue }
            var byte: UInt8 = 0
            if read(fd, &byte, 1) != 1 { break }
            if byte == 0x0A { break }
            line.append(byte)
        }
        return String(decoding: line, as: UTF8.self)
    }

    /// `HOST:PORT` as the CLI accepts it.
    public var address: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public var stderr: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }

    /// Sends SIGTERM and waits (SIGKILL after `grace` seconds). Returns the exit status.
    @discardableResult
    public func stop(grace: TimeInterval = 10) -> Int32 {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(grace)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        process.waitUntilExit()
        for key in [address] + names { TestServers.unregister(key) }
        TestSupport.removeTemporaryDirectory(stderrURL.deletingLastPathComponent())
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
    }
}
