#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials  // not all of Foundation: that links ICU into the static binary
#else
import Foundation
#endif
import UnixSignals

/// Ctrl-C in a client command. Everything a transfer has verified is already on disk (each
/// chunk is written before ferry waits for the next), so stopping at once loses at most the
/// chunk in flight; the next run continues from there. The progress line is erased, the
/// person is told how to continue, and the process exits with 130 (128 + SIGINT), as a shell
/// reports a command ended by Ctrl-C.
enum Interrupt {
    static let status: Int32 = 130

    /// Watches SIGINT until the process exits. `progress` is erased first; `resumable` says
    /// whether running the command again continues the work (`get`, `sync`) or only repeats it.
    /// SIGINT is trapped when this returns.
    static func install(progress: ProgressDisplay?, resumable: Bool) async {
        let signals = await UnixSignalsSequence(trapping: .sigint)
        Task.detached {
            for await _ in signals {
                progress?.stop()
                if Output.stderrIsTerminal { Output.err("") }  // past the `^C` the terminal echoed
                let message = resumable
                    ? "interrupted — run the same command again to continue (verified data is kept)"
                    : "interrupted"
                Output.fatal(message, status: status)
                exit(status)
            }
        }
    }
}
