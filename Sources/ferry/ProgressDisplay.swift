#if canImport(Glibc)
import Glibc
#endif
import FerryProtocol
#if canImport(FoundationEssentials)
import FoundationEssentials  // not all of Foundation: that links ICU into the static binary
#else
import Foundation
#endif
import NIOConcurrencyHelpers

/// Progress on stderr: one line redrawn in place at most ten times a second and erased at
/// the end (terminal mode), periodic JSON `progress` events (json mode), or nothing. Totals
/// come from the manifest up front, so they are exact from the first redraw.
final class ProgressDisplay: Sendable {
    enum Mode { case terminal, json, quiet }

    private struct State {
        var files = 0
        var filesDone = 0
        var bytes: Int64 = 0
        var done: Int64 = 0
        var resumedBytes: Int64 = 0
        var started = ContinuousClock.now
        var lastDraw = ContinuousClock.now - .seconds(10)
        var drawn = false
        /// The file being transferred, shown at the end of the line.
        var current: String?
        /// Set by `stop()`: nothing is drawn any more.
        var stopped = false
        /// Set by `begin`: there are totals to show.
        var begun = false
    }

    private let state = NIOLockedValueBox(State())
    private let mode: Mode

    init(mode: Mode) { self.mode = mode }

    func begin(files: Int, bytes: Int64, alreadyDone: Int64 = 0) {
        state.withLockedValue {
            $0.files = files
            $0.bytes = bytes
            $0.done = alreadyDone
            $0.resumedBytes = alreadyDone
            $0.started = .now
            $0.begun = true
        }
        redraw(force: true)
    }

    func add(bytes: Int) {
        state.withLockedValue { $0.done += Int64(bytes) }
        redraw(force: false)
    }

    /// Data of a resumed file that is already on disk: counted as done, not in the rate.
    func addKept(bytes: Int64) {
        state.withLockedValue {
            $0.done += bytes
            $0.resumedBytes += bytes
        }
        redraw(force: true)
    }

    /// The file now being transferred (shown at the end of the line, cut to fit).
    func current(_ path: RemotePath) {
        guard mode == .terminal else { return }
        let name = Output.shown(path)
        state.withLockedValue { $0.current = name }
    }

    /// A line of its own on stderr (e.g. "resuming NAME at 812 MiB"): the progress line is
    /// erased, the line printed, and the progress line drawn again below it.
    func note(_ line: String) {
        clear()
        Output.err(line)
        redraw(force: true)
    }

    /// A passing state drawn in place of the progress line before the totals are known
    /// ("verifying kept data: 12.3 GiB of 27.0 GiB"); at most ten times a second, terminal only.
    func status(_ text: String) {
        guard mode == .terminal else { return }
        let now = ContinuousClock.now
        let due = state.withLockedValue { s -> Bool in
            guard !s.stopped, now - s.lastDraw >= .milliseconds(100) else { return false }
            s.lastDraw = now
            return true
        }
        guard due else { return }
        let line = "\r\u{1B}[2K" + Self.cut(text, to: max(0, Self.terminalColumns() - 3))
        state.withLockedValue { s in
            guard !s.stopped else { return }
            Output.write(STDERR_FILENO, line)
            s.drawn = true
        }
    }

    func fileDone() {
        state.withLockedValue { $0.filesDone += 1 }
        redraw(force: false)
    }

    /// Erases the line (before other stderr output, and at the end).
    func clear() {
        guard mode == .terminal else { return }
        // Under the lock, so a redraw racing with this cannot put the line back afterwards.
        state.withLockedValue { s in
            if s.drawn { Output.write(STDERR_FILENO, "\r\u{1B}[2K") }
            s.drawn = false
        }
    }

    func finish() { clear() }

    /// Erases the line for good: later updates draw nothing (Ctrl-C, while the transfer's
    /// tasks may still report bytes).
    func stop() {
        state.withLockedValue { $0.stopped = true }
        clear()
    }

    private func redraw(force: Bool) {
        guard mode != .quiet else { return }
        let now = ContinuousClock.now
        let interval: Duration = mode == .terminal ? .milliseconds(100) : .seconds(1)
        let snapshot: State? = state.withLockedValue { s in
            guard s.begun, !s.stopped, force || now - s.lastDraw >= interval else { return nil }
            s.lastDraw = now
            return s
        }
        guard let s = snapshot else { return }
        let elapsed = max(0.001, (now - s.started).seconds)
        let rate = Double(s.done - s.resumedBytes) / elapsed
        let eta = rate > 0 ? Double(s.bytes - s.done) / rate : .infinity
        switch mode {
        case .terminal:
            let pct = s.bytes > 0 ? Double(s.done) * 100 / Double(s.bytes) : 100
            let percent = Output.fixed(pct, decimals: 0)
            let stats = "\(s.filesDone)/\(s.files) files  \(Output.bytes(s.done)) / \(Output.bytes(s.bytes))  "
                + String(repeating: " ", count: max(0, 3 - percent.count)) + percent + "%  "
                + "\(Output.bytes(Int64(rate)))/s  ETA \(Output.duration(eta))"
            let line = Self.fit(stats: stats, name: s.current, columns: Self.terminalColumns())
            let text = "\r\u{1B}[2K" + line
            // Written under the lock: `clear()` and `stop()` then never interleave with it.
            state.withLockedValue { s in
                guard !s.stopped else { return }
                Output.write(STDERR_FILENO, text)
                s.drawn = true
            }
        case .json:
            Output.json(["event": "progress", "filesDone": s.filesDone, "filesTotal": s.files,
                         "bytesDone": s.done, "bytesTotal": s.bytes, "bytesPerSecond": Int64(rate),
                         "etaSeconds": eta.isFinite ? eta : -1])
        case .quiet:
            break
        }
    }

    /// The width of the terminal on stderr (80 when it cannot be read).
    static func terminalColumns() -> Int {
        var size = winsize()
        if ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return Int(size.ws_col) }
        return 80
    }

    /// The progress line in at most `columns - 3` terminal columns, so it never wraps: not
    /// when drawn, and not when the terminal echoes `^C` after it (which `stop()` then erases
    /// with it). The file name gives way first (its middle becomes `…`, keeping its end, which
    /// tells files apart); when the counts alone do not fit, whole fields (separated by two
    /// spaces) are dropped from the end — a cut `ETA 00:21` would read `ETA 0` — and only a
    /// first field that does not fit on its own is cut.
    static func fit(stats: String, name: String?, columns: Int) -> String {
        let limit = max(0, columns - 3)
        let statsWidth = width(of: stats)
        guard statsWidth <= limit else {
            var fields = stats.components(separatedBy: "  ").filter { !$0.isEmpty }
            while fields.count > 1 {
                fields.removeLast()
                let shorter = fields.joined(separator: "  ")
                if width(of: shorter) <= limit { return shorter }
            }
            return cut(fields.first ?? "", to: limit)
        }
        guard let name else { return stats }
        let room = limit - statsWidth - 2
        guard room >= 8 else { return stats }
        return stats + "  " + middleCut(name, to: room)
    }

    /// `text` cut at the end to at most `limit` columns.
    static func cut(_ text: String, to limit: Int) -> String {
        var out = "", used = 0
        for c in text {
            let w = width(c)
            if used + w > limit { break }
            out.append(c)
            used += w
        }
        return out
    }

    /// `text` in at most `limit` columns, its middle replaced by `…` when too long.
    static func middleCut(_ text: String, to limit: Int) -> String {
        guard width(of: text) > limit else { return text }
        let characters = Array(text)
        let headBudget = (limit - 1) / 3
        let tailBudget = limit - 1 - headBudget
        var head = 0, used = 0
        while head < characters.count, used + width(characters[head]) <= headBudget { used += width(characters[head]); head += 1 }
        var tail = characters.count, usedTail = 0
        while tail > head, usedTail + width(characters[tail - 1]) <= tailBudget { usedTail += width(characters[tail - 1]); tail -= 1 }
        return String(characters[..<head]) + "…" + String(characters[tail...])
    }

    static func width(of text: String) -> Int { text.reduce(0) { $0 + width($1) } }

    /// Columns a character takes on a terminal: 2 for East Asian wide and emoji ranges, 0 for
    /// combining marks, else 1 (an approximation of wcwidth that needs no locale).
    static func width(_ c: Character) -> Int {
        guard let first = c.unicodeScalars.first else { return 0 }
        let v = first.value
        if v < 0x300 { return 1 }
        if (0x300...0x36F).contains(v) { return 0 }
        let wide: [ClosedRange<UInt32>] = [
            0x1100...0x115F, 0x2E80...0x303E, 0x3041...0x33FF, 0x3400...0x4DBF, 0x4E00...0x9FFF,
            0xA000...0xA4CF, 0xAC00...0xD7A3, 0xF900...0xFAFF, 0xFE30...0xFE4F, 0xFF00...0xFF60,
            0xFFE0...0xFFE6, 0x1F300...0x1F64F, 0x1F900...0x1F9FF, 0x20000...0x3FFFD,
        ]
        return wide.contains { $0.contains(v) } ? 2 : 1
    }
}
