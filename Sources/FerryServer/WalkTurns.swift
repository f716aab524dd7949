import NIOConcurrencyHelpers

/// How many tree walks (`MANIFEST`) run at once, server-wide; the others wait their turn, in
/// order. A walk holds the sorted names of each directory on its path and up to a spool's
/// memory of manifest text, so 256 connections asking for manifests of huge trees at once must
/// not all walk together (issue 17: RSS ≤ 256 MiB under any 256 hostile connections).
final class WalkTurns: Sendable {
    private struct State {
        var running = 0
        var waiting: [(id: UInt64, continuation: CheckedContinuation<Void, Never>)] = []
        var nextID: UInt64 = 0
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
        let id = state.withLockedValue { s -> UInt64 in
            s.nextID += 1
            return s.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLockedValue { s -> Bool in
                    if s.running < limit || Task.isCancelled {
                        s.running += 1
                        return true
                    }
                    s.waiting.append((id, continuation))
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLockedValue { s -> CheckedContinuation<Void, Never>? in
                guard let index = s.waiting.firstIndex(where: { $0.id == id }) else { return nil }
                s.running += 1
                return s.waiting.remove(at: index).continuation
            }
            waiter?.resume()
        }
    }

    private func give() {
        let next = state.withLockedValue { s -> CheckedContinuation<Void, Never>? in
            guard !s.waiting.isEmpty else {
                s.running -= 1
                return nil
            }
            // The turn passes straight to the next in line (`running` stays the same).
            return s.waiting.removeFirst().continuation
        }
        next?.resume()
    }

    /// Walks running now (for tests).
    var running: Int { state.withLockedValue { $0.running } }
}
