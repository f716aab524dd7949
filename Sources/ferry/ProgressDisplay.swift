import Foundation
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
        }
        redraw(force: true)
    }

    func add(bytes: Int) {
        state.withLockedValue { $0.done += Int64(bytes) }
        redraw(force: false)
    }

    func fileDone() {
        state.withLockedValue { $0.filesDone += 1 }
        redraw(force: false)
    }

    /// Erases the line (before other stderr output, and at the end).
    func clear() {
        guard mode == .terminal else { return }
        let wasDrawn = state.withLockedValue { s -> Bool in
            defer { s.drawn = false }
            return s.drawn
        }
        if wasDrawn { FileHandle.standardError.write(Data("\r\u{1B}[2K".utf8)) }
    }

    func finish() { clear() }

    private func redraw(force: Bool) {
        guard mode != .quiet else { return }
        let now = ContinuousClock.now
        let interval: Duration = mode == .terminal ? .milliseconds(100) : .seconds(1)
        let snapshot: State? = state.withLockedValue { s in
            guard force || now - s.lastDraw >= interval else { return nil }
            s.lastDraw = now
            if mode == .terminal { s.drawn = true }
            return s
        }
        guard let s = snapshot else { return }
        let elapsed = max(0.001, (now - s.started).seconds)
        let rate = Double(s.done - s.resumedBytes) / elapsed
        let eta = rate > 0 ? Double(s.bytes - s.done) / rate : .infinity
        switch mode {
        case .terminal:
            let pct = s.bytes > 0 ? Double(s.done) * 100 / Double(s.bytes) : 100
            let line = String(format: "%d/%d files  %@ / %@  %3.0f%%  %@/s  ETA %@",
                              s.filesDone, s.files, Output.bytes(s.done), Output.bytes(s.bytes), pct,
                              Output.bytes(Int64(rate)), Output.duration(eta))
            FileHandle.standardError.write(Data(("\r\u{1B}[2K" + line).utf8))
        case .json:
            Output.json(["event": "progress", "filesDone": s.filesDone, "filesTotal": s.files,
                         "bytesDone": s.done, "bytesTotal": s.bytes, "bytesPerSecond": Int64(rate),
                         "etaSeconds": eta.isFinite ? eta : -1])
        case .quiet:
            break
        }
    }
}
