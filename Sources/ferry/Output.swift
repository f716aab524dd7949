#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Dispatch
import FerryClient
import FerryDiscovery
import FerryFiles
import FerryProtocol
import FerryTrust
#if canImport(FoundationEssentials)
import FoundationEssentials  // not all of Foundation: that links ICU into the static binary
#else
import Foundation
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Everything the executable writes goes through here; library code never prints.
enum Output {
    /// Exit status when standard output was closed by its reader (`ferry ls srv | head`): what
    /// a shell reports for a process ended by SIGPIPE (128 + 13), without a crash report.
    static let closedOutputStatus: Int32 = 141

    /// Writes a line to stdout. Control characters (a server-chosen name or link target may
    /// hold ESC sequences) are shown escaped, as `ls` does, never sent to the terminal raw.
    static func out(_ text: String) {
        write(STDOUT_FILENO, printable(text) + "\n")
    }

    /// Writes a line to stderr, control characters escaped (see `out`).
    static func err(_ text: String) {
        write(STDERR_FILENO, printable(text) + "\n")
    }

    /// Writes `text` to stderr without a line break (a question before the answer).
    static func errNoNewline(_ text: String) {
        write(STDERR_FILENO, printable(text))
    }

    /// Writes `text` to stderr as exactly one line: newlines and tabs are escaped too.
    static func errLine(_ text: String) {
        write(STDERR_FILENO, escaped(text, keepingLineBreaks: false) + "\n")
    }

    /// Whether `--json` is in force: fatal errors are then also printed as a JSON `error` object.
    nonisolated(unsafe) static var jsonMode = false

    /// Whether stderr is the systemd journal (set by `bootstrapLogging`).
    nonisolated(unsafe) static var stderrIsJournal = false

    /// `text` with C0 controls (other than newline and tab), DEL and C1 controls shown as
    /// `\xNN`. Returns `text` itself when there is nothing to escape (the common case).
    static func printable(_ text: String) -> String { escaped(text, keepingLineBreaks: true) }

    private static func isControl(_ s: Unicode.Scalar) -> Bool {
        (s.value < 0x20 && s != "\n" && s != "\t") || s.value == 0x7F || (0x80...0x9F).contains(s.value)
    }

    /// A name or link target (raw bytes from a server or a file system) for the terminal:
    /// UTF-8 where valid, with every control character, tab and newline included, escaped.
    static func printable(bytes: [UInt8]) -> String {
        escaped(String(decoding: bytes, as: UTF8.self), keepingLineBreaks: false)
    }

    /// `text` with control characters as `\xNN` (newlines and tabs too unless kept); `text`
    /// itself when there is nothing to escape (the common case).
    private static func escaped(_ text: String, keepingLineBreaks keep: Bool) -> String {
        func escapes(_ s: Unicode.Scalar) -> Bool { isControl(s) || (!keep && (s == "\n" || s == "\t")) }
        guard text.unicodeScalars.contains(where: escapes) else { return text }
        var out = ""
        out.unicodeScalars.reserveCapacity(text.unicodeScalars.count + 16)
        for scalar in text.unicodeScalars {
            if escapes(scalar) {
                out += "\\x" + String(scalar.value, radix: 16).leftPadded(to: 2)
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// A path for the terminal (see `printable(bytes:)`).
    static func shown(_ path: RemotePath) -> String {
        path.isRoot ? "." : printable(bytes: path.bytes)
    }

    /// Writes all of `text` with write(2); lines from several threads never interleave (each is
    /// one call unless the pipe takes it in parts, which then continue under the lock). Used
    /// as it is (no escaping) for what ferry composes itself: the progress line, a manifest.
    private static let lock = NIOLock()
    static func write(_ fd: Int32, _ text: String) {
        if !writeAll(fd, Array(text.utf8)) { exit(closedOutputStatus) }
    }

    /// `write`'s loop; false when standard output was closed by its reader (the caller exits,
    /// not holding a lock: the `atexit` handler writes too).
    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        var done = 0
        while done < bytes.count {
            // Invariant: the loop runs only for non-empty bytes, which have a base address.
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n > 0 { done += n; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EPIPE && fd == STDOUT_FILENO { return false }
            return true  // stderr gone or another error: nothing better to do than drop the line
        }
        return true
    }

    static var stderrIsTerminal: Bool { isatty(STDERR_FILENO) == 1 }
    static var stdinIsTerminal: Bool { isatty(STDIN_FILENO) == 1 }
    static var stdoutIsTerminal: Bool { isatty(STDOUT_FILENO) == 1 }

    /// One JSON object on one line, keys sorted. Lines go out in batches: the first line after
    /// a pause at once, the ones that follow within `jsonBatchDelay` together, at most that
    /// much later (a timer), and whatever is left when the process exits (`atexit`). Two
    /// events per file, each its own write(2), were a sixth of a sync's time for many small files.
    static func json(_ object: [String: Any]) {
        var line = ""
        JSONText.append(object, to: &line)
        jsonLine(line)
    }

    /// A JSON object already written out (`JSONText`), as one line of the batches of `json`.
    static func jsonLine(_ object: String) {
        // JSONText escapes every control character itself (`out` would scan for them again).
        let line = object + "\n"
        let now = DispatchTime.now().uptimeNanoseconds
        let (closed, armTimer) = jsonBatch.withLockedValue { batch -> (Bool, Bool) in
            if !batch.exitHandlerInstalled {
                batch.exitHandlerInstalled = true
                atexit { Output.flushJSONAtExit() }
            }
            batch.bytes.append(contentsOf: line.utf8)
            if batch.bytes.count >= jsonBatchBytes || now &- batch.lastWrite >= jsonBatchDelay {
                batch.lastWrite = now
                return (!writeBatch(&batch), false)
            }
            if batch.timerArmed { return (false, false) }
            batch.timerArmed = true
            return (false, true)
        }
        if closed { exit(closedOutputStatus) }
        if armTimer {
            DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(jsonBatchDelay))) { flushJSON() }
        }
    }

    private struct JSONBatch {
        var bytes: [UInt8] = []
        /// `DispatchTime` nanoseconds of the last write (0: none yet).
        var lastWrite: UInt64 = 0
        var timerArmed = false
        var exitHandlerInstalled = false
        var exiting = false
    }

    private static let jsonBatch = NIOLockedValueBox(JSONBatch())
    static let jsonBatchBytes = 32 << 10
    static let jsonBatchDelay: UInt64 = 50_000_000

    /// Writes the JSON lines held back (the timer's turn).
    static func flushJSON() {
        let closed = jsonBatch.withLockedValue { batch -> Bool in
            batch.timerArmed = false
            batch.lastWrite = DispatchTime.now().uptimeNanoseconds
            return !writeBatch(&batch)
        }
        if closed { exit(closedOutputStatus) }
    }

    /// The `atexit` handler: the last lines, once. If standard output was closed by its reader
    /// the status is 141, as for a line written earlier (`_exit`: no handler runs twice).
    private static func flushJSONAtExit() {
        let closed = jsonBatch.withLockedValue { batch -> Bool in
            guard !batch.exiting else { return false }
            batch.exiting = true
            return !writeBatch(&batch)
        }
        if closed { _exit(closedOutputStatus) }
    }

    /// Writes and empties the batch; false when standard output was closed by its reader.
    private static func writeBatch(_ batch: inout JSONBatch) -> Bool {
        defer { batch.bytes.removeAll(keepingCapacity: true) }
        return batch.bytes.isEmpty || writeAll(STDOUT_FILENO, batch.bytes)
    }

    /// Prints `ferry: message` (and, with `--json`, a JSON `error` object on stdout) and
    /// returns the error's exit status.
    static func fail(_ error: Error) -> ExitCode {
        let message: String
        let status: Int32
        switch error {
        case let e as ClientError:
            (message, status) = (e.description, e.exitStatus)
        case let e as ServerAddress.Invalid:
            (message, status) = (e.description, Exit.usage)
        case let e as ServerResolution.Failure:
            (message, status) = (e.description, e.exitStatus)
        case let e as TrustFailure:
            (message, status) = (e.description, e.exitStatus)
        case let e as ExitCode:
            return e
        case let e as CustomStringConvertible:
            (message, status) = (e.description, Exit.failed)
        default:
            (message, status) = ("\(error)", Exit.failed)
        }
        fatal(message, status: status)
        return ExitCode(status)
    }

    /// Reports an error that ends the run: `ferry: message` on stderr and, with `--json`, an
    /// `error` object with `"fatal": true` and the exit status on stdout.
    static func fatal(_ message: String, status: Int32) {
        // In the journal the line is an error (priority 3), not the stream's default, info.
        err((stderrIsJournal ? "<3>" : "") + "ferry: \(message)")
        if jsonMode { json(["event": "error", "fatal": true, "message": message, "exitCode": status]) }
    }

    /// Log messages go to stderr at the level `FERRY_LOG` names, else debug with `--verbose`,
    /// else `defaultLevel`; in the journal format when stderr is the systemd journal.
    static func bootstrapLogging(verbose: Bool, defaultLevel: Logger.Level = .warning) {
        let environment = ProcessInfo.processInfo.environment
        let level: Logger.Level
        if let env = environment["FERRY_LOG"], let l = Logger.Level(rawValue: env) {
            level = l
        } else {
            level = verbose ? .debug : defaultLevel
        }
        if JournalLogHandler.stderrIsJournal(journalStream: environment["JOURNAL_STREAM"]) {
            stderrIsJournal = true
            LoggingSystem.bootstrap { JournalLogHandler(label: $0, level: level) }
            return
        }
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
    }

    static func bytes(_ n: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n)
        var i = 0
        while v >= 1024 && i < units.count - 1 {
            v /= 1024
            i += 1
        }
        return i == 0 ? "\(n) B" : fixed(v, decimals: 1) + " " + units[i]
    }

    /// `value` rounded to `decimals` digits after the point, as `%.Nf` shows it. Not
    /// `String(format:)`: that one alone links ICU's data into the static binary (44 MB).
    static func fixed(_ value: Double, decimals: Int) -> String {
        var scale: Int64 = 1
        for _ in 0..<decimals { scale *= 10 }
        let scaled = (abs(value) * Double(scale)).rounded()
        guard value.isFinite, scaled < 9e18 else { return "\(value)" }
        let units = Int64(scaled)
        let sign = value < 0 && units != 0 ? "-" : ""
        let whole = "\(sign)\(units / scale)"
        return decimals == 0 ? whole : whole + "." + String(units % scale).leftPadded(to: decimals)
    }

    static func duration(_ seconds: Double) -> String {
        if !seconds.isFinite || seconds < 0 { return "--:--" }
        let s = Int(seconds.rounded())
        let mmss = String(s / 60 % 60).leftPadded(to: 2) + ":" + String(s % 60).leftPadded(to: 2)
        return s >= 3600 ? "\(s / 3600):" + mmss : mmss
    }

    static func date(_ t: Timestamp) -> String {
        var time = time_t(t.seconds)
        var tmValue = tm()
        localtime_r(&time, &tmValue)
        var buf = [CChar](repeating: 0, count: 32)
        let n = strftime(&buf, buf.count, "%Y-%m-%d %H:%M", &tmValue)
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The mode as `ls -l` shows it: type letter, then rwx triplets with setuid/setgid (`s`,
    /// `S` without execute) and sticky (`t`, `T`) in the execute positions. `kind` tells what an
    /// entry of type `o` is (FIFO `p`, socket `s`, character `c` or block `b` device) when the
    /// server said; otherwise it shows as `?`.
    static func modeString(_ type: EntryType, _ mode: UInt32, kind: SpecialKind? = nil) -> String {
        let t: String = switch type {
        case .directory: "d"
        case .symlink: "l"
        case .file: "-"
        case .other: kind?.letter ?? "?"
        }
        var s = t
        let special: [(bit: UInt32, set: String, setNoExec: String)] = [
            (0o4000, "s", "S"), (0o2000, "s", "S"), (0o1000, "t", "T"),
        ]
        for (i, shift) in stride(from: 6, through: 0, by: -3).enumerated() {
            let bits = (mode >> UInt32(shift)) & 7
            s += (bits & 4 != 0 ? "r" : "-") + (bits & 2 != 0 ? "w" : "-")
            let exec = bits & 1 != 0
            if mode & special[i].bit != 0 {
                s += exec ? special[i].set : special[i].setNoExec
            } else {
                s += exec ? "x" : "-"
            }
        }
        return s
    }
}

/// Options shared by every command that talks to a server.
struct ClientOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("File holding the server's token (or set FERRY_TOKEN_FILE).", valueName: "PATH"))
    var tokenFile: String?

    @Option(name: .long, help: ArgumentHelp(
        "Seconds to wait for the server at each step: to connect, and for each reply line to arrive complete (a chunk's data gets more time on a slow link). A connection that misses one is dropped and, for get and sync, retried.",
        valueName: "SECONDS"))
    var timeout: Double = 60

    @Option(name: .customLong("to"), help: ArgumentHelp("Where to probe when SERVER is a bare name not in /etc/hosts, to find a server announcing it (repeatable).", valueName: "ADDR"))
    var probeTargets: [String] = []

    @Option(name: .long, help: ArgumentHelp("UDP port for discovery when SERVER is found by discovery.", valueName: "N"))
    var discoveryPort: Int = FerryDefaults.discoveryPort

    @Flag(name: .long, help: "Log protocol details to stderr.")
    var verbose = false

    @Flag(name: .long, help: "Speak cleartext, without TLS, to a server started with --plaintext. Never chosen automatically.")
    var plaintext = false

    @Option(name: .long, help: ArgumentHelp("Accept only the server whose key has this fingerprint (as `ferry serve` prints it).", valueName: "FP"))
    var fingerprint: Fingerprint?

    @Flag(name: .long, help: "On first contact without a terminal, accept the server's key and remember it.")
    var trustNew = false

    func validate() throws {
        if plaintext && (fingerprint != nil || trustNew) {
            throw ValidationError("--plaintext has no server identity to check; drop --fingerprint and --trust-new")
        }
        guard timeout.isFinite, (0.1...86_400).contains(timeout) else {
            throw ValidationError("--timeout must be between 0.1 and 86400 seconds")
        }
        guard (1...65535).contains(discoveryPort) else { throw ValidationError("--discovery-port must be 1-65535") }
        // Checked here, not only when discovery runs: a bad --to is a mistake even when DNS answers.
        for target in probeTargets {
            do throws(DiscoveryError) { _ = try DiscoveryTargets.parse(target) } catch { throw ValidationError(error.description) }
        }
    }

    func connectionOptions() throws -> ConnectionOptions {
        let wait = TimeAmount.milliseconds(Int64((timeout * 1000).rounded()))
        return ConnectionOptions(token: try TokenFile.load(path: tokenFile ?? ProcessInfo.processInfo.environment["FERRY_TOKEN_FILE"]),
                                 connectTimeout: wait, readTimeout: wait)
    }
}

enum TokenFile {
    struct Problem: Error, CustomStringConvertible {
        let description: String
    }

    /// Reads a token file (trailing newline ignored). Refuses a group/world-readable file.
    static func load(path: String?) throws -> [UInt8]? {
        guard let path else { return nil }
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw Problem(description: "cannot read the token file \(path): \(String(cString: strerror(errno)))")
        }
        if st.st_mode & 0o077 != 0 {
            throw Problem(description: "the token file \(path) is readable by other users; run `chmod 600 \(path)`")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Problem(description: "cannot read the token file \(path)")
        }
        var bytes = [UInt8](data)
        while let last = bytes.last, last == 0x0A || last == 0x0D { bytes.removeLast() }
        guard !bytes.isEmpty else { throw Problem(description: "the token file \(path) is empty") }
        return bytes
    }
}

/// A small JSON writer for the event objects the executable prints (strings, integers,
/// doubles, booleans, arrays and nested objects; keys sorted). JSONSerialization took most of
/// a sync's user time when every file produced two event lines.
enum JSONText {
    static func append(_ value: Any, to out: inout String) {
        switch value {
        case let s as String: appendString(s, to: &out)
        case let b as Bool: out += b ? "true" : "false"
        case let i as Int: out += String(i)
        case let i as Int64: out += String(i)
        case let i as Int32: out += String(i)
        case let u as UInt64: out += String(u)
        case let u as UInt32: out += String(u)
        case let d as Double: out += d.isFinite ? String(d) : "null"
        case let a as [Any]:
            out += "["
            for (i, v) in a.enumerated() {
                if i > 0 { out += "," }
                append(v, to: &out)
            }
            out += "]"
        case let o as [String: Any]:
            out += "{"
            for (i, key) in o.keys.sorted().enumerated() {
                if i > 0 { out += "," }
                appendString(key, to: &out)
                out += ":"
                // Invariant: the key was just read from the dictionary.
                append(o[key]!, to: &out)
            }
            out += "}"
        default: appendString(String(describing: value), to: &out)
        }
    }

    /// The `start` and `done` events of a file, as `append` writes them (keys sorted), built
    /// without a dictionary: two of them per file of a sync.
    static func fileEvent(_ event: String, path: RemotePath, size: Int64, delta: Bool? = nil) -> String {
        var out = "{"
        if let delta { out += delta ? "\"delta\":true," : "\"delta\":false," }
        out += "\"event\":"
        appendString(event, to: &out)
        out += ",\"path\":"
        appendString(path.description, to: &out)
        out += ",\"size\":" + String(size) + "}"
        return out
    }

    static func appendString(_ s: String, to out: inout String) {
        out += "\""
        // Printable ASCII without quote or backslash (most names) goes in whole.
        if s.utf8.allSatisfy({ (0x20...0x7E).contains($0) && $0 != 0x22 && $0 != 0x5C }) {
            out += s
            out += "\""
            return
        }
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                // C0, DEL and C1 controls as \u00XX: `out` would otherwise show DEL and C1 as
                // `\xNN`, which is not a JSON escape, and the line would not parse.
                if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}

extension String {
    /// The string with leading zeros up to `width` characters.
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
