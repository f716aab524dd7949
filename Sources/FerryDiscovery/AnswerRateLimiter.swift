/// Decides whether a probe may be answered, so that a responder can never be used to flood
/// anyone: at most `perSource` answers in any one-second window to one source address, and
/// at most `total` in any one-second window overall (spoofed probes can name many sources).
///
/// Windows slide: the limiter remembers the times of the latest answers, so even bursts that
/// straddle a second boundary stay within the limit. Memory is bounded by `maxSources`.
public struct AnswerRateLimiter: Sendable {
    public let perSource: Int
    public let total: Int
    public let window: UInt64
    public let maxSources: Int

    /// The times of the latest answers (at most `limit`), oldest first.
    struct History: Sendable {
        var times: [UInt64] = []

        /// Whether one more event at `now` keeps the count in the window within `limit`;
        /// records it if so.
        mutating func admit(now: UInt64, window: UInt64, limit: Int) -> Bool {
            if times.count >= limit {
                guard let oldest = times.first, now &- oldest >= window, now >= oldest else { return false }
                times.removeFirst()
            }
            times.append(now)
            return true
        }

        func isIdle(now: UInt64, window: UInt64) -> Bool {
            guard let newest = times.last else { return true }
            return now >= newest && now - newest >= window
        }
    }

    private var sources: [String: History] = [:]
    private var overall = History()

    public init(perSource: Int = 20, total: Int = 200, window: Duration = .seconds(1), maxSources: Int = 4096) {
        self.perSource = max(1, perSource)
        self.total = max(1, total)
        let parts = window.components
        self.window = UInt64(max(0, parts.seconds)) * 1_000_000_000 + UInt64(max(0, parts.attoseconds / 1_000_000_000))
        self.maxSources = max(1, maxSources)
    }

    /// `now` is a monotonic time in nanoseconds.
    public mutating func allow(source: String, now: UInt64) -> Bool {
        var history = sources[source] ?? History()
        // Check the source first so a source over its limit does not use up the overall budget.
        if history.times.count >= perSource,
           let oldest = history.times.first, !(now >= oldest && now - oldest >= window) {
            return false
        }
        if sources[source] == nil && sources.count >= maxSources {
            sources = sources.filter { !$0.value.isIdle(now: now, window: window) }
            if sources.count >= maxSources { return false }
        }
        guard overall.admit(now: now, window: window, limit: total) else { return false }
        let admitted = history.admit(now: now, window: window, limit: perSource)
        sources[source] = history
        return admitted
    }

    /// Number of source addresses currently remembered.
    public var trackedSources: Int { sources.count }
}
