import NIOConcurrencyHelpers

/// How many tree walks (`MANIFEST`) run at once, server-wide; the others wait their turn, in
/// order. A walk holds the sorted names of each directory on its path and up to a spool's
/// memory of manifest text, so 256 connections asking for manifests of huge trees at once must
/// not all walk together (issue 17: RSS ≤ 256 MiB under any 256 hostile connections).
final class WalkTurns: Sendable {
    private struct State {
        var running = 0
        var waiting = WaitQueue()
    }

    let limit: Int
    private let state = NIOLockedValueBox(State())

    init(limit: Int = 4) {
        self.limit = limit
    }

    /// Runs `body` once a turn is free. A task cancelled while waiting runs it anyway, at once
    /// (its walk then stops at its first check that the client is still there).
    func run<T>(_ body: () async throws -> T) async throws -> T {
        await take()
        defer { give() }
        return try await body()
    }

    private func take() async {
        let limit = self.limit
        await WaitQueue.wait(in: state, queue: \.waiting, unless: { s, cancelled in
            guard s.running < limit || cancelled else { return false }
            s.running += 1
            return true
        }, onCancel: { $0.running += 1 })
    }

    private func give() {
        let next = state.withLockedValue { s -> CheckedContinuation<Void, Never>? in
            // The turn passes straight to the next in line (`running` stays the same).
            guard let next = s.waiting.removeFirst() else {
                s.running -= 1
                return nil
            }
            return next
        }
        next?.resume()
    }

    /// Walks running now (for tests).
    var running: Int { state.withLockedValue { $0.running } }
}
