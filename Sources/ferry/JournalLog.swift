#if canImport(Glibc)
import Glibc
#endif
import Logging

/// Log lines for the systemd journal. When systemd connects stderr to the journal it sets
/// `JOURNAL_STREAM` to that stream's `DEVICE:INODE`; each line then starts with its syslog
/// priority (`<6>` for info, as `sd-daemon(3)` describes) and carries no timestamp, since the
/// journal records the time, the level and the process itself. `journalctl -p warning` then
/// filters by ferry's levels.
struct JournalLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    init(label: String, level: Logger.Level) {
        self.label = label
        self.logLevel = level
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        Output.errLine(Self.line(level: event.level, label: label, message: event.message.description,
                                 metadata: metadata.merging(event.metadata ?? [:]) { $1 }))
    }

    /// `<PRIORITY>label: message key=value…`, metadata keys sorted. `errLine` escapes control
    /// characters, newlines included, so one event is always one journal entry.
    static func line(level: Logger.Level, label: String, message: String, metadata: Logger.Metadata) -> String {
        var text = "<\(priority(level))>\(label): \(message)"
        for key in metadata.keys.sorted() {
            // Invariant: the key was just read from the dictionary.
            text += " \(key)=\(metadata[key]!)"
        }
        return text
    }

    /// The syslog priority for a level (`LOG_DEBUG` 7 … `LOG_CRIT` 2).
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// Whether stderr is the journal stream systemd named in `journalStream` (the value of
    /// `JOURNAL_STREAM`): a stderr redirected elsewhere by the unit or a child keeps the
    /// ordinary format even though the variable is inherited.
    static func stderrIsJournal(journalStream: String?) -> Bool {
        guard let journalStream else { return false }
        let parts = journalStream.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(STDERR_FILENO, &st) == 0 else { return false }
        return UInt64(st.st_dev) == device && UInt64(st.st_ino) == inode
    }
}
